"""Step ``bootstrap``: stage 0 on tiny data writes a loadable base model; the paper profile assembles."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from prefrestore.core.config import load
from prefrestore.core.weights import MissingWeights
from prefrestore.model.config import ModelConfig
from prefrestore.model.model import PrefRestoreModel
from prefrestore.train.stage0 import run

FAST = {"bootstrap.vae_steps": 3, "bootstrap.kmeans_images": 8, "bootstrap.kmeans_iters": 2,
        "bootstrap.prior_steps": 3, "bootstrap.batch_size": 4, "bootstrap.log_every": 1}


@pytest.fixture(scope="module")
def captions(tiny_faces, tmp_path_factory) -> Path:
    from prefrestore.data import caption

    out = tmp_path_factory.mktemp("captions") / "captions"
    caption.run(load("tiny"), {"faces": tiny_faces}, out)
    return out


def test_stage0_writes_a_trained_base_and_resumes_by_phase(tiny_faces, captions, tmp_path):
    torch.set_num_threads(1)
    params = load("tiny").with_overrides(FAST)
    inputs = {"faces": tiny_faces, "captions": captions}
    out = tmp_path / "stage0"
    summary = run(params, inputs, out)
    assert summary["mode"] == "train" and summary["codes_used"] > 1 and "prior_ce" in summary
    model = PrefRestoreModel.from_pretrained(out)
    shapes = load("tiny").section("model", ModelConfig)
    assert model.cfg.ar == shapes.ar and model.cfg.generator == shapes.generator
    # the latent scale is calibrated on the data and travels in config.json: z has ~zero mean, unit std
    assert model.cfg.vae.scaling_factor == pytest.approx(summary["vae_scaling_factor"])
    with torch.no_grad():
        from prefrestore.train.stage0 import train_faces

        z = model.encode(train_faces(tiny_faces, 64)[1][:16])
    assert abs(float(z.mean())) < 0.3 and 0.7 < float(z.std()) < 1.3
    phases = sorted(p.name for p in (out / "checkpoints").iterdir())
    assert phases == ["phase-0-vae", "phase-1-codebook", "phase-2-prior"]
    assert json.loads((out / "metrics.json").read_text())["fingerprint"] == summary["fingerprint"]
    # the codebook is k-means of the features: every training image maps to codes in range
    codes = model.lq_codes(torch.rand(2, 3, 64, 64))
    assert codes.shape == (2, model.cfg.num_image_tokens) and int(codes.max()) < model.cfg.tokenizer.codebook_size
    # a re-run is a no-op; a run killed after phase 2 resumes at phase 3 and ends with the same model
    assert run(params, inputs, out)["seconds"] == summary["seconds"]
    (out / "metrics.json").unlink()
    import shutil

    shutil.rmtree(out / "checkpoints" / "phase-2-prior")
    again = run(params, inputs, out)
    assert again["prior_loss"] == summary["prior_loss"]


def test_paper_profile_assembles_and_fails_clearly_without_weights(tiny_faces, captions, tmp_path, monkeypatch):
    monkeypatch.setenv("PREFRESTORE_MODEL_STORE", str(tmp_path / "empty_store"))
    with pytest.raises(MissingWeights, match="Stage it from"):
        run(load("paper"), {"faces": tiny_faces, "captions": captions}, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_stage0_refuses_several_processes(tiny_faces, captions, tmp_path, monkeypatch):
    """Under torchrun every rank would train its own stage 0 into the same folder: a clear error instead."""
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(RuntimeError, match="one process"):
        run(load("tiny"), {"faces": tiny_faces, "captions": captions}, tmp_path / "out")
    assert not (tmp_path / "out").exists()
