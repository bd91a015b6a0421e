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
    assert "no model part to verify" in capsys.readouterr().out


def test_manifests_check_is_clean_and_names_unknown_parts(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["weights", "manifests", "--check", "qwen3-0.6b", "ta-tok", "dc-ae-f32c32"]) == 0
    assert main(["weights", "manifests", "--check", "no-such-part"]) == 2


# ------------------------------------------------------------------ --aux: captioner, rewards, metric files
def _hub_folder(hf_home: Path, repo: str) -> Path:
    base = hf_home / "hub" / f"models--{repo.replace('/', '--')}"
    (base / "refs").mkdir(parents=True)
    (base / "refs" / "main").write_text("0123abcd")
    return base / "snapshots" / "0123abcd"


def _published_config(part_name: str, **override: object) -> dict:
    """config.json as the hub publishes it: Qwen2.5-VL keeps text keys at the top level; CLIP nests both."""
    from prefrestore.model.parts import PARTS

    values = {**PARTS[part_name].values(), **override}
    out: dict = {"text_config": {}, "vision_config": {}}
    for key, v in values.items():
        head, _, leaf = key.partition(".")
        if head == "vision":
            out["vision_config"][leaf] = v
        elif head == "text" and part_name.startswith("qwen2.5-vl"):
            out[leaf] = v
        elif head == "text":
            out["text_config"][leaf] = v
        else:
            out[key] = v
    return out


@pytest.fixture()
def hub(staged: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Full-size, real-layout (sparse) Qwen2.5-VL-32B (18 shards), CLIP ViT-L/14 and PickScore in an HF cache."""
    from helpers.sparse_checkpoints import sparse_safetensors_folder

    from prefrestore.model.manifest import manifest_tensors, read_manifest
    from prefrestore.model.parts import PARTS

    hf_home = tmp_path / "hf"
    monkeypatch.setenv("HF_HOME", str(hf_home))
    for name, shards in (("qwen2.5-vl-32b-instruct", 18), ("clip-vit-large-patch14", 1), ("pickscore-v1", 1)):
        repo = PARTS[name].weight.source.removeprefix("hf:")
        sparse_safetensors_folder(_hub_folder(hf_home, repo), manifest_tensors(read_manifest(name)),
                                  _published_config(name), shards)
    return hf_home


AUX = ["qwen2.5-vl-32b-instruct", "clip-vit-large-patch14", "pickscore-v1"]


def test_verify_aux_passes_on_full_size_hub_checkpoints(hub: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from prefrestore.model.manifest import read_manifest

    assert main(["weights", "verify", "--profile", "stand_in", "--aux", *AUX]) == 0
    out = capsys.readouterr().out
    for name in AUX:
        row = next(x for x in out.splitlines() if x.startswith(name)).split()
        assert row[1:4] == ["weights", str(read_manifest(name)["num_tensors"]), "0"] and row[4:] == ["0"] * 4, row


def test_verify_aux_reports_shape_key_and_config_gaps(hub: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import json as _json

    from helpers.sparse_checkpoints import sparse_safetensors_folder

    from prefrestore.model.manifest import manifest_tensors, read_manifest

    folder = _hub_folder(hub / "x", "openai/clip-vit-large-patch14")  # rebuilt below in place of the good one
    good = hub / "hub" / "models--openai--clip-vit-large-patch14" / "snapshots" / "0123abcd"
    tensors = manifest_tensors(read_manifest("clip-vit-large-patch14"))
    tensors.pop("text_projection.weight")
    tensors["visual_projection.weight"] = ((768, 1280), "F32")
    tensors["logit_bias"] = ((1,), "F32")
    sparse_safetensors_folder(folder, tensors, _published_config("clip-vit-large-patch14", projection_dim=1024))
    for f in good.iterdir():
        f.unlink()
    for f in folder.iterdir():
        f.rename(good / f.name)
    assert main(["weights", "verify", "--profile", "stand_in", "--aux", "clip-vit-large-patch14"]) == 1
    out = capsys.readouterr().out
    assert "clip-vit-large-patch14: missing: text_projection.weight" in out
    assert "clip-vit-large-patch14: unexpected: logit_bias" in out
    assert "clip-vit-large-patch14: shape: visual_projection.weight: manifest [768, 1024], file has [768, 1280]" in out
    assert "clip-vit-large-patch14: config: projection_dim: part 768, file 1024" in out
    # a shard named by the index but cut short: one line naming the file and the key
    shard = next((hub / "hub" / "models--Qwen--Qwen2.5-VL-32B-Instruct" / "snapshots" / "0123abcd").glob("*-00007-*"))
    with open(shard, "r+b") as fh:
        fh.truncate(shard.stat().st_size - 2)
    assert main(["weights", "verify", "--profile", "stand_in", "--aux", "qwen2.5-vl-32b-instruct"]) == 1
    line = next(x for x in capsys.readouterr().out.splitlines() if x.startswith("qwen2.5-vl-32b-instruct"))
    assert "error:" in line and shard.name in line and "truncated: key '" in line
    assert _json.loads((good / "config.json").read_text())["projection_dim"] == 1024


def test_verify_aux_names_an_unknown_part(staged: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["weights", "verify", "--profile", "stand_in", "--aux", "no-such-part"]) == 2
    assert "unknown part(s) ['no-such-part']" in capsys.readouterr().err


def test_verify_aux_alone_checks_metric_files_on_a_random_init_profile(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    """``--profile tiny --aux ...``: no model part, but the named metric files are still checked."""
    import torch
    from pyiqa.archs.lpips_arch import NetLinLayer
    from torch import nn

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    folder = tmp_path / "torch" / "hub" / "pyiqa"
    folder.mkdir(parents=True)
    lins = nn.ModuleDict({f"lin{i}": NetLinLayer(c, use_dropout=True) for i, c in enumerate([64, 192, 384, 256, 256])})
    torch.save(lins.state_dict(), folder / "LPIPS_v0.1_alex-df73285e.pth")
    assert main(["weights", "verify", "--profile", "tiny", "--aux", "pyiqa-lpips-alex"]) == 0
    row = next(x for x in capsys.readouterr().out.splitlines() if x.startswith("pyiqa-lpips-alex"))
    assert row.split()[1:] == ["weights", "5", "0", "0", "0", "0", "0"]
    assert main(["weights", "verify", "--profile", "tiny", "--aux", "pyiqa-lpips-alex", "pyiqa-musiq-koniq"]) == 1
    out = capsys.readouterr().out
    row = next(x for x in out.splitlines() if x.startswith("pyiqa-musiq-koniq"))
    assert row.split()[1] == "error:" and row.endswith("musiq_koniq_ckpt-e95806b9.pth: file not found")
