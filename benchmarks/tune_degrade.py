"""Measure what the degradation fast path (Eq. 16) picks by: its block tables and its path cost model.

    python benchmarks/tune_degrade.py blocks --images ../shared/data/faces/hq        # ~3 min
    python benchmarks/tune_degrade.py cost-model --images ../shared/data/faces/hq    # ~15 s

* ``blocks``: ``fast.PASS1`` and ``fast.PASS2`` (block rows / columns and row quantum per rank and r) for this
  machine's BLAS family (``fast.gemm_family()``), printed as the rows to paste into ``fast.py``, with how much
  slower the other family's tables run here.
* ``cost-model``: this machine's row of ``dft.COST_MODEL`` (``dft.cost_family()``) (seconds per banded flop, per DFT point and log2
  point), with its median error and how often it picks the faster path.

Speed only: every block choice and either path computes the same result to float32 rounding; the tables are
fixed per machine and library build, as bit-exact replay already is. One thread (BLAS, OpenCV, torch), CPU
time. The timings (``bench_degrade.py``) and A/Bs (``ab_degrade.py``) that judge a new table are separate.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import torch
from threadpoolctl import threadpool_limits

sys.path.insert(0, str(Path(__file__).resolve().parent))  # degrade_common.py, beside this script
from degrade_common import machine, test_images, timed  # noqa: E402  (also puts src/ first)

from prefrestore.data.degrade import dft as degrade_dft  # noqa: E402
from prefrestore.data.degrade import fast as degrade_fast  # noqa: E402
from prefrestore.data.degrade import kernel as degrade_kernel  # noqa: E402


def fit_cost_model(size: int, folder: Path | None) -> dict:
    """Refit this machine's row of ``dft.COST_MODEL`` (``dft.cost_family``: "kernel" with the compiled pass 1, else the BLAS family) (``cost-model``).

    Times ``blur_downsample`` with random rank-R factors (R 1-27) and ``blur_downsample_dft`` at r 1-30
    (41 taps, CPU time, best of 5 after a pass that fills the caches), fits seconds = s/flop x
    ``banded_cost``'s flop count by least squares on the relative error, and counts how often the
    model picks the faster path.
    """
    imgs = test_images(4, size, folder)
    rng = np.random.default_rng(0)
    kernel = rng.random((41, 41))

    def best(fn, *args) -> float:
        return min(timed(fn, imgs[k % len(imgs)], *args)[1] for k in range(5))

    s_per_flop_now, s_per_point_now = degrade_dft.COST_MODEL[degrade_dft.cost_family()]
    rows = []
    with threadpool_limits(1):
        for timed_pass in (False, True):
            for r in (1.0, 1.3, 1.7, 2.2, 3.0, 4.0, 6.0, 9.0, 14.0, 22.0, 30.0):
                out_hw = (int(size // r), int(size // r))
                t_dft = best(degrade_dft.blur_downsample_dft, kernel, out_hw, "linear")
                for rank in (1, 2, 3, 5, 8, 12, 18, 27):
                    v, h = rng.random((rank, 41)), rng.random((rank, 41))
                    t_banded = best(degrade_fast.blur_downsample, v, h, out_hw, "linear")
                    unit = degrade_dft.banded_cost(rank, 41, (size, size), out_hw, 3) / s_per_flop_now
                    if timed_pass:
                        rows.append((unit, t_banded, t_dft))
    unit, t_banded, t_dft = (np.array(col) for col in zip(*rows, strict=True))
    s_per_flop = float(np.sum(unit / t_banded) / np.sum((unit / t_banded) ** 2))  # min sum (pred / t - 1)^2
    model_dft = degrade_dft.dft_cost(41, (size, size), 3) / s_per_point_now
    pred = s_per_flop * unit
    picked = np.where(pred < t_dft, t_banded, t_dft)
    return {"s_per_flop": s_per_flop, "dft_s_per_point_log2": float(np.median(t_dft)) / model_dft,
            "median_rel_err": float(np.median(np.abs(pred / t_banded - 1))),
            "agree": float(np.mean((pred < t_dft) == (t_banded < t_dft))),
            "worst_pick": float(np.max(picked / np.minimum(t_banded, t_dft)))}


TUNE_RATIOS = (1.2, 1.4, 1.7, 2.0, 2.4, 2.8, 3.3, 4.0, 5.0, 6.0, 7.5, 9.0, 11.0, 13.0, 16.0, 20.0, 25.0)


def _steps(ratios: tuple[float, ...], picks: list) -> tuple:
    """Step rows ``((r below which, *choice), ..., (inf, *choice))`` from one choice per grid ratio."""
    steps: list = []
    for k, pick in enumerate(picks):
        if steps and steps[-1][1:] == pick:
            continue
        if steps:
            steps[-1] = (round(math.sqrt(ratios[k - 1] * ratios[k]), 2), *steps[-1][1:])
        steps.append((math.inf, *pick))
    return tuple(steps)


def tune_blocks(size: int, folder: Path | None, keep_within: float = 0.03) -> dict:
    """Measure ``fast.PASS1`` and ``fast.PASS2`` for this machine's BLAS family (``blocks``).

    Both tables are the BLAS path's (``kernel.compiled_pass1`` is switched off while they are timed; the compiled
    pass 1 picks its own blocks, ``kernel.kernel_block``).
    Pass 1: every ``(block, terms)`` from blocks 1-16 and row quanta 1, 2, 4, at ranks 1-12 and the
    ratios of :data:`TUNE_RATIOS`, with pass 2 as tabled; then pass 2's blocks 1-16 with the new pass 1.
    Random rank-R factors of 41 taps, one real face, CPU time, best of 5. A grid point keeps the
    previous point's choice when that is within ``keep_within`` of its best (timing noise would
    otherwise flip it). Returns both tables and, per pass, how much slower the other family's table
    runs here than the best choice (geometric mean and worst cell).
    """
    img = test_images(1, size, folder)[0]
    rng = np.random.default_rng(0)
    family = degrade_fast.gemm_family()
    other = "packed" if family == "small" else "small"
    shape1, block2, kernel = degrade_fast.pass1_shape, degrade_fast.pass2_block, degrade_kernel.compiled_pass1
    degrade_kernel.compiled_pass1 = lambda: None  # the tables are the BLAS path's: the compiled pass 1 is off while they are timed

    def seconds(v, h, out_hw) -> float:
        degrade_fast.blur_downsample(img, v, h, out_hw, "linear")
        reps = []
        for _ in range(5):
            start, calls = time.thread_time(), 0
            while calls == 0 or time.thread_time() - start < 4e-3:
                degrade_fast.blur_downsample(img, v, h, out_hw, "linear")
                calls += 1
            reps.append((time.thread_time() - start) / calls)
        return min(reps)

    def table_choice(table: dict, ratio: float, rank: int, first: bool) -> tuple:
        for step in table[min(rank, 12)]:
            if ratio < step[0]:
                return (step[1], degrade_fast.padded_rank(rank, step[1], step[2])) if first else (step[1],)
        raise AssertionError

    tables: dict = {"pass1": {}, "pass2": {}}
    versus: dict = {"pass1": [], "pass2": []}
    try:
        with threadpool_limits(1):
            for first in (True, False):
                name = "pass1" if first else "pass2"
                for rank in range(1, 13):
                    v, h = rng.random((rank, 41)), rng.random((rank, 41))
                    picks, previous = [], None
                    for ratio in TUNE_RATIOS:
                        out_hw = (int(size // ratio), int(size // ratio))
                        if first:
                            options = sorted({(b, degrade_fast.padded_rank(rank, b, q)) for b in (1, 2, 4, 8, 16)
                                              for q in (1, 2, 4)})
                        else:
                            options = [(b,) for b in (1, 2, 4, 8, 16)]
                        timings = {}
                        for option in options:
                            if first:
                                degrade_fast.pass1_shape = lambda ratio_, rank_, o=option: o
                            else:
                                degrade_fast.pass2_block = lambda ratio_, rank_, o=option: o[0]
                            timings[option] = seconds(v, h, out_hw)
                        best = min(timings, key=timings.get)
                        if previous in timings and timings[previous] <= (1 + keep_within) * timings[best]:
                            best = previous
                        previous = best
                        other_pick = table_choice((degrade_fast.PASS1 if first else degrade_fast.PASS2)[other],
                                                  ratio, rank, first)
                        if other_pick in timings:
                            versus[name].append(timings[other_pick] / min(timings.values()))
                        if first:  # the table stores the row quantum: the smallest one giving these terms
                            block, terms = best
                            quantum = next(q for q in (1, 2, 4) if degrade_fast.padded_rank(rank, block, q) == terms)
                            picks.append((block, quantum))
                        else:
                            picks.append(best)
                    tables[name][rank] = _steps(TUNE_RATIOS, picks)
                    print(f"# {name} rank {rank}: {tables[name][rank]}", flush=True)
                if first:  # pass 2 is tuned with the new pass 1
                    degrade_fast.pass1_shape = lambda ratio_, rank_, t=tables["pass1"]: table_choice(t, ratio_, rank_, True)
                else:
                    degrade_fast.pass1_shape = shape1
                degrade_fast.pass2_block = block2
    finally:
        degrade_fast.pass1_shape, degrade_fast.pass2_block, degrade_kernel.compiled_pass1 = shape1, block2, kernel
    summary = {name: (float(np.exp(np.mean(np.log(r)))), float(np.max(r))) if r else (1.0, 1.0)
               for name, r in versus.items()}
    return {"family": family, "other": other, "tables": tables, "other_table_slowdown": summary}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    parser.add_argument("what", choices=["blocks", "cost-model"], help="the block tables, or the path cost model")
    parser.add_argument("--size", type=int, default=512, help="image side, pixels (512 = FFHQ)")
    parser.add_argument("--images", type=Path, help="folder of real face PNGs (else synthetic images)")
    args = parser.parse_args(argv)
    if args.size < 64:
        parser.error(f"--size must be at least 64 (41-tap kernels), got {args.size}")
    torch.set_num_threads(1)
    cv2.setNumThreads(1)
    print(f"# {machine()}")
    if args.what == "cost-model":
        fit = fit_cost_model(args.size, args.images)
        family = degrade_dft.cost_family()
        print(f"COST_MODEL[{family!r}] = ({fit['s_per_flop']:.3g}, {fit['dft_s_per_point_log2']:.3g}) "
              f"(now {degrade_dft.COST_MODEL[family]}); median error "
              f"{fit['median_rel_err']:.0%}; faster path picked in {fit['agree']:.0%}, worst pick "
              f"{fit['worst_pick']:.2f}x the faster")
        return 0
    tuned = tune_blocks(args.size, args.images)
    print(f"# BLAS family {tuned['family']!r}; the {tuned['other']!r} tables here run at "
          + ", ".join(f"{name} {mean:.2f}x the best (geometric mean; worst cell {worst:.2f}x)"
                      for name, (mean, worst) in tuned["other_table_slowdown"].items()))
    for name, table in tuned["tables"].items():
        print(f"{name.upper()}[{tuned['family']!r}] = {{")
        for rank, steps in table.items():
            print(f"    {rank}: {steps},")
        print("}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
