"""Round trip with the real tiny Pref-Restore model: register -> promote -> load by alias -> restore.

The model is built from the tiny profile's ``model`` section with random weights and saved as an
HF-style directory (plus ``inference.json``); registration uses the production loader
(``Restorer.from_pretrained``), so this checks the pyfunc against the real model classes.
"""

from __future__ import annotations

import base64
import json
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest

from prefrestore.core import images
from prefrestore.core.config import load
from prefrestore.model.config import ModelConfig
from prefrestore.model.flow import FlowSchedule
from prefrestore.model.model import PrefRestoreModel
from prefrestore.model.restore import RestoreConfig, Restorer, save_inference
from prefrestore.registry import pyfunc as pyfunc_model
from prefrestore.registry import register


@pytest.fixture(scope="module")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    import torch

    torch.manual_seed(0)
    params = load("tiny")
    path = tmp_path_factory.mktemp("tiny_model") / "stage1_2"
    PrefRestoreModel.build(params.section("model", ModelConfig), "").save_pretrained(path)
    save_inference(path, params.section("restore", RestoreConfig), params.section("flow", FlowSchedule))
    return path


@pytest.mark.slow  # ~40 s: two pyfunc logs whose input examples MLflow validates with the real model
def test_tiny_model_round_trip_through_the_registry(tiny_model_dir, tmp_path):
    params = load("tiny")
    reports = tmp_path / "reports"
    for variant in ("fidelity", "quality"):
        (reports / f"eval_{variant}").mkdir(parents=True)
        (reports / f"eval_{variant}" / "metrics.json").write_text(
            json.dumps({"celeba_test/psnr": 18.0, "celeba_test/ssim": 0.4, "celeba_test/lmd": "unavailable"}))
    summary = register.run(params, {"fidelity": tiny_model_dir, "quality": tiny_model_dir, "reports": reports},
                           tmp_path / "out")
    assert summary["fidelity_promoted"] == 1 and summary["quality_promoted"] == 1

    model = mlflow.pyfunc.load_model("models:/prefrestore-quality@champion")
    img = np.random.default_rng(0).integers(0, 256, (70, 60, 3), dtype=np.uint8)
    frame = pd.DataFrame({"image": [base64.b64encode(images.encode_png(img)).decode()], "seed": [5.0],
                          "steps": [2.0]})
    out = images.load_rgb(base64.b64decode(model.predict(frame)["image"].iloc[0]))

    direct = Restorer.from_pretrained(tiny_model_dir)
    expected = direct.restore_uint8([images.fit_square(img, direct.resolution, 2.0)], None, 5, 2)[0]
    assert out.shape == (direct.resolution, direct.resolution, 3)
    np.testing.assert_array_equal(out, expected)


def test_pyfunc_wrapper_restores_like_the_real_restorer(tiny_model_dir):
    """Fast variant (default run): the wrapper's load_context + predict on the real tiny model."""

    class Context:
        artifacts = {pyfunc_model.MODEL_DIR_ARTIFACT: str(tiny_model_dir)}
        model_config = pyfunc_model.model_config("fidelity", 3, 2.0, 1 << 24, 16, 4, tiny_model_dir,
                                                 pyfunc_model.load_restorer)

    wrapper = pyfunc_model.PrefRestorePyfunc()
    wrapper.load_context(Context())
    img = np.random.default_rng(1).integers(0, 256, (64, 80, 3), dtype=np.uint8)
    frame = pd.DataFrame({"image": [base64.b64encode(images.encode_png(img)).decode()] * 2, "steps": [1.0, 1.0]})
    out = [images.load_rgb(base64.b64decode(b)) for b in wrapper.predict(None, frame)["image"]]

    direct = Restorer.from_pretrained(tiny_model_dir)
    square = images.fit_square(img, direct.resolution, 2.0)
    expected = direct.restore_uint8([square, square], None, 3, 1)  # default seed 3, one batch
    for got, want in zip(out, expected, strict=True):
        np.testing.assert_array_equal(got, want)
    assert not np.array_equal(out[0], square)  # it did restore something
