"""The ingest step: accounting of every input, the bad-input policy end to end, splits, idempotence, resume."""

from __future__ import annotations

import io
import json
import shutil
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest
from PIL import Image

from prefrestore.core import images
from prefrestore.core.config import load
from prefrestore.data import ingest

RES = 32


def _params(source: str, **more):
    overrides = {"ingest.source": source, "data.resolution": RES, **more}
    return load("tiny").with_overrides(overrides)


def _save(path: Path, arr: np.ndarray, fmt: str = "PNG", **kw) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path, format=fmt, **kw)


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def make_bad_inputs(root: Path) -> dict[str, str]:
    """One file per case; returns file name -> expected outcome ("ok" or a quarantine reason)."""
    rng = np.random.default_rng(1)
    good = rng.integers(0, 256, (96, 96, 3), dtype=np.uint8)
    expected = {}

    _save(root / "good.png", good)
    expected["good.png"] = "ok"
    (root / "sub").mkdir()
    shutil.copy(root / "good.png", root / "sub" / "copy_of_good.png")
    expected["sub/copy_of_good.png"] = "duplicate"

    png = (root / "good.png").read_bytes()
    (root / "truncated.png").write_bytes(png[: len(png) // 2])
    expected["truncated.png"] = "truncated"
    (root / "corrupt.png").write_bytes(png[:60] + bytes(300) + png[360:])
    expected["corrupt.png"] = "corrupt"
    (root / "zero.jpg").write_bytes(b"")
    expected["zero.jpg"] = "empty"
    (root / "notes.txt").write_text("not an image\n")
    expected["notes.txt"] = "not_an_image"

    buf = io.BytesIO()
    Image.new("CMYK", (80, 80), (0, 255, 255, 0)).save(buf, format="JPEG", quality=95)
    (root / "cmyk.jpg").write_bytes(buf.getvalue())
    expected["cmyk.jpg"] = "ok"

    ok, enc = cv2.imencode(".png", np.full((80, 80, 3), 40000, np.uint16))
    (root / "deep16.png").write_bytes(enc.tobytes())
    expected["deep16.png"] = "ok"

    rgba = np.zeros((80, 80, 4), np.uint8)
    rgba[..., 0] = 255  # red, fully transparent
    _save(root / "rgba.png", rgba)
    expected["rgba.png"] = "ok"

    _save(root / "grey.png", good[..., 1])
    expected["grey.png"] = "ok"

    upright = np.zeros((80, 80, 3), np.uint8)
    upright[:40] = (255, 0, 0)
    upright[40:] = (0, 0, 255)
    exif = Image.Exif()
    exif[0x0112] = 6
    _save(root / "rotated.jpg", np.asarray(Image.fromarray(upright).transpose(Image.Transpose.ROTATE_90)), "JPEG",
          exif=exif, quality=95)
    expected["rotated.jpg"] = "ok"

    wide = np.zeros((80, 120, 3), np.uint8)
    wide[:, 20:100] = (0, 200, 0)  # green centre square, black bands
    _save(root / "wide.png", wide)
    expected["wide.png"] = "ok"
    _save(root / "panorama.png", np.zeros((64, 200, 3), np.uint8))
    expected["panorama.png"] = "aspect"

    _save(root / "tiny.png", good[:20, :20])
    expected["tiny.png"] = "too_small"

    ihdr = struct.pack(">IIBBBBB", 10_000, 5_000, 8, 2, 0, 0, 0)
    (root / "bomb.png").write_bytes(b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr)
                                    + _chunk(b"IDAT", zlib.compress(b"\0" * 16)) + _chunk(b"IEND", b""))
    expected["bomb.png"] = "too_large"
    (root / ".DS_Store").write_bytes(b"junk")  # hidden: ignored, not "seen"
    return expected


@pytest.fixture(scope="module")
def bad_run(tmp_path_factory):
    src = tmp_path_factory.mktemp("bad_src")
    expected = make_bad_inputs(src)
    out = tmp_path_factory.mktemp("bad_out") / "faces"
    summary = ingest.run(_params(f"folder:{src}", **{"ingest.min_side": 32}), {}, out)
    return src, out, expected, summary


def test_every_input_is_accounted_for(bad_run):
    _, out, expected, summary = bad_run
    report = json.loads((out / "ingest_report.json").read_text())
    assert report["seen"] == len(expected) == report["accepted"] + report["quarantined"]
    assert summary["seen"] == report["seen"] and summary["skipped"] is False
    assert report["accepted"] == sum(v == "ok" for v in expected.values()) == 7
    assert report["ignored_hidden_files"] == 1
    want = {}
    for v in expected.values():
        if v != "ok":
            want[v] = want.get(v, 0) + 1
    assert report["reasons"] == want


def test_each_bad_input_has_its_reason_and_a_copy(bad_run):
    src, out, expected, _ = bad_run
    q = pd.read_parquet(out / "quarantine" / "quarantine.parquet")
    got = {row.source.removeprefix("folder:"): row for row in q.itertuples()}
    assert set(got) == {k for k, v in expected.items() if v != "ok"}
    for name, row in got.items():
        assert row.reason == expected[name], name
        assert row.copy, name
        assert (out / row.copy).read_bytes() == (src / name).read_bytes()  # the original bytes, kept
    assert "good" in got["sub/copy_of_good.png"].detail


def test_normalised_inputs_come_out_right(bad_run):
    _, out, _, _ = bad_run
    m = pd.read_parquet(out / "manifest.parquet").set_index("id")
    assert list(m.reset_index().columns) == list(ingest.MANIFEST_COLUMNS)
    assert (m["width"] == RES).all() and (m["height"] == RES).all()

    def img(i: str) -> np.ndarray:
        return images.load_rgb(out / m.loc[i, "path"])

    rot = img("rotated")  # upright after EXIF: red on top, blue at the bottom
    assert rot[2, RES // 2, 0] > 200 and rot[2, RES // 2, 2] < 60
    assert rot[-3, RES // 2, 2] > 200 and rot[-3, RES // 2, 0] < 60
    assert img("rgba").min() == 255  # transparent red composited on white
    assert np.abs(img("deep16").astype(int) - round(40000 / 257)).max() <= 1  # scaled, not clipped to 255
    grey = img("grey")
    assert (grey[..., 0] == grey[..., 1]).all() and (grey[..., 1] == grey[..., 2]).all()
    cmyk = img("cmyk")[RES // 2, RES // 2].astype(int)
    assert cmyk[0] > 220 and cmyk[1] < 40 and cmyk[2] < 40
    wide = img("wide")
    assert wide[..., 1].min() > 190 and wide[..., 0].max() < 10  # only the green centre square kept
    for row in m.itertuples():
        assert images.load_rgb(out / row.path).shape == (RES, RES, 3)
        import hashlib

        assert hashlib.sha256((out / row.path).read_bytes()).hexdigest() == row.sha256


def test_synthetic_ingest_and_split(tiny_faces):
    m = pd.read_parquet(tiny_faces / "manifest.parquet")
    assert len(m) == 24 and m["id"].is_unique and m["sha256"].is_unique
    assert (m["split"] == "test").sum() == 3  # tiny: test_fraction 0.125
    assert all(c.startswith("a photography of a") for c in m["caption_hint"])
    attrs = json.loads(m.loc[0, "attributes"])
    assert attrs["gender"] in ("man", "woman")
    assert images.load_rgb(tiny_faces / m.loc[0, "path"]).shape == (64, 64, 3)


def test_assign_splits_is_deterministic_and_seeded():
    ids = [f"x{i}" for i in range(200)]
    a = ingest.assign_splits(ids, 0, 0.1)
    assert a == ingest.assign_splits(list(reversed(ids)), 0, 0.1)
    assert sum(v == "test" for v in a.values()) == 20
    assert a != ingest.assign_splits(ids, 1, 0.1)
    assert set(ingest.assign_splits(["a", "b"], 0, 0.01).values()) == {"train", "test"}
    assert set(ingest.assign_splits(ids, 0, 0.0).values()) == {"train"}


def test_rerun_is_skipped_and_identical(tmp_path):
    params = _params("synthetic", **{"ingest.synthetic_count": 6})
    out = tmp_path / "faces"
    first = ingest.run(params, {}, out)
    manifest = (out / "manifest.parquet").read_bytes()
    second = ingest.run(params, {}, out)
    assert second["skipped"] and not first["skipped"]
    assert (out / "manifest.parquet").read_bytes() == manifest
    other = tmp_path / "again"  # a fresh run elsewhere writes the very same manifest
    ingest.run(params, {}, other)
    pd.testing.assert_frame_equal(pd.read_parquet(other / "manifest.parquet"), pd.read_parquet(out / "manifest.parquet"))
    (out / "images" / "syn_000000.png").unlink()  # a damaged output is redone, not skipped
    assert not ingest.run(params, {}, out)["skipped"]
    assert (out / "manifest.parquet").read_bytes() == manifest
    changed = ingest.run(_params("synthetic", **{"ingest.synthetic_count": 7}), {}, out)
    assert not changed["skipped"] and changed["accepted"] == 7
    assert not list(tmp_path.glob(".faces.*"))  # no work folders left behind


def test_interrupted_run_resumes_to_the_same_result(tmp_path, monkeypatch):
    params = _params("synthetic", **{"ingest.synthetic_count": 8})
    ingest.run(params, {}, tmp_path / "reference")
    calls = {"n": 0}
    real = ingest._process

    def crashing(item, *args):
        calls["n"] += 1
        if calls["n"] == 5:
            raise KeyboardInterrupt
        return real(item, *args)

    monkeypatch.setattr(ingest, "_process", crashing)
    with pytest.raises(KeyboardInterrupt):
        ingest.run(params, {}, tmp_path / "faces")
    assert not (tmp_path / "faces").exists()  # nothing half-written at the destination
    monkeypatch.setattr(ingest, "_process", lambda item, *a: (calls.__setitem__("n", calls["n"] + 1), real(item, *a))[1])
    calls["n"] = 0
    ingest.run(params, {}, tmp_path / "faces")
    assert calls["n"] == 4  # only the unprocessed inputs
    pd.testing.assert_frame_equal(pd.read_parquet(tmp_path / "faces" / "manifest.parquet"),
                                  pd.read_parquet(tmp_path / "reference" / "manifest.parquet"))


def test_output_inside_the_source_folder_is_not_ingested(tmp_path):
    _save(tmp_path / "a.png", np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8))
    params = _params(f"folder:{tmp_path}")
    first = ingest.run(params, {}, tmp_path / "faces")
    ingest.run(_params(f"folder:{tmp_path}", **{"data.seed": 1}), {}, tmp_path / "faces")
    again = json.loads((tmp_path / "faces" / "ingest_report.json").read_text())
    assert first["seen"] == again["seen"] == 1


def test_missing_folder_and_bad_source_are_clear_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        ingest.run(_params(f"folder:{tmp_path / 'nope'}"), {}, tmp_path / "out")
    from prefrestore.core.config import ConfigError

    with pytest.raises(ConfigError, match="ingest.source"):
        _params("s3://bucket").section("ingest", ingest.IngestConfig)


def test_hf_source_from_a_saved_dataset(tmp_path):
    datasets = pytest.importorskip("datasets")
    rng = np.random.default_rng(3)
    pics = [Image.fromarray(rng.integers(0, 256, (48, 48, 3), dtype=np.uint8)) for _ in range(3)]
    ds = datasets.Dataset.from_dict({"picture": pics}).cast_column("picture", datasets.Image())
    ds.save_to_disk(str(tmp_path / "ds"))
    params = _params(f"hf:{tmp_path / 'ds'}:train", **{"ingest.hf_image_column": "picture", "ingest.min_side": 16})
    summary = ingest.run(params, {}, tmp_path / "faces")
    assert summary["accepted"] == 3 and summary["quarantined"] == 0
    m = pd.read_parquet(tmp_path / "faces" / "manifest.parquet")
    assert m["id"].tolist() == ["hf_train_0000000", "hf_train_0000001", "hf_train_0000002"]
    assert m["source"].iloc[2].endswith(":train:2")
    expected = images.fit_square(np.asarray(pics[1]), RES, 2.0)
    np.testing.assert_array_equal(images.load_rgb(tmp_path / "faces" / m["path"].iloc[1]), expected)
    with pytest.raises(ValueError, match="no column"):
        ingest.run(_params(f"hf:{tmp_path / 'ds'}"), {}, tmp_path / "other")


def test_real_faces_are_all_accepted(shared_faces, tmp_path):
    summary = ingest.run(_params(f"folder:{shared_faces / 'hq'}"), {}, tmp_path / "faces")
    assert summary["seen"] == 10 and summary["accepted"] == 10 and summary["quarantined"] == 0


@pytest.mark.slow  # ~15 s: MLflow store set-up dominates
def test_cli_ingest_in_process(tmp_path, capsys):
    from prefrestore.cli.main import main as cli

    out = tmp_path / "x"
    assert cli(["ingest", "--profile", "tiny", "--out", str(out), "--set", "ingest.synthetic_count=5"]) == 0
    stdout = capsys.readouterr().out
    summary = json.loads(stdout[stdout.index("{"):])
    assert summary["accepted"] == 5
    assert len(list((out / "images").glob("*.png"))) == 5


@pytest.mark.slow
def test_cli_ingest_subprocess_with_source(shared_faces, tmp_path):
    out = tmp_path / "y"
    proc = subprocess.run(
        [sys.executable, "-m", "prefrestore.cli.main", "ingest", "--source", f"folder:{shared_faces / 'hq'}",
         "--out", str(out)],
        capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    summary = json.loads(proc.stdout[proc.stdout.index("{"):])
    assert summary["accepted"] == 10
