"""The degrade step: offline pairs, synthetic benchmark, idempotence, worker-count determinism."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from helpers.faces import face_like

from prefrestore.core import images
from prefrestore.core.config import load
from prefrestore.data import benchmarks as benchmarks_data
from prefrestore.data.degrade import step as degrade_step
from prefrestore.data.degrade.direct import DegradeConfig, DegradeParams, degrade


def make_faces(root: Path, n: int = 12, n_test: int = 3, size: int = 64) -> Path:
    """An ingested-style faces folder: images/<id>.png + manifest.parquet (id, path, split)."""
    rows = []
    for i in range(n):
        sid = f"face_{i:03d}"
        images.save_png(root / "images" / f"{sid}.png", face_like(size, i))
        rows.append({"id": sid, "path": f"images/{sid}.png", "split": "test" if i < n_test else "train"})
    pd.DataFrame(rows).to_parquet(root / "manifest.parquet")
    return root


@pytest.fixture(scope="module")
def faces(tmp_path_factory) -> Path:
    return make_faces(tmp_path_factory.mktemp("faces"))


def test_step_writes_pairs_and_benchmark(faces: Path, tmp_path: Path, tiny_params) -> None:
    out = tmp_path / "pairs"
    summary = degrade_step.run(tiny_params, {"faces": faces}, out)
    assert summary["pairs"] == 9 and summary["benchmark_images"] == 3
    pairs = pd.read_parquet(out / "pairs.parquet")
    assert sorted(pairs["id"]) == [f"face_{i:03d}" for i in range(3, 12)]
    assert summary["self_rec"] == int(pairs["self_rec"].sum())
    cfg = tiny_params.section("degrade", DegradeConfig)
    for row in pairs.to_dict("records"):  # replay from the recorded params gives the written file
        hq = images.load_rgb(faces / row["hq_path"])
        lq = images.load_rgb(out / row["lq_path"])
        assert np.array_equal(degrade(hq, DegradeParams.from_row(row), cfg), lq)
        assert row["self_rec"] == np.array_equal(lq, hq)
    bench = out / "benchmarks" / "celeba_test"
    frame, meta = benchmarks_data.read_benchmark(bench)
    assert meta["kind"] == "synthetic" and meta["paired"] and meta["seed"] == cfg.benchmark_seed
    assert list(frame["id"]) == ["face_000", "face_001", "face_002"] and not frame["self_rec"].any()
    for row in frame.to_dict("records"):
        hq, lq = images.load_rgb(bench / row["hq_path"]), images.load_rgb(bench / row["lq_path"])
        assert np.array_equal(hq, images.load_rgb(faces / "images" / f"{row['id']}.png"))
        assert np.array_equal(degrade(hq, DegradeParams.from_row(row), cfg), lq) and not np.array_equal(hq, lq)
    from prefrestore.evaluation.evaluate import load_benchmark  # the consumer accepts the layout

    assert load_benchmark(bench).paired

    # idempotent: a second run with the same inputs does nothing
    mtime = (out / "pairs.parquet").stat().st_mtime_ns
    again = degrade_step.run(tiny_params, {"faces": faces}, out)
    assert again["skipped"] and (out / "pairs.parquet").stat().st_mtime_ns == mtime
    # another seed rewrites everything with other draws
    other = degrade_step.run(tiny_params.with_overrides({"data.seed": 1}), {"faces": faces}, out)
    assert not other.get("skipped") and not pd.read_parquet(out / "pairs.parquet")["noise_seed"].equals(
        pairs["noise_seed"])


def test_output_independent_of_order_and_batching(faces: Path, tmp_path: Path) -> None:
    """What makes worker counts irrelevant: a sample's output depends on (seed, id) only."""
    cfg = load("released").section("degrade", DegradeConfig)
    items = [(f"face_{i:03d}", faces / "images" / f"face_{i:03d}.png") for i in range(12)]
    whole = degrade_step.degrade_files(items, tmp_path / "a", 5, 64, cfg, 1, "a")
    parts = [degrade_step.degrade_files(items[k::3][::-1], tmp_path / "b", 5, 64, cfg, 1, "b") for k in range(3)]
    merged = pd.concat(parts).sort_values("id").reset_index(drop=True)
    pd.testing.assert_frame_equal(whole.sort_values("id").reset_index(drop=True), merged)
    for sid, _ in items:
        assert (tmp_path / "a" / f"{sid}.png").read_bytes() == (tmp_path / "b" / f"{sid}.png").read_bytes()


@pytest.mark.slow  # process start-up (spawn re-imports torch) takes 10-30 s on 2 cores
def test_output_identical_for_one_or_two_workers(faces: Path, tmp_path: Path) -> None:
    cfg = load("released").section("degrade", DegradeConfig)
    items = [(f"face_{i:03d}", faces / "images" / f"face_{i:03d}.png") for i in range(12)]
    one = degrade_step.degrade_files(items, tmp_path / "w1", 5, 64, cfg, 1, "w1")
    two = degrade_step.degrade_files(items, tmp_path / "w2", 5, 64, cfg, 2, "w2")
    pd.testing.assert_frame_equal(one, two)
    for sid, _ in items:
        assert (tmp_path / "w1" / f"{sid}.png").read_bytes() == (tmp_path / "w2" / f"{sid}.png").read_bytes()


def test_bad_faces_input(tmp_path: Path, tiny_params) -> None:
    with pytest.raises(FileNotFoundError, match="manifest"):
        degrade_step.run(tiny_params, {"faces": tmp_path}, tmp_path / "out")
    faces = make_faces(tmp_path / "f", n=3, n_test=0, size=48)  # not data.resolution
    with pytest.raises(ValueError, match="expected 64x64"):
        degrade_step.run(tiny_params, {"faces": faces}, tmp_path / "out")
    assert not (tmp_path / "out").exists()  # nothing half-written


def test_benchmark_from_plain_folder(tmp_path: Path, tiny_params) -> None:
    folder = tmp_path / "plain"
    for i in range(3):
        images.save_png(folder / f"p{i}.png", face_like(64, 100 + i))
    cfg = tiny_params.section("degrade", DegradeConfig)
    meta = degrade_step.synthesize_benchmark("mine", folder, tmp_path / "b", cfg, 64)
    again = degrade_step.synthesize_benchmark("mine", folder, tmp_path / "b2", cfg, 64)
    assert meta["count"] == 3
    for i in range(3):  # fixed seed: the same set every time
        assert (tmp_path / "b" / "mine" / "lq" / f"p{i}.png").read_bytes() == \
            (tmp_path / "b2" / "mine" / "lq" / f"p{i}.png").read_bytes()
    assert again["seed"] == cfg.benchmark_seed


def test_register_real_benchmark(tmp_path: Path) -> None:
    lq = tmp_path / "lq"
    for i in range(3):
        images.save_png(lq / f"x{i}.png", face_like(32, i))
    (lq / "broken.png").write_bytes(b"not an image")
    (lq / "notes.txt").write_text("ignored")
    meta = benchmarks_data.register_benchmark("wider_test", lq, None, tmp_path / "bench")
    assert meta["count"] == 3 and not meta["paired"] and meta["skipped"][0]["id"] == "broken"
    frame, _ = benchmarks_data.read_benchmark(tmp_path / "bench" / "wider_test")
    assert (frame["hq_path"] == "").all() and not frame["paired"].any()
    again = benchmarks_data.register_benchmark("wider_test", lq, None, tmp_path / "bench")
    assert again["skipped_run"]
    hq = tmp_path / "hq"
    for i in range(3):
        images.save_png(hq / f"x{i}.png", face_like(32, 50 + i))
    with pytest.raises(ValueError, match="no HQ"):  # broken.png has no HQ partner
        benchmarks_data.register_benchmark("paired", lq, hq, tmp_path / "bench")
    (lq / "broken.png").unlink()
    paired = benchmarks_data.register_benchmark("paired", lq, hq, tmp_path / "bench")
    assert paired["paired"] and paired["count"] == 3


def test_register_shared_real_lq(shared_faces: Path, tmp_path: Path) -> None:
    meta = benchmarks_data.register_benchmark("webphoto_test", shared_faces / "real_lq", None, tmp_path)
    assert meta["count"] == len(list((shared_faces / "real_lq").glob("*.png"))) and not meta["paired"]
    frame, _ = benchmarks_data.read_benchmark(tmp_path / "webphoto_test")
    assert (frame["width"] == 512).all()
