"""Degradation model (Eq. 16): config presets, parameter draws, replay, self-reconstruction, bad input."""

from __future__ import annotations

import dataclasses
import math
import threading

import cv2
import numpy as np
import pandas as pd
import pytest
from helpers.faces import face_like

from prefrestore.core.config import ConfigError, load
from prefrestore.data.degrade.direct import (
    PARAM_COLUMNS,
    DegradeConfig,
    DegradeParams,
    degrade,
    degrade_reference,
    draw_params,
    gaussian_kernel,
    kernel_radius,
    lq_size,
    noise_field,
    opencv_seed,
    params_for,
    round_to_uint8,
)


@pytest.fixture(scope="module")
def paper() -> DegradeConfig:
    return load("paper").section("degrade", DegradeConfig)


@pytest.fixture(scope="module")
def released() -> DegradeConfig:
    return load("released").section("degrade", DegradeConfig)


# Every field of the two released presets, checked against zjYao36/Pref_Restore @ 966915e:
# blip3o/data/dataset.py:403-413 (the ranges the training path passes to degrade_image), :527 (the 20%
# (HQ, HQ) skip), and blip3o/data/image_degradation.py (defaults :11-23, draws and operators :59-91).
RELEASED = {
    "p_rec": 0.2, "aniso_prob": 0.5, "sigma": (1.0, 15.0), "rotation": (-math.pi, math.pi), "kernel_size": 41,
    "downsample": (1.0, 30.0), "size_rule": "floordiv", "down_interp": "linear", "up_interp": "linear",
    "noise": (0.0, 20.0), "noise_kind": "color", "jpeg_quality": (30, 90), "quality_draw": "floor_uniform",
    "quantize": "truncate",
}
RELEASED_DEFAULTS = {**RELEASED, "p_rec": 0.0, "downsample": (4.0, 30.0), "jpeg_quality": (30, 80)}
NOT_RELEASED = {"kernel_truncate", "benchmark_seed", "workers"}  # project choices, not the released code's


def test_presets_load_with_documented_values(paper: DegradeConfig, released: DegradeConfig) -> None:
    assert (paper.sigma, paper.downsample, paper.noise, paper.jpeg_quality) == ((1, 15), (1, 30), (0, 20), (40, 100))
    assert paper.aniso_prob == 0.0 and paper.p_rec == 0.1
    assert set(RELEASED) | NOT_RELEASED == {f.name for f in dataclasses.fields(DegradeConfig)}
    defaults = load("released_defaults").section("degrade", DegradeConfig)
    for name, want in RELEASED.items():
        assert getattr(released, name) == want, name
    for name, want in RELEASED_DEFAULTS.items():
        assert getattr(defaults, name) == want, name
    tiny = load("tiny").section("degrade", DegradeConfig)
    assert tiny.downsample[1] <= 8 and tiny.kernel_size == 0


@pytest.mark.parametrize("override", [
    {"degrade.p_rec": 1.5}, {"degrade.sigma": [5.0, 1.0]}, {"degrade.kernel_size": 40},
    {"degrade.downsample": [0.5, 4.0]}, {"degrade.jpeg_quality": [30, 120]}, {"degrade.down_interp": "lanczos9"},
    {"degrade.sigma": 3.0}, {"degrade.workers": 0},
])
def test_out_of_range_is_config_error(override: dict) -> None:
    with pytest.raises(ConfigError):
        load("paper").with_overrides(override).section("degrade", DegradeConfig)


@pytest.mark.parametrize("profile", ["paper", "released", "released_defaults", "tiny"])
def test_draws_stay_in_range(profile: str) -> None:
    cfg = load(profile).section("degrade", DegradeConfig)
    rng = np.random.default_rng(0)
    draws = [draw_params(rng, cfg) for _ in range(2000)]
    frame = pd.DataFrame([d.as_row() for d in draws])
    assert frame["sigma_x"].between(*cfg.sigma).all() and frame["sigma_y"].between(*cfg.sigma).all()
    assert frame["r"].between(*cfg.downsample).all() and frame["delta"].between(*cfg.noise).all()
    assert frame["q"].between(*cfg.jpeg_quality).all() and frame["theta"].between(*cfg.rotation).all()
    iso = frame[frame["kernel"] == "iso"]
    assert (iso["sigma_x"] == iso["sigma_y"]).all() and (iso["theta"] == 0).all()
    assert abs((frame["kernel"] == "aniso").mean() - cfg.aniso_prob) < 0.04
    # the ranges are actually covered, not a corner of them
    assert frame["r"].max() - frame["r"].min() > 0.9 * (cfg.downsample[1] - cfg.downsample[0])
    if cfg.quality_draw == "floor_uniform":  # int(U(30, 90)) never reaches 90
        assert frame["q"].max() == cfg.jpeg_quality[1] - 1 and frame["q"].min() == cfg.jpeg_quality[0]
    else:
        assert frame["q"].max() == cfg.jpeg_quality[1] and frame["q"].min() == cfg.jpeg_quality[0]


@pytest.mark.parametrize("profile", ["paper", "released"])
def test_self_reconstruction_frequency(profile: str) -> None:
    cfg = load(profile).section("degrade", DegradeConfig)
    flags = [params_for(f"img{i:05d}", 0, cfg).self_rec for i in range(4000)]
    # binomial std at n=4000 is <= 0.0064; 4 sigma
    assert abs(np.mean(flags) - cfg.p_rec) < 0.026


def test_self_reconstruction_returns_hq(paper: DegradeConfig) -> None:
    img = face_like(64)
    p = dataclasses.replace(params_for("a", 0, paper), self_rec=True)
    out = degrade(img, p, paper)
    assert np.array_equal(out, img) and out is not img


def test_params_depend_only_on_seed_id_epoch(paper: DegradeConfig) -> None:
    a = params_for("face_001", 7, paper)
    assert params_for("face_001", 7, paper) == a
    assert params_for("face_002", 7, paper) != a
    assert params_for("face_001", 8, paper) != a
    assert params_for("face_001", 7, paper, epoch=1) != a


def test_degrade_changes_image_and_keeps_shape(paper: DegradeConfig) -> None:
    img = face_like(128)
    p = DegradeParams("iso", 3.0, 3.0, 0.0, 4.0, 10.0, 50, 123, False)
    out = degrade(img, p, paper)
    assert out.shape == img.shape and out.dtype == np.uint8
    # a blurred, 4x downsampled copy has far less high-frequency energy
    def hf(x: np.ndarray) -> float:
        return float(np.abs(np.diff(x.astype(float), axis=1)).mean())
    assert hf(out) < 0.7 * hf(img)
    assert 5 < np.abs(out.astype(float) - img).mean() < 60


def test_replay_from_manifest_is_bit_exact(released: DegradeConfig, tmp_path) -> None:
    img = face_like(96, seed=3)
    rows, outs = [], []
    for i in range(12):
        p = params_for(f"s{i}", 0, released)
        outs.append(degrade(img, p, released))
        rows.append({"id": f"s{i}", **p.as_row()})
    pd.DataFrame(rows).to_parquet(tmp_path / "pairs.parquet")
    back = pd.read_parquet(tmp_path / "pairs.parquet")
    assert set(PARAM_COLUMNS) <= set(back.columns)
    for row, out in zip(back.to_dict("records"), outs, strict=True):
        p = DegradeParams.from_row(row)
        assert p == params_for(row["id"], 0, released)
        assert np.array_equal(degrade(img, p, released), out)


def test_kernel_truncation(paper: DegradeConfig) -> None:
    p = DegradeParams("iso", 15.0, 15.0, 0.0, 4.0, 0.0, 90, 0, False)
    k = gaussian_kernel(p, paper)
    assert k.shape == (41, 41) and math.isclose(k.sum(), 1.0)
    # hard cut at +-20 px (1.33 sigma): the edge weight is still exp(-0.5 * (20/15)^2) of the centre row's
    assert math.isclose(k[20, 0] / k[20, 20], math.exp(-0.5 * (20 / 15) ** 2), rel_tol=1e-9)
    adaptive = dataclasses.replace(paper, kernel_size=0, kernel_truncate=3.0)
    assert kernel_radius(p, adaptive) == 45 and gaussian_kernel(p, adaptive).shape == (91, 91)
    aniso = DegradeParams("aniso", 6.0, 1.5, math.pi / 4, 4.0, 0.0, 90, 0, False)
    ka = gaussian_kernel(aniso, paper)
    assert np.allclose(ka, ka[::-1, ::-1]) and not np.allclose(ka, ka.T[::-1])  # point-symmetric, rotated
    assert ka[15, 15] > ka[15, 25]  # elongated along the diagonal


def test_lq_size_rules(paper: DegradeConfig) -> None:
    p = DegradeParams("iso", 1.0, 1.0, 0.0, 7.3, 0.0, 90, 0, False)
    assert lq_size(512, 512, p, paper) == (70, 70)  # int(512 // 7.3)
    assert lq_size(512, 512, p, dataclasses.replace(paper, size_rule="round")) == (70, 70)
    p = dataclasses.replace(p, r=29.9)
    assert lq_size(512, 512, p, paper) == (17, 17)
    assert lq_size(16, 16, p, paper) == (1, 1)  # never 0


@pytest.mark.parametrize("bad", [
    np.zeros((64, 64), np.uint8), np.zeros((64, 64, 4), np.uint8), np.zeros((64, 64, 3), np.float32),
    [[1, 2, 3]], np.zeros((1, 64, 3), np.uint8),
])
def test_bad_input_is_a_clear_error(bad, paper: DegradeConfig) -> None:
    p = params_for("x", 0, paper)
    with pytest.raises(ValueError, match="uint8|too small"):
        degrade(bad, dataclasses.replace(p, self_rec=False), paper)
    with pytest.raises(ValueError, match="uint8|too small"):
        degrade_reference(bad, p, paper)


def test_real_faces(shared_faces, paper: DegradeConfig, released: DegradeConfig) -> None:
    from prefrestore.core.images import load_rgb

    paths = sorted((shared_faces / "hq").glob("*.png"))[:3]
    for k, path in enumerate(paths):
        hq = load_rgb(path)
        for cfg in (paper, released):
            p = dataclasses.replace(params_for(path.stem, 0, cfg), self_rec=False, r=4.0 + 2 * k)
            lq = degrade(hq, p, cfg)
            assert lq.shape == hq.shape == (512, 512, 3)
            assert np.array_equal(lq, degrade(hq, p, cfg))
            # the reference path gives the same image up to JPEG re-quantisation of 1-LSB input changes
            ref = degrade_reference(hq, p, cfg)
            assert np.abs(ref.astype(int) - lq).mean() < 0.5


def test_round_to_uint8_is_rint_on_the_unit_interval() -> None:
    """The JPEG input quantisation equals np.rint(x * 255) to uint8 on [0, 1], half-integer edges included."""
    edges = []
    for k in range(256):
        half = np.float32((k + 0.5) / 255.0)
        edges += [np.nextafter(half, np.float32(-1)), half, np.nextafter(half, np.float32(2)), np.float32(k / 255.0)]
    x = np.clip(np.array(edges, dtype=np.float32), 0.0, 1.0).reshape(-1, 4)
    rng = np.random.default_rng(0)
    for arr in (x, rng.random((257, 311, 3), dtype=np.float32), np.array([[0.0, 1.0]], dtype=np.float32)):
        assert np.array_equal(round_to_uint8(arr), np.rint(arr * 255.0).astype(np.uint8))
    assert round_to_uint8(np.array([[1.5]], dtype=np.float32))[0, 0] == 255  # saturates (astype would wrap)


def _noise_params(seed: int, delta: float) -> DegradeParams:
    return DegradeParams("iso", 2.0, 2.0, 0.0, 4.0, delta, 50, seed, False)


def test_noise_field_is_gaussian_with_the_drawn_std(released: DegradeConfig) -> None:
    """n_delta of Eq. 16: mean 0, std delta / 255 per channel, no correlation between neighbours or channels."""
    field = noise_field((300, 300, 3), _noise_params(2**62 + 12345, 12.0), released)
    assert field.shape == (300, 300, 3) and field.dtype == np.float32
    z = field.astype(np.float64) / (12.0 / 255.0)
    n = z[..., 0].size
    for c in range(3):  # 90k samples a channel: 5 sigma of the sample mean, std and kurtosis
        assert abs(z[..., c].mean()) < 5 / math.sqrt(n)
        assert abs(z[..., c].std() - 1.0) < 5 / math.sqrt(2 * n)
        assert abs((z[..., c] ** 4).mean() - 3.0) < 5 * math.sqrt(96 / n)
    for a, b in ((z[:, 1:], z[:, :-1]), (z[1:], z[:-1]), (z[..., 0], z[..., 1]), (z[..., 1], z[..., 2])):
        assert abs(float((a * b).mean())) < 5 / math.sqrt(a.size)
    assert np.all(noise_field((8, 8, 3), _noise_params(3, 0.0), released) == 0.0)


def test_noise_field_depends_on_the_seed_alone(released: DegradeConfig) -> None:
    """Same seed: same field, whatever OpenCV's thread count, on another thread, into a reused buffer; other seeds: unrelated fields."""
    p = _noise_params(987654321987, 7.0)
    first = noise_field((64, 80, 3), p, released)
    threads = cv2.getNumThreads()
    try:
        cv2.setNumThreads(4)
        again = noise_field((64, 80, 3), p, released)
    finally:
        cv2.setNumThreads(threads)
    elsewhere = {}
    worker = threading.Thread(target=lambda: elsewhere.update(field=noise_field((64, 80, 3), p, released)))
    worker.start()
    worker.join()
    reused = noise_field((64, 80, 3), p, released, out=np.full((64, 80, 3), 9.0, dtype=np.float32))
    for field in (again, elsewhere["field"], reused):
        assert np.array_equal(field, first)
    for other in (p.noise_seed + 1, p.noise_seed + (1 << 32) + 1, 12):  # neighbouring seeds, in either half
        z = noise_field((64, 80, 3), dataclasses.replace(p, noise_seed=other), released)
        assert abs(float((z * first).mean()) / float((first * first).mean())) < 5 / math.sqrt(first.size)
    gray = noise_field((64, 80, 3), p, dataclasses.replace(released, noise_kind="gray"))
    assert gray.shape == (64, 80, 1)
    with pytest.raises(ValueError, match="C-contiguous float32"):
        noise_field((64, 80, 3), p, released, out=np.zeros((80, 64, 3), dtype=np.float32).transpose(1, 0, 2))


def test_opencv_seed_fits_a_c_int_and_keeps_both_halves() -> None:
    """The 63-bit noise seed folds to a C int; a change in either 32-bit half changes the folded seed."""
    for seed in (0, 1, 2**31 - 1, 2**31, 2**32 - 1, 2**32, 2**63 - 2, 0x1234_5678_9ABC_DEF0):
        folded = opencv_seed(seed)
        assert -(2**31) <= folded < 2**31
        cv2.setRNGSeed(folded)  # accepted
        assert opencv_seed(seed ^ 1) != folded and opencv_seed(seed ^ (1 << 40)) != folded
