"""MLflow wiring: nested step runs under a pipeline run, with the required tags."""

from __future__ import annotations

import os
import signal

import mlflow
import pytest

from prefrestore.core import tracking
from prefrestore.core.config import load


def _check_nesting(tmp_path):
    params = load("tiny")
    data = tmp_path / "in.txt"
    data.write_text("abc")
    with (
        tracking.pipeline_run("tiny", "test") as parent,
        tracking.step_run("ingest", params, {"x": data}, {"data": {"seed": 0}}) as child,
    ):
        tracking.log_metrics({"bench/psnr": 31.5, "nan": float("nan"), "text": "x"})
    client = mlflow.tracking.MlflowClient()
    run = client.get_run(child.info.run_id)
    assert run.data.tags["mlflow.parentRunId"] == parent.info.run_id
    assert run.data.tags["profile"] == "tiny"
    assert run.data.tags["step"] == "ingest"
    assert run.data.tags["git_sha"]
    assert run.data.tags["data_hash"] == tracking.tree_digest([data])
    assert run.data.params["data.seed"] == "0"
    assert run.data.metrics == {"bench/psnr": 31.5}
    assert os.environ.get(tracking.PARENT_ENV) is None


def test_step_runs_nest_under_the_pipeline_run_sqlite(tmp_path):
    assert tracking.tracking_uri().startswith("sqlite:")
    _check_nesting(tmp_path)


def test_step_runs_nest_under_the_pipeline_run_postgres(mlflow_pg_server, tmp_path, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_pg_server)
    _check_nesting(tmp_path)


def test_no_logging_without_an_active_run():
    assert not tracking.active()
    tracking.log_metrics({"a": 1.0})  # a no-op, not an implicit run
    assert mlflow.active_run() is None


def test_data_hash_changes_with_content(tmp_path):
    f = tmp_path / "d" / "a.bin"
    f.parent.mkdir()
    f.write_bytes(b"1")
    h1 = tracking.tree_digest([f.parent])
    f.write_bytes(b"2")
    assert tracking.tree_digest([f.parent]) != h1



# ------------------------------------------------------------------- runs never stay RUNNING


_HOLD_RUN = """
import sys, time
from pathlib import Path
from prefrestore.core import tracking
from prefrestore.core.config import load
with tracking.step_run("degrade", load("tiny")) as run:
    Path(sys.argv[1]).write_text(run.info.run_id)
    time.sleep(120)
"""


def _held_run(tmp_path, uri: str):
    import subprocess
    import sys
    import time

    marker = tmp_path / "run_id"
    env = {**os.environ, "MLFLOW_TRACKING_URI": uri}
    env.pop(tracking.PARENT_ENV, None)
    proc = subprocess.Popen([sys.executable, "-c", _HOLD_RUN, str(marker)], env=env)
    deadline = time.monotonic() + 120
    while not marker.is_file() and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.2)
    assert marker.is_file(), "the step run did not start"
    return proc, marker.read_text()


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGHUP])
def test_a_terminated_step_ends_its_run_as_killed(tmp_path, signum) -> None:
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    proc, run_id = _held_run(tmp_path, uri)
    proc.send_signal(signum)
    assert proc.wait(timeout=60) == 128 + signum
    assert MlflowClient(uri).get_run(run_id).info.status == "KILLED"


def test_a_run_killed_with_sigkill_is_swept_at_the_next_pipeline_start(tmp_path, monkeypatch) -> None:
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    proc, run_id = _held_run(tmp_path, uri)
    proc.kill()
    proc.wait(timeout=60)
    client = MlflowClient(uri)
    assert client.get_run(run_id).info.status == "RUNNING"  # nothing could end it
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.delenv(tracking.PARENT_ENV, raising=False)
    (tmp_path / "live").mkdir()
    live, _ = _held_run(tmp_path / "live", uri)
    try:
        with tracking.pipeline_run("tiny", "test") as parent:  # the sweep runs here
            pass
        assert client.get_run(run_id).info.status == "FAILED"
        assert client.get_run(run_id).data.tags["ended_by"].startswith("sweep")
        assert client.get_run(parent.info.run_id).info.status == "FINISHED"
        running = client.search_runs([client.get_run(run_id).info.experiment_id], "attributes.status = 'RUNNING'")
        assert len(running) == 1  # the live one is left alone
    finally:
        live.kill()
        live.wait(timeout=60)
