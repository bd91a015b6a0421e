"""Batched torch path and the datasets: match the numpy path before JPEG, statistically after."""

from __future__ import annotations

import dataclasses

import numpy as np
import pandas as pd
import pytest
import torch

from prefrestore.core import images
from prefrestore.core.config import load
from prefrestore.data.degrade import step as degrade_step
from prefrestore.data.degrade.direct import DegradeConfig, DegradeParams, degrade, draw_params, pre_jpeg
from prefrestore.data.degrade.on_the_fly import OfflinePairs, OnTheFlyPairs, degrade_batch, pre_jpeg_batch


def _faces(n: int, size: int) -> np.ndarray:
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:size, 0:size] / size
    out = []
    for _ in range(n):
        img = np.stack([xx, yy, 1 - xx * yy], axis=2) * rng.uniform(80, 200)
        for _ in range(5):
            cy, cx, r = rng.uniform(0.2, 0.8, 2).tolist() + [rng.uniform(0.05, 0.2)]
            img[(yy - cy) ** 2 + (xx - cx) ** 2 < r**2] = rng.uniform(0, 255, 3)
        out.append(img.astype(np.uint8))
    return np.stack(out)


def _params(cfg: DegradeConfig, n: int, seed: int = 0) -> list[DegradeParams]:
    rng = np.random.default_rng(seed)
    return [draw_params(rng, cfg) for _ in range(n)]


@pytest.mark.parametrize("profile", ["paper", "released"])
def test_matches_numpy_before_jpeg(profile: str) -> None:
    cfg = dataclasses.replace(load(profile).section("degrade", DegradeConfig), downsample=(1.5, 12.0))
    hq = _faces(6, 128)
    params = [dataclasses.replace(p, self_rec=i == 0) for i, p in enumerate(_params(cfg, 6))]
    smalls = pre_jpeg_batch(torch.from_numpy(hq), params, cfg)
    assert torch.equal(smalls[0], torch.from_numpy(hq[0]).permute(2, 0, 1).float() / 255)
    for img, p, small in zip(hq[1:], params[1:], smalls[1:], strict=True):
        want = pre_jpeg(img, p, cfg)
        got = small.permute(1, 2, 0).numpy()
        assert got.shape == want.shape and np.abs(got - want).max() <= 1 / 255


def test_matches_numpy_statistically_after_jpeg() -> None:
    cfg = load("paper").section("degrade", DegradeConfig)
    hq = _faces(8, 128)
    params = [dataclasses.replace(p, self_rec=False) for p in _params(cfg, 8, seed=3)]
    lq = degrade_batch(torch.from_numpy(hq), params, cfg)
    assert lq.shape == (8, 3, 128, 128) and lq.dtype == torch.float32
    assert torch.equal(lq * 255, (lq * 255).round())  # quantised like a uint8 image
    ref = np.stack([degrade(h, p, cfg) for h, p in zip(hq, params, strict=True)]).astype(np.float64)
    got = lq.permute(0, 2, 3, 1).numpy() * 255
    err_ref = np.abs(ref - hq).mean(axis=(1, 2, 3))
    err_got = np.abs(got - hq).mean(axis=(1, 2, 3))
    assert np.abs(got - ref).mean() < 2.0  # encoders may differ; the images do not
    assert np.allclose(err_got, err_ref, rtol=0.1, atol=0.5)  # same degradation strength per sample


@pytest.mark.gpu
def test_cuda_matches_cpu() -> None:
    cfg = load("released").section("degrade", DegradeConfig)
    hq = torch.from_numpy(_faces(8, 256))
    params = _params(cfg, 8, seed=5)
    cpu = pre_jpeg_batch(hq, params, cfg)
    gpu = pre_jpeg_batch(hq.cuda(), params, cfg)
    for a, b in zip(cpu, gpu, strict=True):
        assert (a - b.cpu()).abs().max() <= 1e-4
    lq_gpu, lq_cpu = degrade_batch(hq.cuda(), params, cfg).cpu(), degrade_batch(hq, params, cfg)
    assert (lq_gpu - lq_cpu).abs().mean() < 2 / 255
    nvjpeg = degrade_batch(hq.cuda(), params, cfg, gpu_jpeg=True)  # runs; its distribution differs
    assert nvjpeg.shape == lq_cpu.shape and nvjpeg.is_cuda


def test_on_the_fly_and_offline_datasets(tmp_path, tiny_params) -> None:
    faces = degrade_step_faces(tmp_path / "faces")
    cfg = tiny_params.section("degrade", DegradeConfig)
    ds = OnTheFlyPairs(faces, cfg, "train", seed=0, epoch=0)
    assert len(ds) == 6
    item = ds[0]
    assert set(item) == {"id", "hq", "lq", "params", "self_rec"}
    assert item["hq"].shape == item["lq"].shape == (3, 64, 64) and 0 <= item["lq"].min() <= item["lq"].max() <= 1
    again = ds[0]
    assert torch.equal(item["lq"], again["lq"])  # deterministic within an epoch
    ds.set_epoch(1)
    assert ds[0]["params"] != item["params"]  # fresh degradation every epoch
    loader = torch.utils.data.DataLoader(ds, batch_size=3, num_workers=0)
    batch = next(iter(loader))
    assert batch["lq"].shape == (3, 3, 64, 64) and len(batch["id"]) == 3
    with pytest.raises(ValueError, match="split"):
        OnTheFlyPairs(faces, cfg, "validation", seed=0)

    out = tmp_path / "pairs"
    degrade_step.run(tiny_params, {"faces": faces}, out)
    off = OfflinePairs(out, faces)
    assert len(off) == 6
    first = off[0]
    fly = OnTheFlyPairs(faces, cfg, "train", seed=tiny_params.tree["data"]["seed"], epoch=0)
    match = fly[fly.ids.index(first["id"])]
    assert torch.equal(first["lq"], match["lq"]) and first["params"] == match["params"]


def degrade_step_faces(root):
    """An ingested-style faces folder: 6 train + 2 test images at 64 px."""
    rows = []
    for i, img in enumerate(_faces(8, 64)):
        images.save_png(root / "images" / f"f{i}.png", img)
        rows.append({"id": f"f{i}", "path": f"images/f{i}.png", "split": "test" if i < 2 else "train"})
    pd.DataFrame(rows).to_parquet(root / "manifest.parquet")
    return root
