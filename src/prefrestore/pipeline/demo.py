"""``prefrestore demo``: the whole pipeline on the embedded default, through ``dvc repro``.

DVC is the local orchestrator; this driver only opens the MLflow parent run that every stage's
run nests under, runs ``dvc repro`` as a subprocess (the library never imports dvc), and prints a
summary read from the stages' metrics files (``reports/metrics/*.json``). With nothing changed
DVC skips every stage, so a re-run takes seconds and opens no new MLflow run.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

from prefrestore.core import tracking
from prefrestore.core.config import PROJECT_ROOT, read_params_file

METRICS = PROJECT_ROOT / "reports" / "metrics"


def _dvc() -> str:
    exe = shutil.which("dvc") or str(Path(sys.executable).with_name("dvc"))
    if not Path(exe).exists():
        raise SystemExit("dvc is not installed: run `make setup` (it installs the pipeline extra)")
    return exe


def _up_to_date(dvc: str) -> bool:
    out = subprocess.run([dvc, "status", "--quiet"], cwd=PROJECT_ROOT, capture_output=True, text=True)
    return out.returncode == 0


def _read(name: str) -> dict:
    path = METRICS / f"{name}.json"
    return json.loads(path.read_text()) if path.is_file() else {}


def _fmt(data: dict, key: str) -> str:
    value = data.get(key)
    return f"{value:.4g}" if isinstance(value, int | float) and not isinstance(value, bool) else "n/a"


def summary_lines() -> list[str]:
    """What the run produced, read from the stages' metrics files; a stage that has not run says n/a."""
    s12, s2, reg = _read("stage1_2"), _read("stage2"), _read("register")
    lines = [
        f"  stage 1 (fidelity), held-out: restored PSNR {_fmt(s12, 'val/psnr_restored')} / SSIM "
        f"{_fmt(s12, 'val/ssim_restored')} vs degraded input PSNR {_fmt(s12, 'val/psnr_input')} / SSIM "
        f"{_fmt(s12, 'val/ssim_input')} (restores: {s12.get('restores', 'n/a')})",
        f"  stage 2 (quality), held-out reward {_fmt(s2, 'heldout_reward_before')} -> "
        f"{_fmt(s2, 'heldout_reward_after')}; median per-image std over seeds {_fmt(s2, 'median_std_before')} -> "
        f"{_fmt(s2, 'median_std_after')}",
    ]
    for variant in ("fidelity", "quality"):
        if f"{variant}_version" in reg:
            lines.append(f"  registry: {variant} v{reg[f'{variant}_version']} promoted={reg.get(f'{variant}_promoted')} "
                         f"(champion v{reg.get(f'{variant}_champion')})")
    for name in ("eval_fidelity", "eval_quality"):
        ev = _read(name)
        shown = ", ".join(f"{k}={v:.4g}" for k, v in sorted(ev.items()) if "/" in k and isinstance(v, float))
        if shown:
            lines.append(f"  {name}: {shown}")
    return lines


def run(profile: str | None = None) -> int:
    profile = profile or read_params_file()["profile"]
    dvc = _dvc()
    start = time.perf_counter()
    env_profile = read_params_file()["profile"]
    if profile != env_profile:
        raise SystemExit(
            f"dvc repro runs params.yaml's active profile ('{env_profile}'); set `profile: {profile}` there "
            "(DVC then tracks the change) instead of passing a different one"
        )
    if _up_to_date(dvc):
        print("Pipeline is up to date (dvc status): nothing to run.")
        rc = 0
    else:
        with tracking.pipeline_run(profile, "dvc") as parent:
            print(f"MLflow parent run {parent.info.run_id} at {tracking.tracking_uri()}")
            env = {**os.environ, tracking.PARENT_ENV: parent.info.run_id, "PATH": _path_with_venv()}
            rc = subprocess.run([dvc, "repro"], cwd=PROJECT_ROOT, env=env).returncode
            tracking.log_metrics({"pipeline/wall_s": time.perf_counter() - start})
    print(f"\nPipeline ({profile}) finished in {time.perf_counter() - start:.0f} s with exit code {rc}.")
    print("Summary (reports/metrics/*.json):")
    print("\n".join(summary_lines()) or "  (no metrics yet)")
    if rc == 0:
        shared_faces_evaluation(profile)
    print(f"\nOpen MLflow: mlflow ui --backend-store-uri {tracking.tracking_uri()}")
    if _read("register"):
        print("Restore a face with the promoted model:\n"
              "  .venv/bin/prefrestore restore face.png --variant quality --out restored/")
    return rc


def shared_faces_evaluation(profile: str) -> None:
    """Evaluate both variants on ``../shared/data/faces`` when it is present (:mod:`prefrestore.pipeline.shared_faces`)."""
    from prefrestore.core.config import load
    from prefrestore.pipeline import shared_faces

    faces = shared_faces.faces_dir()
    if faces is None:
        print("Real faces (../shared/data/faces): not present, skipped.")
        return
    models = {v: PROJECT_ROOT / "models" / d for v, d in (("fidelity", "stage1_2"), ("quality", "stage2"))
              if (PROJECT_ROOT / "models" / d).is_dir()}
    if not models:
        print("Real faces: no trained model under models/ yet, skipped.")
        return
    work = shared_faces.work_dir()
    print(f"Real faces ({faces}): evaluating {', '.join(models)} (outputs in {work}, outside the project)")
    results = shared_faces.evaluate_variants(models, load(profile), faces, work)
    print("\n".join(shared_faces.summary_lines(results)))


def _path_with_venv() -> str:
    """Stages call `prefrestore`; make sure this interpreter's scripts folder is on PATH."""
    return f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"
