"""The register step on the SQLite default store: register -> gate -> promote -> load by alias -> restore.

The registry machinery is exercised with the bicubic stand-in restorer (test_register_standin.py);
the round trip with the real tiny Pref-Restore model is in test_register_tiny_model.py. All tests
in this module share one SQLite store (creating MLflow's tables costs seconds) and use their own
registered model names, so they stay independent.
"""

from __future__ import annotations

import base64
import json
import uuid
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
from helpers.standin import bicubic, load_standin, make_model_dir, make_reports, metrics
from mlflow import MlflowClient

from prefrestore.core import images
from prefrestore.core.config import load
from prefrestore.registry import pyfunc as pyfunc_model
from prefrestore.registry import register


@pytest.fixture(scope="module")
def shared_store(tmp_path_factory: pytest.TempPathFactory) -> str:
    return f"sqlite:///{tmp_path_factory.mktemp('register_store') / 'mlflow.db'}"


@pytest.fixture
def store(shared_store: str, monkeypatch: pytest.MonkeyPatch) -> MlflowClient:
    monkeypatch.setenv("MLFLOW_TRACKING_URI", shared_store)
    mlflow.set_tracking_uri(shared_store)
    return MlflowClient(tracking_uri=shared_store)


def fresh_params():
    """The tiny profile with registered model names unique to the calling test."""
    tag = uuid.uuid4().hex[:8]
    return load("tiny").with_overrides(
        {"register.models.fidelity": f"t{tag}-fidelity", "register.models.quality": f"t{tag}-quality"})


def candidate(root: Path, seed: int, fid: dict, qual: dict) -> dict[str, Path]:
    return {
        "fidelity": make_model_dir(root / f"fid{seed}", seed),
        "quality": make_model_dir(root / f"qual{seed}", seed + 1000),
        "reports": make_reports(root / f"reports{seed}", fid, qual),
    }


def versions(client: MlflowClient, name: str) -> list:
    return register.all_versions(client, name)


def test_register_promote_load_by_alias_restore_round_trip(store, tmp_path, monkeypatch):
    monkeypatch.setenv("PREFRESTORE_PARENT_RUN_ID", "pipeline-run-123")
    params = fresh_params()
    inputs = candidate(tmp_path, 0, metrics(20.0, 0.5), metrics(19.0, 0.45))
    summary = register.run(params, inputs, tmp_path / "out", loader=load_standin)

    assert summary == {"fidelity_version": 1, "fidelity_promoted": 1, "fidelity_champion": 1,
                       "quality_version": 1, "quality_promoted": 1, "quality_champion": 1, "promoted": 1}
    name = params.tree["register"]["models"]["fidelity"]
    mv = store.get_model_version_by_alias(name, "champion")
    assert int(mv.version) == 1
    assert int(store.get_model_version_by_alias(name, "challenger").version) == 1
    tags = mv.tags
    assert tags["pipeline_run_id"] == "pipeline-run-123"
    assert tags["profile"] == "tiny" and tags["variant"] == "fidelity"
    assert tags["git_sha"] and tags["data_hash"] and tags["candidate_key"]
    assert json.loads(tags["eval_summary"]) == metrics(20.0, 0.5)
    assert tags["gate.outcome"] == "champion" and tags["gate.decision"] == "pass"
    first = json.loads(tags["gate.vs.none"])
    assert first["passed"] and first["compared_to"] is None
    assert {c["metric"] for c in first["checks"]} == {"celeba_test/psnr", "celeba_test/ssim"}  # floors only

    # Outputs: decision + card per variant, and a summary of both.
    decision = json.loads((tmp_path / "out" / "fidelity" / "decision.json").read_text())
    assert decision["version"] == 1 and decision["outcome"] == "champion" and decision["promoted"]
    card = (tmp_path / "out" / "quality" / "MODEL_CARD.md").read_text()
    assert "| celeba_test | unavailable | 19.0000 | 0.4500 |" in card
    assert "random initialisation" in card and "No face detector" in card
    assert set(json.loads((tmp_path / "out" / "decision.json").read_text())) == {"fidelity", "quality"}

    # The logged model: signature, input example, model dir without training checkpoints.
    local = Path(mlflow.artifacts.download_artifacts(f"models:/{name}@champion", dst_path=str(tmp_path / "dl")))
    (model_dir,) = (local / "artifacts").iterdir()
    assert (model_dir / "model.safetensors").is_file() and (model_dir / "config.json").is_file()
    assert not (model_dir / "checkpoints").exists()
    info = mlflow.models.get_model_info(f"models:/{name}@champion")
    assert [c.name for c in info.signature.inputs.inputs] == ["image", "caption", "seed", "steps"]
    assert [c.required for c in info.signature.inputs.inputs] == [True, False, False, False]
    assert (local / "serving_input_example.json").is_file()

    # Load by alias and restore: any size is fitted to the model's square, then restored.
    model = mlflow.pyfunc.load_model(f"models:/{name}@champion")
    img = np.random.default_rng(1).integers(0, 256, (40, 48, 3), dtype=np.uint8)
    frame = pd.DataFrame({"image": [base64.b64encode(images.encode_png(img)).decode()]})
    out = model.predict(frame)
    restored = images.load_rgb(base64.b64decode(out["image"].iloc[0]))
    np.testing.assert_array_equal(restored, bicubic(images.fit_square(img, 32, 2.0)))


def test_predict_batches_by_seed_and_caption_and_rejects_bad_input(tmp_path):
    model_dir = make_model_dir(tmp_path / "m", 0)

    class Context:
        artifacts = {pyfunc_model.MODEL_DIR_ARTIFACT: str(model_dir)}
        model_config = pyfunc_model.model_config("quality", 7, 2.0, 1 << 24, 16, 2, model_dir, load_standin)

    wrapper = pyfunc_model.PrefRestorePyfunc()
    wrapper.load_context(Context())
    png = base64.b64encode(images.encode_png(np.full((32, 32, 3), 128, np.uint8))).decode()
    frame = pd.DataFrame({"image": [png] * 4, "caption": ["a photography of a man", None, None, None],
                          "seed": [1.0, np.nan, np.nan, 3.0]})
    out = wrapper.predict(None, frame)
    assert len(out) == 4
    calls = sorted(wrapper.restorer.calls, key=lambda c: (c[2], c[0]))
    assert calls == [(1, ("a photography of a man",), 1, None), (1, None, 3, None), (2, None, 7, None)]

    def refused(image: str, match: str) -> None:  # an MlflowException with INVALID_PARAMETER_VALUE: HTTP 400
        with pytest.raises(pyfunc_model.InvalidInput, match=match) as exc:
            wrapper.predict(None, pd.DataFrame({"image": [image]}))
        assert exc.value.get_http_status_code() == 400

    refused("not base64!", "row 0: column 'image' is not valid base64")
    refused(base64.b64encode(b"not an image").decode(), "row 0: bad image")
    refused(base64.b64encode(images.encode_png(np.zeros((32, 100, 3), np.uint8))).decode(), "no face detector")
    refused(base64.b64encode(images.encode_png(np.zeros((8, 8, 3), np.uint8))).decode(), "too_small.*min_side=16")
    wrapper.max_pixels = 32 * 32 - 1
    refused(png, "too_large.*max_pixels=1023")


def test_rerun_registers_nothing_new(store, tmp_path):
    params = fresh_params()
    inputs = candidate(tmp_path, 0, metrics(20.0, 0.5), metrics(19.0, 0.45))
    first = register.run(params, inputs, tmp_path / "out1", loader=load_standin)
    second = register.run(params, inputs, tmp_path / "out2", loader=load_standin)
    assert first == second
    for variant in ("fidelity", "quality"):
        assert len(versions(store, params.tree["register"]["models"][variant])) == 1
    d2 = json.loads((tmp_path / "out2" / "fidelity" / "decision.json").read_text())
    assert d2["newly_registered"] is False and d2["outcome"] == "champion"


def test_better_candidate_is_promoted_worse_is_rejected_with_evidence(store, tmp_path):
    params = fresh_params()
    name = params.tree["register"]["models"]["fidelity"]
    register.run(params, candidate(tmp_path, 0, metrics(20.0, 0.5), metrics(19.0, 0.45)), tmp_path / "o0",
                 loader=load_standin)
    # Within tolerance on SSIM (-0.004 >= -0.005) and better PSNR: passes against v1.
    s1 = register.run(params, candidate(tmp_path, 1, metrics(21.0, 0.496), metrics(19.0, 0.45)), tmp_path / "o1",
                      loader=load_standin)
    assert s1["fidelity_version"] == 2 and s1["fidelity_promoted"] == 1 and s1["fidelity_champion"] == 2
    # Loses 0.2 dB PSNR (tolerance 0.1): fails against v2; champion untouched.
    s2 = register.run(params, candidate(tmp_path, 2, metrics(20.8, 0.6), metrics(19.0, 0.45)), tmp_path / "o2",
                      loader=load_standin)
    assert s2["fidelity_version"] == 3 and s2["fidelity_promoted"] == 0 and s2["fidelity_champion"] == 2
    assert int(store.get_model_version_by_alias(name, "champion").version) == 2
    assert int(store.get_model_version_by_alias(name, "challenger").version) == 3
    tags = store.get_model_version(name, "3").tags
    assert tags["gate.outcome"] == "rejected" and tags["gate.decision"] == "fail"
    evidence = json.loads(tags["gate.vs.2"])
    failed = [c for c in evidence["checks"] if not c["passed"]]
    assert [c["metric"] for c in failed] == ["celeba_test/psnr"]
    assert failed[0]["candidate"] == 20.8 and failed[0]["reference"] == 21.0
    decision = json.loads((tmp_path / "o2" / "fidelity" / "decision.json").read_text())
    assert decision["outcome"] == "rejected" and "celeba_test/psnr" in decision["decisions"][0]["reason"]


def test_unavailable_metric_cannot_become_champion(store, tmp_path):
    params = fresh_params()
    name = params.tree["register"]["models"]["quality"]
    summary = register.run(params, candidate(tmp_path, 0, metrics(20.0, 0.5), metrics(30.0, "unavailable")),
                           tmp_path / "out", loader=load_standin)
    assert summary["quality_promoted"] == 0 and summary["quality_champion"] == -1
    assert "champion" not in store.get_registered_model(name).aliases
    tags = store.get_model_version(name, "1").tags
    assert tags["gate.outcome"] == "rejected"
    assert "unavailable" in json.loads(tags["gate.vs.none"])["reason"]


def test_bad_reports_fail_before_anything_is_registered(store, tmp_path):
    params = fresh_params()
    inputs = candidate(tmp_path, 0, metrics(20.0, 0.5), {"celeba_test/psnr": "n/a"})
    with pytest.raises(ValueError, match="neither a number nor 'unavailable'"):
        register.run(params, inputs, tmp_path / "out", loader=load_standin)
    (inputs["reports"] / "eval_quality" / "metrics.json").unlink()
    with pytest.raises(FileNotFoundError, match="eval_quality"):
        register.run(params, inputs, tmp_path / "out", loader=load_standin)
    assert store.search_registered_models(f"name = '{params.tree['register']['models']['fidelity']}'") == []
    assert not (tmp_path / "out").exists()
