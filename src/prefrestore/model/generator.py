"""The diffusion generator: SANA transformer + DC-AE, latents, velocity, z_low (SPEC §2; Eq. 9).

- Latents: ``z = (E(x) - shift) * scale`` with ``x`` in [-1, 1]; decoding inverts it.
- Velocity: ``v = SANA(x_t, encoder_hidden_states=cond, timestep=schedule.timestep(sigma))``,
  where ``x_t = (1 - sigma) z + sigma eps`` and the target is ``eps - z`` (:mod:`prefrestore.model.flow`).
  The SANA pipeline feeds ``sigma * 1000`` (the FlowMatch scheduler's timesteps); the factor lives in
  the ``flow`` section (``num_train_timesteps``).
- z_low (stage 1.2): the LQ latent through SANA's own frozen ``patch_embed`` -> ``vae_connector``
  (+ optional 2-D sincos) -> extra cross-attention tokens; or (``lq_condition: concat``) the LQ latent
  concatenated to the noisy latent along the **width** axis, as in BLIP3o-NEXT's edit branch, so
  SANA's ``in_channels`` (and its pretrained ``patch_embed``) stay unchanged; the right half of the
  output is discarded; or (``lq_condition: concat_channels``) concatenated along the **channel**
  axis, spatially aligned with the noisy latent (SR3 / InstructPix2Pix style; SANA's ``in_channels``
  doubles, so a pretrained ``patch_embed`` needs its extra input channels zero-initialised).
  Width concatenation cannot align LQ and output positions in SANA, which has no position
  embedding and sees the two halves only through global linear attention; on the tiny profile
  (``benchmarks/RESULTS.md``) only the channel concatenation restored.
"""

from __future__ import annotations

import dataclasses

import torch
from diffusers import AutoencoderDC, SanaTransformer2DModel

from prefrestore.model.config import GeneratorConfig, VaeConfig


def build_transformer(cfg: GeneratorConfig, latent_channels: int, latent_size: int,
                      extra_in_channels: int) -> SanaTransformer2DModel:
    """Random-init SANA with the given shapes; no position embedding (``interpolation_scale=None``).

    ``extra_in_channels``: input channels beyond the latent's (the LQ latent for channel concat)."""
    return SanaTransformer2DModel(
        in_channels=latent_channels + extra_in_channels,
        out_channels=latent_channels,
        num_attention_heads=cfg.num_heads,
        attention_head_dim=cfg.head_dim,
        num_layers=cfg.num_layers,
        num_cross_attention_heads=cfg.cross_heads,
        cross_attention_head_dim=cfg.cross_head_dim,
        cross_attention_dim=cfg.inner_dim,
        caption_channels=cfg.caption_channels,
        mlp_ratio=cfg.mlp_ratio,
        sample_size=latent_size,
        patch_size=1,
        interpolation_scale=None,
        qk_norm=None if cfg.qk_norm == "none" else cfg.qk_norm,
        timestep_scale=cfg.timestep_scale,
    )


def build_vae(cfg: VaeConfig) -> AutoencoderDC:
    """Random-init DC-AE with the given shapes (paper: f32c32)."""
    return AutoencoderDC(
        in_channels=3,
        latent_channels=cfg.latent_channels,
        attention_head_dim=cfg.attention_head_dim,
        encoder_block_types=tuple(cfg.block_types),
        decoder_block_types=tuple(cfg.block_types),
        encoder_block_out_channels=tuple(cfg.block_out_channels),
        decoder_block_out_channels=tuple(cfg.block_out_channels),
        encoder_layers_per_block=tuple(cfg.encoder_layers_per_block),
        decoder_layers_per_block=tuple(cfg.decoder_layers_per_block),
        encoder_qkv_multiscales=tuple(tuple(m) for m in cfg.qkv_multiscales),
        decoder_qkv_multiscales=tuple(tuple(m) for m in cfg.qkv_multiscales),
        upsample_block_type=cfg.upsample_block_type,
        downsample_block_type=cfg.downsample_block_type,
        scaling_factor=cfg.scaling_factor,
    )


def encode_latent(encoder: torch.nn.Module, images: torch.Tensor, cfg: VaeConfig) -> torch.Tensor:
    """``[B, 3, H, W]`` in [0, 1] -> ``z = (E(2x - 1) - shift) * scale`` ``[B, c, H/f, W/f]``."""
    dtype = next(encoder.parameters()).dtype
    raw = encoder(images.to(dtype) * 2.0 - 1.0)
    return (raw - cfg.shift_factor) * cfg.scaling_factor


def decode_latent(decoder: torch.nn.Module, z: torch.Tensor, cfg: VaeConfig) -> torch.Tensor:
    """Inverse of :func:`encode_latent`: latent -> images in [0, 1] (clamped)."""
    dtype = next(decoder.parameters()).dtype
    x = decoder((z / cfg.scaling_factor + cfg.shift_factor).to(dtype))
    return ((x.float() + 1.0) / 2.0).clamp(0.0, 1.0)


@dataclasses.dataclass
class Condition:
    """What SANA is conditioned on: cross-attention ``tokens`` ``[B, L, C]`` and, for
    ``lq_condition: concat``, the LQ latent ``[B, c, h, w]``. The null condition is all zeros."""

    tokens: torch.Tensor
    lq_latent: torch.Tensor | None = None

    @property
    def batch(self) -> int:
        return self.tokens.shape[0]

    def null(self) -> Condition:
        """The CFG null condition: zeros of the same shapes (SPEC §2)."""
        lq = None if self.lq_latent is None else torch.zeros_like(self.lq_latent)
        return Condition(torch.zeros_like(self.tokens), lq)

    def drop(self, p: float, generator: torch.Generator | None = None) -> Condition:
        """Zero each sample's whole condition with probability ``p`` (CFG training dropout)."""
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"condition dropout p={p} outside [0, 1]")
        if p == 0.0:
            return self
        draw = torch.rand(self.batch, generator=generator, device=generator.device if generator else "cpu")
        keep = (draw >= p).to(self.tokens.device)
        return self._scaled(keep)

    def _scaled(self, keep: torch.Tensor) -> Condition:
        t = self.tokens * keep.to(self.tokens.dtype).reshape(-1, 1, 1)
        lq = None if self.lq_latent is None else self.lq_latent * keep.to(self.lq_latent.dtype).reshape(-1, 1, 1, 1)
        return Condition(t, lq)

    def repeat_interleave(self, k: int) -> Condition:
        """Each sample's condition ``k`` times in a row (K rollouts per condition)."""
        lq = None if self.lq_latent is None else self.lq_latent.repeat_interleave(k, 0)
        return Condition(self.tokens.repeat_interleave(k, 0), lq)

    def detach(self) -> Condition:
        return Condition(self.tokens.detach(), None if self.lq_latent is None else self.lq_latent.detach())


def velocity(transformer: SanaTransformer2DModel, x_t: torch.Tensor, timestep: torch.Tensor,
             cond: Condition) -> torch.Tensor:
    """SANA's velocity for noisy latents ``x_t`` ``[B, c, h, w]``; ``timestep`` ``[B]`` (= sigma * 1000)."""
    if cond.batch != x_t.shape[0]:
        raise ValueError(f"condition batch {cond.batch} != latent batch {x_t.shape[0]}")
    dtype = transformer.dtype
    x = x_t.to(dtype)
    width = x.shape[-1]
    extra = transformer.config.in_channels - transformer.config.out_channels
    if extra:  # channel concat: [x_t ; z_lq], zeros where there is no LQ latent (stages 0 / 1.1, null)
        lq = torch.zeros_like(x) if cond.lq_latent is None else cond.lq_latent.to(dtype)
        x = torch.cat([x, lq], dim=1)
    elif cond.lq_latent is not None:  # width concat: [x_t | z_lq]
        x = torch.cat([x, cond.lq_latent.to(dtype)], dim=-1)
    out = transformer(x, encoder_hidden_states=cond.tokens.to(dtype), timestep=timestep.to(dtype),
                      return_dict=False)[0]
    return out[..., :width].to(x_t.dtype)
