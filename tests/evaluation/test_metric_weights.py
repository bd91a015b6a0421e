"""Manifests of the pyiqa / facexlib weight files, and ``weights verify --aux`` on files laid out as pyiqa loads them."""

from __future__ import annotations

import dataclasses
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from prefrestore.core.weights import local_path
from prefrestore.evaluation.metric_weights import CLIPIQA_CTX, FFHQ_STATS, LPIPS_LIN, PARTS, TOPIQ_FACE
from prefrestore.model.manifest import dump_manifest, read_manifest, stale_manifests
from prefrestore.model.verify import verify_aux


def test_committed_metric_manifests_match_the_installed_classes() -> None:
    assert stale_manifests(PARTS) == []


def test_manifests_hold_the_known_shapes() -> None:
    lpips = read_manifest(LPIPS_LIN.name, LPIPS_LIN.manifest_dir)["tensors"]
    assert lpips == {f"lin{i}.model.1.weight": [[1, c, 1, 1], "F32"] for i, c in enumerate([64, 192, 384, 256, 256])}
    fid = read_manifest("pyiqa-fid-inception", LPIPS_LIN.manifest_dir)
    assert fid["tensors"]["fc.weight"] == [[1008, 2048], "F32"]  # the FID net keeps TF's 1008 classes
    topiq = read_manifest(TOPIQ_FACE.name, TOPIQ_FACE.manifest_dir)
    assert topiq["store"]["state_key"] == "params"
    assert any(k.startswith("semantic_model.") for k in topiq["tensors"])
    assert not any(k.startswith("face_helper") for k in topiq["tensors"])


@pytest.fixture()
def torch_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    return tmp_path / "torch"


def _place(part, write) -> Path:  # noqa: ANN001
    path = local_path(part.weight)
    path.parent.mkdir(parents=True, exist_ok=True)
    write(path)
    return path


def test_full_size_lpips_prompt_and_stats_files_pass(torch_home: Path) -> None:
    from pyiqa.archs.lpips_arch import NetLinLayer

    lins = nn.ModuleDict({f"lin{i}": NetLinLayer(c, use_dropout=True) for i, c in enumerate([64, 192, 384, 256, 256])})
    _place(LPIPS_LIN, lambda p: torch.save(lins.state_dict(), p))
    _place(CLIPIQA_CTX, lambda p: torch.save(torch.zeros(2, 16, 512), p))
    _place(FFHQ_STATS, lambda p: np.savez(p, mu=np.zeros(2048), sigma=np.eye(2048)))
    for part in (LPIPS_LIN, CLIPIQA_CTX, FFHQ_STATS):
        rep, err = verify_aux(part)
        assert err is None and rep is not None and rep.ok and rep.mapped == read_manifest(part.name, part.manifest_dir)["num_tensors"]


def test_wrong_shapes_and_bad_files_are_reported(torch_home: Path) -> None:
    _place(CLIPIQA_CTX, lambda p: torch.save(torch.zeros(2, 8, 512), p))
    rep, err = verify_aux(CLIPIQA_CTX)
    assert rep is not None and rep.mismatched == ["ctx: manifest [2, 16, 512], file has [2, 8, 512]"]
    _place(CLIPIQA_CTX, lambda p: torch.save({"ctx": torch.zeros(2, 16, 512)}, p))
    assert verify_aux(CLIPIQA_CTX)[1].endswith("expected one tensor, got a dict")

    class Code:  # a pickle that would run code: refused by weights_only
        def __reduce__(self):  # noqa: ANN204
            return (print, ("ran",))

    path = _place(LPIPS_LIN, lambda p: p.write_bytes(pickle.dumps(Code())))
    rep, err = verify_aux(LPIPS_LIN)
    assert rep is None and err.startswith(f"{path}: cannot read as a weights-only torch file")
    path = _place(FFHQ_STATS, lambda p: np.savez(p, mu=np.zeros(2048), sigma=np.eye(2048)))
    path.write_bytes(path.read_bytes()[:1000])
    rep, err = verify_aux(FFHQ_STATS)
    assert rep is None and err.startswith(f"{path}: cannot read as .npz")


def test_state_key_and_module_prefix_follow_pyiqas_loader(torch_home: Path, tmp_path: Path) -> None:
    """``load_pretrained_network(..., weight_keys='params')`` + ``clean_state_dict``: the same unwrapping here.

    The part keeps its real file name and layout; its manifest is swapped for a small module's so the
    file stays small.
    """
    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4))
    small = dataclasses.replace(TOPIQ_FACE, manifest_dir=tmp_path / "m",
                                build=lambda c: {k: (tuple(v.shape), "F32") for k, v in net.state_dict().items()})
    small.manifest_dir.mkdir()
    (small.manifest_dir / f"{small.name}.json").write_text(dump_manifest(small.manifest()))
    state = {f"module.{k}": v for k, v in net.state_dict().items() if not k.endswith("num_batches_tracked")}
    _place(small, lambda p: torch.save({"params": state, "iter": 3}, p))
    rep, err = verify_aux(small)
    assert err is None and rep.ok and rep.mapped == len(state)  # the old-format BN counter is not a gap
    _place(small, lambda p: torch.save(state, p))
    assert "no 'params' key" in verify_aux(small)[1]
