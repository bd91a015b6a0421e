"""The Python side of the compiled pass 1 of the banded blur + downsample (paper Eq. 16): ``_kernels.c``.

``setup.py`` builds ``_kernels.c`` as an optional extension; this module finds it (:func:`compiled_pass1`),
refuses a build of another version (:data:`KERNEL_ABI`), checks every array before the C code sees it
(:func:`band_rows_u8`) and picks the kernel's blocks of output rows (:func:`kernel_block`).
:func:`prefrestore.data.degrade.fast.blur_downsample` calls it where it is built and the CPU runs it, and
otherwise runs its own numpy/BLAS pass 1. Nothing here imports the rest of ``data/degrade``.
"""

from __future__ import annotations

import ctypes
import functools
import warnings
from collections.abc import Callable

import numpy as np


@functools.cache
def compiled_pass1() -> Callable[..., int] | None:
    """The compiled pass 1 (``_kernels.c``: AVX-512, straight from uint8 rows) where it was built and this CPU runs it, else None.

    Built by ``setup.py`` at install (optional: no compiler, or not x86-64, and the package installs
    without it); looked up once per process. Where it is None, :func:`blur_downsample` casts the image to
    float and runs pass 1 as BLAS products (``fast.PASS1``), the same result to float32 rounding.
    """
    try:
        from prefrestore.data.degrade import _kernels
    except ImportError:
        return None
    return kernel_entry(ctypes.CDLL(_kernels.__file__))


KERNEL_ABI = 1  # the argument list band_rows_u8 is called with (_kernels.c band_rows_u8_abi)


def kernel_entry(lib) -> Callable[..., int] | None:
    """``band_rows_u8`` of a loaded ``_kernels`` build, its arguments declared; None where this CPU lacks AVX-512F.

    A build of another :data:`KERNEL_ABI` (an editable install whose ``.so`` predates a change of ``_kernels.c``)
    is refused with a RuntimeWarning that says how to rebuild, and the numpy path runs: a call with the wrong
    arguments would crash the process.
    """
    abi = getattr(lib, "band_rows_u8_abi", None)
    if abi is None or abi() != KERNEL_ABI:
        warnings.warn("the compiled degradation kernel (_kernels.c) was built from another version: rebuild it "
                      "with `pip install -e .` (make setup); the numpy path runs meanwhile", RuntimeWarning, stacklevel=3)
        return None
    if not lib.band_rows_u8_supported():
        return None
    fn = lib.band_rows_u8
    fn.restype = ctypes.c_int
    i64, ptr = ctypes.c_int64, ctypes.c_void_p  # x, cols, ops, start, blocks, block, terms, span, y, n
    fn.argtypes = [ptr, i64, ptr, ptr, i64, i64, i64, i64, ptr, i64]
    return fn


def band_rows_u8(x: np.ndarray, ops: np.ndarray, start: np.ndarray, out: np.ndarray) -> np.ndarray:
    """Pass 1 by the compiled kernel: ``out[s, k B + b] = ops[k, s, b] @ x[start[k] : start[k] + span]``, from uint8 ``x``.

    ``x`` uint8 ``[rows, cols]``; ``ops`` float32 ``[blocks, terms, B, span]`` (blocks of ``B`` output rows sharing
    one band); ``start`` int64 ``[blocks]``; ``out`` float32 ``[terms, n, cols]`` with ``n <= blocks B`` (rows past
    ``n`` are not written); all C-contiguous. Every shape, dtype and band bound is checked here, before the C
    code reads a byte (ValueError); RuntimeError where :func:`compiled_pass1` is None.
    """
    kernel = compiled_pass1()
    if kernel is None:
        raise RuntimeError("the compiled pass-1 kernel is not available here (kernel.compiled_pass1() is None)")
    arrays = {"x": (x, np.uint8, 2), "ops": (ops, np.float32, 4), "start": (start, np.int64, 1), "out": (out, np.float32, 3)}
    for name, (arr, dtype, ndim) in arrays.items():
        if not isinstance(arr, np.ndarray) or arr.dtype != dtype or arr.ndim != ndim or not arr.flags.c_contiguous:
            raise ValueError(f"band_rows_u8: {name} must be a C-contiguous {ndim}-D {np.dtype(dtype).name} array")
    rows, cols = x.shape
    blocks, terms, block, span = ops.shape
    n = out.shape[1]
    fits = out.shape == (terms, n, cols) and start.shape == (blocks,) and (blocks - 1) * block < n <= blocks * block
    if not fits or min(terms, span, cols) < 1 or not out.flags.writeable:
        raise ValueError(f"band_rows_u8: shapes x {x.shape}, ops {ops.shape}, start {start.shape}, out {out.shape} do not fit")
    if start.min() < 0 or start.max() > rows - span:
        raise ValueError(f"band_rows_u8: bands of {span} rows from {start.min()}..{start.max()} leave the {rows} rows of x")
    if kernel(x.ctypes.data, cols, ops.ctypes.data, start.ctypes.data, blocks, block, terms, span, out.ctypes.data, n) != 0:
        raise RuntimeError("band_rows_u8: the compiled kernel refused this CPU")
    return out


KERNEL_PAIRS = 8  # (term, row) pairs the compiled kernel holds in registers at once (_kernels.c MAX_TERMS)


def kernel_block(ratio: float, rank: int) -> int:
    """Output rows per band for the compiled pass 1 at ``r = ratio``: ``KERNEL_PAIRS // rank`` below r = 4, else 1.

    A block converts each input value to float once for all its ``rank x block`` (term, row) pairs, but reads a
    band ``(block - 1) r`` rows taller, with zero weights outside each row's own band. Below r = 4, bands of
    neighbouring rows overlap almost wholly and blocks pay (rank 1: 1.25x, rank 2: 1.10x the blur at r < 4);
    above, they gained nothing, and a model counting instructions, which wanted blocks up to r = 8 and more,
    ran 1-3.5% slower in all (same-process A/B on 1500 released draws; RESULTS.md, issue 20, follow-up 11).
    """
    return max(1, KERNEL_PAIRS // rank) if ratio < 4.0 else 1
