"""Stage 2's data and policies (paper Sec. IV-C.2; SPEC §3): faces with their cached conditions,
the velocity of each policy (current, old, stage 1), decoding and reward scoring.

Shared by the training loop (:mod:`prefrestore.train.stage2`) and its held-out monitoring
(:mod:`prefrestore.train.stage2_heldout`).
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Mapping, Sequence

import torch
import torch.nn.functional as F

from prefrestore.data.degrade.on_the_fly import OnTheFlyPairs
from prefrestore.model import lora
from prefrestore.model.flow import FlowSchedule
from prefrestore.model.generator import Condition
from prefrestore.model.instructions import rollout_instruction
from prefrestore.model.model import PrefRestoreModel
from prefrestore.train.rewards import Scorer, score_all


def derive_seed(seed: int, *parts: object) -> int:
    """A 63-bit seed from ``seed`` and labels (e.g. ``("epoch", 3)``); stable across runs and machines."""
    h = hashlib.sha256(repr((seed, *parts)).encode()).digest()
    return int.from_bytes(h[:8], "little") & (2**63 - 1)


@dataclasses.dataclass
class Batch:
    """Faces with their LQ/HQ images, captions and cached conditions (``cond`` on the model's device)."""

    ids: list[str]
    lq: torch.Tensor  # [N, 3, H, W] in [0, 1], CPU
    hq: torch.Tensor  # [N, 3, H, W] in [0, 1], CPU
    captions: list[str]
    cond: Condition

    def select(self, group: torch.Tensor) -> Condition:
        """The cached conditions of rows ``group`` ``[B]`` (long)."""
        g = group.to(self.cond.tokens.device)
        lq = None if self.cond.lq_latent is None else self.cond.lq_latent[g]
        return Condition(self.cond.tokens[g], lq)


@torch.no_grad()
def conditions(model: PrefRestoreModel, lq: torch.Tensor, chunk: int) -> Condition:
    """The AR + z_low condition of every LQ image, computed once (greedy, fixed rollout prompt; SPEC §3)."""
    parts = []
    for start in range(0, lq.shape[0], chunk):
        x = lq[start:start + chunk].to(model.device)
        parts.append(model.condition(x, [rollout_instruction()] * x.shape[0], greedy=True))
    lq_latent = None if parts[0].lq_latent is None else torch.cat([p.lq_latent for p in parts])
    return Condition(torch.cat([p.tokens for p in parts]), lq_latent)


def make_batch(model: PrefRestoreModel, data: OnTheFlyPairs, indices: Sequence[int], captions: Mapping[str, str],
               chunk: int) -> Batch:
    items = [data[i] for i in indices]
    ids = [it["id"] for it in items]
    lq = torch.stack([it["lq"] for it in items])
    hq = torch.stack([it["hq"] for it in items])
    return Batch(ids, lq, hq, [captions.get(i, "") for i in ids], conditions(model, lq, chunk))


def autocast(mixed_precision: str, device: torch.device) -> torch.autocast:
    """bf16 autocast when ``mixed_precision == "bf16"`` on a CUDA device with bf16; else a no-op,
    so CPU runs stay fp32 and bit-for-bit what they were."""
    on = mixed_precision == "bf16" and device.type == "cuda" and torch.cuda.is_bf16_supported()
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=on)


def policy(model: PrefRestoreModel, batch: Batch, schedule: FlowSchedule, adapter: str | None,
           cfg_scale: float = 1.0, mixed_precision: str = "no"):
    """``fn(x, sigma, group) -> v`` of one policy: ``lora.CURRENT``, ``lora.OLD`` or ``None`` (stage 1).

    With ``cfg_scale != 1`` (sampling only) ``v = v_null + s (v_cond - v_null)``, null = zeros (SPEC §2).
    ``mixed_precision="bf16"`` runs the forward under :func:`autocast`; ``v`` is returned in fp32
    either way, so the samplers and the NFT loss do their arithmetic in fp32.
    """

    def fn(x: torch.Tensor, sigma: torch.Tensor, group: torch.Tensor) -> torch.Tensor:
        cond = batch.select(group)
        with lora.use_policy(model.transformer, adapter):
            with autocast(mixed_precision, x.device):
                v = model.velocity(x, sigma, cond, schedule).float()
                v_null = model.velocity(x, sigma, cond.null(), schedule).float() if cfg_scale != 1.0 else None
            if v_null is not None:  # the guidance arithmetic in fp32
                v = v_null + cfg_scale * (v - v_null)
        return v

    return fn


@torch.no_grad()
def decode(model: PrefRestoreModel, z: torch.Tensor, size: tuple[int, int], chunk: int) -> torch.Tensor:
    """Latents -> images ``[N, 3, *size]`` in [0, 1] on the CPU (resized to the HQ size when needed)."""
    outs = []
    for start in range(0, z.shape[0], chunk):
        img = model.decode(z[start:start + chunk])
        if img.shape[-2:] != size:
            img = F.interpolate(img, size=size, mode="bicubic", align_corners=False, antialias=True).clamp(0, 1)
        outs.append(img.float().cpu())
    return torch.cat(outs)


def score(scorers: Mapping[str, Scorer], images: torch.Tensor, batch: Batch, group: torch.Tensor,
          hq_needed: bool) -> dict[str, torch.Tensor]:
    """Every active reward of ``images`` (rows belong to ``batch`` rows ``group``)."""
    g = group.cpu()
    hq = batch.hq[g] if hq_needed else None
    return score_all(scorers, images, hq, [batch.captions[i] for i in g.tolist()])


