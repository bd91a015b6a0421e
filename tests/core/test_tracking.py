"""MLflow wiring: nested step runs under a pipeline run, with the required tags."""

from __future__ import annotations

import os

import mlflow

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

