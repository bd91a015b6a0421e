"""Restoration: LQ images -> AR condition -> flow ODE -> DC-AE decode (SPEC §2 "Inference").

:func:`restore` is the plain function (float tensors in [0, 1]); :class:`Restorer` loads a model
directory and takes/returns uint8 ``[H, W, 3]`` arrays (the CLI, the MLflow pyfunc and the
evaluation step use it). Upstream inference: greedy AR, CFG 2.0 with the null condition = zeros,
30 Euler steps (SPEC §2). Our grid comes from :class:`prefrestore.model.flow.FlowSchedule` and ends at
sigma = 0 exactly (SPEC §6 trap 2).

Determinism: sample ``i`` of a batch starts from noise drawn on the CPU from seed ``seed + i``, so an
image restored alone with seed ``s + i`` equals the same image at position ``i`` of a batch restored
with seed ``s``, on any device (up to float rounding).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F

from prefrestore.core.config import Params, build, check_range
from prefrestore.model import samplers
from prefrestore.model.flow import FlowSchedule
from prefrestore.model.instructions import restoration_instruction
from prefrestore.model.model import PrefRestoreModel


@dataclasses.dataclass(frozen=True)
class RestoreConfig:
    """Params section ``restore``: inference settings (SPEC §2 "Inference (upstream)")."""

    steps: int  # ODE steps of the sampler
    cfg_scale: float  # classifier-free guidance scale; 1 = conditional only
    sampler: Literal["euler", "dpm2"]  # ODE solver (prefrestore.model.samplers)
    ar_greedy: bool  # greedy AR decoding (restoration); false: top-k / top-p sampling
    ar_top_p: float  # nucleus mass when ar_greedy is false
    ar_top_k: int  # top-k when ar_greedy is false (0 = off)

    def __post_init__(self) -> None:
        check_range("restore.steps", self.steps, 1, 1000)
        check_range("restore.cfg_scale", self.cfg_scale, 0.0, 50.0)
        check_range("restore.ar_top_p", self.ar_top_p, 0.0, 1.0)
        check_range("restore.ar_top_k", self.ar_top_k, 0, 1 << 20)


def noise_for(shape: Sequence[int], seed: int, device: torch.device | str, dtype: torch.dtype) -> torch.Tensor:
    """Initial noise ``[B, ...]``: row ``i`` from a CPU generator seeded ``seed + i``."""
    rows = [torch.randn(tuple(shape[1:]), generator=torch.Generator().manual_seed(seed + i)) for i in range(shape[0])]
    return torch.stack(rows).to(device=device, dtype=dtype)


@torch.no_grad()
def restore(model: PrefRestoreModel, images: torch.Tensor, instructions: Sequence[str] | None, *, seed: int,
            steps: int, cfg_scale: float, schedule: FlowSchedule, sampler: samplers.Method = "euler",
            ar_greedy: bool = True, ar_top_p: float = 1.0, ar_top_k: int = 0) -> torch.Tensor:
    """Restore ``images`` ``[B, 3, H, W]`` in [0, 1]; returns ``[B, 3, H, W]`` in [0, 1].

    ``instructions``: one per image, each with one ``<image>`` (``None``: the no-caption template).
    The model works at ``model.cfg.image_size``; other sizes are resized in and back out.
    """
    if images.ndim != 4 or images.shape[1] != 3:
        raise ValueError(f"expected images [B, 3, H, W], got {tuple(images.shape)}")
    if not torch.isfinite(images).all():
        raise ValueError("images contain NaN or inf")
    device = model.device
    lq = images.to(device=device, dtype=torch.float32).clamp(0, 1)
    ar_gen = None if ar_greedy else torch.Generator().manual_seed(seed)
    cond = model.condition(lq, instructions, greedy=ar_greedy, top_p=ar_top_p, top_k=ar_top_k, generator=ar_gen)
    null = cond.null()

    def cond_fn(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        return model.velocity(x, sigma, cond, schedule)

    def uncond_fn(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        return model.velocity(x, sigma, null, schedule)

    noise = noise_for(model.latent_shape(lq.shape[0]), seed, device, torch.float32)
    z0 = samplers.sample(samplers.with_cfg(cond_fn, uncond_fn, cfg_scale), noise,
                         schedule.sigmas(steps, device=device), method=sampler)
    out = model.decode(z0)
    if out.shape[-2:] != images.shape[-2:]:
        out = F.interpolate(out, size=images.shape[-2:], mode="bicubic", align_corners=False, antialias=True)
    return out.clamp(0, 1).to(images.device)


class Restorer:
    """A loaded model plus its inference settings; uint8 in, uint8 out."""

    def __init__(self, model: PrefRestoreModel, settings: RestoreConfig, schedule: FlowSchedule) -> None:
        self.model = model.eval()
        self.settings = settings
        self.schedule = schedule

    @property
    def resolution(self) -> int:
        return self.model.cfg.image_size

    @classmethod
    def from_pretrained(cls, model_dir: str | Path, device: str | torch.device | None = None,
                        torch_dtype: torch.dtype | None = None, params: Params | None = None) -> Restorer:
        """Load ``model_dir``; settings from ``params`` (sections ``restore``, ``flow``) or, when
        ``params`` is None, from the directory's ``inference.json`` (written by :func:`save_inference`)."""
        model = PrefRestoreModel.from_pretrained(model_dir, torch_dtype=torch_dtype)
        device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        model.to(device)
        if params is not None:
            return cls(model, params.section("restore", RestoreConfig), params.section("flow", FlowSchedule))
        settings, schedule = load_inference(Path(model_dir))
        return cls(model, settings, schedule)

    def restore_tensor(self, images: torch.Tensor, captions: Sequence[str] | None, seed: int,
                       steps: int | None = None) -> torch.Tensor:
        s = self.settings
        instructions = None if captions is None else [restoration_instruction(c) for c in captions]
        return restore(self.model, images, instructions, seed=seed, steps=steps or s.steps, cfg_scale=s.cfg_scale,
                       schedule=self.schedule, sampler=s.sampler, ar_greedy=s.ar_greedy, ar_top_p=s.ar_top_p,
                       ar_top_k=s.ar_top_k)

    def restore_uint8(self, images: Sequence[np.ndarray], captions: Sequence[str] | None, seed: int,
                      steps: int | None = None) -> list[np.ndarray]:
        """uint8 ``[H, W, 3]`` arrays (all the same size) -> restored uint8 arrays of that size."""
        if not images:
            return []
        if captions is not None and len(captions) != len(images):
            raise ValueError(f"{len(captions)} captions for {len(images)} images")
        shapes = {np.asarray(im).shape for im in images}
        if len(shapes) != 1 or (shape := shapes.pop())[-1] != 3 or len(shape) != 3:
            raise ValueError(f"restore_uint8 needs same-size uint8 [H, W, 3] images, got shapes {sorted(shapes)}")
        batch = torch.from_numpy(np.stack([np.asarray(im, dtype=np.uint8) for im in images])).permute(0, 3, 1, 2)
        out = self.restore_tensor(batch.float() / 255.0, captions, seed, steps)
        arr = (out.permute(0, 2, 3, 1).cpu().numpy() * 255.0).round().clip(0, 255).astype(np.uint8)
        return list(arr)


INFERENCE_FILE = "inference.json"


def save_inference(model_dir: Path, settings: RestoreConfig, schedule: FlowSchedule) -> None:
    """Write the inference settings next to the weights (they travel with the model, STYLE §4)."""
    from prefrestore.core.atomic import write_json
    from prefrestore.core.config import as_dict

    write_json(Path(model_dir) / INFERENCE_FILE, {"restore": as_dict(settings), "flow": as_dict(schedule)})


def load_inference(model_dir: Path) -> tuple[RestoreConfig, FlowSchedule]:
    import json

    path = model_dir / INFERENCE_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing: pass params= (sections restore, flow) or write it with "
                                "prefrestore.model.restore.save_inference")
    data: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    return build(RestoreConfig, data["restore"], f"{path}:restore"), build(FlowSchedule, data["flow"], f"{path}:flow")
