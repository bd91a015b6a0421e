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

1. pass 1: for each output row (or small block of rows, :func:`pass1_shape`), one
   ``[R, L+1] @ [L+1, W C]`` product over its band gives all ``R`` terms at once (with zero terms
   added where a product of a multiple of 4 rows runs faster, :func:`padded_rank`); where the compiled
   kernel is built (``_kernels.c``, AVX-512; its Python side is :mod:`prefrestore.data.degrade.kernel`), the
   same sums straight from the uint8 rows in one call, with no float copy of the image;
2. one transpose, so that the band rows of pass 2 are contiguous and the ``R`` terms sit next to
   them: ``Y^T[(x, s), (i, c)]``: one 1-channel transpose of the ``R n C`` rows of pass 1 where the
   image rows were split into channel planes (``[C, W]`` each, :data:`PLANAR_ROWS`), else one C-channel
   transpose of its ``R n`` channel-interleaved rows;
3. pass 2: for each output column (or block), one ``[1, (L+1) R] @ [(L+1) R, n C]`` product sums
   the terms.

Only the band of each operator is ever built (:func:`band_layout`).

The banded cost grows with the rank ``R`` and the LQ size ``n``: at small ``r`` a rotated anisotropic
kernel (``R`` up to ~33 terms) makes it slower than blurring the whole image.
:func:`prefrestore.data.degrade.dft.blur_downsample_dft` computes the same blur as one 2-D DFT
product per channel (cost independent of ``R`` and ``r``), then resizes; :func:`~prefrestore.data.degrade.dft.dft_is_cheaper`
picks, per sample, whichever of the two a cost model fitted on one core says is cheaper. Both are exact to float32 rounding, and the choice is a
function of the shapes and rank only, so it is deterministic and replay stays bit-exact.

Exactness is proved by
``tests/data/test_degrade_exact.py`` against the direct full-resolution ``cv2.filter2D`` +
``cv2.resize`` implementation (:func:`prefrestore.data.degrade.direct.pre_jpeg_reference`); the only
approximation is the rank truncation of :func:`separable_factors` (``SEPARABLE_TOL``), the rest is
float32 rounding. This module holds only the banded linear algebra and the work buffers both paths share; kernels and parameters live in
:mod:`prefrestore.data.degrade.direct`.
"""

from __future__ import annotations

import functools
import math
import threading

import cv2
import numpy as np
import scipy.sparse

from prefrestore.data.degrade import kernel as degrade_kernel

# A rank-R factorisation of a 2-D kernel K is accepted once the residual E = K - K_R can move no
# blurred pixel of a [0, 1] image by more than this: max(sum E+, sum E-) <= tol (:func:`worst_pixel_error`).
# 1e-3 = 0.255/255, 3.9x inside the 1/255 the fast path must hold before JPEG (the bound is attained
# only by a worst-case binary image; on faces the error is far smaller). History: an L1 bound of 1e-5,
# then this tight bound at 1e-4 (mean rank of released anisotropic kernels 8.1 -> 6.4), now 1e-3 (5.2 by SVD,
# 5.6 by the cross approximation of :func:`separable_factors`).
SEPARABLE_TOL = 1e-3

INTERPOLATION = {"linear": cv2.INTER_LINEAR, "area": cv2.INTER_AREA, "cubic": cv2.INTER_CUBIC}

_WORKSPACE = threading.local()


def workspace(name: str, shape: tuple[int, ...], dtype: type = np.float32) -> np.ndarray:
    """A work array of ``shape`` (float32 unless told) for this thread, reused across calls (contents undefined).

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
    if buf is None or buf.size < size or buf.dtype != dtype:
        buf = buffers[name] = np.empty(size, dtype=dtype)
    return buf[:size].reshape(shape)


def reflect101(index: np.ndarray, size: int) -> np.ndarray:
    """OpenCV ``BORDER_REFLECT_101`` index mapping (``gfedcb|abcdefgh|gfedcba``), repeated if needed.

    The mapping is even and periodic with period ``2 (size - 1)``, and on one period a tent:
    ``(size - 1) - |(size - 1) - (|i| mod 2 (size - 1))|``. Four array passes, no masks.
    """
    if size == 1:
        return np.zeros_like(index)
    last = size - 1
    return last - np.abs(last - np.abs(index) % (2 * last))


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
    """Factor a 2-D kernel as ``K ~= sum_s v[s] h[s]^T``, one cross at a time, until ``tol`` is met.

    Returns ``(v, h)``, each ``[R, L]``: vertical and horizontal 1-D kernels. The blur with the factors
    differs from the blur with ``K`` by at most ``tol`` on a [0, 1] image (:func:`worst_pixel_error`,
    computed on the residual of the chosen rank, not estimated).

    Adaptive cross approximation with complete pivoting (Gaussian elimination on the kernel): each term
    is the column and row through the residual's largest entry, scaled so that their outer product
    removes that entry's cross, ``E <- E - E[:, j] E[i, :] / E[i, j]``. No SVD: on released rotated
    kernels 58 against 152 us hot for ``np.linalg.svd`` and the rank search it replaced, and 84 against
    316 us inside the pipeline, where LAPACK ran cache-cold; the rank is the SVD's fewest or one more
    (2 more in 2 of 3000 draws; mean 5.6 against 5.4 terms). RESULTS.md, issue 20, follow-up 9. The
    residual is kept exactly (to rounding), so the bound is checked on the real one.
    """
    residual = np.array(kernel, dtype=np.float64)  # a copy, updated in place
    rows, cols = residual.shape
    most = min(rows, cols)
    v, h = np.empty((most, rows)), np.empty((most, cols))
    magnitude = np.empty_like(residual)
    rank = 0
    while rank < most:
        # max(sum E+, sum E-) = (sum |E| + |sum E|) / 2: two reductions, no mask
        np.abs(residual, out=magnitude)
        if 0.5 * (float(magnitude.sum()) + abs(float(residual.sum()))) <= tol:
            break
        i, j = divmod(int(magnitude.argmax()), cols)
        pivot = float(residual[i, j])
        scale = math.sqrt(abs(pivot))  # balances the two factors' magnitudes
        np.multiply(residual[:, j], 1.0 / scale, out=v[rank])
        np.multiply(residual[i], scale / pivot, out=h[rank])
        residual -= np.multiply.outer(v[rank], h[rank])
        rank += 1
    return v[:rank].copy(), h[:rank].copy()


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
) -> tuple[scipy.sparse.coo_matrix, np.ndarray, int]:
    """The banded storage of ``R @ C`` for kernels of ``length`` taps, output rows in blocks of ``block``.

    Output rows ``[k block, (k + 1) block)`` read only the input rows ``start[k] .. start[k] + span - 1``
    (``span``: the widest block's band; a band is moved left where it would run past the end). The
    band of every output row is stored as ``span`` values, so the operators of kernels ``K [R, L]``
    are ``scatter @ K.T``: ``[blocks * block * span, R]``, row ``(k, i, t)`` = weight of input row
    ``start[k] + t`` in output row ``k block + i`` (rows past ``size_out`` are zero). Cached per
    geometry: 384 entries. At the released ranges (r in [1, 30], half the draws rotated) the blocks of
    :func:`pass1_shape` give about 3 keys per LQ size; 384 entries answered 94% of lookups after 1200
    draws (768: 95%, for up to twice the memory: the 287 keys of 800 draws held 37 MB). The scatter is
    kept as COO (int32 indices): the product needs no row order, so a miss skips the CSR conversion, its
    sort and its duplicate merge (duplicates, two taps reading one input row, are summed by the product):
    half the build time (out 400: 0.21 against 0.44 ms), for products 6-24% slower (at out 25: 12 against
    10 us). With the tent form of :func:`reflect101`, a miss of both layout caches at LQ sizes 128-511
    fell from 0.7-1.7 to 0.4-0.7 ms. Measured 2026-12-07, RESULTS.md, issue 20, follow-ups 4 and 6.
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
    band_index = (rows[:, None] * span + (src - start[rows // block][:, None])).astype(np.int32)  # (output row, offset in band)
    scatter = scipy.sparse.coo_matrix(
        (np.repeat(vals, length), (band_index.ravel(), np.tile(np.arange(length, dtype=np.int32), len(rows)))),
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


# Block choices by BLAS kernel family (speed only: every choice computes the same banded product, to
# float32 rounding). OpenBLAS's SkylakeX-class cores (Intel AVX-512, and AMD Zen 4, which OpenBLAS 0.3.31
# runs on SkylakeX kernels) compute a float32 product with M N K <= 1e6 by an unpacked small-matrix kernel
# (``kernel/x86_64/sgemm_small_kernel_permit_skylakex.c``): its time grows with the rows and jumps 2-3x past
# that size. Other cores pack every product, so that there 8 rows cost about what 2 do. The two want
# different blocks (the packed table on a small-kernel box: up to 1.8x slower; RESULTS.md, issue 20,
# follow-up 5), so each family has its own tables, measured with ``benchmarks/tune_degrade.py blocks``.
SMALL_KERNEL_CORES = frozenset({"skylakex", "cooperlake", "sapphirerapids"})


@functools.cache
def gemm_family() -> str:
    """``"small"`` where numpy's OpenBLAS has the small-matrix kernel (:data:`SMALL_KERNEL_CORES`), else ``"packed"``.

    Read once per process from threadpoolctl (the core OpenBLAS picked for this CPU), so it is fixed for
    a machine and library build, as bit-exact replay already is. MKL, BLIS and other OpenBLAS cores:
    ``"packed"``.
    """
    from threadpoolctl import threadpool_info

    openblas = [info for info in threadpool_info() if info.get("internal_api") == "openblas"]
    own = [info for info in openblas if "numpy" in str(info.get("filepath", ""))] or openblas
    cores = {str(info.get("architecture", "")).lower() for info in own}
    return "small" if cores & SMALL_KERNEL_CORES else "packed"


# Pass 1 (``[terms x block, span] @ [span, W C]``): by family and rank (ranks above 12 take rank 12's row),
# steps ``(r below which, block rows, row quantum)``: the first step whose bound exceeds ``r = H / h``
# applies; the product's rows (terms x block) are padded with zero terms to a multiple of the quantum
# (:func:`padded_rank`). "packed": the AMD EPYC Zen 5 dev box (follow-up 4: ranks 1-12 x r 1.2-25 x
# blocks 1-16, best of 5). "small": the AMD EPYC Zen 4 dev box (OpenBLAS core SkylakeX, follow-up 5).
INF = math.inf
PASS1: dict[str, dict[int, tuple[tuple[float, int, int], ...]]] = {
    "packed": {
        1: ((6.5, 8, 1), (INF, 1, 1)),
        2: ((2.6, 8, 1), (11.0, 4, 1), (INF, 2, 1)),
        3: ((2.6, 8, 4), (21.0, 4, 4), (INF, 1, 4)),
        4: ((1.4, 8, 4), (9.0, 4, 4), (15.0, 2, 4), (INF, 1, 4)),
        5: ((10.0, 4, 4), (19.0, 2, 4), (INF, 1, 4)),
        6: ((5.0, 4, 4), (19.0, 2, 4), (INF, 1, 4)),
        7: ((5.0, 4, 4), (10.0, 2, 4), (INF, 1, 4)),
        8: ((2.6, 4, 4), (10.0, 2, 4), (INF, 1, 4)),
        9: ((4.5, 4, 4), (11.0, 2, 4), (INF, 1, 4)),
        10: ((2.6, 4, 4), (9.0, 2, 4), (INF, 1, 4)),
        11: ((3.5, 4, 4), (9.0, 2, 4), (INF, 1, 4)),
        12: ((1.9, 4, 4), (5.0, 2, 4), (INF, 1, 4)),
    },
    "small": {
        1: ((2.19, 4, 1), (4.47, 8, 1), (INF, 4, 1)),
        2: ((9.95, 4, 1), (INF, 2, 1)),
        3: ((4.47, 4, 1), (8.22, 2, 1), (INF, 1, 2)),
        4: ((INF, 1, 1),),
        5: ((11.96, 2, 1), (INF, 1, 1)),
        6: ((2.59, 2, 1), (6.71, 1, 1), (9.95, 2, 1), (INF, 1, 1)),
        7: ((INF, 1, 2),),
        8: ((INF, 1, 1),),
        9: ((1.84, 1, 1), (2.19, 4, 1), (INF, 1, 2)),
        10: ((INF, 1, 1),),
        11: ((INF, 1, 2),),
        12: ((INF, 1, 1),),
    },
}

# Pass 2 (``[block, span R] @ [span R, h C]``): by family and rank, steps ``(r below which, block columns)``.
PASS2: dict[str, dict[int, tuple[tuple[float, int], ...]]] = {
    "packed": {
        1: ((2.0, 16), (6.5, 8), (INF, 4)), 2: ((2.0, 16), (6.5, 8), (INF, 4)),
        3: ((2.0, 16), (3.5, 8), (INF, 4)), 4: ((2.0, 16), (3.5, 8), (INF, 4)),
        **{rank: ((2.0, 16), (3.5, 8), (INF, 1)) for rank in range(5, 13)},
    },
    "small": {
        1: ((INF, 8),),
        2: ((INF, 4),),
        3: ((INF, 4),),
        4: ((INF, 4),),
        5: ((1.54, 2), (INF, 4)),
        6: ((1.84, 2), (INF, 4)),
        7: ((1.54, 16), (2.19, 2), (INF, 4)),
        8: ((1.3, 2), (1.54, 16), (3.04, 2), (INF, 4)),
        9: ((1.54, 16), (8.22, 2), (INF, 4)),
        10: ((1.84, 16), (3.04, 2), (17.89, 4), (INF, 2)),
        11: ((1.84, 16), (INF, 2)),
        12: ((1.84, 16), (4.47, 2), (INF, 4)),
    },
}


# Pass 1 output rows (rank x LQ rows) from which blur_downsample splits the image into channel planes. The
# split costs a fixed ~30 us (hot caches) to ~60 us (cold) at 512 px and a 1-channel transpose saves ~0.5 us
# per pass-1 row; on the Zen 4 dev box, with the reference run between draws as in bench_degrade.py, a
# threshold of 100 rows lost 11-15% on rotated draws at r 8-30 (two of three A/Bs) and 300 gained 2-3% over r 2-30 (4.6% at
# r 2-8) against interleaved rows throughout (RESULTS.md, issue 20, follow-up 6).
PLANAR_ROWS = 300


def padded_rank(rank: int, block: int, quantum: int) -> int:
    """The terms pass 1 computes for ``rank`` real ones: zero terms added so that ``terms x block`` is a multiple of ``quantum``.

    Speed only: the zero terms' rows are computed and never read. ``quantum`` (1, 2 or 4) comes from
    the block tables: products of a multiple of 4 (or 2) rows run faster in both kernel families
    (single rows of 3 terms take 4). Blocks of at least ``quantum`` rows are left as they are.
    """
    if block >= quantum:
        return rank
    return -(-rank * block // quantum) * quantum // block


def pass1_shape(ratio: float, rank: int) -> tuple[int, int]:
    """Pass 1's ``(block rows, terms)`` at ``r = ratio`` for ``rank`` terms (:data:`PASS1`, this machine's family)."""
    for below, block, quantum in PASS1[gemm_family()][min(rank, 12)]:
        if ratio < below:
            return block, padded_rank(rank, block, quantum)
    raise AssertionError("the last step of every PASS1 row is unbounded")


def pass2_block(ratio: float, rank: int) -> int:
    """Pass 2's block of output columns at ``r = ratio`` for ``rank`` terms (:data:`PASS2`, this machine's family)."""
    for below, block in PASS2[gemm_family()][min(rank, 12)]:
        if ratio < below:
            return block
    raise AssertionError("the last step of every PASS2 row is unbounded")


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
    # The image as rows [H, W C], channel-planar ([C, W] per row) where BLAS pass 1 gives many rows: then
    # the transpose between the passes is a 1-channel one, 3x faster than the C-channel transpose of
    # interleaved rows, for ~30 us more to split the channels (:data:`PLANAR_ROWS`). With the compiled
    # pass 1, interleaved rows throughout: the blur ran 1.07-1.11x faster than with planar rows past
    # PLANAR_ROWS (same-process A/B, 1500 released draws, three seeds; RESULTS.md, issue 20, follow-up 11).
    kernel = degrade_kernel.compiled_pass1()
    planar = kernel is None and rank * out_h >= PLANAR_ROWS
    if planar:
        src = workspace("image_u8", (height, channels, width), np.uint8)
        cv2.split(image, [src[:, c] for c in range(channels)])
    else:
        src = image
    src = src.reshape(height, cols)
    if kernel is not None:
        # Pass 1 (vertical) by the compiled kernel, straight from the uint8 rows, in blocks of output rows.
        block = degrade_kernel.kernel_block(height / out_h, rank)
        ops, start, _ = band_operators(v_kernels * (1.0 / 255.0), height, out_h, interp, block)
        y = degrade_kernel.band_rows_u8(src, np.ascontiguousarray(ops.transpose(0, 3, 1, 2), dtype=np.float32), start,
                         workspace("pass1", (rank, out_h, cols)))
    else:
        y = _pass1_blas(src, v_kernels, out_h, interp)
    return _pass2(y, h_kernels, (height, width, channels), (out_h, out_w), interp, planar)


def _pass1_blas(src: np.ndarray, v_kernels: np.ndarray, out_h: int, interp: str) -> np.ndarray:
    """Pass 1 of :func:`blur_downsample` without the compiled kernel: the image cast to float, then BLAS products by blocks."""
    height, cols = src.shape
    rank = len(v_kernels)
    # one SIMD cast to float rows, OpenCV's (1.7x numpy's astype), into a reused buffer (:func:`workspace`)
    x = cv2.add(src, 0.0, dst=workspace("image", (height, cols)), dtype=cv2.CV_32F)

    # Pass 1 (vertical): y[s, i] = (A_s X)[i] / 255, each block of output rows from its band of X.
    block, terms = pass1_shape(height / out_h, rank)  # terms >= rank: the extra ones are zero, computed and never read
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
    return y[:rank]


def _pass2(y: np.ndarray, h_kernels: np.ndarray, shape: tuple[int, int, int], out_hw: tuple[int, int], interp: str,
           planar: bool) -> np.ndarray:
    """The transpose and pass 2 of :func:`blur_downsample`, from pass 1's ``y [R, h, W C]`` (planar: ``[R, h, C, W]``)."""
    _, width, channels = shape
    out_h, out_w = out_hw
    rank = len(h_kernels)
    # Transpose to yt[(x, s), (i, c)]: input column x of every rank term, output (row, channel) pairs.
    # Planar: y[:rank] is [s, i, c, x], R out_h C rows of W, and its 1-channel transpose is [x, (s, i, c)].
    # Interleaved: y[:rank] is [s, i, x, c], a C-channel image of R out_h rows: its transpose is [x, (s, i), c].
    stride = rank * out_h * channels
    yt = workspace("pass1_t", (width, stride))
    if planar:
        cv2.transpose(y.reshape(stride, width), dst=yt)
    else:
        cv2.transpose(y.reshape(rank * out_h, width, channels), dst=yt.reshape(width, rank * out_h, channels))
    yt = yt.reshape(width * rank, out_h * channels)

    # Pass 2 (horizontal): z[j] = sum_s (B_s)[j] y_s, the band of output column j over all terms at once.
    block = pass2_block(width / out_w, rank)
    ops, start, span = band_operators(h_kernels, width, out_w, interp, block)
    ops2 = ops.astype(np.float32).reshape(len(start), block, span * rank)
    z = workspace("pass2", (len(start) * block, out_h * channels))
    for k, lo in enumerate(start.tolist()):
        np.matmul(ops2[k], yt[lo * rank : (lo + span) * rank], out=z[k * block : (k + 1) * block])
    return cv2.transpose(z[:out_w].reshape(out_w, out_h, channels))  # [w, h, C] -> new [h, w, C]
