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

        torch.set_num_threads(min(2, os.cpu_count() or 1))
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
    from prefrestore.config import load

    return load("tiny")


@pytest.fixture(scope="session")
def shared_faces() -> Path:
    """The real faces in ../shared/data/faces; the test is skipped when the folder is absent."""
    if not (SHARED_FACES / "hq").is_dir():
        pytest.skip(f"real faces not present at {SHARED_FACES} (only CI and sessions have ../shared)")
    return SHARED_FACES
