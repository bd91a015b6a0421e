"""The fast exact path for the blur + downsample half of Eq. 16, as two small matrix products.

Blurring a 512x512 image with a 41x41 kernel and then downsampling it by ``r`` throws away almost
all of the blurred pixels: a bilinear (``INTER_LINEAR``) resize to ``n = 512 // r`` reads only 2
rows and 2 columns of the blurred image per output pixel. Both steps are linear, and a Gaussian
kernel factors into 1-D kernels (exactly for isotropic kernels, as a short sum of rank-1 terms for
rotated anisotropic ones), so for each axis::

    (blur then resize)(X) = A X B^T,    A = R_y C_v  (n x H),   B = R_x C_h  (n x W)

where ``C`` is the 1-D blur with OpenCV's ``BORDER_REFLECT_101`` edges and ``R`` the resize weights.
``R`` is read off OpenCV itself (resizing an identity matrix), so it is the same resize, not a
re-implementation. ``A`` is banded, so ``A X`` runs as a few small dense products over the rows
each band touches. The whole step costs ``O(n (L + r) W)`` instead of ``O(H W L^2)``.

``tests/data/test_degrade_exact.py`` proves the equivalence against the direct full-resolution
``cv2.filter2D`` + ``cv2.resize`` implementation (:func:`prefrestore.degrade.pre_jpeg_reference`).
This module holds only the linear algebra; kernels and parameters live in :mod:`prefrestore.degrade`.
"""

from __future__ import annotations

import functools
import math

import cv2
import numpy as np
import scipy.sparse

# A rank-R factorisation of a 2-D kernel K is accepted once sum|K - K_R| <= this. Every output pixel
# of a [0, 1] image then moves by at most this much (1e-5 = 0.00255/255), far below one grey level.
SEPARABLE_TOL = 1e-5

# Use a sparse product when blocked dense products would do this many times the band's multiplies.
CSR_MAC_RATIO = 8.0

INTERPOLATION = {"linear": cv2.INTER_LINEAR, "area": cv2.INTER_AREA, "cubic": cv2.INTER_CUBIC}


def reflect101(index: np.ndarray, size: int) -> np.ndarray:
    """OpenCV ``BORDER_REFLECT_101`` index mapping (``gfedcb|abcdefgh|gfedcba``), repeated if needed."""
    if size == 1:
        return np.zeros_like(index)
    index = index.copy()
    outside = (index < 0) | (index >= size)
    while outside.any():
        low = index < 0
        index[low] = -index[low]
        high = index >= size
        index[high] = 2 * (size - 1) - index[high]
        outside = (index < 0) | (index >= size)
    return index


@functools.lru_cache(maxsize=512)
def resize_matrix(size_in: int, size_out: int, interp: str) -> np.ndarray:
    """The ``size_out x size_in`` weights of ``cv2.resize`` along one axis.

    OpenCV's float resize is separable and linear, so resizing the identity image reproduces its
    weights exactly: ``cv2.resize(X) == R_y @ X @ R_x.T``.
    """
    eye = np.eye(size_in, dtype=np.float64)
    weights = cv2.resize(eye, (size_in, size_out), interpolation=INTERPOLATION[interp])
    weights.setflags(write=False)
    return weights


def separable_factors(kernel: np.ndarray, tol: float = SEPARABLE_TOL) -> tuple[np.ndarray, np.ndarray]:
    """Factor a 2-D kernel as ``K ~= sum_s v[s] h[s]^T`` with the fewest terms meeting ``tol``.

    Returns ``(v, h)``, each ``[R, L]``: vertical and horizontal 1-D kernels. The entry-wise L1 error
    ``sum|K - sum_s v[s] h[s]^T|`` is at most ``tol`` (bounded, not estimated: it is computed).
    """
    u, s, vt = np.linalg.svd(kernel)
    approx = np.zeros_like(kernel)
    for rank in range(1, len(s) + 1):
        approx += s[rank - 1] * np.outer(u[:, rank - 1], vt[rank - 1])
        if np.abs(kernel - approx).sum() <= tol:
            break
    root = np.sqrt(s[:rank])
    return (u[:, :rank] * root).T, vt[:rank] * root[:, None]


@functools.lru_cache(maxsize=2048)
def _operator_layout(size_in: int, size_out: int, interp: str, length: int) -> tuple[np.ndarray, ...]:
    """Where the weights of ``R @ C`` go, for a 1-D kernel of ``length`` taps (cached per geometry).

    Returns ``(flat, vals, first, last)``: flat indices into the ``size_out x size_in`` operator, the
    resize weight of each ``(nonzero of R, tap)`` pair, and each row's first/last touched column.
    """
    resize = resize_matrix(size_in, size_out, interp)
    rows, cols = np.nonzero(resize)
    vals = resize[rows, cols]
    radius = length // 2
    taps = np.arange(length) - radius
    # cv2.filter2D is a correlation: blurred[k] = sum_t kernel[t] * x[reflect(k + t - radius)].
    src = reflect101(cols[:, None] + taps[None, :], size_in)
    flat = (rows[:, None] * size_in + src).ravel()
    first = np.full(size_out, size_in, dtype=np.int64)
    last = np.zeros(size_out, dtype=np.int64)
    np.minimum.at(first, rows, src.min(axis=1))
    np.maximum.at(last, rows, src.max(axis=1))
    layout = (flat, vals, first, last)
    for arr in layout:
        arr.setflags(write=False)
    return layout


def blur_resize_operator(kernel1d: np.ndarray, size_in: int, size_out: int, interp: str) -> np.ndarray:
    """``R @ C`` (float64 ``size_out x size_in``): 1-D correlation with ``kernel1d`` then resize.

    ``C`` uses reflect-101 edges like ``cv2.filter2D``. Built from the nonzeros of ``R`` (2 per row for
    linear), never as a dense product.
    """
    flat, vals, _, _ = _operator_layout(size_in, size_out, interp, len(kernel1d))
    weights = (vals[:, None] * kernel1d[None, :]).ravel()
    op = np.bincount(flat, weights=weights, minlength=size_out * size_in)
    return op.reshape(size_out, size_in)


def operator_band(size_in: int, size_out: int, interp: str, length: int) -> tuple[np.ndarray, np.ndarray]:
    """First and last column (inclusive) each row of :func:`blur_resize_operator` may touch."""
    _, _, first, last = _operator_layout(size_in, size_out, interp, length)
    return first, last


def block_rows(size_in: int, size_out: int) -> int:
    """Output rows per dense block product (speed only): about 64 / r, a power of two in [4, 32].

    Neighbouring output rows are r input rows apart, so a block of b rows reads ~ b r + L rows;
    small blocks waste fewer multiplies on zeros, large ones keep BLAS efficient.
    """
    ratio = size_in / max(size_out, 1)
    return int(min(32, max(4, 2 ** round(math.log2(64 / ratio)))))


def banded_matmul(op: np.ndarray, x: np.ndarray, first: np.ndarray, last: np.ndarray, block: int) -> np.ndarray:
    """``op @ x`` (float32) for a row-banded ``op``: row i is nonzero only in ``first[i]..last[i]``.

    Dense BLAS products over blocks of rows, each reading only the columns its rows touch. When the
    rows are far apart (large downsampling factor) blocks would mostly multiply zeros, so a sparse
    CSR product is used instead. Either way the result is the dense product up to float rounding.
    """
    starts = range(0, op.shape[0], block)
    spans = [int(last[s : s + block].max()) - int(first[s : s + block].min()) + 1 for s in starts]
    dense_macs = sum(min(block, op.shape[0] - s) * span for s, span in zip(starts, spans, strict=True))
    if dense_macs > CSR_MAC_RATIO * int((last - first + 1).sum()):
        return np.asarray(scipy.sparse.csr_matrix(op) @ x, dtype=np.float32)
    out = np.empty((op.shape[0], x.shape[1]), dtype=np.float32)
    for start, span in zip(starts, spans, strict=True):
        stop = min(start + block, op.shape[0])
        lo = int(first[start:stop].min())
        np.matmul(op[start:stop, lo : lo + span], x[lo : lo + span], out=out[start:stop])
    return out


def blur_downsample(
    image: np.ndarray,
    v_kernels: np.ndarray,
    h_kernels: np.ndarray,
    out_hw: tuple[int, int],
    interp: str,
) -> np.ndarray:
    """``resize(filter2D(image / 255, K), out_hw)`` for ``K = sum_s v[s] h[s]^T``, as float32 ``[h, w, C]``.

    ``image`` is uint8 ``[H, W, C]``. Equals the direct full-resolution computation up to float
    rounding (and ``SEPARABLE_TOL`` for non-separable kernels).
    """
    height, width, channels = image.shape
    out_h, out_w = out_hw
    x = image.reshape(height, width * channels).astype(np.float32)
    # Pass 1 (vertical): the rank terms stacked, so one banded product reads the image once.
    first_v, last_v = operator_band(height, out_h, interp, v_kernels.shape[1])
    rank = len(v_kernels)
    op_v = np.vstack([blur_resize_operator(v, height, out_h, interp) for v in v_kernels])
    op_v = (op_v * (1.0 / 255.0)).astype(np.float32)
    rows = banded_matmul(op_v, x, np.tile(first_v, rank), np.tile(last_v, rank), block_rows(height, out_h))
    first_h, last_h = operator_band(width, out_w, interp, h_kernels.shape[1])
    out = None
    for s, h in enumerate(h_kernels):
        # Pass 2 (horizontal) on rank term s, transposed to [W, out_h * C] so it is again a row product.
        part = cv2.transpose(rows[s * out_h : (s + 1) * out_h].reshape(out_h, width, channels))
        op_h = blur_resize_operator(h, width, out_w, interp).astype(np.float32)
        term = banded_matmul(op_h, part.reshape(width, out_h * channels), first_h, last_h, block_rows(width, out_w))
        out = term if out is None else out + term
    return cv2.transpose(out.reshape(out_w, out_h, channels))
