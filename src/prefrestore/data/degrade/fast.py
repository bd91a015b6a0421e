"""The fast exact path for the blur + downsample half of Eq. 16, as banded matrix products.

    I_l = {[(I_h (x) k_sigma) downsample_r + n_delta] JPEG_q} upsample_r          (Eq. 16)

Blurring a 512x512 image with a 41x41 kernel and then downsampling it by ``r`` throws away almost
all of the blurred pixels: a bilinear (``INTER_LINEAR``) resize to ``n = 512 // r`` reads only 2
rows and 2 columns of the blurred image per output pixel. Both steps are linear, and a Gaussian
kernel factors into 1-D kernels (exactly for isotropic kernels, as a short sum of rank-1 terms for
rotated anisotropic ones), so for each axis::

    (blur then resize)(X) = sum_s A_s X B_s^T,    A_s = R_y C_{v_s}  (n x H),   B_s = R_x C_{h_s}  (n x W)

where ``C`` is the 1-D blur with OpenCV's ``BORDER_REFLECT_101`` edges and ``R`` the resize weights.
``R`` is read off OpenCV itself (resizing an identity matrix), so it is the same resize, not a
re-implementation. Row ``i`` of ``A_s`` is nonzero only on a band of ``L + 1`` input rows (``L`` taps
plus the 2 bilinear taps), so the whole step costs ``O(R n L (W + n))`` instead of ``O(H W L^2)``:

1. pass 1: for each output row (or small block of rows, :func:`block_rows`), one
   ``[R, L+1] @ [L+1, W C]`` product over its band gives all ``R`` terms at once (with zero terms
   added where a product of a multiple of 4 rows runs faster, :func:`padded_rank`);
2. one transpose, so that the band rows of pass 2 are contiguous and the ``R`` terms sit next to
   them: ``Y^T[(x, s), (i, c)]`` (the image rows stay channel-interleaved, so this is one C-channel
   transpose of the ``R n`` rows of pass 1);
3. pass 2: for each output column (or block), one ``[1, (L+1) R] @ [(L+1) R, n C]`` product sums
   the terms.

Only the band of each operator is ever built (:func:`band_layout`).

The banded cost grows with the rank ``R`` and the LQ size ``n``: at small ``r`` a rotated anisotropic
kernel (``R`` up to ~33 terms) makes it slower than blurring the whole image.
:func:`blur_downsample_dft` computes the same blur as one 2-D DFT product per channel (cost independent
of ``R`` and ``r``), then resizes; :func:`dft_is_cheaper` picks, per sample, whichever of the two a
cost model fitted on one core says is cheaper. Both are exact to float32 rounding, and the choice is a
function of the shapes and rank only, so it is deterministic and replay stays bit-exact.

Exactness is proved by
``tests/data/test_degrade_exact.py`` against the direct full-resolution ``cv2.filter2D`` +
``cv2.resize`` implementation (:func:`prefrestore.data.degrade.direct.pre_jpeg_reference`); the only
approximation is the rank truncation of :func:`separable_factors` (``SEPARABLE_TOL``), the rest is
float32 rounding. This module holds only the linear algebra; kernels and parameters live in
:mod:`prefrestore.data.degrade.direct`.
"""

from __future__ import annotations

import functools
import math
import threading

import cv2
import numpy as np
import scipy.sparse

# A rank-R factorisation of a 2-D kernel K is accepted once the residual E = K - K_R can move no
# blurred pixel of a [0, 1] image by more than this: max(sum E+, sum E-) <= tol (:func:`worst_pixel_error`).
# 1e-3 = 0.255/255, 3.9x inside the 1/255 the fast path must hold before JPEG (the bound is attained
# only by a worst-case binary image; on faces the error is far smaller). History: an L1 bound of 1e-5,
# then this tight bound at 1e-4 (mean rank of released anisotropic kernels 8.1 -> 6.4), now 1e-3 (5.2).
SEPARABLE_TOL = 1e-3

INTERPOLATION = {"linear": cv2.INTER_LINEAR, "area": cv2.INTER_AREA, "cubic": cv2.INTER_CUBIC}

_WORKSPACE = threading.local()


def workspace(name: str, shape: tuple[int, ...]) -> np.ndarray:
    """A float32 work array of ``shape`` for this thread, reused across calls (contents undefined).

    The passes' intermediates are megabytes (the float image, the ``R n`` rows of pass 1 and their
    transpose). Allocated afresh per image, glibc hands such blocks back to the kernel on free and
    the next image page-faults them in again: measured 2419 minor faults (4.3 ms of system time,
    against 2.7 ms of compute) per rank-5 draw at ``n = 102``. One buffer per name, grown to the
    largest size seen, removes that; a few tens of MB per thread at most. Callers never return a
    view of it.
    """
    buffers = _WORKSPACE.__dict__
    size = math.prod(shape)
    buf = buffers.get(name)
    if buf is None or buf.size < size:
        buf = buffers[name] = np.empty(size, dtype=np.float32)
    return buf[:size].reshape(shape)


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


@functools.lru_cache(maxsize=1024)
def resize_taps(size_in: int, size_out: int, interp: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The nonzero weights of ``cv2.resize`` along one axis: ``(rows, cols, vals)`` of ``R``.

    OpenCV's float resize is separable and linear, so resizing a float32 identity image reproduces
    the weights it applies to float32 images exactly: ``cv2.resize(X) == R_y @ X @ R_x.T``. A few KB
    per geometry, cached. The nonzeros are found by ``cv2.findNonZero`` (the same row-major order as
    ``np.nonzero``, ~9x faster on these dense matrices: this runs once per new LQ size).
    """
    eye = np.eye(size_in, dtype=np.float32)
    weights = cv2.resize(eye, (size_in, size_out), interpolation=INTERPOLATION[interp])
    points = cv2.findNonZero(weights).reshape(-1, 2)  # (x, y) = (col, row), rows ascending
    rows, cols = points[:, 1], points[:, 0]
    taps = (rows.astype(np.intp), cols.astype(np.intp), weights[rows, cols].astype(np.float64))
    for arr in taps:
        arr.setflags(write=False)
    return taps


@functools.lru_cache(maxsize=16)
def resize_matrix(size_in: int, size_out: int, interp: str) -> np.ndarray:
    """``R``: the dense float64 ``size_out x size_in`` weights of ``cv2.resize`` (:func:`resize_taps`)."""
    rows, cols, vals = resize_taps(size_in, size_out, interp)
    weights = np.zeros((size_out, size_in))
    weights[rows, cols] = vals
    weights.setflags(write=False)
    return weights


# --------------------------------------------------------------------------- kernel factorisation


def worst_pixel_error(residual: np.ndarray) -> float:
    """The largest change a correlation with ``residual`` can make to an image with values in [0, 1].

    ``sum_uv E[u, v] x[u, v]`` over ``x`` in ``[0, 1]`` is largest at ``x = [E > 0]`` and smallest at
    ``x = [E < 0]``, so the bound ``max(sum E+, sum E-)`` is attained: tight, not an estimate. A convex
    resize (linear, area) after the blur keeps it.
    """
    positive = float(residual[residual > 0].sum())
    return max(positive, positive - float(residual.sum()))


def separable_factors(kernel: np.ndarray, tol: float = SEPARABLE_TOL) -> tuple[np.ndarray, np.ndarray]:
    """Factor a 2-D kernel as ``K ~= sum_s v[s] h[s]^T`` with the fewest SVD terms meeting ``tol``.

    Returns ``(v, h)``, each ``[R, L]``: vertical and horizontal 1-D kernels. The blur with the factors
    differs from the blur with ``K`` by at most ``tol`` on a [0, 1] image (:func:`worst_pixel_error`,
    computed for the chosen rank, not estimated).
    """
    u, s, vt = np.linalg.svd(kernel)
    # worst_pixel_error(E) >= sum|E| / 2 >= ||E||_F / 2 = sqrt(sum_{k >= R} s_k^2) / 2 for the rank-R
    # residual E, so no rank whose Frobenius tail exceeds 2 tol can pass (the 1e-6 slack covers rounding
    # in the tail): the search starts at the first rank that may pass, with the same result as from 1.
    tail = np.sqrt(np.cumsum((s**2)[::-1])[::-1])
    may_pass = np.flatnonzero(tail <= 2.0 * tol * (1.0 + 1e-6))
    first = max(1, int(may_pass[0])) if len(may_pass) else len(s)
    # The residual is updated one term at a time (an outer product), and its bound is
    # max(sum E+, sum E-) = (sum |E| + |sum E|) / 2: two reductions, no mask (about 3x cheaper a rank).
    residual = kernel - (u[:, :first] * s[:first]) @ vt[:first]
    rank = first
    while rank < len(s) and 0.5 * (float(np.abs(residual).sum()) + abs(float(residual.sum()))) > tol:
        residual -= s[rank] * np.outer(u[:, rank], vt[rank])
        rank += 1
    root = np.sqrt(s[:rank])
    return (u[:, :rank] * root).T, vt[:rank] * root[:, None]


# --------------------------------------------------------------------------- blur + resize operators


@functools.lru_cache(maxsize=64)
def _operator_layout(size_in: int, size_out: int, interp: str, length: int) -> tuple[np.ndarray, ...]:
    """Where the weights of ``R @ C`` go, for a 1-D kernel of ``length`` taps.

    Returns ``(rows, src, vals)``: for each nonzero of ``R`` its output row and resize weight, and
    the input index each kernel tap reads, ``src[nonzero, tap]``. Cached for the few geometries in
    use at once (a torch batch builds one operator per rank term and sample).
    """
    rows, cols, vals = resize_taps(size_in, size_out, interp)
    taps = np.arange(length) - length // 2
    # cv2.filter2D is a correlation: blurred[k] = sum_t kernel[t] * x[reflect(k + t - radius)].
    src = reflect101(cols[:, None] + taps[None, :], size_in)
    layout = (rows, src, vals)
    for arr in layout:
        arr.setflags(write=False)
    return layout


def blur_resize_operator(kernel1d: np.ndarray, size_in: int, size_out: int, interp: str) -> np.ndarray:
    """``R @ C`` (dense float64 ``size_out x size_in``): 1-D correlation with ``kernel1d`` then resize.

    ``C`` uses reflect-101 edges like ``cv2.filter2D``. Built from the nonzeros of ``R`` (2 per row for
    linear), never as a dense product. Used by the batched torch path and as the tests' reference
    for :func:`band_operators`.
    """
    rows, src, vals = _operator_layout(size_in, size_out, interp, len(kernel1d))
    flat = (rows[:, None] * size_in + src).ravel()
    weights = (vals[:, None] * kernel1d[None, :]).ravel()
    op = np.bincount(flat, weights=weights, minlength=size_out * size_in)
    return op.reshape(size_out, size_in)


@functools.lru_cache(maxsize=384)
def band_layout(
    size_in: int, size_out: int, interp: str, length: int, block: int
) -> tuple[scipy.sparse.csr_matrix, np.ndarray, int]:
    """The banded storage of ``R @ C`` for kernels of ``length`` taps, output rows in blocks of ``block``.

    Output rows ``[k block, (k + 1) block)`` read only the input rows ``start[k] .. start[k] + span - 1``
    (``span``: the widest block's band; a band is moved left where it would run past the end). The
    band of every output row is stored as ``span`` values, so the operators of kernels ``K [R, L]``
    are ``scatter @ K.T``: ``[blocks * block * span, R]``, row ``(k, i, t)`` = weight of input row
    ``start[k] + t`` in output row ``k block + i`` (rows past ``size_out`` are zero). Cached per
    geometry: 384 entries. At the released ranges (r in [1, 30], half the draws rotated) the blocks of
    :func:`block_rows` give about 3 keys per LQ size; 384 entries answered 94% of lookups after 1200
    draws (768: 95%, for up to twice the memory: the 287 keys of 800 draws held 37 MB); a miss costs
    0.5-1 ms (mostly scipy's CSR build and the reflect-101 indices), which is the rare large LQ
    sizes of r < 4. Measured 2026-12-07, RESULTS.md, issue 20, follow-up 4.
    """
    rows, src, vals = _operator_layout(size_in, size_out, interp, length)
    first = np.full(size_out, size_in, dtype=np.int64)
    last = np.zeros(size_out, dtype=np.int64)
    heads_of_rows = np.flatnonzero(np.diff(rows, prepend=-1))  # rows ascend: one group per output row
    first[rows[heads_of_rows]] = np.minimum.reduceat(src.min(axis=1), heads_of_rows)
    last[rows[heads_of_rows]] = np.maximum.reduceat(src.max(axis=1), heads_of_rows)
    heads = np.arange(0, size_out, block)
    lo = np.minimum.reduceat(first, heads)
    span = int((np.maximum.reduceat(last, heads) - lo).max()) + 1
    start = np.minimum(lo, size_in - span)
    band_index = rows[:, None] * span + (src - start[rows // block][:, None])  # (output row, offset in band)
    scatter = scipy.sparse.csr_matrix(  # duplicates (two taps reading one input row) are summed
        (np.repeat(vals, length), (band_index.ravel(), np.tile(np.arange(length), len(rows)))),
        shape=(len(heads) * block * span, length),
    )
    start.setflags(write=False)
    return scatter, start, span


def band_operators(
    kernels: np.ndarray, size_in: int, size_out: int, interp: str, block: int
) -> tuple[np.ndarray, np.ndarray, int]:
    """The bands of ``R @ C_k`` for each 1-D kernel ``k`` of ``kernels [R, L]`` (see :func:`band_layout`).

    Returns ``(ops, start, span)`` with float64 ``ops [blocks, block, span, R]``: ``ops[k, i, t, s]`` is
    the weight of input row ``start[k] + t`` in output row ``k block + i`` for kernel ``s``.
    """
    scatter, start, span = band_layout(size_in, size_out, interp, kernels.shape[1], block)
    ops = np.asarray(scatter @ kernels.T)
    return ops.reshape(len(start), block, span, len(kernels)), start, span


# --------------------------------------------------------------------------- blur + downsample


# Pass 1's block choice by rank: (r below which it takes blocks of 4, r below which pairs of rows; single
# rows beyond). Measured on one core of the AMD EPYC dev box (Zen 5, AVX-512; numpy's OpenBLAS 0.3.31),
# best of 5 over a grid of ranks 1-12 x r 1.2-25 x blocks 1-16 with and without zero-padded terms
# (RESULTS.md, issue 20, follow-up 4). Ranks above 12 take the rank-12 row.
PASS1_BLOCKS: dict[int, tuple[float, float]] = {
    2: (11.0, math.inf), 3: (21.0, 21.0), 4: (9.0, 15.0), 5: (10.0, 19.0), 6: (5.0, 19.0), 7: (5.0, 10.0),
    8: (2.6, 10.0), 9: (4.5, 11.0), 10: (2.6, 9.0), 11: (3.5, 9.0), 12: (1.9, 5.0),
}


def block_rows(ratio: float, rank: int, first_pass: bool) -> int:
    """Output rows per matrix product (speed only; every choice computes the same banded product).

    A block of ``b`` rows shares one band ``b r + L`` rows wide: large blocks keep BLAS efficient and
    cut per-call overhead, small ones multiply fewer zeros. What wins depends on the GEMM kernel's
    shapes: on the dev box's OpenBLAS a product of 8 rows costs about as much as one of 2 and a
    third less than one of 5-7 (``[M, 43] @ [43, 1536]``: 9.5 us at M = 2, 13.9-18.2 at 5-7, 10.9
    at 8; M = 1 takes the GEMV path, 3.4), so pass 1 counts the rows of a product (``b`` times the
    terms, :func:`padded_rank`) as well as the zeros. Measured choices (one core, 512 px, 41 taps;
    within 0.4% of the grid's best in total, worst case 1.14x; RESULTS.md, issue 20, follow-up 4):
    pass 1 takes 8 rows for one term below r 6.5 and single rows beyond, 8 rows for 2-3 terms below
    r 2.6 (4 terms below 1.4), else :data:`PASS1_BLOCKS`; pass 2 (``[b, span R] @ [span R, n C]``)
    takes 16 rows below r 2, 8 below 3.5 (and for up to 2 terms below 6.5), 4 for up to 4 terms,
    single columns beyond.
    """
    if not first_pass:
        if ratio < 2.0:
            return 16
        if ratio < 3.5 or (rank <= 2 and ratio < 6.5):
            return 8
        return 4 if rank <= 4 else 1
    if rank == 1:
        return 8 if ratio < 6.5 else 1
    if (rank <= 3 and ratio < 2.6) or (rank == 4 and ratio < 1.4):
        return 8
    four, two = PASS1_BLOCKS[min(rank, 12)]
    return 4 if ratio < four else 2 if ratio < two else 1


def padded_rank(rank: int, block: int) -> int:
    """The terms pass 1 computes for ``rank`` real ones at ``block`` rows: zero terms added (speed only).

    A product has ``rank x block`` rows; OpenBLAS runs multiples of 4 rows fastest (see
    :func:`block_rows`), so single rows of 3 terms take 4 (a zero term) and pairs of rows an even
    count (7 -> 8, 11 -> 12 on single rows: 1.2-1.3x faster in the grid). The zero terms' rows are
    computed and never read. One or two terms, and blocks of 4 or more, are left as they are.
    """
    if rank <= 2 or block >= 4:
        return rank
    return -(-rank * block // 4) * 4 // block


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
    rank = len(v_kernels)
    cols = width * channels
    # The image as interleaved float rows [H, W C] (one SIMD cast, OpenCV's: 1.7x numpy's astype; a
    # channel-planar copy cost 2.5x more), into a reused buffer (:func:`workspace`).
    x = cv2.add(image.reshape(height, cols), 0.0, dst=workspace("image", (height, cols)), dtype=cv2.CV_32F)

    # Pass 1 (vertical): y[s, i] = (A_s X)[i] / 255, each block of output rows from its band of X.
    block = block_rows(height / out_h, rank, first_pass=True)
    terms = padded_rank(rank, block)  # terms >= rank: the extra ones are zero, computed and never read
    ops, start, span = band_operators(v_kernels * (1.0 / 255.0), height, out_h, interp, block)
    ops1 = np.zeros((len(start), terms, block, span), dtype=np.float32)
    ops1[:, :rank] = ops.transpose(0, 3, 1, 2)
    ops1 = ops1.reshape(len(start), terms * block, span)
    y = workspace("pass1", (terms, out_h, cols))
    product = workspace("pass1_block", (terms * block, cols)) if terms > 1 < block else None
    for k, lo in enumerate(start.tolist()):
        band = x[lo : lo + span]
        i0 = k * block
        rows = min(block, out_h - i0)
        if block == 1:  # all terms of one output row
            np.matmul(ops1[k], band, out=y[:, i0])
        elif terms == 1:
            np.matmul(ops1[k, :rows], band, out=y[0, i0 : i0 + rows])
        else:  # product rows are (term s, row i of the block): scattered to y[s, i0 + i]
            np.matmul(ops1[k], band, out=product)
            y[:, i0 : i0 + rows] = product.reshape(terms, block, cols)[:, :rows]
    y = y[:rank]

    # Transpose to yt[(x, s), (i, c)]: input column x of every rank term, output (row, channel) pairs.
    # y[s, i, x, c] is a C-channel image of R out_h rows; its transpose is [x, (s, i), c].
    yt = cv2.transpose(y.reshape(rank * out_h, width, channels),
                       dst=workspace("pass1_t", (width, rank * out_h, channels))).reshape(width * rank, out_h * channels)

    # Pass 2 (horizontal): z[j] = sum_s (B_s)[j] y_s, the band of output column j over all terms at once.
    block = block_rows(width / out_w, rank, first_pass=False)
    ops, start, span = band_operators(h_kernels, width, out_w, interp, block)
    ops2 = ops.astype(np.float32).reshape(len(start), block, span * rank)
    z = workspace("pass2", (len(start) * block, out_h * channels))
    for k, lo in enumerate(start.tolist()):
        np.matmul(ops2[k], yt[lo * rank : (lo + span) * rank], out=z[k * block : (k + 1) * block])
    return cv2.transpose(z[:out_w].reshape(out_w, out_h, channels))  # [w, h, C] -> new [h, w, C]


# --------------------------------------------------------------------------- the same blur by DFT


def _smooth235(n: int) -> bool:
    """Whether ``n`` is ``2^a 3^b 5^c`` (a size OpenCV's DFT handles with its fast radices; for :func:`dft_size`)."""
    for factor in (2, 3, 5):
        while n % factor == 0:
            n //= factor
    return n == 1


@functools.lru_cache(maxsize=64)
def dft_size(n: int) -> int:
    """Frame side of the DFT path (the blur of paper Eq. 16) for ``n`` padded pixels: a size OpenCV transforms fast.

    ``cv2.getOptimalDFTSize`` offers only ``2^a 3^b 5^c``; OpenCV's real DFT is as fast at even sizes with
    one factor 7. Measured on one core (dev box, best of 5): 560 = 2^4 5 7 takes 0.45 / 0.51 ms forward /
    inverse against 0.51 / 0.61 ms for 576, the optimal size for a 512-px image and a 41-tap kernel (552
    padded pixels); odd sizes with a 7 are slow (567: 0.85 / 0.93 ms). So: the smallest multiple of 56
    below the optimal size whose cofactor is ``2^a 3^b 5^c``, else the optimal size.
    """
    optimal = cv2.getOptimalDFTSize(n)
    for size in range(-(-n // 56) * 56, optimal, 56):
        if _smooth235(size // 7):
            return size
    return optimal


def _real_spectrum_multiplier(spectrum: np.ndarray) -> np.ndarray:
    """The real part of a CCS-packed 2-D spectrum, copied onto the imaginary slots (in place; DFT path of Eq. 16).

    ``cv2.dft`` packs a real frame's spectrum as CCS: in the inner columns each frequency is a
    ``(Re, Im)`` pair along the row; the first column (and the last, for an even width) holds one
    column's 1-D CCS spectrum, ``(Re, Im)`` pairs down the rows. Where the true spectrum is real (a
    point-symmetric kernel centred on the origin), a complex product with it is the element-wise
    product with this array.
    """
    size_y, size_x = spectrum.shape
    pairs_x, pairs_y = (size_x - 1) // 2, (size_y - 1) // 2
    spectrum[:, 2 : 2 * pairs_x + 1 : 2] = spectrum[:, 1 : 2 * pairs_x : 2]
    for col in (0, size_x - 1) if size_x % 2 == 0 else (0,):
        spectrum[2 : 2 * pairs_y + 1 : 2, col] = spectrum[1 : 2 * pairs_y : 2, col]
    return spectrum


@functools.lru_cache(maxsize=16)
def _cos_sin_tables(size: int, radius: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """DFT tables for offsets ``a = 0..radius`` of a ``size``-point axis (float32, cached; Eq. 16's kernel spectrum).

    ``[cos | sin]`` of ``2 pi a u / size`` for every frequency ``u`` (``[size, 2 (radius + 1)]``), and
    the transposed ``cos`` and ``sin`` for the ``size // 2 + 1`` non-negative ones (``[radius + 1, .]``).
    """
    angle = (2.0 * np.pi / size) * np.outer(np.arange(size), np.arange(radius + 1))
    both = np.concatenate([np.cos(angle), np.sin(angle)], axis=1).astype(np.float32)
    half = angle[: size // 2 + 1].T
    tables = (both, np.cos(half).astype(np.float32), np.sin(half).astype(np.float32))
    for table in tables:
        table.setflags(write=False)
    return tables


def centred_spectrum_multiplier(kernel: np.ndarray, size_y: int, size_x: int, out: np.ndarray | None = None) -> np.ndarray:
    """The CCS multiplier of :func:`_real_spectrum_multiplier` for a point-symmetric ``[L, L]`` kernel, by GEMMs.

    Part of the DFT path for the blur of paper Eq. 16. The spectrum of ``kernel`` centred on the origin
    of a ``size_y x size_x`` frame is real: ``sum_ab K[a, b] cos(2 pi (a u / N_y + b v / N_x))``. With
    ``K[-a, -b] = K[a, b]`` the rows ``a`` and ``-a`` fold into ``K[a] + K[-a]`` (cosine, even) and
    ``K[a] - K[-a]`` (sine, odd), and so do the columns, so the ``N_y x (N_x / 2 + 1)`` half-plane a real
    DFT stores costs one ``[N_y, L + 1] @ [L + 1, N_x / 2 + 1]`` float32 product (about 0.1 ms at 560^2,
    against 0.5 ms for a DFT of the kernel frame), then is laid out as CCS. Equals the real part of
    ``cv2.dft`` of the centred frame to float32 rounding (1.2e-7 of the spectrum's peak in the tests).
    ``out``: a float32 ``[size_y, size_x]`` array to write it into (every element is written).
    """
    radius = kernel.shape[0] // 2
    both_y, cos_x, sin_x = _cos_sin_tables(size_y, radius)
    _, cos_xt, sin_xt = _cos_sin_tables(size_x, radius) if size_x != size_y else (None, cos_x, sin_x)
    k = kernel.astype(np.float32)
    lower, upper = k[radius::-1], k[radius:]  # rows -a and +a for a = 0..radius
    plus, minus = lower + upper, upper - lower
    plus[0] = k[radius]  # a = 0 once; minus[0] is zero
    # sum over b of the folded rows: cos (even, b = 0 once) and sin (odd)
    even = plus[:, radius::-1] + plus[:, radius:]
    even[:, 0] = plus[:, radius]
    odd = minus[:, radius:] - minus[:, radius::-1]
    stacked = np.concatenate([even @ cos_xt, -(odd @ sin_xt)], axis=0)  # [2 (radius + 1), N_x / 2 + 1]
    half = both_y @ stacked  # K-hat[u, v] for v = 0..N_x / 2
    multiplier = np.empty((size_y, size_x), dtype=np.float32) if out is None else out
    pairs_x, pairs_y = (size_x - 1) // 2, (size_y - 1) // 2
    multiplier[:, 1 : 2 * pairs_x : 2] = half[:, 1 : pairs_x + 1]
    multiplier[:, 2 : 2 * pairs_x + 1 : 2] = half[:, 1 : pairs_x + 1]
    for col, v in ((0, 0), (size_x - 1, size_x // 2)) if size_x % 2 == 0 else ((0, 0),):
        multiplier[0, col] = half[0, v]
        multiplier[1 : 2 * pairs_y : 2, col] = half[1 : pairs_y + 1, v]
        multiplier[2 : 2 * pairs_y + 1 : 2, col] = half[1 : pairs_y + 1, v]
        if size_y % 2 == 0:
            multiplier[size_y - 1, col] = half[size_y // 2, v]
    return multiplier


def blur_downsample_dft(image: np.ndarray, kernel: np.ndarray, out_hw: tuple[int, int], interp: str) -> np.ndarray:
    """``resize(filter2D(image / 255, kernel), out_hw)`` with the blur as 2-D DFT products, float32 ``[h, w, C]``.

    The blur + downsample of paper Eq. 16 (``(I_h (x) k_sigma) downsample_r``) for any kernel rank.
    ``image`` is uint8 ``[H, W, C]``, ``kernel`` the 2-D ``[L, L]`` correlation kernel (odd ``L``). Each
    channel is padded by ``L // 2`` with ``BORDER_REFLECT_101`` (the edges ``cv2.filter2D`` uses) and
    zero-padded to a fast DFT size ``N >= H + L - 1`` (:func:`dft_size`); the kernel is placed centred on the
    origin (wrapped), so the circular convolution ``IDFT(DFT(x) DFT(k))`` at padded pixel ``y + L // 2``
    is the correlation at ``y``, and its wrap-around lands only in the padding that is cut off.

    A point-symmetric kernel (``k[-a, -b] == k[a, b]``: every Gaussian of Eq. 16, rotated or not) has a
    real centred spectrum, and correlation equals convolution: the spectrum product is then a real
    element-wise multiply instead of ``cv2.mulSpectrums``'s complex one (about a third of the cost), and
    that spectrum comes from one small product (:func:`centred_spectrum_multiplier`) instead of a DFT of
    the kernel frame: 6 frame DFTs per image instead of 7. Other kernels take the complex product with the conjugate (a correlation). ``1 / 255`` and the inverse
    DFT's ``1 / (N_y N_x)`` are folded into the kernel. Equals the direct computation up to float32
    rounding (about 1e-6).
    """
    height, width, channels = image.shape
    length = kernel.shape[0]
    radius = length // 2
    if radius >= min(height, width):
        raise ValueError(f"a {length}x{length} kernel needs an image wider than {radius} px, got {height}x{width}")
    padded_h, padded_w = height + 2 * radius, width + 2 * radius
    size_y, size_x = dft_size(padded_h), dft_size(padded_w)
    scaled = kernel * (1.0 / (255.0 * size_y * size_x))
    symmetric = np.array_equal(kernel, kernel[::-1, ::-1])
    # The frames are reused buffers (:func:`workspace`): 1.25 MB each at 560^2, page-faulted in afresh otherwise.
    frame = workspace("dft_frame", (size_y, size_x))
    frame.fill(0.0)
    spectrum, blurred = workspace("dft_spectrum", (size_y, size_x)), workspace("dft_blurred", (size_y, size_x))
    if symmetric:
        kernel_spectrum = centred_spectrum_multiplier(scaled, size_y, size_x, out=workspace("dft_kernel", (size_y, size_x)))
    else:
        wrapped = np.arange(-radius, radius + 1)
        frame[np.ix_(wrapped % size_y, wrapped % size_x)] = scaled  # kernel[radius, radius] at the origin
        kernel_spectrum = cv2.dft(frame, dst=workspace("dft_kernel", (size_y, size_x)))  # CCS-packed
        frame.fill(0.0)
    padded = cv2.copyMakeBorder(image, radius, radius, radius, radius, cv2.BORDER_REFLECT_101)
    out_h, out_w = out_hw
    planes = []
    for c in range(channels):
        frame[:padded_h, :padded_w] = cv2.extractChannel(padded, c)  # (cv2.split is ~3x slower here)
        cv2.dft(frame, dst=spectrum)
        if symmetric:
            np.multiply(spectrum, kernel_spectrum, out=spectrum)
        else:  # a correlation: the complex product with the conjugate
            cv2.mulSpectrums(spectrum, kernel_spectrum, 0, c=spectrum, conjB=True)
        cv2.dft(spectrum, dst=blurred, flags=cv2.DFT_INVERSE | cv2.DFT_REAL_OUTPUT)
        planes.append(cv2.resize(blurred[radius : radius + height, radius : radius + width], (out_w, out_h),
                                 interpolation=INTERPOLATION[interp]))
    return cv2.merge(planes).reshape(out_h, out_w, channels)


# Cost model of the two paths on one core, fitted to timings of blur_downsample (ranks 1-27, r 1-30)
# and blur_downsample_dft at 512 px on the AMD EPYC dev box (bench_degrade.py --fit-cost-model; RESULTS.md, issue 20):
# the banded path's time is its flop count (both passes, with their block sizes and padded terms) at
# ~50 GFLOP/s (median error 8-10%; terms for calls and data moves did not improve the fit), the DFT
# path's is 2 C real DFTs of the padded frame. Refit after the blocks were retuned with padded terms
# (follow-up 4; two fits: 1.94-1.97e-11 s/flop, 0.92-1.03e-10 s per DFT point and log2 point); the
# fitted model picked the faster path in 94-99% of the measured cases, the worst pick 1.04-1.25x the
# faster one. Only the choice depends on it, never a result.
BANDED_S_PER_FLOP = 1.96e-11
DFT_S_PER_POINT_LOG2 = 9.7e-11  # per point of the frame and log2(points), per real DFT (~1.9 ns a point at 560^2)


def banded_cost(rank: int, length: int, in_hw: tuple[int, int], out_hw: tuple[int, int], channels: int) -> float:
    """Modelled seconds of :func:`blur_downsample`: the multiply-adds of both passes, zeros of the blocks and padded terms included."""
    (height, width), (out_h, out_w) = in_hw, out_hw
    b1, b2 = block_rows(height / out_h, rank, True), block_rows(width / out_w, rank, False)
    span1, span2 = b1 * height / out_h + length, b2 * width / out_w + length  # band rows per block
    return BANDED_S_PER_FLOP * 2.0 * channels * out_h * (padded_rank(rank, b1) * span1 * width + rank * span2 * out_w)


def dft_cost(length: int, in_hw: tuple[int, int], channels: int) -> float:
    """Modelled seconds of :func:`blur_downsample_dft`: ``2 C`` real DFTs of the padded frame (C forward, C inverse)."""
    height, width = in_hw
    points = dft_size(height + length - 1) * dft_size(width + length - 1)
    return DFT_S_PER_POINT_LOG2 * points * math.log2(points) * (2 * channels)


def dft_is_cheaper(rank: int, length: int, in_hw: tuple[int, int], out_hw: tuple[int, int], channels: int) -> bool:
    """Whether :func:`blur_downsample_dft` is modelled cheaper than :func:`blur_downsample` at this rank.

    False when the kernel is too wide for the DFT path's reflect padding (``L // 2 >= min(H, W)``).
    """
    if length // 2 >= min(in_hw):
        return False
    return dft_cost(length, in_hw, channels) < banded_cost(rank, length, in_hw, out_hw, channels)
