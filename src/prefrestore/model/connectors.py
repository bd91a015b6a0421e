"""The two connectors into SANA's cross-attention space (SPEC §2; paper Sec. IV-B.2, Eq. 9).

- ``diffusion_connector``: AR hidden states ``[B, N + 1, H]`` -> ``[B, N + 1, C]``.
- ``vae_connector``: z_low tokens from SANA's own ``patch_embed`` ``[B, L, D_sana]`` -> ``[B, L, C]``.

Both are ``Linear -> GELU(tanh) -> Linear -> RMSNorm(C)``; each owns its RMSNorm (the released code
shares one instance by accident, SPEC §6 trap 6). ``sincos_2d`` is the optional 2-D position added
to the z_low tokens after the connector (``model.zlow_position: sincos2d``), because SANA's
``patch_embed`` carries no position when ``interpolation_scale`` is unset (SPEC §2 caveat).
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from prefrestore.core.atomic import write_json


class Connector(nn.Sequential):
    """``Linear(in, C) -> GELU(tanh) -> Linear(C, C) -> RMSNorm(C, eps=1e-5)``.

    ``norm_init``: the RMSNorm weight of a fresh connector (``model.connector_norm_init``; BLIP3o-NEXT's
    ``blip3o_arch.py`` fills it with sqrt(5.5))."""

    def __init__(self, in_features: int, width: int, norm_init: float = 1.0) -> None:
        super().__init__(
            nn.Linear(in_features, width),
            nn.GELU(approximate="tanh"),
            nn.Linear(width, width),
            nn.RMSNorm(width, eps=1e-5),
        )
        if norm_init != 1.0:
            with torch.no_grad():
                self[3].weight.fill_(norm_init)
        self.in_features, self.width = in_features, width


def sincos_2d(height: int, width: int, dim: int, device: torch.device | None = None,
              dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Fixed 2-D sine/cosine position embedding ``[height * width, dim]`` (row-major, like patch tokens).

    Half the channels encode the row, half the column; each half is ``[sin(p w_k), cos(p w_k)]``
    with ``w_k = 10000^(-k / (dim / 4))`` (the ViT/MAE convention).
    """
    if dim % 4:
        raise ValueError(f"sincos_2d needs dim divisible by 4, got {dim}")
    quarter = dim // 4
    freqs = torch.exp(-math.log(10000.0) * torch.arange(quarter, dtype=torch.float64) / quarter)
    rows, cols = torch.meshgrid(torch.arange(height, dtype=torch.float64),
                                torch.arange(width, dtype=torch.float64), indexing="ij")

    def encode(pos: torch.Tensor) -> torch.Tensor:
        angles = pos.reshape(-1, 1) * freqs[None]
        return torch.cat([angles.sin(), angles.cos()], dim=1)

    emb = torch.cat([encode(rows), encode(cols)], dim=1)
    return emb.to(device=device, dtype=dtype)


def save_connectors(path: Path, connectors: dict[str, Connector]) -> None:
    path.mkdir(parents=True, exist_ok=True)
    meta = {}
    for name, module in connectors.items():
        state = {k: v.contiguous() for k, v in module.state_dict().items()}
        save_file(state, str(path / f"{name}.safetensors"))
        meta[name] = {"in_features": module.in_features, "width": module.width}
    write_json(path / "config.json", {"component": "connectors", "connectors": meta})


def load_connector(path: Path, name: str, in_features: int, width: int) -> Connector:
    module = Connector(in_features, width)
    module.load_state_dict(load_file(str(path / f"{name}.safetensors")))
    return module
