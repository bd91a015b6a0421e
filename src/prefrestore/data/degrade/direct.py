"""The degradation model of paper Eq. 16, replayable sample by sample.

    I_l = {[(I_h (x) k_sigma) downsample_r + n_delta] JPEG_q} upsample_r          (Eq. 16)

* :class:`DegradeConfig` is the ``degrade`` section of ``params.yaml`` (ranges, kernel size,
  interpolation, ...). ``paper`` is Eq. 16 with the paper's ranges; ``released`` is what the authors
  trained with: ``degrade_image`` (50/50 iso/aniso 41x41 kernels) at the ranges ``dataset.py`` passes
  in (r in [1, 30], q = int(U(30, 90)), 20% (HQ, HQ)); ``released_defaults`` is ``degrade_image`` at its
  own defaults (r in [4, 30], q = int(U(30, 80))).
* :func:`draw_params` draws one :class:`DegradeParams` (every random choice, including the noise
  seed); :func:`params_for` derives it from ``(seed, sample id, epoch)`` only, so a sample's
  degradation never depends on worker count or order.
* :func:`degrade` applies the params (fast exact paths: banded, :mod:`prefrestore.data.degrade.fast`,
  or DFT, :mod:`prefrestore.data.degrade.dft`; per sample by :func:`blur_plan`) and is bit-exact on replay; :func:`degrade_reference` is the direct full-resolution implementation in the
  released code's style (``cv2.filter2D`` at full resolution, then resize): the baseline and the
  ground truth the fast path is tested against.
* Self-reconstruction (Appendix F-B): with probability ``p_rec`` the sample is (HQ, HQ).

Kernel truncation: with ``kernel_size`` > 0 the kernel is that fixed square (released: 41x41), cut
off hard at +-(size // 2) pixels and renormalised to sum 1 (at sigma 15 that is +-1.33 sigma, so it
is closer to a box than a Gaussian). With ``kernel_size: 0`` the radius is
``ceil(kernel_truncate * max(sigma_x, sigma_y))``.

Bit-exact replay holds on one machine and library build: float matrix products (OpenBLAS kernels
differ per CPU family) and libjpeg versions can move a pixel by one level across machines.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import math
from collections.abc import Mapping
from typing import Any, Literal

import cv2
import numpy as np

from prefrestore.core.config import check_interval, check_range
from prefrestore.data.degrade import dft as degrade_dft
from prefrestore.data.degrade import fast as degrade_fast

KernelKind = Literal["iso", "aniso"]


@dataclasses.dataclass(frozen=True)
class DegradeConfig:
    """The ``degrade`` section of ``params.yaml``; every field is documented there."""

    p_rec: float
    aniso_prob: float
    sigma: tuple[float, float]
    rotation: tuple[float, float]
    kernel_size: int
    kernel_truncate: float
    downsample: tuple[float, float]
    size_rule: Literal["floordiv", "round"]
    down_interp: Literal["linear", "area", "cubic"]
    up_interp: Literal["linear", "area", "cubic"]
    noise: tuple[float, float]
    noise_kind: Literal["color", "gray"]
    jpeg_quality: tuple[int, int]
    quality_draw: Literal["integers", "floor_uniform"]
    quantize: Literal["round", "truncate"]
    benchmark_seed: int
    workers: int

    def __post_init__(self) -> None:
        check_range("p_rec", self.p_rec, 0.0, 1.0)
        check_range("aniso_prob", self.aniso_prob, 0.0, 1.0)
        check_interval("sigma", self.sigma, 0.1, 50.0)
        check_interval("rotation", self.rotation, -math.pi, math.pi)
        if self.kernel_size != 0 and (self.kernel_size % 2 == 0 or not 3 <= self.kernel_size <= 255):
            raise ValueError(f"kernel_size={self.kernel_size} must be 0 (adaptive) or odd in [3, 255]")
        check_range("kernel_truncate", self.kernel_truncate, 0.5, 10.0)
        check_interval("downsample", self.downsample, 1.0, 64.0)
        check_interval("noise", self.noise, 0.0, 255.0)
        check_interval("jpeg_quality", self.jpeg_quality, 1, 100)
        check_range("benchmark_seed", self.benchmark_seed, 0, 2**32 - 1)
        check_range("workers", self.workers, 1, 256)


@dataclasses.dataclass(frozen=True)
class DegradeParams:
    """Every random choice of one degradation; with the config it re-creates the LQ image exactly."""

    kernel: KernelKind  # iso: sigma_y == sigma_x and theta == 0
    sigma_x: float  # blur sigma along the kernel's first axis, pixels
    sigma_y: float  # blur sigma along the second axis, pixels
    theta: float  # kernel rotation, radians
    r: float  # downsampling factor (LQ side = size // r or round(size / r))
    delta: float  # Gaussian noise std on the 0-255 scale
    q: int  # JPEG quality
    noise_seed: int  # seed of the noise field
    self_rec: bool  # Appendix F-B: no degradation, LQ = HQ

    def as_row(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_row(cls, row: Mapping[str, Any]) -> DegradeParams:
        """Read back from a manifest row (extra columns such as ``id`` are ignored)."""
        return cls(
            kernel=str(row["kernel"]),  # type: ignore[arg-type]
            sigma_x=float(row["sigma_x"]),
            sigma_y=float(row["sigma_y"]),
            theta=float(row["theta"]),
            r=float(row["r"]),
            delta=float(row["delta"]),
            q=int(row["q"]),
            noise_seed=int(row["noise_seed"]),
            self_rec=bool(row["self_rec"]),
        )


PARAM_COLUMNS: tuple[str, ...] = tuple(f.name for f in dataclasses.fields(DegradeParams))


# --------------------------------------------------------------------------- drawing parameters


def sample_rng(seed: int, sample_id: str, epoch: int = 0) -> np.random.Generator:
    """A generator owned by one sample: derived from ``(seed, epoch, sha256(id))`` only."""
    if seed < 0 or epoch < 0:
        raise ValueError(f"seed and epoch must be non-negative, got seed={seed}, epoch={epoch}")
    digest = hashlib.sha256(sample_id.encode("utf-8")).digest()
    words = np.frombuffer(digest[:16], dtype="<u4").tolist()
    return np.random.default_rng(np.random.SeedSequence([seed, epoch, *words]))


def draw_params(rng: np.random.Generator, cfg: DegradeConfig) -> DegradeParams:
    """Draw one degradation (Eq. 16 ranges from ``cfg``) and the self-reconstruction flag."""
    aniso = bool(rng.random() < cfg.aniso_prob)
    sigma_x = float(rng.uniform(*cfg.sigma))
    sigma_y = float(rng.uniform(*cfg.sigma)) if aniso else sigma_x
    theta = float(rng.uniform(*cfg.rotation)) if aniso else 0.0
    r = float(rng.uniform(*cfg.downsample))
    delta = float(rng.uniform(*cfg.noise))
    q_lo, q_hi = cfg.jpeg_quality
    if cfg.quality_draw == "integers":  # uniform on {lo, ..., hi}
        q = int(rng.integers(q_lo, q_hi, endpoint=True))
    else:  # released: int(np.random.uniform(lo, hi)), i.e. {lo, ..., hi - 1}
        q = min(int(math.floor(rng.uniform(q_lo, q_hi))), q_hi)
    noise_seed = int(rng.integers(0, 2**63 - 1))
    self_rec = bool(rng.random() < cfg.p_rec)
    return DegradeParams("aniso" if aniso else "iso", sigma_x, sigma_y, theta, r, delta, q, noise_seed, self_rec)


def params_for(sample_id: str, seed: int, cfg: DegradeConfig, epoch: int = 0) -> DegradeParams:
    """The degradation of sample ``sample_id`` in ``epoch`` (worker- and order-independent)."""
    return draw_params(sample_rng(seed, sample_id, epoch), cfg)


# --------------------------------------------------------------------------- kernels and sizes


def kernel_radius(p: DegradeParams, cfg: DegradeConfig) -> int:
    if cfg.kernel_size:
        return cfg.kernel_size // 2
    return max(1, math.ceil(cfg.kernel_truncate * max(p.sigma_x, p.sigma_y)))


@functools.lru_cache(maxsize=64)
def _offset_grids(radius: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``x^2``, ``2 x y`` and ``y^2`` on the grid ``[-radius, radius]^2`` (x: column, y: row offset)."""
    axis = np.arange(-radius, radius + 1, dtype=np.float64)
    xx, yy = np.meshgrid(axis, axis)
    grids = (xx**2, 2.0 * xx * yy, yy**2)
    for grid in grids:
        grid.setflags(write=False)
    return grids


def gaussian_kernel(p: DegradeParams, cfg: DegradeConfig) -> np.ndarray:
    """The 2-D blur kernel ``k_sigma`` (float64, sums to 1), rows = vertical offsets.

    Bivariate Gaussian with covariance ``Rot(theta) diag(sigma_x^2, sigma_y^2) Rot(theta)^T`` on the
    integer grid ``[-radius, radius]^2``, truncated there and renormalised. The inverse covariance
    is ``Rot(theta) diag(sigma_x^-2, sigma_y^-2) Rot(theta)^T``, written out.
    """
    c, s = math.cos(p.theta), math.sin(p.theta)
    ax, ay = p.sigma_x**-2, p.sigma_y**-2
    i00, i01, i11 = c * c * ax + s * s * ay, c * s * (ax - ay), s * s * ax + c * c * ay  # inverse covariance
    xx2, xy2, yy2 = _offset_grids(kernel_radius(p, cfg))
    kernel = np.exp(-0.5 * (i00 * xx2 + i01 * xy2 + i11 * yy2))
    return kernel / kernel.sum()


def kernel_factors(p: DegradeParams, cfg: DegradeConfig) -> tuple[np.ndarray, np.ndarray]:
    """Vertical and horizontal 1-D factors ``[R, L]`` of :func:`gaussian_kernel` (R = 1 when iso)."""
    if p.kernel == "iso" or (p.sigma_x == p.sigma_y):
        radius = kernel_radius(p, cfg)
        axis = np.arange(-radius, radius + 1, dtype=np.float64)
        g = np.exp(-0.5 * (axis / p.sigma_x) ** 2)
        g = (g / g.sum())[None]
        return g, g
    return degrade_fast.separable_factors(gaussian_kernel(p, cfg))


def lq_size(height: int, width: int, p: DegradeParams, cfg: DegradeConfig) -> tuple[int, int]:
    """The downsampled ``(h, w)``: released ``int(size // r)`` or ``round(size / r)``, at least 1."""
    if cfg.size_rule == "floordiv":
        return max(1, int(height // p.r)), max(1, int(width // p.r))
    return max(1, round(height / p.r)), max(1, round(width / p.r))


# --------------------------------------------------------------------------- the stages of Eq. 16


def check_image(image: Any) -> np.ndarray:
    """A uint8 ``[H, W, 3]`` RGB array (as :func:`prefrestore.core.images.load_rgb` returns), else ValueError."""
    if not isinstance(image, np.ndarray) or image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        got = f"{image.dtype} {image.shape}" if isinstance(image, np.ndarray) else type(image).__name__
        raise ValueError(f"degrade expects a uint8 [H, W, 3] RGB array (images.load_rgb), got {got}")
    if min(image.shape[:2]) < 2:
        raise ValueError(f"image too small to degrade: {image.shape}")
    return np.ascontiguousarray(image)


def opencv_seed(seed: int) -> int:
    """``seed`` (any non-negative int) folded to the C ``int`` that ``cv2.setRNGSeed`` takes: xor of its 32-bit halves, signed."""
    folded = (seed ^ (seed >> 32)) & 0xFFFFFFFF
    return folded - (1 << 32) if folded >= 1 << 31 else folded


def noise_field(shape: tuple[int, ...], p: DegradeParams, cfg: DegradeConfig, out: np.ndarray | None = None) -> np.ndarray:
    """The float32 ``n_delta`` field (Eq. 16) for an ``[h, w, c]`` image, from ``p.noise_seed`` alone.

    ``N(0, (delta / 255)^2)`` per pixel and channel (``gray``: one ``[h, w, 1]`` field, broadcast over the
    channels), drawn by ``cv2.randn`` into ``out`` with the scale applied in the same pass, after
    seeding this thread's OpenCV generator with :func:`opencv_seed` (32 of the seed's 63 bits: 2^32
    distinct fields). 1.8-3x faster than ``torch.randn`` plus a scaling pass (2.9 against 8.9 us at
    17x17, 1.6 against 2.7 ms at 512x512; RESULTS.md, issue 20, follow-up 9), the same values whatever
    ``cv2.setNumThreads`` says and on any thread. The batched torch path draws its noise here too, so
    both paths add the same field. ``out``: a float32 array of the field's shape (:func:`add_noise`
    passes a reused buffer).
    """
    h, w, c = shape
    field_shape = (h, w, c if cfg.noise_kind == "color" else 1)
    if out is None:
        out = np.empty(field_shape, dtype=np.float32)
    if out.shape != field_shape or out.dtype != np.float32 or not out.flags.c_contiguous:
        raise ValueError(f"noise_field needs a C-contiguous float32 out of shape {field_shape}, got {out.dtype} {out.shape}")
    cv2.setRNGSeed(opencv_seed(p.noise_seed))
    cv2.randn(out.reshape(h, -1), 0.0, p.delta / 255.0)  # one channel of w c values per row: the scalar std applies to all
    return out


def add_noise(small: np.ndarray, p: DegradeParams, cfg: DegradeConfig) -> np.ndarray:
    """``+ n_delta`` (Eq. 16), then clip to [0, 1] (released code). In place on float32 ``small``."""
    h, w, c = small.shape
    field = degrade_fast.workspace("noise", (h, w, c if cfg.noise_kind == "color" else 1))
    small += noise_field(small.shape, p, cfg, out=field)
    np.clip(small, 0.0, 1.0, out=small)
    return small


def round_to_uint8(small: np.ndarray) -> np.ndarray:
    """``np.rint(small * 255)`` as uint8 for float32 ``small`` in [0, 1]: what cv2.imencode does to the released float input.

    One saturating round-half-even SIMD pass (``cv2.convertScaleAbs``), bit-identical to ``np.rint`` +
    ``astype`` on [0, 1] (tested on the half-integer edges); 0.06 ms at 512^2 against 0.3-3 ms for
    those two passes and their temporaries. Above 1 it saturates at 255 where ``astype`` wraps.
    """
    return cv2.convertScaleAbs(small, alpha=255.0)


def jpeg_roundtrip(small: np.ndarray, q: int) -> np.ndarray:
    """``JPEG_q`` (Eq. 16) with OpenCV's encoder (4:2:0, integer quality), on RGB; uint8 out."""
    u8 = round_to_uint8(small)
    ok, buf = cv2.imencode(".jpg", cv2.cvtColor(u8, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, int(q)])
    if not ok:
        raise RuntimeError(f"OpenCV JPEG encoding failed (q={q}, shape={u8.shape})")
    return cv2.cvtColor(cv2.imdecode(buf, cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)


def upsample(lq_small: np.ndarray, height: int, width: int, cfg: DegradeConfig) -> np.ndarray:
    """``upsample_r`` (Eq. 16) back to ``(height, width)`` in float, then quantise to uint8."""
    buffer = degrade_fast.workspace("upsample", (height, width, lq_small.shape[2]))  # reused: no page faults
    up = cv2.resize(lq_small.astype(np.float32), (width, height), dst=buffer,
                    interpolation=degrade_fast.INTERPOLATION[cfg.up_interp])
    if cfg.up_interp == "cubic":  # cubic weights overshoot; linear and area weights are convex
        np.clip(up, 0.0, 255.0, out=up)
    if cfg.quantize == "round":
        return cv2.convertScaleAbs(up)  # saturating round-half-even, one SIMD pass (== np.rint + clip)
    return up.astype(np.uint8)  # truncates like the released np.clip(x * 255, 0, 255).astype(np.uint8)


def pre_jpeg_reference(image: np.ndarray, p: DegradeParams, cfg: DegradeConfig) -> np.ndarray:
    """Direct implementation: full-resolution ``cv2.filter2D`` (reflect-101), resize, noise, clip.

    The released code's order and operators; float32 ``[h, w, 3]`` in [0, 1], before JPEG.
    """
    image = check_image(image)
    height, width = image.shape[:2]
    x = image.astype(np.float32) / 255.0
    blurred = cv2.filter2D(x, -1, gaussian_kernel(p, cfg).astype(np.float32), borderType=cv2.BORDER_REFLECT_101)
    h, w = lq_size(height, width, p, cfg)
    small = cv2.resize(blurred, (w, h), interpolation=degrade_fast.INTERPOLATION[cfg.down_interp])
    return add_noise(small, p, cfg)


BlurPath = Literal["banded", "dft"]


def blur_plan(
    p: DegradeParams, cfg: DegradeConfig, shape: tuple[int, ...]
) -> tuple[BlurPath, tuple[np.ndarray, np.ndarray] | None]:
    """The cheaper exact path for the blur + downsample of Eq. 16 on an ``[H, W, C]`` image, from ``p``.

    ``("banded", (v, h))`` with the kernel's separable factors (:func:`degrade_fast.blur_downsample`,
    cost ~ rank x LQ size) or ``("dft", None)`` (:func:`degrade_dft.blur_downsample_dft`, constant
    cost), whichever the cost model of :mod:`prefrestore.data.degrade.dft` says is cheaper: the DFT
    path where a high-rank (rotated anisotropic) kernel meets a small ``r``. A function of ``p``,
    ``cfg`` and the shape only, so deterministic under a seed. The kernel is factored only when a
    rank-1 banded pass would not already lose.
    """
    height, width, channels = shape
    length, out_hw = 2 * kernel_radius(p, cfg) + 1, lq_size(height, width, p, cfg)
    if degrade_dft.dft_is_cheaper(1, length, (height, width), out_hw, channels):
        return "dft", None
    factors = kernel_factors(p, cfg)
    if degrade_dft.dft_is_cheaper(len(factors[0]), length, (height, width), out_hw, channels):
        return "dft", None
    return "banded", factors


def pre_jpeg(image: np.ndarray, p: DegradeParams, cfg: DegradeConfig) -> np.ndarray:
    """Fast exact equivalent of :func:`pre_jpeg_reference`, by the path :func:`blur_plan` picks.

    Banded: the blur computed only where the resize samples; DFT: the whole blur as one spectrum
    product per channel. Either equals the direct path to float32 rounding.
    """
    image = check_image(image)
    out_hw = lq_size(image.shape[0], image.shape[1], p, cfg)
    _, factors = blur_plan(p, cfg, image.shape)
    if factors is None:  # the DFT path
        small = degrade_dft.blur_downsample_dft(image, gaussian_kernel(p, cfg), out_hw, cfg.down_interp)
    else:
        small = degrade_fast.blur_downsample(image, *factors, out_hw, cfg.down_interp)
    return add_noise(small, p, cfg)


def degrade(image: np.ndarray, p: DegradeParams, cfg: DegradeConfig) -> np.ndarray:
    """Eq. 16 with the drawn params: uint8 ``[H, W, 3]`` HQ -> uint8 LQ of the same size (fast path).

    Deterministic: the same ``(image, p, cfg)`` gives the same bytes. ``p.self_rec`` returns a copy
    of the input (Appendix F-B).
    """
    image = check_image(image)
    if p.self_rec:
        return image.copy()
    return upsample(jpeg_roundtrip(pre_jpeg(image, p, cfg), p.q), image.shape[0], image.shape[1], cfg)


def degrade_reference(image: np.ndarray, p: DegradeParams, cfg: DegradeConfig) -> np.ndarray:
    """:func:`degrade` by the direct full-resolution path (the benchmark baseline)."""
    image = check_image(image)
    if p.self_rec:
        return image.copy()
    small = pre_jpeg_reference(image, p, cfg)
    return upsample(jpeg_roundtrip(small, p.q), image.shape[0], image.shape[1], cfg)
