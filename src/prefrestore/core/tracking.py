"""MLflow tracking: one parent run per pipeline run, one nested run per step.

A run never stays RUNNING after its process is gone: SIGTERM/SIGHUP end it as KILLED, and a run
killed with ``kill -9`` is ended as FAILED by :func:`sweep_orphans` when the next pipeline starts.

Nothing here touches MLflow at import time. The tracking URI is ``$MLFLOW_TRACKING_URI`` or, by
default, an embedded SQLite store in the project directory (``mlflow.db`` + ``mlartifacts/``).
A pipeline driver exports ``PREFRESTORE_PARENT_RUN_ID`` so that each step's run nests under it.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import signal
import socket
import subprocess
import threading
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

from prefrestore.core.config import PROJECT_ROOT, Params

PARENT_ENV = "PREFRESTORE_PARENT_RUN_ID"
ORCHESTRATOR_ENV = "PREFRESTORE_ORCHESTRATOR"
EXPERIMENT_ENV = "MLFLOW_EXPERIMENT_NAME"
DEFAULT_EXPERIMENT = "prefrestore"
TAG_HOST, TAG_PID, TAG_PID_START = "host", "pid", "pid_start"  # who runs a RUNNING run (the sweep's evidence)


class Killed(SystemExit):
    """SIGTERM/SIGHUP inside a tracked run: the run is ended as KILLED, then the process exits 128 + signal."""


@contextlib.contextmanager
def _killable() -> Iterator[None]:
    """Turn SIGTERM and SIGHUP into :class:`Killed` while a run is open (main thread only: signal
    handlers cannot be installed elsewhere). ``kill -9`` cannot be caught: :func:`sweep_orphans`."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum: int, frame: Any) -> None:
        raise Killed(128 + signum)

    old = {s: signal.signal(s, handler) for s in (signal.SIGTERM, signal.SIGHUP)}
    try:
        yield
    finally:
        for s, h in old.items():
            signal.signal(s, h)


def _process_start(pid: int) -> str:
    """The kernel's start time of ``pid`` (``/proc/<pid>/stat`` field 22): a pid reused by another
    process has another start time. Empty where /proc is absent or the process is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return ""
    return stat.rsplit(")", 1)[1].split()[19]


def _owner_tags() -> dict[str, str]:
    pid = os.getpid()
    return {TAG_HOST: socket.gethostname(), TAG_PID: str(pid), TAG_PID_START: _process_start(pid)}


def sweep_orphans(experiment: str | None = None) -> list[str]:
    """End as FAILED every RUNNING run of ``experiment`` whose process on this host is gone (a step
    killed with ``kill -9``, or a machine that lost power); returns their ids. Runs of other hosts
    (cluster pods) are left to their orchestrator. Called when a pipeline run starts."""
    import mlflow
    from mlflow.tracking import MlflowClient

    mlflow.set_tracking_uri(tracking_uri())
    exp = mlflow.get_experiment_by_name(experiment or os.environ.get(EXPERIMENT_ENV, DEFAULT_EXPERIMENT))
    if exp is None:
        return []
    client = MlflowClient()
    host = socket.gethostname()
    ended = []
    for run in client.search_runs([exp.experiment_id], "attributes.status = 'RUNNING'", max_results=10_000):
        tags = run.data.tags
        if tags.get(TAG_HOST) != host or not tags.get(TAG_PID, "").isdigit():
            continue
        if tags.get(TAG_PID_START) and _process_start(int(tags[TAG_PID])) == tags[TAG_PID_START]:
            continue  # still running
        client.set_tag(run.info.run_id, "ended_by", "sweep: its process is gone")
        client.set_terminated(run.info.run_id, "FAILED")
        ended.append(run.info.run_id)
    return ended


@contextlib.contextmanager
def _tracked(mlflow: Any, **start: Any) -> Iterator[Any]:
    """``mlflow.start_run(**start)`` that records its owner process and ends as KILLED on SIGTERM."""
    from mlflow.tracking import MlflowClient

    start["tags"] = {**start.get("tags", {}), **_owner_tags()}
    run = None
    try:
        with mlflow.start_run(**start) as run, _killable():
            yield run
    except Killed:
        if run is not None:
            MlflowClient().set_terminated(run.info.run_id, "KILLED")
        raise


def tracking_uri() -> str:
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{PROJECT_ROOT / 'mlflow.db'}"


def git_sha(root: Path = PROJECT_ROOT) -> str:
    """The commit of the code, with ``-dirty`` when the work tree has uncommitted changes."""
    try:
        sha = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=root, capture_output=True, text=True, check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return f"{sha}-dirty" if dirty else sha


def tree_digest(paths: Iterable[Path]) -> str:
    """A content hash of files and folders (names and bytes): the data version of a step's inputs.

    It equals DVC's idea of "same data" without importing DVC: change one byte, the hash changes.
    """
    h = hashlib.sha256()
    for root in sorted(Path(p) for p in paths):
        files = [root] if root.is_file() else sorted(p for p in root.rglob("*") if p.is_file())
        for f in files:
            h.update(str(f.relative_to(root.parent)).encode())
            with open(f, "rb") as fh:
                for chunk in iter(lambda fh=fh: fh.read(1 << 20), b""):
                    h.update(chunk)
    return h.hexdigest()[:16]


def _ensure_experiment(mlflow: Any, name: str) -> str:
    exp = mlflow.get_experiment_by_name(name)
    if exp is not None:
        return exp.experiment_id
    location = None
    uri = tracking_uri()
    if uri.startswith("sqlite:///"):  # artifacts beside the embedded database
        location = (Path(uri.removeprefix("sqlite:///")).resolve().parent / "mlartifacts").as_uri()
    try:
        return mlflow.create_experiment(name, artifact_location=location)
    except Exception:  # another process created it first
        exp = mlflow.get_experiment_by_name(name)
        if exp is None:
            raise
        return exp.experiment_id


@contextlib.contextmanager
def pipeline_run(profile: str, orchestrator: str, run_name: str | None = None) -> Iterator[Any]:
    """A parent run for a whole pipeline; its id is exported so that step runs nest under it."""
    import mlflow

    mlflow.set_tracking_uri(tracking_uri())
    experiment = os.environ.get(EXPERIMENT_ENV, DEFAULT_EXPERIMENT)
    exp_id = _ensure_experiment(mlflow, experiment)
    sweep_orphans(experiment)
    tags = {"profile": profile, "orchestrator": orchestrator, "git_sha": git_sha(), "kind": "pipeline"}
    with _tracked(mlflow, experiment_id=exp_id, run_name=run_name or f"pipeline-{profile}", tags=tags) as run:
        old = os.environ.get(PARENT_ENV)
        os.environ[PARENT_ENV] = run.info.run_id
        try:
            yield run
        finally:
            if old is None:
                os.environ.pop(PARENT_ENV, None)
            else:
                os.environ[PARENT_ENV] = old


@contextlib.contextmanager
def step_run(
    step: str,
    params: Params,
    inputs: Mapping[str, Path] | None = None,
    config: Mapping[str, Any] | None = None,
) -> Iterator[Any]:
    """An MLflow run for one step, nested under the pipeline's parent run when there is one.

    Tags: git SHA, data hash of the inputs, profile, orchestrator. ``config`` (the step's resolved
    sections) is logged as flattened params.
    """
    import mlflow

    mlflow.set_tracking_uri(tracking_uri())
    exp_id = _ensure_experiment(mlflow, os.environ.get(EXPERIMENT_ENV, DEFAULT_EXPERIMENT))
    input_paths = [p for p in (inputs or {}).values() if Path(p).exists()]
    tags = {
        "step": step,
        "profile": params.profile,
        "orchestrator": os.environ.get(ORCHESTRATOR_ENV, "cli"),
        "git_sha": git_sha(),
        "data_hash": tree_digest(input_paths) if input_paths else "none",
        "kind": "step",
    }
    parent = os.environ.get(PARENT_ENV)
    with _tracked(mlflow, experiment_id=exp_id, run_name=step, tags=tags, nested=parent is not None,
                  parent_run_id=parent) as run:
        if config:
            flat = _flatten(config)
            items = list(flat.items())
            for i in range(0, len(items), 100):
                mlflow.log_params(dict(items[i : i + 100]))
        yield run


def _flatten(tree: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    out: dict[str, str] = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            out.update(_flatten(value, f"{name}."))
        else:
            out[name] = str(value)[:500]
    return out


def active() -> bool:
    """Whether an MLflow run is active (steps log only inside one; tests call run() bare)."""
    import sys

    mlflow = sys.modules.get("mlflow")
    return mlflow is not None and mlflow.active_run() is not None


def log_metrics(metrics: Mapping[str, float], step: int | None = None) -> None:
    """Log numeric metrics to the active run, if any. Names may hold '/' (e.g. 'celeba/psnr')."""
    if not active():
        return
    import math

    import mlflow

    clean = {k: float(v) for k, v in metrics.items() if isinstance(v, int | float) and math.isfinite(v)}
    if clean:
        mlflow.log_metrics(clean, step=step)


def log_artifact(path: Path, artifact_path: str | None = None) -> None:
    """Log a file or folder to the active run, if any."""
    if not active():
        return
    import mlflow

    if Path(path).is_dir():
        mlflow.log_artifacts(str(path), artifact_path)
    else:
        mlflow.log_artifact(str(path), artifact_path)


def set_tags(tags: Mapping[str, Any]) -> None:
    if not active():
        return
    import mlflow

    mlflow.set_tags({k: str(v) for k, v in tags.items()})
