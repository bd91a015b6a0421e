"""`prefrestore restore`: files and folders of any size/mode, bad inputs reported, model by alias or dir."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from helpers.standin import bicubic, load_standin, make_model_dir, make_reports, metrics
from PIL import Image

from prefrestore.cli.main import main as cli
from prefrestore.core import images
from prefrestore.core.config import load
from prefrestore.registry import register


def write_inputs(root: Path) -> dict[str, np.ndarray]:
    """A folder with an RGBA PNG, a greyscale JPEG in a subfolder, a wide photo and a corrupt file."""
    rng = np.random.default_rng(0)
    (root / "sub").mkdir(parents=True)
    rgba = rng.integers(0, 256, (40, 50, 4), dtype=np.uint8)
    Image.fromarray(rgba, "RGBA").save(root / "a.png")
    grey = rng.integers(0, 256, (48, 48), dtype=np.uint8)
    Image.fromarray(grey, "L").save(root / "sub" / "b.jpg", quality=95)
    Image.fromarray(rng.integers(0, 256, (30, 120, 3), dtype=np.uint8)).save(root / "wide.png")
    Image.new("RGB", (8, 8)).save(root / "tiny.png")  # below image_limits.min_side
    Image.new("RGB", (4100, 4100)).save(root / "huge.png")  # over image_limits.max_pixels (4096 x 4096)
    (root / "bad.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    return {"a.png": images.load_rgb(root / "a.png"), "sub/b.png": images.load_rgb(root / "sub" / "b.jpg")}


def test_restore_folder_with_registered_champion(tmp_path, capsys):
    register.run(load("tiny"), {"fidelity": make_model_dir(tmp_path / "f", 0), "quality": make_model_dir(tmp_path / "q", 1),
                                "reports": make_reports(tmp_path / "r", metrics(20.0, 0.5), metrics(19.0, 0.4))},
                 tmp_path / "reg", loader=load_standin)
    faces = write_inputs(tmp_path / "in")
    code = cli(["restore", str(tmp_path / "in"), "--variant", "fidelity", "--out", str(tmp_path / "out")])

    assert code == 1  # four inputs failed; the others were still restored
    written = sorted(str(p.relative_to(tmp_path / "out")) for p in (tmp_path / "out").rglob("*.png"))
    assert written == ["a.png", "sub/b.png"]
    for name, face in faces.items():
        got = images.load_rgb(tmp_path / "out" / name)
        np.testing.assert_array_equal(got, bicubic(images.fit_square(face, 32, 2.0)))
    err = capsys.readouterr().err
    assert "wide.png: aspect" in err and "no face detector" in err
    assert "bad.png" in err
    assert "tiny.png: too_small" in err and "huge.png: too_large" in err


def test_restore_with_local_model_dir_seed_and_caption(tmp_path, monkeypatch):
    calls = []

    def spy_loader(path):
        restorer = load_standin(path)
        calls.append(restorer)
        return restorer

    monkeypatch.setattr("prefrestore.registry.pyfunc.load_restorer", spy_loader)
    model_dir = make_model_dir(tmp_path / "m", 0)
    src = tmp_path / "face.png"
    images.save_png(src, np.full((32, 32, 3), 90, np.uint8))
    code = cli(["restore", str(src), "--model", str(model_dir), "--seed", "11", "--steps", "3",
                     "--caption", "a photography of a woman", "--out", str(tmp_path / "out")])
    assert code == 0 and (tmp_path / "out" / "face.png").is_file()
    assert calls[0].calls == [(1, ("a photography of a woman",), 11, 3)]


def _registered(tmp_path: Path) -> None:
    register.run(load("tiny"), {"fidelity": make_model_dir(tmp_path / "f", 0), "quality": make_model_dir(tmp_path / "q", 1),
                                "reports": make_reports(tmp_path / "r", metrics(20.0, 0.5), metrics(19.0, 0.4))},
                 tmp_path / "reg", loader=load_standin)


def test_restore_refuses_bad_arguments(tmp_path, capsys):
    assert cli(["restore", str(tmp_path), "--out", str(tmp_path / "o")]) == 2
    assert "needs --variant" in capsys.readouterr().err
    assert cli(["restore", str(tmp_path), "--model", "x", "--steps", "0", "--out", str(tmp_path / "o")]) == 2
    assert cli(["restore", str(tmp_path / "missing.png"), "--variant", "quality", "--out", str(tmp_path / "o")]) == 1
    assert "no image files found" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_missing_paths_and_name_clashes_do_not_cancel_the_batch(tmp_path, capsys):
    """A missing path is counted and skipped; face.png and face.jpg both get restored, the second under
    a deterministic new name; `restored N of M` says what happened."""
    _registered(tmp_path)
    (tmp_path / "x").mkdir()
    images.save_png(tmp_path / "x" / "face.png", np.full((32, 32, 3), 10, np.uint8))
    Image.fromarray(np.full((32, 32, 3), 200, np.uint8)).save(tmp_path / "x" / "face.jpg", quality=95)
    images.save_png(tmp_path / "face.png", np.full((32, 32, 3), 90, np.uint8))
    args = [str(tmp_path / "x"), str(tmp_path / "nope.png"), str(tmp_path / "face.png")]
    code = cli(["restore", *args, "--variant", "quality", "--out", str(tmp_path / "o")])
    out = capsys.readouterr()
    assert code == 1
    assert "restored 3 of 4 images" in out.out and "nope.png: input not found" in out.err
    written = sorted(p.name for p in (tmp_path / "o").glob("*.png"))
    assert written == ["face.png", "face.png-2.png", "face.png.png"]  # x/face.jpg, x/face.png, ./face.png
    np.testing.assert_array_equal(images.load_rgb(tmp_path / "o" / "face.png"),  # the first input keeps its name
                                  bicubic(images.load_rgb(tmp_path / "x" / "face.jpg")))
    assert "renamed:" in out.out


def test_a_modified_registered_model_is_refused(tmp_path, capsys):
    """One flipped byte in the registered weights: a one-line error naming the file, nothing restored;
    restoring never writes into the registry's artifact store."""
    _registered(tmp_path)
    images.save_png(tmp_path / "face.png", np.full((32, 32, 3), 90, np.uint8))
    store = Path(os.environ["MLFLOW_TRACKING_URI"].removeprefix("sqlite:///")).parent / "mlartifacts"
    weights = sorted(store.glob("**/artifacts/q/model.safetensors"))
    assert weights, "the registered quality model's weights were not found in the artifact store"
    before = {p: p.stat().st_mtime_ns for p in store.rglob("*") if p.is_file()}
    assert cli(["restore", str(tmp_path / "face.png"), "--variant", "quality", "--out", str(tmp_path / "ok")]) == 0
    after = {p: p.stat().st_mtime_ns for p in store.rglob("*") if p.is_file()}
    assert after == before  # a read that writes nothing
    data = bytearray(weights[-1].read_bytes())
    data[-1] ^= 0xFF
    weights[-1].write_bytes(bytes(data))
    assert cli(["restore", str(tmp_path / "face.png"), "--variant", "quality", "--out", str(tmp_path / "o")]) == 1
    err = capsys.readouterr().err
    assert "model.safetensors: sha256 differs from the registered one" in err
    assert not (tmp_path / "o").exists()


def test_a_model_folder_with_a_pickle_is_refused_unless_allowed(tmp_path, capsys, monkeypatch):
    model_dir = make_model_dir(tmp_path / "m", 0)
    (model_dir / "extra.pkl").write_bytes(b"\x80\x04N.")
    images.save_png(tmp_path / "face.png", np.full((32, 32, 3), 90, np.uint8))
    assert cli(["restore", str(tmp_path / "face.png"), "--model", str(model_dir), "--out", str(tmp_path / "o")]) == 1
    assert "extra.pkl: a pickle" in capsys.readouterr().err and not (tmp_path / "o").exists()
    monkeypatch.setattr("prefrestore.registry.pyfunc.load_restorer", load_standin)
    assert cli(["restore", str(tmp_path / "face.png"), "--model", str(model_dir), "--allow-pickle",
                "--out", str(tmp_path / "o")]) == 0
