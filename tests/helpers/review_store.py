"""The reviewer views (prefrestore.registry.review) on a small real MLflow store.

:func:`build_review_store` makes that store with the producers' own logging code: two pipeline
runs (``tracking.pipeline_run``) with nested step runs (``tracking.step_run``, the step's params
sections logged exactly as the CLI does) that log the producers' metric names and artifacts
(``validation.save_grid``, ``determinism.seed_spread`` / ``spread_boxplot``), and a registry filled
by the real ``register.run`` (stand-in restorer) with a champion and a rejected challenger.
tests/registry/test_review.py and test_notebook.py use the same store.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch

from helpers.standin import load_standin, make_model_dir, make_reports, metrics
from prefrestore.core import tracking
from prefrestore.core.atomic import write_json
from prefrestore.core.config import load
from prefrestore.metrics.determinism import seed_spread, spread_boxplot
from prefrestore.pipeline import steps
from prefrestore.registry import register
from prefrestore.train.heldout import save_grid

EXPERIMENT = "review-test"
BENCH = "celeba_test"
# The two arms of the caption ablation (Table VII): (p_txt, evaluate.use_captions, score bonus).
ARMS = {"without caption": (0.0, False, 0.0), "with caption": (0.95, True, 0.05)}


def _sections(params, step: str) -> dict:
    return {s: params.tree[s] for s in steps.get(step).sections if s in params.tree}


def _spread(noise: float):
    """A real Fig. 8 spread: 6 images x 4 seeds, scores whose seed noise is ``noise``."""
    gen = torch.Generator().manual_seed(int(noise * 1000))
    base = torch.rand(6, generator=gen)

    def restore(x: torch.Tensor, seed: int) -> torch.Tensor:
        g = torch.Generator().manual_seed(seed)
        return x + noise * torch.randn(x.shape, generator=g)

    def score(restored: torch.Tensor, idx: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"hpsv2": restored, "pickscore": 0.5 * restored + base[idx]}

    return seed_spread(score, restore, torch.zeros(6), [0, 1, 2, 3])


def _pipeline(params, root: Path, bonus: float) -> str:
    """One pipeline run with the step runs the review reads; returns the parent run id."""
    with tracking.pipeline_run(params.profile, "test") as parent:
        for stage, at in (("stage1_1", (10, 20)), ("stage1_2", (25, 50))):
            with tracking.step_run(stage, params, config=_sections(params, stage)):
                for i, step in enumerate(at):
                    tracking.log_metrics({"val/psnr_restored": 20.0 + i + bonus, "val/ssim_restored": 0.5 + i / 10,
                                          "val/psnr_input": 19.0, "val/ssim_input": 0.45,
                                          "val/fid_hq_available": 0.0}, step=step)
                    grid = root / stage / f"step-{step:08d}.png"
                    save_grid(grid, *(torch.rand(2, 3, 8, 8) for _ in range(3)))
                    tracking.log_artifact(grid, "validation")
        with tracking.step_run("stage2", params, config=_sections(params, "stage2")):
            for epoch in range(4):
                tracking.log_metrics({"heldout/reward_total": 1.0 + 0.1 * epoch + bonus, "heldout/psnr": 20.0,
                                      "heldout/ssim": 0.5}, step=epoch)
                if epoch:
                    tracking.log_metrics({"reward/total_mean": 1.0 + 0.1 * epoch, "reward/psnr_mean": 0.5,
                                          "reward/ssim_mean": 0.4 + 0.05 * epoch}, step=epoch)
            before, after = _spread(0.2), _spread(0.05)
            det = {"determinism/median_std_before": before.median["sum"],
                   "determinism/median_std_after": after.median["sum"]}
            for name in ("hpsv2", "pickscore"):
                det[f"determinism/{name}_median_std_before"] = before.median[name]
                det[f"determinism/{name}_median_std_after"] = after.median[name]
            tracking.log_metrics(det)
            write_json(root / "stage2" / "determinism.json", {"before": before.as_dict(), "after": after.as_dict()})
            spread_boxplot({"stage 1": before, "stage 2": after}, root / "stage2" / "determinism_boxplot.png")
            for name in ("determinism.json", "determinism_boxplot.png"):
                tracking.log_artifact(root / "stage2" / name, "determinism")
        for variant, model_dir, gain in (("fidelity", "models/stage1_2", 0.0), ("quality", "models/stage2", 1.0)):
            with tracking.step_run("evaluate", params, config=_sections(params, "evaluate")):
                flat = {f"{BENCH}/psnr": 21.0 + gain + bonus, f"{BENCH}/ssim": 0.6, f"{BENCH}/input/psnr": 19.0,
                        f"{BENCH}/clipscore_i": 0.7 + bonus, f"{BENCH}/clipscore_t": 0.25 + bonus,
                        f"{BENCH}/hpsv2": 20.0 + gain, f"{BENCH}/n_excluded": 0.0}
                tracking.log_metrics(flat)
                tracking.set_tags({"unavailable/lpips": "weights not staged", "unavailable/dreamsim": "no weights"})
                out = root / f"eval_{variant}"
                write_json(out / "metrics.json", {"model": model_dir, "benchmarks": {}})
                save_grid(out / BENCH / "grid.png", *(torch.rand(2, 3, 8, 8) for _ in range(3)))
                tracking.log_artifact(out, "evaluate")
                tracking.log_metrics({"n_benchmarks": 1.0})  # the CLI also logs the step's summary
        return parent.info.run_id


def build_review_store(root: Path) -> dict:
    """Build (once per ``root``) the store described in the module docstring; returns its description."""
    info_file = root / "store.json"
    if info_file.is_file():
        return json.loads(info_file.read_text())
    root.mkdir(parents=True, exist_ok=True)
    uri = f"sqlite:///{root / 'mlflow.db'}"
    old = {k: os.environ.get(k) for k in ("MLFLOW_TRACKING_URI", tracking.EXPERIMENT_ENV, tracking.PARENT_ENV)}
    os.environ.update({"MLFLOW_TRACKING_URI": uri, tracking.EXPERIMENT_ENV: EXPERIMENT})
    os.environ.pop(tracking.PARENT_ENV, None)
    try:
        tiny = load("tiny")
        runs = {}
        for arm, (p_txt, use_captions, bonus) in ARMS.items():
            params = tiny.with_overrides({"instructions.p_txt": p_txt, "evaluate.use_captions": use_captions})
            runs[arm] = _pipeline(params, root / arm.replace(" ", "_"), bonus)
        # The registry: a first round makes both champions; in the second the fidelity candidate
        # fails its gate (PSNR loss beyond -0.1 dB) and the quality candidate passes.
        with tracking.pipeline_run("tiny", "test"), tracking.step_run("register", tiny):
            for i, (fid, qual) in enumerate(((metrics(20.0, 0.5), metrics(19.0, 0.45)),
                                             (metrics(13.0, 0.5), metrics(19.5, 0.45)))):
                inputs = {"fidelity": make_model_dir(root / f"fid{i}", i),
                          "quality": make_model_dir(root / f"qual{i}", 100 + i),
                          "reports": make_reports(root / f"reports{i}", fid, qual)}
                register.run(tiny, inputs, root / f"register{i}", loader=load_standin)
    finally:
        import mlflow

        mlflow.set_tracking_uri(None)  # drop the global URI that register.run set; later tests use their own
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    info = {"uri": uri, "experiment": EXPERIMENT, "runs": runs,
            "models": dict(tiny.tree["register"]["models"])}
    write_json(info_file, info)
    return info
