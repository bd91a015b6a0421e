"""``prefrestore weights verify --profile P`` and ``weights manifests --check`` on staged stand-in files."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from helpers.public_parts import params_for, stage

from prefrestore.cli.main import main
from prefrestore.core.config import PARAMS_ENV, PROJECT_ROOT


@pytest.fixture()
def staged(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A store with the paper start's stand-in parts and a params file whose profile ``stand_in`` matches them."""
    store = tmp_path / "store"
    stage(store, "qwen3_parts")
    data = yaml.safe_load((PROJECT_ROOT / "params.yaml").read_text())
    model = dict(params_for("qwen3_parts").tree["model"])
    data["profiles"]["stand_in"] = {"extends": "tiny", "model": json.loads(json.dumps(model, default=list))}
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump(data, sort_keys=False))
    monkeypatch.setenv(PARAMS_ENV, str(params))
    monkeypatch.setenv("PREFRESTORE_MODEL_STORE", str(store))
    return store


def test_verify_profile_passes_on_matching_files(staged: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["weights", "verify", "--profile", "stand_in"]) == 0
    out = capsys.readouterr().out
    assert "qwen3-0.6b" in out and "ta-tok" in out and "OK (" in out
    assert "DC-AE scaling_factor: 0.5" in out


def test_verify_profile_fails_on_a_truncated_file_naming_file_and_key(
        staged: Path, capsys: pytest.CaptureFixture[str]) -> None:
    f = staged / "Qwen3-0.6B" / "model.safetensors"
    f.write_bytes(f.read_bytes()[:-64])
    assert main(["weights", "verify", "--profile", "stand_in"]) == 1
    out = capsys.readouterr().out
    line = next(x for x in out.splitlines() if x.startswith("qwen3-0.6b"))
    assert "model.safetensors: truncated: key 'model." in line and "GAPS FOUND" in out


def test_verify_profile_fails_on_config_and_shape_disagreements(
        staged: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg_file = staged / "SANA1.5_1.6B_1024px_diffusers" / "transformer" / "config.json"
    config = json.loads(cfg_file.read_text())
    config["caption_channels"] += 1
    cfg_file.write_text(json.dumps(config))
    ckpt = staged / "TA-Tok" / "ta_tok.pth"
    import torch

    data = torch.load(ckpt, weights_only=True)
    data["model"]["sd"]["encode_task_layer.0.bias"] = torch.zeros(5)
    torch.save(data, ckpt)
    assert main(["weights", "verify", "--profile", "stand_in"]) == 1
    out = capsys.readouterr().out
    assert "sana-1.5-1.6b: config: caption_channels: profile 64, file 65" in out
    assert "ta-tok: shape: encode_task_layer.0.bias: want [32]" in out


def test_verify_profile_on_a_random_init_profile_has_nothing_to_check(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["weights", "verify", "--profile", "tiny"]) == 0
    assert "nothing to verify" in capsys.readouterr().out


def test_manifests_check_is_clean_and_names_unknown_parts(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["weights", "manifests", "--check", "qwen3-0.6b", "ta-tok", "dc-ae-f32c32"]) == 0
    assert main(["weights", "manifests", "--check", "no-such-part"]) == 2
