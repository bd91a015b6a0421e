"""Stage 2's held-out monitoring (paper Fig. 9) and determinism analysis (Fig. 8; SPEC §3).

- :func:`heldout_eval`: mean reward terms, total, PSNR and SSIM to HQ over a few seeds (PSNR/SSIM
  watch for reward hacking, SPEC §6.8);
- :func:`determinism`: per-image std across seeds of every reward and of their weighted sum;
- :func:`write_grid`: LQ | stage 1 | current | HQ rows.

Every held-out row's noise is seeded by ``(seed, row)``, so before/after comparisons are paired.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from prefrestore.core.images import from_tensor, save_png
from prefrestore.metrics.determinism import SUM, SeedSpread, seed_spread
from prefrestore.metrics.pixel import psnr, ssim
from prefrestore.model.flow import FlowSchedule
from prefrestore.model.model import PrefRestoreModel
from prefrestore.model.restore import noise_for
from prefrestore.model.samplers import sample
from prefrestore.train.nft import Stage2Config
from prefrestore.train.rewards import RewardsConfig, Scorer, needs_hq, total_reward
from prefrestore.train.stage2_batch import Batch, decode, derive_seed, policy, score


@torch.no_grad()
def restore_heldout(model: PrefRestoreModel, batch: Batch, rows: torch.Tensor, seed: int, adapter: str | None,
                    cfg: Stage2Config, schedule: FlowSchedule) -> torch.Tensor:
    """Restore held-out rows with one sampling seed; noise of row ``i`` is seeded ``(seed, i)``."""
    fn = policy(model, batch, schedule, adapter, cfg.cfg_scale, cfg.mixed_precision)
    shape = model.latent_shape(1)[1:]
    noise = torch.stack([noise_for((1, *shape), derive_seed(seed, "heldout", int(i)), "cpu", torch.float32)[0]
                         for i in rows.tolist()]).to(model.device)
    g = rows.to(model.device)
    z = sample(lambda x, s: fn(x, s, g), noise, schedule.sigmas(cfg.sampler_steps, device=model.device),
               method=cfg.sampler)
    return decode(model, z, tuple(batch.hq.shape[-2:]), cfg.sample_batch)


def heldout_eval(model: PrefRestoreModel, batch: Batch, scorers: Mapping[str, Scorer], rcfg: RewardsConfig,
                 cfg: Stage2Config, schedule: FlowSchedule, seed: int, adapter: str | None
                 ) -> tuple[dict[str, float], torch.Tensor]:
    """Mean held-out reward terms, total, PSNR and SSIM over ``eval_seeds`` seeds (Fig. 9).

    Returns the metrics and the first seed's restorations (for the grids).
    """
    n = len(batch.ids)
    sums: dict[str, float] = {}
    first = None
    for s in range(cfg.eval_seeds):
        images = torch.cat([restore_heldout(model, batch, torch.arange(a, min(a + cfg.sample_batch, n)),
                                            seed + s, adapter, cfg, schedule)
                            for a in range(0, n, cfg.sample_batch)])
        first = images if first is None else first
        scores = score(scorers, images, batch, torch.arange(n), needs_hq(rcfg))
        terms = {f"heldout/{k}": float(v.mean()) for k, v in scores.items()}
        terms["heldout/reward_total"] = float(total_reward(scores, rcfg.weights).mean())
        terms["heldout/psnr"] = float(psnr(images, batch.hq).mean())  # reward-hacking monitors (SPEC §6.8)
        terms["heldout/ssim"] = float(ssim(images, batch.hq).mean())
        for k, v in terms.items():
            sums[k] = sums.get(k, 0.0) + v / cfg.eval_seeds
    assert first is not None
    return sums, first


def determinism(model: PrefRestoreModel, batch: Batch, scorers: Mapping[str, Scorer], rcfg: RewardsConfig,
                cfg: Stage2Config, schedule: FlowSchedule, seed: int, adapter: str | None) -> SeedSpread:
    """Fig. 8: per-image std over ``determinism_seeds`` seeds of each reward and their weighted sum."""
    index = torch.arange(len(batch.ids))  # conditions are cached, so the "images" are row indices

    def restore_fn(rows: torch.Tensor, s: int) -> torch.Tensor:
        return restore_heldout(model, batch, rows, s, adapter, cfg, schedule)

    def score_fn(images: torch.Tensor, rows: torch.Tensor) -> dict[str, torch.Tensor]:
        return score(scorers, images, batch, rows, needs_hq(rcfg))

    seeds = [derive_seed(seed, "determinism", i) % 2**31 for i in range(cfg.determinism_seeds)]
    return seed_spread(score_fn, restore_fn, index, seeds, weights=rcfg.active(), batch_size=cfg.sample_batch)


def write_grid(path: Path, batch: Batch, before: torch.Tensor, now: torch.Tensor, rows: int) -> Path:
    """A PNG with one row per held-out face: LQ | stage 1 (before) | current | HQ."""
    k = min(rows, len(batch.ids))
    cols = [batch.lq[:k], before[:k], now[:k], batch.hq[:k]]
    grid = torch.cat([torch.cat(list(c), dim=-1) for c in zip(*cols, strict=True)], dim=-2)  # [3, kH, 4W]
    save_png(path, from_tensor(grid)[0])
    return path


def spread_summary(spread: SeedSpread | None) -> dict[str, Any] | None:
    return None if spread is None else spread.as_dict()


def spread_from(data: Mapping[str, Any]) -> SeedSpread:
    std = {k: torch.tensor(v, dtype=torch.float64) for k, v in data["per_image_std"].items()}
    return SeedSpread(tuple(data["seeds"]), std, dict(data["median_std"]), dict(data["mean_score"]))


def spread_metrics(before: SeedSpread, after: SeedSpread) -> dict[str, float]:
    """Fig. 8 medians of the per-image std across seeds, before and after, as MLflow metrics."""
    det = {"determinism/median_std_before": before.median[SUM], "determinism/median_std_after": after.median[SUM]}
    for name in after.median:
        if name != SUM:
            det[f"determinism/{name}_median_std_before"] = before.median[name]
            det[f"determinism/{name}_median_std_after"] = after.median[name]
    return det


def restore_heldout_all(model: PrefRestoreModel, batch: Batch, cfg: Stage2Config, schedule: FlowSchedule,
                        seed: int, adapter: str | None) -> torch.Tensor:
    """Every held-out face restored with the first evaluation seed (grid rows)."""
    n = min(cfg.grid_samples, len(batch.ids))
    return restore_heldout(model, batch, torch.arange(n), seed, adapter, cfg, schedule)

