"""``PrefRestoreModel``: TA-Tok -> Qwen3 AR -> connectors -> SANA + DC-AE (SPEC §2; paper Fig. 2a).

Components (attribute names are the parameter-name prefixes used by the stage groups):
``tokenizer`` (frozen TA-Tok), ``ar`` (Qwen3 + text tokenizer), ``diffusion_connector``,
``vae_connector``, ``transformer`` (SANA), ``vae`` (DC-AE). One VAE only: stage 1.2's frozen
reference encoder (Eq. 11) is :meth:`PrefRestoreModel.frozen_encoder_copy`, never saved.

Directory layout (``save_pretrained``/``from_pretrained``, offline)::

    config.json          {"format": "prefrestore-model", "version": 1, "model": <ModelConfig>}
    tokenizer/           vision/ (SigLIP config.json + safetensors), quantizer.safetensors, config.json
    ar/                  Qwen3 config.json + model.safetensors + text tokenizer files
    connectors/          config.json, diffusion_connector.safetensors, vae_connector.safetensors
    transformer/         SANA config.json + safetensors
    vae/                 DC-AE config.json + safetensors
"""

from __future__ import annotations

import copy
import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Literal

import torch
from diffusers import AutoencoderDC, SanaTransformer2DModel
from safetensors import SafetensorError, safe_open
from torch import nn
from torch.nn import functional as F

from prefrestore.core.atomic import atomic_path, write_json
from prefrestore.core.errors import InputError
from prefrestore.model.ar import ArIntegrator
from prefrestore.model.config import ModelConfig
from prefrestore.model.connectors import Connector, load_connector, save_connectors, sincos_2d
from prefrestore.model.flow import FlowSchedule
from prefrestore.model.generator import (
    Condition,
    build_transformer,
    build_vae,
    decode_latent,
    encode_latent,
    velocity,
)
from prefrestore.model.instructions import NO_CAPTION_TEMPLATE
from prefrestore.model.tokenizer import SemanticTokenizer

Stage = Literal["1.1", "1.2", "2"]
FORMAT, VERSION = "prefrestore-model", 1
# Model config keys added after version 1 directories were written, with the value those
# directories were built with. Neither changes a loaded model (an init, and the tiny profile's
# plain codebook), so a directory saved before them loads as it was trained.
ADDED_KEYS: dict[tuple[str, ...], object] = {("connector_norm_init",): 1.0, ("tokenizer", "codebook_l2_norm"): False}


def _with_added_keys(model: dict) -> dict:
    model = {k: dict(v) if isinstance(v, dict) else v for k, v in model.items()}
    for path, value in ADDED_KEYS.items():
        node = model
        for key in path[:-1]:
            node = node.setdefault(key, {})
        node.setdefault(path[-1], value)
    return model

# Paper Table I / SPEC §3: which parameters each stage trains, by name prefix.
STAGE_PREFIXES: dict[str, tuple[str, ...]] = {
    # 1.1 semantic-to-diffusion: Qwen3 (embeddings, lm_head), diffusion connector, SANA caption layers
    "1.1": ("ar.lm.", "diffusion_connector.", "transformer.caption_projection.", "transformer.caption_norm."),
    # 1.2 texture-to-diffusion: SANA blocks, vae_connector, VAE encoder
    "1.2": ("transformer.transformer_blocks.", "vae_connector.", "vae.encoder."),
}
# With ``lq_condition: concat_channels`` z_low enters through the extra input channels of SANA's
# ``patch_embed`` instead of through ``vae_connector``: that projection is the conditioning path, so
# stage 1.2 trains it (on tiny, +0.2 dB held-out PSNR; benchmarks/RESULTS.md).
CONCAT_CHANNELS_1_2 = ("transformer.patch_embed.",)
LORA_MARK = "lora_"  # stage 2: only LoRA adapter weights (peft names contain lora_A / lora_B)
DEFAULT_INSTRUCTION = NO_CAPTION_TEMPLATE  # Appendix F-A, no caption


class PrefRestoreModel(nn.Module):
    def __init__(self, cfg: ModelConfig, tokenizer: SemanticTokenizer, ar: ArIntegrator,
                 diffusion_connector: Connector, vae_connector: Connector,
                 transformer: SanaTransformer2DModel, vae: AutoencoderDC, system_message: str) -> None:
        super().__init__()
        self.cfg = cfg
        self.system_message = system_message  # the AR chat system turn (params ``instructions``); "" = none
        self.tokenizer = tokenizer
        self.ar = ar
        self.diffusion_connector = diffusion_connector
        self.vae_connector = vae_connector
        self.transformer = transformer
        self.vae = vae
        if transformer.config.caption_channels != cfg.generator.caption_channels:
            raise ValueError("SANA caption_channels differs from the config")

    # ---------------------------------------------------------------- construction
    @classmethod
    def build(cls, cfg: ModelConfig, system_message: str) -> PrefRestoreModel:
        """Random init from shapes (tiny profile, tests, meta-device parameter counts).

        ``system_message``: ``instructions.system_message`` of the profile (saved with the model)."""
        tok = SemanticTokenizer(cfg.tokenizer)
        ar = ArIntegrator.build(cfg.ar, cfg.tokenizer.codebook_size, cfg.num_image_tokens)
        width = cfg.generator.caption_channels
        return cls(
            cfg, tok, ar,
            Connector(cfg.ar.hidden_size, width, cfg.connector_norm_init),
            Connector(cfg.generator.inner_dim, width, cfg.connector_norm_init),
            build_transformer(cfg.generator, cfg.vae.latent_channels, cfg.latent_size, cfg.extra_in_channels),
            build_vae(cfg.vae),
            system_message,
        )

    def save_pretrained(self, path: str | Path) -> None:
        """Write the HF-style directory atomically (a reader sees the old model or the new one)."""
        with atomic_path(Path(path)) as tmp:
            tmp.mkdir()
            self.tokenizer.save_pretrained(tmp / "tokenizer")
            self.ar.save_pretrained(tmp / "ar")
            save_connectors(tmp / "connectors", {"diffusion_connector": self.diffusion_connector,
                                                 "vae_connector": self.vae_connector})
            self.transformer.save_pretrained(tmp / "transformer", safe_serialization=True)
            self.vae.save_pretrained(tmp / "vae", safe_serialization=True)
            write_json(tmp / "config.json", {"format": FORMAT, "version": VERSION, "model": self.cfg.to_dict(),
                                            "system_message": self.system_message})

    @classmethod
    def from_pretrained(cls, path: str | Path, torch_dtype: torch.dtype | None = None) -> PrefRestoreModel:
        """Load a directory written by :meth:`save_pretrained` (offline, safetensors only)."""
        path = Path(path)
        top = path / "config.json"
        if not top.is_file():
            raise FileNotFoundError(f"{path} is not a Pref-Restore model directory (no config.json)")
        meta = json.loads(top.read_text(encoding="utf-8"))
        if meta.get("format") != FORMAT or meta.get("version") != VERSION:
            raise ValueError(f"{top}: expected format {FORMAT} v{VERSION}, got {meta.get('format')} v{meta.get('version')}")
        cfg = ModelConfig.from_dict(_with_added_keys(meta["model"]))
        width = cfg.generator.caption_channels
        model = cls(
            cfg,
            _part(path / "tokenizer", lambda p: SemanticTokenizer.from_pretrained(p, cfg.tokenizer)),
            _part(path / "ar", lambda p: ArIntegrator.from_pretrained(p, cfg.ar, cfg.tokenizer.codebook_size,
                                                                    cfg.num_image_tokens)),
            _part(path / "connectors", lambda p: load_connector(p, "diffusion_connector", cfg.ar.hidden_size, width)),
            _part(path / "connectors", lambda p: load_connector(p, "vae_connector", cfg.generator.inner_dim, width)),
            _part(path / "transformer", lambda p: SanaTransformer2DModel.from_pretrained(p, local_files_only=True)),
            _part(path / "vae", lambda p: AutoencoderDC.from_pretrained(p, local_files_only=True)),
            meta["system_message"],
        )
        if torch_dtype is not None:
            model.to(torch_dtype)
        return model.eval()

    @property
    def device(self) -> torch.device:
        return self.diffusion_connector[0].weight.device

    # ---------------------------------------------------------------- semantic stream (Eq. 8)
    def lq_codes(self, lq: torch.Tensor) -> torch.Tensor:
        """TA-Tok ids of the LQ images ``[B, N]`` (frozen, deterministic)."""
        return self.tokenizer(lq)

    def prompts(self, instructions: Sequence[str] | None, lq_codes: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Left-padded prompt ids and mask; ``None`` means the no-caption instruction for every image."""
        if instructions is None:
            instructions = [DEFAULT_INSTRUCTION] * lq_codes.shape[0]
        return self.ar.batch_prompts(list(instructions), lq_codes, self.system_message)

    def ar_forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                   hq_codes: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Teacher forcing: ``(CE over HQ codes (Eq. 10 L_CE), hidden [B, N+1, H])``."""
        return self.ar.forward_train(input_ids, attention_mask, hq_codes)

    def generate(self, lq: torch.Tensor, instructions: Sequence[str] | None, greedy: bool = True,
                 top_p: float = 1.0, top_k: int = 0, temperature: float = 1.0,
                 generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """LQ images -> AR-generated HQ codes ``[B, N]`` and hidden states ``[B, N+1, H]``."""
        input_ids, mask = self.prompts(instructions, self.lq_codes(lq))
        return self.ar.generate(input_ids, mask, greedy=greedy, top_p=top_p, top_k=top_k,
                                temperature=temperature, generator=generator)

    # ---------------------------------------------------------------- conditions
    def zlow_tokens(self, lq_latent: torch.Tensor) -> torch.Tensor:
        """z_low ``[B, c, h, w]`` -> SANA ``patch_embed`` -> ``vae_connector`` (+ sincos) ``[B, h*w, C]``."""
        dtype = self.transformer.dtype
        tokens = self.transformer.patch_embed(lq_latent.to(dtype))  # [B, h*w, D_sana]
        tokens = self.vae_connector(tokens.to(self.vae_connector[0].weight.dtype))
        if self.cfg.zlow_position == "sincos2d":
            h, w = lq_latent.shape[-2:]
            tokens = tokens + sincos_2d(h, w, tokens.shape[-1], tokens.device, tokens.dtype)[None]
        return tokens

    def cond_from_hidden(self, hidden: torch.Tensor, lq: torch.Tensor | None,
                         lq_latent: torch.Tensor | None = None) -> Condition:
        """AR hidden ``[B, N+1, H]`` (+ LQ images) -> the SANA condition (paper: ``[B, 986, 2304]``).

        ``lq_latent`` (``self.encode(lq)``) may be passed to reuse it; it is computed from ``lq``
        otherwise. With ``lq=None`` and ``lq_latent=None`` only the AR tokens are returned (stage 1.1).
        """
        tokens = self.diffusion_connector(hidden.to(self.diffusion_connector[0].weight.dtype))
        if lq_latent is None and lq is not None:
            lq_latent = self.encode(lq)
        if lq_latent is None:
            return Condition(tokens)
        if self.cfg.lq_condition in ("concat", "concat_channels"):
            return Condition(tokens, lq_latent)
        return Condition(torch.cat([tokens, self.zlow_tokens(lq_latent)], dim=1))

    @torch.no_grad()
    def condition(self, lq: torch.Tensor, instructions: Sequence[str] | None, greedy: bool = True,
                  top_p: float = 1.0, top_k: int = 0, temperature: float = 1.0,
                  generator: torch.Generator | None = None) -> Condition:
        """Inference condition: tokenize LQ -> AR generate -> connector, + z_low (SPEC §2)."""
        _, hidden = self.generate(lq, instructions, greedy, top_p, top_k, temperature, generator)
        return self.cond_from_hidden(hidden, lq)

    # ---------------------------------------------------------------- generator (Eq. 9)
    def _to_vae_size(self, images: torch.Tensor) -> torch.Tensor:
        size = self.cfg.image_size
        if images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"expected images [B, 3, H, W], got {tuple(images.shape)}")
        if images.shape[-2:] == (size, size):
            return images
        return F.interpolate(images.float(), size=(size, size), mode="bilinear", align_corners=False, antialias=True)

    def encode(self, images: torch.Tensor, encoder: nn.Module | None = None) -> torch.Tensor:
        """Images in [0, 1] -> ``z = (E(x) - shift) * scale`` (``encoder``: e.g. the frozen copy)."""
        return encode_latent(encoder or self.vae.encoder, self._to_vae_size(images), self.cfg.vae)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Latents -> images in [0, 1]."""
        return decode_latent(self.vae.decoder, z, self.cfg.vae)

    def frozen_encoder_copy(self) -> nn.Module:
        """A frozen copy of the current VAE encoder for Eq. 11's ``E(x)`` target (not a submodule, not saved)."""
        enc = copy.deepcopy(self.vae.encoder).eval()
        enc.requires_grad_(False)
        return enc

    def velocity(self, x_t: torch.Tensor, sigma: torch.Tensor, cond: Condition,
                 schedule: FlowSchedule) -> torch.Tensor:
        """``v_theta(x_t, sigma, c)`` (Eq. 9); ``sigma`` ``[B]``, timestep = ``schedule.timestep(sigma)``."""
        return velocity(self.transformer, x_t, schedule.timestep(sigma), cond)

    def latent_shape(self, batch: int) -> tuple[int, int, int, int]:
        s = self.cfg.latent_size
        return (batch, self.cfg.vae.latent_channels, s, s)

    # ---------------------------------------------------------------- stage parameter groups
    def trainable_parameter_names(self, stage: Stage) -> list[str]:
        """Names trained in ``stage`` (paper Table I / SPEC §3); the TA-Tok tokenizer is never trained."""
        names = [n for n, _ in self.named_parameters()]
        if stage == "2":
            picked = [n for n in names if LORA_MARK in n]
            if not picked:
                raise ValueError("stage 2 trains LoRA only, but the model has no LoRA adapters yet")
            return picked
        if stage not in STAGE_PREFIXES:
            raise ValueError(f"unknown stage '{stage}'; use 1.1, 1.2 or 2")
        prefixes = STAGE_PREFIXES[stage]
        if stage == "1.2" and self.cfg.lq_condition == "concat_channels":
            prefixes = prefixes + CONCAT_CHANNELS_1_2
        return [n for n in names if n.startswith(prefixes) and LORA_MARK not in n]

    def freeze_for(self, stage: Stage) -> list[str]:
        """Set ``requires_grad`` for ``stage`` (only its group trains) and return the trainable names."""
        keep = set(self.trainable_parameter_names(stage))
        for name, param in self.named_parameters():
            param.requires_grad_(name in keep)
        return sorted(keep)

    def trainable_parameters(self, stage: Stage) -> list[nn.Parameter]:
        keep = set(self.trainable_parameter_names(stage))
        return [p for n, p in self.named_parameters() if n in keep]


def _part(folder: Path, load: Callable[[Path], Any]) -> Any:
    """Load one component folder; a missing, truncated or corrupt weight file is an
    :class:`~prefrestore.core.errors.InputError` naming that file, never a library traceback."""
    if not folder.is_dir():
        raise InputError(f"{folder}: missing component folder of a Pref-Restore model directory")
    try:
        return load(folder)
    except (OSError, SafetensorError, RuntimeError) as exc:
        for file in sorted(folder.rglob("*.safetensors")):
            try:
                with safe_open(str(file), framework="pt") as fh:
                    fh.keys()
            except (OSError, SafetensorError) as bad:
                raise InputError(f"{file}: not a readable safetensors file ({bad})") from exc
        raise InputError(f"{folder}: cannot load this component ({' '.join(str(exc).split())})") from exc
