"""Trusted loading (core/integrity.py): digests recorded at registration are checked file by file,
and pickles are refused unless allowed."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from prefrestore.core import integrity
from prefrestore.core.errors import InputError


def _mlflow_folder(root: Path) -> Path:
    """A downloaded MLflow model folder of ours: MLmodel + artifacts/<dir> with recorded digests."""
    inner = root / "artifacts" / "stage2"
    (inner / "vae").mkdir(parents=True)
    (inner / "config.json").write_text('{"format": "x"}')
    (inner / "vae" / "w.safetensors").write_bytes(bytes(range(256)) * 4)
    (inner / "checkpoints").mkdir()
    (inner / "checkpoints" / "optimizer.bin").write_bytes(b"training state, never loaded")
    spec = {"flavors": {"python_function": {
        "artifacts": {"model_dir": {"path": "artifacts/stage2"}},
        "config": {"files": integrity.file_digests(inner)}, "model_code_path": "/x/served_model.py"}}}
    (root / "MLmodel").write_text(yaml.safe_dump(spec))
    return root


def test_a_registered_folder_verifies_and_returns_its_model_dir(tmp_path: Path) -> None:
    folder = _mlflow_folder(tmp_path / "m")
    assert integrity.mlflow_model_dir(folder) == folder / "artifacts" / "stage2"
    assert set(integrity.file_digests(folder / "artifacts" / "stage2")) == {"config.json", "vae/w.safetensors"}


@pytest.mark.parametrize("damage, message", [
    ("flip", "vae/w.safetensors: sha256 differs from the registered one"),
    ("remove", "vae/w.safetensors: missing from the model"),
    ("add", "extra.safetensors: not part of the registered model"),
    ("pickle", "evil.pkl: a pickle"),
])
def test_any_change_is_refused_naming_the_file(tmp_path: Path, damage: str, message: str) -> None:
    folder = _mlflow_folder(tmp_path / "m")
    weights = folder / "artifacts" / "stage2" / "vae" / "w.safetensors"
    if damage == "flip":
        data = bytearray(weights.read_bytes())
        data[100] ^= 1
        weights.write_bytes(bytes(data))
    elif damage == "remove":
        weights.unlink()
    elif damage == "add":
        (weights.parent.parent / "extra.safetensors").write_bytes(b"x")
    else:
        (weights.parent / "evil.pkl").write_bytes(b"\x80\x04N.")
    with pytest.raises(InputError, match=message):
        integrity.mlflow_model_dir(folder)


def test_pickles_are_allowed_only_on_request_and_checkpoints_are_never_loaded(tmp_path: Path) -> None:
    folder = _mlflow_folder(tmp_path / "m")
    assert integrity.find_pickles(folder) == []  # checkpoints/optimizer.bin is training state, not loaded
    (folder / "python_model.pkl").write_bytes(b"\x80\x04N.")
    with pytest.raises(InputError, match="python_model.pkl: a pickle"):
        integrity.refuse_pickles(folder, allow=False)
    integrity.refuse_pickles(folder, allow=True)


def test_a_folder_without_digests_is_not_trusted(tmp_path: Path) -> None:
    folder = _mlflow_folder(tmp_path / "m")
    spec = yaml.safe_load((folder / "MLmodel").read_text())
    del spec["flavors"]["python_function"]["config"]
    (folder / "MLmodel").write_text(yaml.safe_dump(spec))
    with pytest.raises(InputError, match="registered with file digests"):
        integrity.mlflow_model_dir(folder)
    (folder / "MLmodel").write_text("flavors: [")
    with pytest.raises(InputError, match="not an MLflow pyfunc model"):
        integrity.mlflow_model_dir(folder)
