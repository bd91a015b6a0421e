"""Shared fixtures: tiny profile, CPU only, small thread pool, real faces when ../shared exists."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("MLFLOW_ENABLE_ASYNC_LOGGING", "false")

PROJECT = Path(__file__).resolve().parents[1]
SHARED_FACES = PROJECT.parent / "shared" / "data" / "faces"


def pytest_configure(config: pytest.Config) -> None:
    try:
        import torch

        torch.set_num_threads(1)  # tiny tensors: one thread beats two (benchmarks/RESULTS.md, bench_train)
    except ImportError:
        pass


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    try:
        import torch

        has_cuda = torch.cuda.is_available()
    except ImportError:
        has_cuda = False
    skip_gpu = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords and not has_cuda:
            item.add_marker(skip_gpu)


@pytest.fixture(autouse=True)
def _isolated_tracking(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every test tracks into its own SQLite store, never the project's mlflow.db."""
    if "MLFLOW_TRACKING_URI" not in os.environ or os.environ["MLFLOW_TRACKING_URI"].startswith("sqlite"):
        store = tmp_path_factory.mktemp("mlflow")
        monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{store / 'mlflow.db'}")
    monkeypatch.delenv("PREFRESTORE_PARENT_RUN_ID", raising=False)


@pytest.fixture(scope="session")
def tiny_params():
    from prefrestore.core.config import load

    return load("tiny")


@pytest.fixture(scope="session")
def shared_faces() -> Path:
    """The real faces in ../shared/data/faces; the test is skipped when the folder is absent."""
    if not (SHARED_FACES / "hq").is_dir():
        pytest.skip(f"real faces not present at {SHARED_FACES} (only CI and sessions have ../shared)")
    return SHARED_FACES


TINY_FACES_COUNT = 24  # images in the shared tiny_faces set (64 px, tiny profile)


@pytest.fixture(scope="session")
def tiny_faces(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small ingested synthetic face set (24 faces, 64 px, 21 train / 3 test) made once per session.

    The folder holds ``images/<id>.png``, ``manifest.parquet`` (with ``attributes`` and
    ``caption_hint``) and ``ingest_report.json``, exactly as ``prefrestore ingest --profile tiny``
    writes them. Treat it as read-only: other tests share it.
    """
    from prefrestore.core.config import load
    from prefrestore.data import ingest

    params = load("tiny").with_overrides({"ingest.source": "synthetic", "ingest.synthetic_count": TINY_FACES_COUNT})
    out = tmp_path_factory.mktemp("tiny_faces") / "faces"
    ingest.run(params, {}, out)
    return out


@pytest.fixture(scope="session")
def tiny_train_inputs(tiny_faces: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """``faces``, ``captions`` (attribute captioner) and a random-init tiny ``base`` model (seed 0):
    the inputs of a training step, made once per session. Read-only, like ``tiny_faces``."""
    import torch

    from prefrestore.core.config import load
    from prefrestore.data import caption
    from prefrestore.model.config import ModelConfig
    from prefrestore.model.model import PrefRestoreModel

    root = tmp_path_factory.mktemp("train_inputs")
    caption.run(load("tiny"), {"faces": tiny_faces}, root / "captions")
    torch.manual_seed(0)
    PrefRestoreModel.build(load("tiny").section("model", ModelConfig), "").save_pretrained(root / "base")
    return {"faces": tiny_faces, "captions": root / "captions", "base": root / "base"}


@pytest.fixture(scope="session")
def mlflow_pg_server(tmp_path_factory: pytest.TempPathFactory):
    """Tracking URI of a real ``mlflow server`` on 127.0.0.1 backed by a fresh PostgreSQL database.

    Started once per session (tests/helpers/mlflow_server.py); the database is dropped at teardown. Skips
    with the reason when no local PostgreSQL (trust auth) or psycopg2 is available. Tests that use
    it should carry ``@pytest.mark.postgres`` and set ``MLFLOW_TRACKING_URI`` themselves.
    """
    from helpers import mlflow_server

    reason = mlflow_server.unavailable_reason()
    if reason:
        pytest.skip(reason)
    with mlflow_server.pg_mlflow_server(tmp_path_factory.mktemp("mlflow_pg")) as uri:
        yield uri
