"""The fast path (blur computed only where the resize samples) equals the direct full-resolution path.

Ground truth: ``pre_jpeg_reference`` = ``cv2.filter2D`` (41x41 or adaptive kernel, reflect-101) over the
whole image, then ``cv2.resize``, noise, clip. Same drawn params; max abs diff <= 1/255 before JPEG.
"""

from __future__ import annotations

import dataclasses

import cv2
import numpy as np
import pytest
from test_degrade import face_like  # the same test image as the degradation tests

from prefrestore import degrade_fast
from prefrestore.config import load
from prefrestore.degrade import (
    DegradeConfig,
    DegradeParams,
    degrade,
    degrade_reference,
    draw_params,
    gaussian_kernel,
    pre_jpeg,
    pre_jpeg_reference,
)

TOL = 1.0 / 255.0




def _cfg(profile: str, **changes) -> DegradeConfig:
    return dataclasses.replace(load(profile).section("degrade", DegradeConfig), **changes)


@pytest.mark.parametrize(("profile", "changes", "size"), [
    ("paper", {}, 512),
    ("released", {}, 512),
    ("released", {"aniso_prob": 1.0, "downsample": (1.0, 30.0)}, 256),
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
    assert worst < 1e-3  # in practice it is float rounding, far inside one grey level


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
    assert np.abs(got - want).max() < 1e-4  # float32 rounding inside OpenCV


def test_separable_factors_meet_tolerance() -> None:
    cfg = _cfg("released")
    for theta in (0.0, 0.3, np.pi / 4, 2.0):
        p = DegradeParams("aniso", 9.0, 1.2, theta, 4.0, 0.0, 50, 0, False)
        k = gaussian_kernel(p, cfg)
        v, h = degrade_fast.separable_factors(k)
        assert np.abs(k - np.einsum("si,sj->ij", v, h)).sum() <= degrade_fast.SEPARABLE_TOL
        if theta == 0.0:
            assert len(v) == 1  # axis-aligned Gaussians are exactly separable


def test_reflect101_matches_opencv() -> None:
    idx = np.arange(-30, 40)
    for size in (1, 2, 5, 17):
        row = np.arange(size, dtype=np.float32)[None]
        padded = cv2.copyMakeBorder(row, 0, 0, 30, 39 - size + 1, cv2.BORDER_REFLECT_101)[0]
        assert np.array_equal(degrade_fast.reflect101(idx, size), padded.astype(int))
