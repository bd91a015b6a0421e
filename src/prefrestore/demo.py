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

from prefrestore import tracking
from prefrestore.config import PROJECT_ROOT, read_params_file

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


def summary_lines() -> list[str]:
    """What the run produced, from the stages' metrics files (missing stages are said so)."""
    lines = []
    for name in sorted(p.stem for p in METRICS.glob("*.json")) if METRICS.is_dir() else []:
        data = _read(name)
        numbers = {k: v for k, v in data.items() if isinstance(v, int | float) and not isinstance(v, bool)}
        shown = ", ".join(f"{k}={v:.4g}" for k, v in sorted(numbers.items())[:12])
        lines.append(f"  {name:<14} {shown}")
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
    print(f"\nOpen MLflow: mlflow ui --backend-store-uri {tracking.tracking_uri()}")
    register = _read("register")
    if register.get("restore_command"):
        print(f"Restore an image with the promoted model:\n  {register['restore_command']}")
    return rc


def _path_with_venv() -> str:
    """Stages call `prefrestore`; make sure this interpreter's scripts folder is on PATH."""
    return f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"
