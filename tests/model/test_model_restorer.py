"""Restorer (uint8 in/out, settings travel with the model) and the paper preset's offline loading."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from prefrestore.core.config import load
from prefrestore.core.weights import MissingWeights
from prefrestore.model import Restorer, from_params
from prefrestore.model.flow import FlowSchedule
from prefrestore.model.restore import RestoreConfig, save_inference


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory):
    params = load("tiny")
    torch.manual_seed(0)
    model = from_params(params)
    path = tmp_path_factory.mktemp("restorer") / "model"
    model.save_pretrained(path)
    save_inference(path, params.section("restore", RestoreConfig), params.section("flow", FlowSchedule))
    return path


def test_restorer_uint8_roundtrip(model_dir) -> None:
    restorer = Restorer.from_pretrained(model_dir, device="cpu")
    assert restorer.resolution == 64 and restorer.settings.steps == 8
    rng = np.random.default_rng(0)
    faces = [rng.integers(0, 256, (64, 64, 3), dtype=np.uint8) for _ in range(2)]
    out = restorer.restore_uint8(faces, ["a photography of a man", ""], seed=1, steps=2)
    assert len(out) == 2 and all(o.shape == (64, 64, 3) and o.dtype == np.uint8 for o in out)
    again = restorer.restore_uint8(faces, ["a photography of a man", ""], seed=1, steps=2)
    assert all(np.array_equal(a, b) for a, b in zip(out, again, strict=True))
    assert restorer.restore_uint8([], None, seed=0) == []
    with pytest.raises(ValueError, match="same-size"):
        restorer.restore_uint8([faces[0], faces[1][:32]], None, seed=0, steps=1)
    with pytest.raises(ValueError, match="captions"):
        restorer.restore_uint8(faces, ["one"], seed=0, steps=1)


def test_restorer_without_settings_is_an_error(model_dir, tmp_path) -> None:
    (model_dir / "inference.json").rename(tmp_path / "inference.json")
    try:
        with pytest.raises(FileNotFoundError, match="inference.json"):
            Restorer.from_pretrained(model_dir, device="cpu")
        assert Restorer.from_pretrained(model_dir, device="cpu", params=load("tiny")).settings.steps == 8
    finally:
        (tmp_path / "inference.json").rename(model_dir / "inference.json")


@pytest.mark.parametrize(("profile", "first_part"), [("paper", "Qwen3-0.6B"), ("released", "BLIP3o-NEXT-SFT-3B")])
def test_pretrained_init_names_the_missing_weights(profile, first_part, tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PREFRESTORE_MODEL_STORE", str(tmp_path / "empty-store"))
    with pytest.raises(MissingWeights, match=first_part):
        from_params(load(profile))
