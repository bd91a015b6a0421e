"""The stage-1 validation curve (paper Fig. 3): held-out restorations scored against their HQ faces.

Every ``validate_every`` steps the current model restores a fixed held-out set (the ``test`` split of
the ingested faces, degraded once with ``degrade.benchmark_seed``, no self-reconstruction) with the
inference settings of the ``restore`` section, and we log:

- ``val/psnr_restored``, ``val/ssim_restored``: restored vs HQ;
- ``val/psnr_input``, ``val/ssim_input``: the degraded input vs HQ (the bar to beat);
- ``val/fid_hq``: FID(HQ) (Fig. 3) when the Inception weights are staged; otherwise
  ``val/fid_hq_available = 0`` and a warning say it is unavailable (never a made-up number);
- a grid ``LQ | restored | HQ`` (rows = images) saved as PNG and logged as an MLflow artifact.
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path

import numpy as np
import torch

from prefrestore.core import tracking
from prefrestore.core.images import load_rgb
from prefrestore.data.degrade.direct import DegradeConfig, degrade, params_for
from prefrestore.metrics.pixel import psnr, ssim
from prefrestore.model.flow import FlowSchedule
from prefrestore.model.restore import RestoreConfig, restore

log = logging.getLogger(__name__)

GRID_ROWS = 4  # images shown in each validation grid


@dataclasses.dataclass
class HeldOut:
    """Fixed held-out pairs: ``lq``/``hq`` float ``[N, 3, H, W]`` in [0, 1], ``ids`` their face ids."""

    ids: list[str]
    lq: torch.Tensor
    hq: torch.Tensor


def held_out(faces_dir: Path, cfg: DegradeConfig, limit: int) -> HeldOut:
    """The first ``limit`` faces of the ``test`` split, each degraded with ``cfg.benchmark_seed`` (no self-rec)."""
    import pandas as pd

    frame = pd.read_parquet(Path(faces_dir) / "manifest.parquet")
    frame = frame[frame["split"] == "test"].sort_values("id").head(limit)
    if frame.empty:
        raise ValueError(f"{faces_dir}: no 'test' split faces to validate on (data.test_fraction is 0?)")
    no_rec = dataclasses.replace(cfg, p_rec=0.0)
    lqs, hqs = [], []
    for sample_id, rel in zip(frame["id"], frame["path"], strict=True):
        hq = load_rgb(Path(faces_dir) / str(rel))
        lq = degrade(hq, params_for(str(sample_id), cfg.benchmark_seed, no_rec), no_rec)
        hqs.append(hq)
        lqs.append(lq)

    def to_t(arr: list[np.ndarray]) -> torch.Tensor:
        return torch.from_numpy(np.stack(arr)).permute(0, 3, 1, 2).float() / 255.0

    return HeldOut([str(i) for i in frame["id"]], to_t(lqs), to_t(hqs))


def fid_scorer(device: torch.device) -> object | None:
    """A streaming FID(HQ) scorer when its Inception weights are staged; None (logged as unavailable) otherwise."""
    from prefrestore.core.weights import status
    from prefrestore.metrics.base import BuildContext
    from prefrestore.metrics.iqa import INCEPTION_W, StreamingFID

    missing = [w.name for w in INCEPTION_W if status(w) != "present"]
    if missing:
        log.warning("validation: FID(HQ) unavailable (weights %s not staged; `prefrestore weights plan`)", missing)
        return None
    return StreamingFID(BuildContext(device, 512, "trainval70k", 512, 128), "hq")


@torch.no_grad()
def evaluate(model: torch.nn.Module, data: HeldOut, settings: RestoreConfig, schedule: FlowSchedule,
             seed: int, batch_size: int, grid_path: Path | None = None) -> dict[str, float]:
    """Restore ``data.lq`` and score it; writes a grid PNG to ``grid_path`` (and logs it) when given."""
    model.eval()
    device = model.device
    outs = []
    for start in range(0, len(data.ids), batch_size):
        lq = data.lq[start:start + batch_size].to(device)
        outs.append(restore(model, lq, None, seed=seed + start, steps=settings.steps, cfg_scale=settings.cfg_scale,
                            schedule=schedule, sampler=settings.sampler, ar_greedy=settings.ar_greedy,
                            ar_top_p=settings.ar_top_p, ar_top_k=settings.ar_top_k).cpu())
    restored = torch.cat(outs)
    metrics = {
        "val/psnr_restored": float(psnr(restored, data.hq).mean()),
        "val/ssim_restored": float(ssim(restored, data.hq).mean()),
        "val/psnr_input": float(psnr(data.lq, data.hq).mean()),
        "val/ssim_input": float(ssim(data.lq, data.hq).mean()),
    }
    fid = fid_scorer(device) if len(data.ids) >= 2 else None
    if fid is None:
        metrics["val/fid_hq_available"] = 0.0
    else:
        fid.update(restored, data.hq, None)
        metrics["val/fid_hq"] = fid.finish()
        metrics["val/fid_hq_available"] = 1.0
    if grid_path is not None:
        save_grid(grid_path, data.lq[:GRID_ROWS], restored[:GRID_ROWS], data.hq[:GRID_ROWS])
        tracking.log_artifact(grid_path, "validation")
    return metrics


def save_grid(path: Path, lq: torch.Tensor, restored: torch.Tensor, hq: torch.Tensor) -> None:
    """Rows of ``LQ | restored | HQ`` as one PNG (written atomically)."""
    from prefrestore.core.images import save_png

    rows = [torch.cat([a, b, c], dim=-1) for a, b, c in zip(lq, restored, hq, strict=True)]
    grid = torch.cat(rows, dim=-2).clamp(0, 1)
    arr = (grid.permute(1, 2, 0).numpy() * 255.0).round().astype(np.uint8)
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    save_png(path, np.ascontiguousarray(arr))

