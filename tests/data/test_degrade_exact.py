"""The fast paths (banded: blur computed only where the resize samples; DFT) equal the direct path.

Ground truth: ``pre_jpeg_reference`` = ``cv2.filter2D`` (41x41 or adaptive kernel, reflect-101) over the
whole image, then ``cv2.resize``, noise, clip. Same drawn params; max abs diff <= 1/255 before JPEG.
Each shortcut of degrade_fast.py is also proved on its own: banded operator storage, block sizes,
interleaved rows with several rank terms, the cross approximation and its error bound, the closed-form kernel, the DFT blur and the
per-sample choice between the two paths (Eq. 16's blur + downsample).
"""

from __future__ import annotations

import dataclasses

import cv2
import numpy as np
import pytest
from helpers.faces import face_like

from prefrestore.core.config import load
from prefrestore.data.degrade import dft as degrade_dft
from prefrestore.data.degrade import fast as degrade_fast
from prefrestore.data.degrade import kernel as degrade_kernel
from prefrestore.data.degrade.direct import (
    DegradeConfig,
    DegradeParams,
    blur_plan,
    degrade,
    degrade_reference,
    draw_params,
    gaussian_kernel,
    kernel_factors,
    kernel_radius,
    lq_size,
    pre_jpeg,
    pre_jpeg_reference,
)

TOL = 1.0 / 255.0
FLOAT_TOL = degrade_fast.SEPARABLE_TOL + 1e-6  # the rank truncation's bound plus float32 rounding
ROUNDING = 1e-5  # float32 rounding alone: what a shortcut without rank truncation must stay within


@pytest.fixture(autouse=True, params=["compiled", "blas"])
def pass1_path(request, monkeypatch) -> str:
    """Every test here runs with both pass-1 paths: the compiled kernel (``_kernels.c``) and the BLAS products."""
    if request.param == "compiled" and degrade_kernel.compiled_pass1() is None:
        pytest.skip("the compiled pass-1 kernel is not built or this CPU lacks AVX-512")
    if request.param == "blas":
        monkeypatch.setattr(degrade_kernel, "compiled_pass1", lambda: None)
    return request.param


def _cfg(profile: str, **changes) -> DegradeConfig:
    return dataclasses.replace(load(profile).section("degrade", DegradeConfig), **changes)


@pytest.mark.parametrize(("profile", "changes", "size"), [
    ("paper", {}, 512),
    ("released", {}, 512),
    ("released", {"aniso_prob": 1.0, "downsample": (1.0, 4.0)}, 512),  # where the DFT path is picked
    ("released_defaults", {}, 512),
    ("released", {"aniso_prob": 1.0}, 256),
    ("paper", {"down_interp": "area", "up_interp": "area"}, 256),
    ("paper", {"down_interp": "cubic", "up_interp": "cubic", "size_rule": "round"}, 200),
    ("tiny", {}, 64),
    ("tiny", {"aniso_prob": 1.0, "kernel_size": 0}, 64),
    ("paper", {"kernel_size": 0, "kernel_truncate": 4.0, "aniso_prob": 0.5}, 96),  # kernel wider than the image
])
def test_fast_equals_direct_before_jpeg(profile: str, changes: dict, size: int) -> None:
    cfg = _cfg(profile, **changes)
    rng = np.random.default_rng(11)
    img = face_like(size, seed=size)
    worst = 0.0
    for _ in range(6 if size >= 256 else 12):
        p = dataclasses.replace(draw_params(rng, cfg), self_rec=False)
        fast, ref = pre_jpeg(img, p, cfg), pre_jpeg_reference(img, p, cfg)
        assert fast.shape == ref.shape and fast.dtype == ref.dtype == np.float32
        worst = max(worst, float(np.abs(fast - ref).max()))
    assert worst <= TOL
    assert worst < 1e-3  # in practice far inside one grey level (rank truncation on faces, float rounding)


def test_fast_equals_direct_at_extremes() -> None:
    cfg = _cfg("released", aniso_prob=1.0)
    img = face_like(512, seed=5)
    for p in (
        DegradeParams("iso", 15.0, 15.0, 0.0, 1.0, 0.0, 90, 1, False),  # no downsampling, widest blur
        DegradeParams("iso", 1.0, 1.0, 0.0, 30.0, 20.0, 30, 2, False),  # narrowest blur, 17x17 LQ
        DegradeParams("aniso", 15.0, 1.0, 0.7853981633974483, 2.0, 5.0, 60, 3, False),  # thin diagonal
        DegradeParams("aniso", 1.0, 15.0, -2.9, 12.5, 5.0, 60, 4, False),
    ):
        assert np.abs(pre_jpeg(img, p, cfg) - pre_jpeg_reference(img, p, cfg)).max() <= TOL


def test_full_outputs_agree_after_jpeg() -> None:
    """After JPEG the paths may differ where a 1e-6 input change flips a rounding; rarely and by little."""
    cfg = _cfg("paper")
    rng = np.random.default_rng(2)
    img = face_like(256, seed=1)
    diffs = []
    for _ in range(8):
        p = dataclasses.replace(draw_params(rng, cfg), self_rec=False)
        diffs.append(np.abs(degrade(img, p, cfg).astype(int) - degrade_reference(img, p, cfg)).mean())
    assert np.mean(diffs) < 0.05


@pytest.mark.parametrize("interp", ["linear", "area", "cubic"])
@pytest.mark.parametrize(("n_in", "n_out"), [(512, 70), (512, 17), (64, 64), (64, 13), (17, 512)])
def test_resize_matrix_is_opencv_resize(interp: str, n_in: int, n_out: int) -> None:
    x = np.random.default_rng(0).random((n_in, n_in, 3), dtype=np.float32)
    ry, rx = degrade_fast.resize_matrix(n_in, n_out, interp), degrade_fast.resize_matrix(n_in, n_out + 1, interp)
    want = cv2.resize(x, (n_out + 1, n_out), interpolation=degrade_fast.INTERPOLATION[interp])
    got = np.stack([ry @ x[..., c] @ rx.T for c in range(3)], axis=2)
    assert np.abs(got - want).max() < 1e-6  # the float32 weights exactly; float32 rounding inside OpenCV


def test_separable_factors_meet_tolerance() -> None:
    cfg = _cfg("released")
    for theta in (0.0, 0.3, np.pi / 4, 2.0):
        p = DegradeParams("aniso", 9.0, 1.2, theta, 4.0, 0.0, 50, 0, False)
        k = gaussian_kernel(p, cfg)
        v, h = degrade_fast.separable_factors(k)
        assert degrade_fast.worst_pixel_error(k - np.einsum("si,sj->ij", v, h)) <= degrade_fast.SEPARABLE_TOL
        if theta == 0.0:
            assert len(v) == 1  # axis-aligned Gaussians are exactly separable


@pytest.mark.parametrize(("profile", "changes"), [
    ("released", {"aniso_prob": 1.0}),
    ("tiny", {"aniso_prob": 1.0}),  # adaptive kernel sizes
])
def test_cross_approximation_rank_is_near_the_fewest(profile: str, changes: dict) -> None:
    """The cross approximation meets the bound with at most 2 terms over the SVD's fewest, usually none over."""
    cfg = _cfg(profile, **changes)
    rng = np.random.default_rng(4)
    excess = []
    for _ in range(200):
        k = gaussian_kernel(draw_params(rng, cfg), cfg)
        u, s, vt = np.linalg.svd(k)
        fewest = next(r for r in range(1, len(s) + 1)
                      if degrade_fast.worst_pixel_error(k - (u[:, :r] * s[:r]) @ vt[:r]) <= degrade_fast.SEPARABLE_TOL)
        v, h = degrade_fast.separable_factors(k)
        assert degrade_fast.worst_pixel_error(k - v.T @ h) <= degrade_fast.SEPARABLE_TOL
        excess.append(len(v) - fewest)
    assert max(excess) <= 2
    assert np.mean(excess) < 0.4  # measured: 0.26 (released), 0.07 (tiny) over 3000 draws


def test_cross_approximation_is_exact_at_full_rank() -> None:
    """Run to full rank (tol 0), the crosses reproduce any kernel: the residual update loses nothing."""
    k = np.random.default_rng(0).random((9, 9))
    v, h = degrade_fast.separable_factors(k, tol=0.0)
    assert len(v) == 9
    assert np.abs(v.T @ h - k).max() < 1e-12


def test_worst_pixel_error_is_attained() -> None:
    """The bound of the rank truncation is reached by a [0, 1] image, and no [0, 1] image exceeds it."""
    cfg = _cfg("released", aniso_prob=1.0)
    p = DegradeParams("aniso", 9.0, 1.5, 0.7, 4.0, 0.0, 50, 0, False)
    k = gaussian_kernel(p, cfg)
    u, s, vt = np.linalg.svd(k)
    residual = k - (u[:, :3] * s[:3]) @ vt[:3]
    bound = degrade_fast.worst_pixel_error(residual)
    attained = max((residual * (residual > 0)).sum(), -(residual * (residual < 0)).sum())
    assert bound == pytest.approx(attained, rel=1e-12) and bound < np.abs(residual).sum()
    for x in np.random.default_rng(0).random((200, *k.shape)):
        assert abs((residual * x).sum()) <= bound


def test_gaussian_kernel_closed_form_inverse() -> None:
    """The written-out inverse covariance equals inverting Rot diag(sx^2, sy^2) Rot^T; kernels are point-symmetric."""
    cfg = _cfg("released", aniso_prob=1.0)
    rng = np.random.default_rng(9)
    for _ in range(20):
        p = draw_params(rng, cfg)
        radius = kernel_radius(p, cfg)
        axis = np.arange(-radius, radius + 1, dtype=np.float64)
        xx, yy = np.meshgrid(axis, axis)
        c, s = np.cos(p.theta), np.sin(p.theta)
        rot = np.array([[c, -s], [s, c]])
        inv = np.linalg.inv(rot @ np.diag([p.sigma_x**2, p.sigma_y**2]) @ rot.T)
        want = np.exp(-0.5 * (inv[0, 0] * xx**2 + 2 * inv[0, 1] * xx * yy + inv[1, 1] * yy**2))
        k = gaussian_kernel(p, cfg)
        assert np.abs(k - want / want.sum()).max() <= 1e-12 * k.max()
        assert np.array_equal(k, k[::-1, ::-1])


@pytest.mark.parametrize("interp", ["linear", "area", "cubic"])
@pytest.mark.parametrize(("size_in", "size_out", "length"), [
    (512, 17, 41), (512, 70, 41), (512, 341, 41), (512, 512, 41), (64, 13, 19), (96, 48, 121), (5, 2, 7),
])
@pytest.mark.parametrize("block", [1, 3, 8])
def test_band_operators_are_the_dense_operator(interp: str, size_in: int, size_out: int, length: int,
                                               block: int) -> None:
    """Banded storage (start, span per block of output rows) holds exactly the weights of R @ C."""
    kernels = np.random.default_rng(length).random((2, length))
    ops, start, span = degrade_fast.band_operators(kernels, size_in, size_out, interp, block)
    assert ops.shape == (len(start), block, span, 2) and span <= size_in
    assert start.min() >= 0 and start.max() + span <= size_in
    for s, kernel in enumerate(kernels):
        dense = np.zeros((len(start) * block, size_in))
        for k, lo in enumerate(start):
            dense[k * block : (k + 1) * block, lo : lo + span] = ops[k, :, :, s]
        assert not dense[size_out:].any()  # padding rows of the last block
        want = degrade_fast.blur_resize_operator(kernel, size_in, size_out, interp)
        assert np.abs(dense[:size_out] - want).max() <= 1e-12


def _direct(img: np.ndarray, p: DegradeParams, cfg: DegradeConfig) -> np.ndarray:
    """Blur + downsample as pre_jpeg_reference computes it (no noise)."""
    kernel = gaussian_kernel(p, cfg).astype(np.float32)
    blurred = cv2.filter2D(img.astype(np.float32) / 255.0, -1, kernel, borderType=cv2.BORDER_REFLECT_101)
    h, w = lq_size(*img.shape[:2], p, cfg)
    return cv2.resize(blurred, (w, h), interpolation=degrade_fast.INTERPOLATION[cfg.down_interp])


@pytest.mark.parametrize("block", [1, 2, 4, 8, 32])
@pytest.mark.parametrize("interp", ["linear", "area", "cubic"])
def test_every_block_size_gives_the_direct_result(block: int, interp: str, monkeypatch) -> None:
    """The block tables are a speed choice only: any block size, in either pass, gives the same result."""
    monkeypatch.setattr(degrade_fast, "pass1_shape", lambda ratio, rank: (block, rank))
    monkeypatch.setattr(degrade_kernel, "kernel_block", lambda ratio, rank: block)
    monkeypatch.setattr(degrade_fast, "pass2_block", lambda ratio, rank: block)
    cfg = _cfg("released", down_interp=interp, up_interp=interp)
    img = face_like(160, seed=3)
    for p in (
        DegradeParams("iso", 4.0, 4.0, 0.0, 1.3, 0.0, 50, 0, False),  # rank 1: interleaved rows
        DegradeParams("iso", 9.0, 9.0, 0.0, 7.5, 0.0, 50, 0, False),
        DegradeParams("aniso", 8.0, 2.0, 0.6, 1.7, 0.0, 50, 0, False),  # rank > 1: R terms in one C-channel transpose
        DegradeParams("aniso", 12.0, 3.0, -2.2, 9.0, 0.0, 50, 0, False),
    ):
        v, h = kernel_factors(p, cfg)
        assert (len(v) > 1) == (p.kernel == "aniso")
        got = degrade_fast.blur_downsample(img, v, h, lq_size(160, 160, p, cfg), interp)
        assert np.abs(got - _direct(img, p, cfg)).max() <= FLOAT_TOL


@pytest.mark.parametrize("interp", ["linear", "area", "cubic"])
def test_planar_and_interleaved_rows_give_the_same_result(interp: str, monkeypatch) -> None:
    """Channel-planar image rows (1-channel transpose) and interleaved ones (C-channel transpose) are a speed choice only.

    Each draw is run with the split forced on and forced off: the two agree to float32 rounding and both
    equal the direct computation; a wrong layout (channels or columns mixed up) would differ by whole
    grey levels on this image.
    """
    cfg = _cfg("released", down_interp=interp, up_interp=interp)
    img = face_like(160, seed=6)
    for p in (
        DegradeParams("iso", 4.0, 4.0, 0.0, 1.3, 0.0, 50, 0, False),
        DegradeParams("iso", 9.0, 9.0, 0.0, 20.0, 0.0, 50, 0, False),
        DegradeParams("aniso", 8.0, 2.0, 0.6, 1.7, 0.0, 50, 0, False),
        DegradeParams("aniso", 12.0, 3.0, -2.2, 9.0, 0.0, 50, 0, False),
    ):
        v, h = kernel_factors(p, cfg)
        out_hw = lq_size(160, 160, p, cfg)
        got = {}
        for planar, rows in (("planar", 0), ("interleaved", 10**9)):
            monkeypatch.setattr(degrade_fast, "PLANAR_ROWS", rows)
            got[planar] = degrade_fast.blur_downsample(img, v, h, out_hw, interp)
        assert np.abs(got["planar"] - got["interleaved"]).max() <= ROUNDING
        assert np.abs(got["planar"] - _direct(img, p, cfg)).max() <= FLOAT_TOL


@pytest.mark.parametrize(("rank", "block", "quantum", "want"), [
    (1, 1, 1, 1), (2, 1, 4, 4), (3, 1, 4, 4), (5, 1, 4, 8), (7, 1, 4, 8), (9, 1, 4, 12), (3, 2, 4, 4), (5, 2, 4, 6),
    (7, 2, 4, 8), (3, 4, 4, 3), (7, 8, 4, 7), (3, 1, 2, 4), (5, 1, 2, 6), (5, 2, 2, 5), (5, 1, 1, 5)])
def test_padded_rank_rounds_product_rows_to_the_quantum(rank: int, block: int, quantum: int, want: int) -> None:
    """Pass 1's products get a multiple of ``quantum`` rows (terms x block); blocks of a quantum or more are left alone."""
    assert degrade_fast.padded_rank(rank, block, quantum) == want
    assert want >= rank


@pytest.mark.parametrize("family", ["packed", "small"])
def test_block_tables_cover_every_rank_and_ratio(family: str, monkeypatch) -> None:
    """Each family's tables give a valid (block, terms) and pass-2 block at every rank and r, ending unbounded."""
    monkeypatch.setattr(degrade_fast, "gemm_family", lambda: family)
    for rank in range(1, 40):
        for ratio in np.linspace(1.0, 64.0, 200):
            block, terms = degrade_fast.pass1_shape(float(ratio), rank)
            assert block in (1, 2, 4, 8, 16) and terms >= rank
            assert degrade_fast.pass2_block(float(ratio), rank) in (1, 2, 4, 8, 16)
    for table in (degrade_fast.PASS1[family], degrade_fast.PASS2[family]):
        assert set(table) == set(range(1, 13)) and all(steps[-1][0] == np.inf for steps in table.values())


@pytest.mark.parametrize("block", [1, 2])
def test_zero_padded_terms_leave_the_result(block: int, monkeypatch) -> None:
    """The zero terms pass 1 adds (padded_rank) change no output beyond float32 rounding, and are never read."""
    monkeypatch.setattr(degrade_fast, "pass1_shape", lambda ratio, rank: (block, degrade_fast.padded_rank(rank, block, 4)))
    cfg = _cfg("released")
    img = face_like(160, seed=5)
    p = DegradeParams("aniso", 5.0, 1.5, 0.4, 3.3, 0.0, 50, 0, False)  # rank 9: 12 terms, or 10 in pairs
    v, h = kernel_factors(p, cfg)
    assert degrade_fast.padded_rank(len(v), block, 4) > len(v)  # this kernel's rank is padded
    out_hw = lq_size(160, 160, p, cfg)
    padded = degrade_fast.blur_downsample(img, v, h, out_hw, "linear")
    degrade_fast.workspace("pass1", (64, 160 * 160 * 3)).fill(np.nan)  # stale rows must not leak in
    again = degrade_fast.blur_downsample(img, v, h, out_hw, "linear")
    monkeypatch.setattr(degrade_fast, "pass1_shape", lambda ratio, rank: (block, rank))
    plain = degrade_fast.blur_downsample(img, v, h, out_hw, "linear")
    assert np.array_equal(padded, again)
    assert np.abs(padded - plain).max() <= ROUNDING
    assert np.abs(padded - _direct(img, p, cfg)).max() <= FLOAT_TOL


def test_work_buffers_are_reused_and_never_returned(pass1_path: str) -> None:
    """The per-thread work buffers (fast.workspace) are reused across draws, and no result is a view of one.

    Draws of different sizes and both blur paths, in turn and again: each repeat gives the same bytes as
    the first time (no state leaks from the draw before), no returned array shares memory with a buffer,
    and a second thread gets its own buffers with the same results.
    """
    import threading

    cfg = _cfg("released", aniso_prob=0.5)
    img = face_like(256, seed=4)
    draws = [
        DegradeParams("iso", 6.0, 6.0, 0.0, 1.4, 3.0, 60, 1, False),  # large LQ, banded
        DegradeParams("aniso", 9.0, 1.5, 0.8, 1.2, 5.0, 40, 2, False),  # small r, rotated: the DFT path
        DegradeParams("aniso", 12.0, 3.0, -2.2, 9.0, 2.0, 70, 3, False),  # rank > 1, banded
        DegradeParams("iso", 2.0, 2.0, 0.0, 20.0, 8.0, 50, 4, False),  # tiny LQ
    ]
    assert {blur_plan(p, cfg, img.shape)[0] for p in draws} == {"banded", "dft"}
    first = [degrade(img, p, cfg) for p in draws]
    smalls = [pre_jpeg(img, p, cfg) for p in draws]
    buffers = dict(degrade_fast._WORKSPACE.__dict__)
    used = {"pass1", "pass1_t", "pass2", "dft_frame", "noise", "upsample"} | ({"image"} if pass1_path == "blas" else set())
    assert used <= set(buffers)  # the float copy of the image ("image") only where pass 1 runs as BLAS products
    for out in first + smalls:
        assert not any(np.shares_memory(out, buf) for buf in buffers.values())
    again = [degrade(img, p, cfg) for p in reversed(draws)][::-1]
    assert all(np.array_equal(a, b) for a, b in zip(first, again, strict=True))
    assert all(degrade_fast._WORKSPACE.__dict__[name] is buf for name, buf in buffers.items())  # reused, not regrown

    other: list[np.ndarray] = []
    thread = threading.Thread(target=lambda: other.extend(degrade(img, p, cfg) for p in draws))
    thread.start()
    thread.join()
    assert all(np.array_equal(a, b) for a, b in zip(first, other, strict=True))


def test_fast_path_is_exact_to_float_tolerance_at_512() -> None:
    """Both presets at full size, rank terms and block sizes as drawn: float rounding, not one grey level."""
    img = face_like(512, seed=8)
    for profile in ("paper", "released"):
        cfg = _cfg(profile)
        rng = np.random.default_rng(21)
        worst = 0.0
        for _ in range(8):
            p = dataclasses.replace(draw_params(rng, cfg), self_rec=False)
            v, h = kernel_factors(p, cfg)
            got = degrade_fast.blur_downsample(img, v, h, lq_size(512, 512, p, cfg), cfg.down_interp)
            worst = max(worst, float(np.abs(got - _direct(img, p, cfg)).max()))
        assert worst <= FLOAT_TOL, profile


def test_reflect101_matches_opencv() -> None:
    """The tent form equals OpenCV's border mapping, reflections repeated many times over (kernels wider than the image)."""
    idx = np.arange(-70, 80)
    for size in (1, 2, 3, 5, 17, 64):
        row = np.arange(size, dtype=np.float32)[None]
        padded = cv2.copyMakeBorder(row, 0, 0, 70, 79 - size + 1, cv2.BORDER_REFLECT_101)[0]
        assert np.array_equal(degrade_fast.reflect101(idx, size), padded.astype(int))


@pytest.mark.parametrize("interp", ["linear", "area", "cubic"])
@pytest.mark.parametrize(("shape", "out_hw", "changes"), [
    ((512, 512), (401, 401), {}),
    ((160, 200), (97, 61), {}),  # not square, both axes resized differently
    ((96, 96), (37, 37), {"kernel_size": 0, "kernel_truncate": 3.0}),  # adaptive kernel, radius 45 of 96
])
def test_dft_blur_is_the_direct_blur(interp: str, shape: tuple[int, int], out_hw: tuple[int, int],
                                     changes: dict) -> None:
    """The DFT path: reflect-101 padding + spectrum product + crop equals filter2D + resize to float rounding."""
    cfg = _cfg("released", down_interp=interp, **changes)
    img = face_like(max(shape), seed=7)[: shape[0], : shape[1]].copy()
    for p in (DegradeParams("aniso", 8.0, 2.0, 0.7, 1.3, 0.0, 50, 0, False),
              DegradeParams("iso", 15.0, 15.0, 0.0, 1.3, 0.0, 50, 0, False)):
        got = degrade_dft.blur_downsample_dft(img, gaussian_kernel(p, cfg), out_hw, interp)
        kernel = gaussian_kernel(p, cfg).astype(np.float32)
        blurred = cv2.filter2D(img.astype(np.float32) / 255.0, -1, kernel, borderType=cv2.BORDER_REFLECT_101)
        want = cv2.resize(blurred, out_hw[::-1], interpolation=degrade_fast.INTERPOLATION[interp])
        assert got.shape == want.shape and got.dtype == np.float32
        assert np.abs(got - want).max() <= ROUNDING


@pytest.mark.parametrize(("size_y", "size_x", "radius"), [(576, 576, 20), (135, 160, 20), (75, 81, 9), (45, 50, 9)])
def test_centred_spectrum_multiplier_is_the_real_dft_of_the_centred_kernel(size_y: int, size_x: int,
                                                                         radius: int) -> None:
    """The kernel spectrum by folded GEMMs equals cv2.dft of the centred frame, CCS-laid, odd and even sizes."""
    cfg = _cfg("released", kernel_size=2 * radius + 1)
    kernel = gaussian_kernel(DegradeParams("aniso", 7.0, 1.5, 0.9, 1.3, 0.0, 50, 0, False), cfg)
    assert np.array_equal(kernel, kernel[::-1, ::-1])  # point-symmetric: the spectrum is real
    frame = np.zeros((size_y, size_x), dtype=np.float32)
    offsets = np.arange(-radius, radius + 1)
    frame[np.ix_(offsets % size_y, offsets % size_x)] = kernel
    want = degrade_dft._real_spectrum_multiplier(cv2.dft(frame))
    got = degrade_dft.centred_spectrum_multiplier(kernel, size_y, size_x)
    assert got.dtype == np.float32 and got.shape == (size_y, size_x)
    assert np.abs(got - want).max() <= 1e-6


def test_dft_blur_of_a_kernel_without_point_symmetry_is_the_direct_correlation() -> None:
    """The complex-product branch (any kernel that is not point-symmetric) is still filter2D's correlation."""
    img = face_like(160, seed=5)
    kernel = np.random.default_rng(0).random((41, 41))
    kernel /= kernel.sum()
    got = degrade_dft.blur_downsample_dft(img, kernel, (61, 61), "linear")
    blurred = cv2.filter2D(img.astype(np.float32) / 255.0, -1, kernel.astype(np.float32),
                           borderType=cv2.BORDER_REFLECT_101)
    assert np.abs(got - cv2.resize(blurred, (61, 61), interpolation=cv2.INTER_LINEAR)).max() <= ROUNDING


def test_dft_size_is_a_fast_size_that_fits() -> None:
    """dft_size: at least the padded size, even, 2^a 3^b 5^c times at most one 7; 560 for a 512-px face."""
    assert degrade_dft.dft_size(512 + 41 - 1) == 560
    for n in range(2, 1200):
        size = degrade_dft.dft_size(n)
        assert n <= size <= cv2.getOptimalDFTSize(n)
        if size != cv2.getOptimalDFTSize(n):
            assert size % 56 == 0 and degrade_dft._smooth235(size // 7)


def test_dft_blur_refuses_a_kernel_wider_than_the_image() -> None:
    with pytest.raises(ValueError, match="wider"):
        degrade_dft.blur_downsample_dft(face_like(20, seed=1), np.ones((41, 41)) / 41**2, (10, 10), "linear")
    assert not degrade_dft.dft_is_cheaper(40, 41, (20, 20), (20, 20), 3)  # so blur_plan never picks it there


def test_small_r_anisotropic_uses_the_dft_path_and_equals_direct(monkeypatch) -> None:
    """The bucket where the banded path lost (r < 2, rotated anisotropic) goes to the DFT path, exactly."""
    cfg = _cfg("released")
    img = face_like(512, seed=4)
    p = DegradeParams("aniso", 8.0, 2.0, 0.7, 1.4, 5.0, 60, 9, False)
    path, factors = blur_plan(p, cfg, img.shape)
    assert path == "dft" and factors is None
    assert len(kernel_factors(p, cfg)[0]) > 8  # a high-rank kernel: the banded cost would be ~10x the DFT's
    calls = []
    monkeypatch.setattr(degrade_fast, "blur_downsample",
                        lambda *args: calls.append("banded") or pytest.fail("banded path used"))
    got = pre_jpeg(img, p, cfg)
    assert not calls
    assert np.abs(got - pre_jpeg_reference(img, p, cfg)).max() <= ROUNDING
    assert np.array_equal(degrade(img, p, cfg), degrade(img, p, cfg))  # deterministic: same bytes on replay


def test_blur_plan_follows_the_cost_model() -> None:
    """Paper (isotropic: rank 1) stays banded at every r; released picks the cheaper modelled path per draw."""
    for profile, want_dft in (("paper", False), ("tiny", False), ("released", True)):
        cfg = _cfg(profile)
        size = 64 if profile == "tiny" else 512
        rng = np.random.default_rng(3)
        paths = []
        for _ in range(300):
            p = draw_params(rng, cfg)
            path, factors = blur_plan(p, cfg, (size, size, 3))
            assert path == blur_plan(p, cfg, (size, size, 3))[0]  # a function of the params only
            rank = len(kernel_factors(p, cfg)[0])
            length, out_hw = 2 * kernel_radius(p, cfg) + 1, lq_size(size, size, p, cfg)
            banded = degrade_dft.banded_cost(rank, length, (size, size), out_hw, 3)
            assert (path == "dft") == (degrade_dft.dft_cost(length, (size, size), 3) < banded)
            assert (factors is None) == (path == "dft")
            paths.append((path, p.r))
        dft_r = [r for path, r in paths if path == "dft"]
        assert bool(dft_r) == want_dft
        if want_dft:  # mostly small r; never the large-r end, where every rank is cheaper banded
            assert np.median(dft_r) < 4.0 and max(dft_r) < 16.0


def test_rank_truncation_bound_is_attained_and_inside_one_grey_level() -> None:
    """The hardest [0, 1] image for the truncated kernel: the fast path moves its pixel by the bound, under 1/255.

    The image is 1 exactly where the rank residual E = K - K_R is positive (0 elsewhere), centred on one pixel;
    there the banded blur differs from filter2D by sum E+ (r = 1: no resize in between). ``SEPARABLE_TOL`` is
    what keeps that within the 1/255 the fast path must hold, so raising it past 1/255 fails here.
    """
    assert degrade_fast.SEPARABLE_TOL + 1e-5 < TOL
    cfg = _cfg("released", aniso_prob=1.0)
    p = DegradeParams("aniso", 11.0, 1.5, 0.6, 1.0, 0.0, 50, 0, False)
    kernel = gaussian_kernel(p, cfg)
    v, h = kernel_factors(p, cfg)
    residual = kernel - v.T @ h
    assert len(v) > 1
    size, radius = 96, kernel_radius(p, cfg)
    img = np.zeros((size, size, 3), dtype=np.uint8)
    c = size // 2
    img[c - radius : c + radius + 1, c - radius : c + radius + 1] = 255 * (residual > 0)[..., None]
    got = degrade_fast.blur_downsample(img, v, h, (size, size), "linear")
    diff = float(np.abs(got - _direct(img, p, cfg))[c, c].max())
    assert diff == pytest.approx(float(residual[residual > 0].sum()), abs=1e-5)
    assert diff <= degrade_fast.worst_pixel_error(residual) + 1e-6 <= degrade_fast.SEPARABLE_TOL + 1e-6 < TOL
    assert diff > 0.25 * degrade_fast.SEPARABLE_TOL  # the bound is nearly used up: a real test of the tolerance
