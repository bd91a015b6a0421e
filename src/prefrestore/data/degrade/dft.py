"""The DFT path for the blur + downsample half of Eq. 16, and the cost model that picks a path per sample.

    I_l = {[(I_h (x) k_sigma) downsample_r + n_delta] JPEG_q} upsample_r          (Eq. 16)

The banded path (:mod:`prefrestore.data.degrade.fast`) costs ``~ R n L (W + n)``: at small ``r`` a
rotated anisotropic kernel of many rank terms makes it slower than blurring the whole image.
:func:`blur_downsample_dft` blurs the whole image as one 2-D spectrum product per channel (cost
independent of the rank and of ``r``) and then resizes; :func:`dft_is_cheaper` says, from the shapes
and rank only, which of the two a cost model fitted on one core expects to be cheaper, so the choice
is deterministic and replay stays bit-exact. Both paths equal the direct ``cv2.filter2D`` +
``cv2.resize`` computation to float32 rounding (``tests/data/test_degrade_exact.py``).
"""

from __future__ import annotations

import functools
import math

import cv2
import numpy as np

from prefrestore.data.degrade import fast
from prefrestore.data.degrade import kernel as degrade_kernel


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
    # The frames are reused buffers (:func:`fast.workspace`): 1.25 MB each at 560^2, page-faulted in afresh otherwise.
    frame = fast.workspace("dft_frame", (size_y, size_x))
    frame.fill(0.0)
    spectrum, blurred = fast.workspace("dft_spectrum", (size_y, size_x)), fast.workspace("dft_blurred", (size_y, size_x))
    if symmetric:
        kernel_spectrum = centred_spectrum_multiplier(scaled, size_y, size_x, out=fast.workspace("dft_kernel", (size_y, size_x)))
    else:
        wrapped = np.arange(-radius, radius + 1)
        frame[np.ix_(wrapped % size_y, wrapped % size_x)] = scaled  # kernel[radius, radius] at the origin
        kernel_spectrum = cv2.dft(frame, dst=fast.workspace("dft_kernel", (size_y, size_x)))  # CCS-packed
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
                                 interpolation=fast.INTERPOLATION[interp]))
    return cv2.merge(planes).reshape(out_h, out_w, channels)


# Cost model of the two paths on one core, by BLAS kernel family (:func:`fast.gemm_family`), fitted to
# timings of blur_downsample (ranks 1-27, r 1-30) and blur_downsample_dft at 512 px (tune_degrade.py
# cost-model; RESULTS.md, issue 20): the banded path's time is its flop count (both passes, with
# their block sizes and padded terms) times seconds per flop (median error 8-10%; terms for calls and
# data moves did not improve the fit), the DFT path's is 2 C real DFTs of the padded frame, per point and
# log2(points). "packed": the Zen 5 dev box after follow-up 4 (two fits: 1.94-1.97e-11 s/flop,
# 0.92-1.03e-10 s per DFT point; the faster path picked in 94-99% of the measured cases, the worst pick
# 1.04-1.25x the faster one). "small": the Zen 4 dev box (follow-up 5). "kernel": wherever the compiled
# pass 1 runs (:func:`cost_family`), its flops counted with its own blocks (kernel.kernel_block); fitted on the
# Intel Xeon (family 6 model 167) dev box (two fits: 1.81-1.86e-11 s/flop, 1.58-1.65e-10 per DFT point;
# the faster path picked in 99-100%, follow-up 11). Only the choice of path depends on it, never a result.
COST_MODEL: dict[str, tuple[float, float]] = {  # family: (s per banded flop, s per DFT point and log2 point)
    "packed": (1.96e-11, 9.7e-11),
    "small": (2.43e-11, 1.73e-10),
    "kernel": (1.84e-11, 1.62e-10),
}


def cost_family() -> str:
    """The :data:`COST_MODEL` row in use: ``"kernel"`` where the compiled pass 1 runs (``kernel.compiled_pass1``), else the BLAS family."""
    return "kernel" if degrade_kernel.compiled_pass1() is not None else fast.gemm_family()


def banded_cost(rank: int, length: int, in_hw: tuple[int, int], out_hw: tuple[int, int], channels: int) -> float:
    """Modelled seconds of :func:`fast.blur_downsample`: the multiply-adds of both passes, zeros of the blocks and padded terms included."""
    (height, width), (out_h, out_w) = in_hw, out_hw
    if degrade_kernel.compiled_pass1() is not None:
        b1, terms = degrade_kernel.kernel_block(height / out_h, rank), rank
    else:
        b1, terms = fast.pass1_shape(height / out_h, rank)
    b2 = fast.pass2_block(width / out_w, rank)
    span1, span2 = b1 * height / out_h + length, b2 * width / out_w + length  # band rows per block
    s_per_flop = COST_MODEL[cost_family()][0]
    return s_per_flop * 2.0 * channels * out_h * (terms * span1 * width + rank * span2 * out_w)


def dft_cost(length: int, in_hw: tuple[int, int], channels: int) -> float:
    """Modelled seconds of :func:`blur_downsample_dft`: ``2 C`` real DFTs of the padded frame (C forward, C inverse)."""
    height, width = in_hw
    points = dft_size(height + length - 1) * dft_size(width + length - 1)
    return COST_MODEL[cost_family()][1] * points * math.log2(points) * (2 * channels)


def dft_is_cheaper(rank: int, length: int, in_hw: tuple[int, int], out_hw: tuple[int, int], channels: int) -> bool:
    """Whether :func:`blur_downsample_dft` is modelled cheaper than :func:`fast.blur_downsample` at this rank.

    False when the kernel is too wide for the DFT path's reflect padding (``L // 2 >= min(H, W)``).
    """
    if length // 2 >= min(in_hw):
        return False
    return dft_cost(length, in_hw, channels) < banded_cost(rank, length, in_hw, out_hw, channels)
