"""What the degradation (Eq. 16) benchmarks share: the machine's description, the allocator, test images, timers.

Imported by ``bench_degrade.py``, ``tune_degrade.py`` and ``ab_degrade.py`` (the folder of this file is put on
``sys.path`` by each). Importing it puts this checkout's ``src/`` first on ``sys.path``, so the scripts
measure the code beside them, not an installed copy.
"""

from __future__ import annotations

import platform
import sys
import time
from pathlib import Path

import cv2
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from prefrestore.core.images import load_rgb  # noqa: E402
from prefrestore.data.degrade import fast as degrade_fast  # noqa: E402
from prefrestore.data.degrade import kernel as degrade_kernel  # noqa: E402


def machine() -> str:
    """The CPU model, its family/model numbers, numpy's OpenBLAS core and whether the compiled pass 1 runs: speeds differ by box, so RESULTS.md names each.

    The OpenBLAS core (threadpoolctl) decides ``fast.gemm_family()``, hence the block tables in use; the compiled
    pass 1 (``kernel.compiled_pass1``) the pass-1 path and the cost-model row.
    """
    from threadpoolctl import threadpool_info

    fields: dict[str, str] = {}
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            fields.setdefault(key.strip(), value.strip())
    except OSError:
        pass
    name = fields.get("model name") or platform.processor() or platform.machine()
    if "cpu family" in fields:
        name += f" (family {fields['cpu family']} model {fields.get('model', '?')})"
    cores = sorted({str(info.get("architecture")) for info in threadpool_info()
                    if info.get("internal_api") == "openblas" and "numpy" in str(info.get("filepath", ""))})
    kernel = "on" if degrade_kernel.compiled_pass1() is not None else "off (BLAS pass 1)"
    return (f"{name}, numpy OpenBLAS core {'/'.join(cores) or 'none'} (block family {degrade_fast.gemm_family()!r}), "
            f"compiled pass 1 {kernel}")


def steady_allocator() -> bool:
    """Keep freed memory in this process (glibc ``mallopt``), so that neither path pays page faults.

    By default glibc returns large freed blocks to the kernel (``mmap``/trim thresholds), and the
    next image faults them in again: measured up to 2419 minor faults (4.3 ms of system time) per
    fast-path draw before it reused its buffers, and 1562 per reference draw (2.5 ms) once it did.
    Those are the allocator's, not either algorithm's, and they depend on what else ran. Raising
    both thresholds to 256 MB / 512 MB removes them for both paths alike. False where not glibc.
    """
    import ctypes
    import ctypes.util

    name = ctypes.util.find_library("c")
    if platform.system() != "Linux" or name is None:
        return False
    libc = ctypes.CDLL(name)
    if not hasattr(libc, "mallopt"):
        return False
    m_trim_threshold, m_mmap_threshold = -1, -3  # <malloc.h>
    return bool(libc.mallopt(m_mmap_threshold, 256 << 20)) and bool(libc.mallopt(m_trim_threshold, 512 << 20))


def test_images(n: int, size: int, folder: Path | None) -> list[np.ndarray]:
    """Real faces from ``folder`` when given (cycled), else smooth synthetic images with edges."""
    if folder is not None:
        if not folder.is_dir():
            raise ValueError(f"{folder} is not a folder")
        paths = sorted(folder.glob("*.png"))
        if not paths:
            raise ValueError(f"no PNG images in {folder}")
        faces = [cv2.resize(load_rgb(p), (size, size), interpolation=cv2.INTER_AREA) for p in paths[:n]]
        return [faces[i % len(faces)] for i in range(n)]
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:size, 0:size] / size
    out = []
    for _ in range(min(n, 16)):
        img = np.stack([xx, yy, 1 - xx * yy], axis=2) * rng.uniform(80, 200)
        for _ in range(8):
            cy, cx, r = rng.uniform(0.2, 0.8, 2).tolist() + [rng.uniform(0.03, 0.2)]
            img[(yy - cy) ** 2 + (xx - cx) ** 2 < r**2] = rng.uniform(0, 255, 3)
        out.append(np.clip(img + rng.normal(0, 4, img.shape), 0, 255).astype(np.uint8))
    return [out[i % len(out)] for i in range(n)]


def timed(fn, *args) -> tuple[float, float]:
    """Wall-clock and CPU (this thread) seconds of ``fn(*args)``."""
    wall, cpu = time.perf_counter(), time.thread_time()
    fn(*args)
    return time.perf_counter() - wall, time.thread_time() - cpu
