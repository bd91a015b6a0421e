"""Run a ``prefrestore`` step under ``torchrun`` on CPU (gloo) and read back what each rank did.

The worker is ``tests/helpers/torchrun_worker.py``; :func:`run_pair` starts it with ``torchrun
--standalone --nproc_per_node 2`` in the background and, meanwhile, runs the one-process reference in
the test's own process with the same recorders (the box has 2 cores).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file

WORKER = Path(__file__).resolve().parent / "torchrun_worker.py"


def step_argv(step: str, root: Path, inputs: dict[str, Path], sets: dict[str, object]) -> list[str]:
    """``prefrestore <step>`` arguments writing ``root/out`` and ``root/summary.json``."""
    argv = [step, "--profile", "tiny", "--out", str(root / "out"), "--summary", str(root / "summary.json")]
    argv += [a for name, path in inputs.items() for a in ("--in", f"{name}={path}")]
    return argv + [a for key, value in sets.items() for a in ("--set", f"{key}={json.dumps(value)}")]


def start(root: Path, step: str, inputs: dict[str, Path], sets: dict[str, object], reseed: bool,
          nproc: int = 2) -> subprocess.Popen:
    """``torchrun --nproc_per_node nproc`` of the worker into ``root`` (MLflow store ``root/mlflow.db``)."""
    root.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MLFLOW_TRACKING_URI": f"sqlite:///{root / 'mlflow.db'}"}
    env.pop("PREFRESTORE_PARENT_RUN_ID", None)
    with open(root / "log.txt", "w") as log:
        return subprocess.Popen([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node",
                                 str(nproc), str(WORKER), str(root / "report"), *(["--reseed"] if reseed else []),
                                 "--", *step_argv(step, root, inputs, sets)],
                                stdout=log, stderr=subprocess.STDOUT, env=env)


def wait(proc: subprocess.Popen, root: Path, timeout: float = 600) -> dict[str, Any]:
    """Wait for :func:`start`'s run; its summary (an assertion error with the log's tail if it failed)."""
    try:
        code = proc.wait(timeout=timeout)
    finally:
        proc.kill()
    assert code == 0, f"torchrun exited with {code}:\n{(root / 'log.txt').read_text(errors='replace')[-4000:]}"
    return json.loads((root / "summary.json").read_text())


def run_pair(tmp_path: Path, step: str, inputs: dict[str, Path], sets: dict[str, object], monkeypatch: Any,
             reseed: bool = False, sets_one: dict[str, object] | None = None
             ) -> tuple[dict, dict[str, torch.Tensor], dict, dict]:
    """The step on 2 ranks (``tmp_path/np2``, in the background) and alone (``tmp_path/np1``, here, meanwhile).

    ``sets_one``: the one-process run's overrides (default: ``sets``). Returns the one-process
    summary, trained weights and stats (:func:`torchrun_worker.install`), and the two-process summary.
    """
    from helpers import torchrun_worker
    from prefrestore.cli.main import main as cli

    proc = start(tmp_path / "np2", step, inputs, sets, reseed)
    try:
        weights: dict[str, torch.Tensor] = {}
        stats: dict[str, Any] = {}
        torchrun_worker.install(weights, reseed, monkeypatch.setattr, stats)
        assert cli(step_argv(step, tmp_path / "np1", inputs, sets if sets_one is None else sets_one)) == 0
    finally:
        two = wait(proc, tmp_path / "np2")
    one = json.loads((tmp_path / "np1" / "summary.json").read_text())
    return one, weights, stats, two


def rank_report(root: Path, rank: int) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Rank ``rank``'s trained weights and report (``writes``, ``stats``) of a run under ``root``."""
    report = root / "report"
    return (load_file(str(report / f"rank{rank}.safetensors")),
            json.loads((report / f"rank{rank}.json").read_text()))


def mlflow_runs(uri: str, step: str) -> list:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(uri)
    experiments = [e.experiment_id for e in client.search_experiments()]
    return client.search_runs(experiments, filter_string=f"tags.step = '{step}'")


def history(uri: str, step: str, metric: str, from_step: int = 0) -> list[float]:
    """``metric`` of the one MLflow run of ``step`` in the store ``uri``, by step, from ``from_step`` on
    (1 leaves out the run's summary, logged at step 0)."""
    from mlflow.tracking import MlflowClient

    (run,) = mlflow_runs(uri, step)
    points = sorted(MlflowClient(uri).get_metric_history(run.info.run_id, metric), key=lambda m: m.step)
    return [m.value for m in points if m.step >= from_step]
