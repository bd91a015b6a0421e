"""The compiled pass 1 of the banded blur + downsample (``_kernels.c``, via ``kernel.band_rows_u8``), on its own.

It must equal the product it replaces (float64 reference, float32 rounding), for every column count
(vector body, 16-wide step, scalar tail), term count (groups of 8 in registers), block and band; write
nothing outside its output; refuse, with a ValueError and before any C code runs, every array that does
not fit; and be built wherever this machine can build and run it.
"""

from __future__ import annotations

import platform
import shutil
from pathlib import Path

import numpy as np
import pytest

from prefrestore.data.degrade import fast as degrade_fast
from prefrestore.data.degrade import kernel as degrade_kernel

needs_kernel = pytest.mark.skipif(degrade_kernel.compiled_pass1() is None,
                                  reason="the compiled pass-1 kernel is not built or this CPU lacks AVX-512")


def _problem(rows: int, cols: int, blocks: int, terms: int, block: int, span: int, n: int, seed: int):
    rng = np.random.default_rng(seed)
    x = rng.integers(0, 256, (rows, cols), dtype=np.uint8)
    ops = rng.standard_normal((blocks, terms, block, span)).astype(np.float32)
    start = np.sort(rng.integers(0, rows - span + 1, blocks)).astype(np.int64)
    return x, ops, start, np.full((terms, n, cols), np.nan, dtype=np.float32)


def _reference(x, ops, start, n):
    blocks, terms, block, span = ops.shape
    want = np.empty((terms, n, x.shape[1]))
    for k, lo in enumerate(start):
        band = x[lo : lo + span].astype(np.float64)
        for b in range(block):
            if k * block + b < n:
                want[:, k * block + b] = ops[k, :, b].astype(np.float64) @ band
    return want


@needs_kernel
@pytest.mark.parametrize("cols", [1, 15, 16, 17, 31, 32, 33, 48, 100, 1536])
@pytest.mark.parametrize(("terms", "block"), [(1, 1), (1, 8), (2, 4), (3, 3), (5, 1), (8, 1), (9, 1), (13, 2)])
def test_kernel_equals_the_product(cols: int, terms: int, block: int) -> None:
    span, rows = 11, 40
    blocks = 5
    n = blocks * block - (block > 1)  # a last block with a missing row where blocks have several
    x, ops, start, out = _problem(rows, cols, blocks, terms, block, span, n, seed=cols * 31 + terms)
    got = degrade_kernel.band_rows_u8(x, ops, start, out)
    assert got is out
    want = _reference(x, ops, start, n)
    scale = np.abs(ops).sum(axis=-1).max() * 255.0
    assert np.abs(got - want).max() <= 1e-6 * scale  # float32 rounding of span multiply-adds


@needs_kernel
def test_kernel_equals_the_product_at_released_shapes() -> None:
    """A 512^2 RGB image, 41-tap kernels: the bands pass 1 really builds, rank 6 at r = 9.1 and rank 1 at r = 1.3."""
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (512, 1536), dtype=np.uint8)
    for rank, out_h in ((6, 56), (1, 393)):
        ratio = 512 / out_h
        block = degrade_kernel.kernel_block(ratio, rank)
        kernels = rng.random((rank, 41)) / 41.0
        ops, start, _ = degrade_fast.band_operators(kernels, 512, out_h, "linear", block)
        ops32 = np.ascontiguousarray(ops.transpose(0, 3, 1, 2), dtype=np.float32)
        got = degrade_kernel.band_rows_u8(x, ops32, start, np.empty((rank, out_h, 1536), np.float32))
        want = _reference(x, ops32, start, out_h)
        assert np.abs(got - want).max() <= 1e-4  # weights sum to ~1: float32 rounding of 255-scale values


@needs_kernel
def test_kernel_writes_nothing_past_its_output() -> None:
    """Padding rows of the last block and everything after the output buffer stay untouched."""
    x, ops, start, _ = _problem(30, 37, 3, 2, 4, 7, 10, seed=5)  # 12 block rows for n = 10
    size = 2 * 10 * 37
    buffer = np.full(size + 4096, -7.0, dtype=np.float32)
    out = buffer[:size].reshape(2, 10, 37)
    degrade_kernel.band_rows_u8(x, ops, start, out)
    assert (buffer[size:] == -7.0).all()
    assert np.isfinite(out).all() and not (out == -7.0).any()


@needs_kernel
@pytest.mark.parametrize("breakage", ["x dtype", "x strided", "ops dtype", "ops 3-D", "start dtype", "start short",
                                      "band past the end", "negative start", "out shape", "out dtype", "n too small",
                                      "out read-only"])
def test_kernel_refuses_arrays_that_do_not_fit(breakage: str) -> None:
    x, ops, start, out = _problem(30, 40, 3, 2, 2, 7, 6, seed=1)
    if breakage == "x dtype":
        x = x.astype(np.float32)
    elif breakage == "x strided":
        x = np.asfortranarray(x)
    elif breakage == "ops dtype":
        ops = ops.astype(np.float64)
    elif breakage == "ops 3-D":
        ops = ops[:, :, 0]
    elif breakage == "start dtype":
        start = start.astype(np.int32)
    elif breakage == "start short":
        start = start[:2]
    elif breakage == "band past the end":
        start = start.copy()
        start[-1] = 30 - 7 + 1
    elif breakage == "negative start":
        start = start.copy()
        start[0] = -1
    elif breakage == "out shape":
        out = np.empty((2, 6, 41), np.float32)
    elif breakage == "out dtype":
        out = out.astype(np.float64)
    elif breakage == "n too small":  # the last block would have no row to write
        out = np.empty((2, 4, 40), np.float32)
    elif breakage == "out read-only":
        out.setflags(write=False)
    with pytest.raises(ValueError, match="band_rows_u8"):
        degrade_kernel.band_rows_u8(x, ops, start, out)


def test_kernel_call_without_the_kernel_is_a_clear_error(monkeypatch) -> None:
    monkeypatch.setattr(degrade_kernel, "compiled_pass1", lambda: None)
    x, ops, start, out = _problem(30, 40, 3, 2, 2, 7, 6, seed=1)
    with pytest.raises(RuntimeError, match="not available"):
        degrade_kernel.band_rows_u8(x, ops, start, out)


def test_kernel_blocks_below_r4_only() -> None:
    assert degrade_kernel.kernel_block(1.3, 1) == degrade_kernel.KERNEL_PAIRS
    assert degrade_kernel.kernel_block(3.9, 3) == degrade_kernel.KERNEL_PAIRS // 3
    assert degrade_kernel.kernel_block(1.3, 13) == 1
    assert degrade_kernel.kernel_block(4.0, 1) == 1


def test_kernel_is_built_where_it_can_run() -> None:
    """On x86-64 with AVX-512F and a C compiler, installation must have built the kernel (setup.py, optional)."""
    cpuinfo = Path("/proc/cpuinfo")
    flags = cpuinfo.read_text() if cpuinfo.exists() else ""
    if platform.machine() not in ("x86_64", "AMD64") or " avx512f" not in flags:
        pytest.skip("not an x86-64 CPU with AVX-512F")
    if shutil.which("cc") is None and shutil.which("gcc") is None:
        pytest.skip("no C compiler: the package installs without the kernel")
    assert degrade_kernel.compiled_pass1() is not None, "rebuild: pip install -e . (setup.py builds _kernels.c)"


def test_cost_model_row_follows_the_pass1_path(monkeypatch) -> None:
    """The DFT-or-banded choice uses the "kernel" row where the compiled pass 1 runs, else the BLAS family's row."""
    from prefrestore.data.degrade import dft as degrade_dft

    assert {"packed", "small", "kernel"} <= set(degrade_dft.COST_MODEL)
    monkeypatch.setattr(degrade_kernel, "compiled_pass1", lambda: None)
    assert degrade_dft.cost_family() == degrade_fast.gemm_family()
    blas = degrade_dft.banded_cost(6, 41, (512, 512), (170, 170), 3)
    monkeypatch.setattr(degrade_kernel, "compiled_pass1", lambda: object())
    assert degrade_dft.cost_family() == "kernel"
    block = degrade_kernel.kernel_block(512 / 170, 6)
    span1, span2 = block * 512 / 170 + 41, degrade_fast.pass2_block(512 / 170, 6) * 512 / 170 + 41
    flops = 2.0 * 3 * 170 * (6 * span1 * 512 + 6 * span2 * 170)
    assert degrade_dft.banded_cost(6, 41, (512, 512), (170, 170), 3) == pytest.approx(degrade_dft.COST_MODEL["kernel"][0] * flops)
    assert degrade_dft.banded_cost(6, 41, (512, 512), (170, 170), 3) != blas


class _FakeBuild:
    """A loaded ``_kernels`` build as ctypes shows it: entry points as attributes (missing ones absent)."""

    def __init__(self, abi: int | None, supported: int) -> None:
        if abi is not None:
            self.band_rows_u8_abi = lambda: abi
        self.band_rows_u8_supported = lambda: supported
        self.band_rows_u8 = type("Entry", (), {})()


@pytest.mark.parametrize("abi", [None, 0, degrade_kernel.KERNEL_ABI + 1])
def test_a_build_of_another_version_is_refused_not_called(abi) -> None:
    """An editable install whose .so predates a change of _kernels.c would be called with the wrong arguments."""
    with pytest.warns(RuntimeWarning, match="rebuild it"):
        assert degrade_kernel.kernel_entry(_FakeBuild(abi, supported=1)) is None


def test_a_build_on_a_cpu_without_avx512_is_not_used() -> None:
    assert degrade_kernel.kernel_entry(_FakeBuild(degrade_kernel.KERNEL_ABI, supported=0)) is None


def test_a_current_build_gets_its_arguments_declared() -> None:
    import ctypes

    entry = degrade_kernel.kernel_entry(_FakeBuild(degrade_kernel.KERNEL_ABI, supported=1))
    assert entry is not None and entry.restype is ctypes.c_int and len(entry.argtypes) == 10
