"""Degradation speed (Eq. 16): direct reference vs the fast exact path, per core, same drawn params.

    python benchmarks/bench_degrade.py --profile paper released released_defaults --n 200 --n-ref 40 \
        --runs 8 --size 512 --batch 16 --device cpu --images ../shared/data/faces/hq --buckets --loader
    python benchmarks/bench_degrade.py --fit-cost-model --profile released --n 1 --size 512 --batch 1 --device cpu

* reference: ``direct.degrade_reference`` (released ``degrade_image`` style: full-resolution
  ``cv2.filter2D`` with the 2-D kernel, then resize, noise, JPEG, resize back).
* fast: ``direct.degrade`` (per sample, by ``direct.blur_plan``: the banded blur computed only where
  the resize samples, or the whole blur by DFT; fast.py, dft.py).
* torch: ``on_the_fly.degrade_batch`` on batches (CPU, one thread; or ``--device cuda``).

One thread everywhere (torch, OpenCV, BLAS), so the CPU figures are images/s per core. Both CPU
paths get the same images and the same drawn params (self-reconstruction off, so every sample is
degraded), interleaved in rounds so that machine noise hits both alike, after one untimed warm-up
pass (steady state: the fast path's per-geometry caches filled). ``--runs`` repeats the timed rounds
in the same process on fresh draws; each run's ratio is printed and the table gives the pooled ratio
and the range over runs, by wall clock and by this thread's CPU time (which a shared, loaded machine
disturbs less). ``--buckets`` times both paths by r bucket x kernel type (released ranges otherwise);
``--loader`` times ``OnTheFlyPairs`` (PNG decode + degrade + tensors) per worker. Prints markdown
tables for benchmarks/RESULTS.md, then where the fast path's time goes, stage by stage.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import platform
import sys
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np
import torch
from threadpoolctl import threadpool_limits

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from prefrestore.core.config import load  # noqa: E402
from prefrestore.data.degrade import dft as degrade_dft  # noqa: E402
from prefrestore.data.degrade import fast as degrade_fast  # noqa: E402
from prefrestore.data.degrade.direct import (  # noqa: E402
    DegradeConfig,
    DegradeParams,
    add_noise,
    blur_plan,
    degrade,
    degrade_reference,
    draw_params,
    gaussian_kernel,
    jpeg_roundtrip,
    lq_size,
    upsample,
)
from prefrestore.data.degrade.on_the_fly import OnTheFlyPairs, degrade_batch  # noqa: E402

BUCKETS = ((1.0, 2.0), (2.0, 4.0), (4.0, 8.0), (8.0, 16.0), (16.0, 30.0))  # r ranges of --buckets


def machine() -> str:
    """The CPU model, its family/model numbers and numpy's OpenBLAS core: speeds differ by box, so RESULTS.md names each.

    The OpenBLAS core (threadpoolctl) decides ``fast.gemm_family()``, hence the block tables and cost model in use.
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
    return f"{name}, numpy OpenBLAS core {'/'.join(cores) or 'none'} (block family {degrade_fast.gemm_family()!r})"


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
        from prefrestore.core.images import load_rgb

        faces = [cv2.resize(load_rgb(p), (size, size), interpolation=cv2.INTER_AREA)
                 for p in sorted(folder.glob("*.png"))]
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


def run_each(fn, chunk: list, cfg: DegradeConfig) -> None:
    """``fn(image, params, cfg)`` for each pair, each result dropped at once (as the degrade step does)."""
    for img, p in chunk:
        fn(img, p, cfg)


def stage_breakdown(imgs: list[np.ndarray], params: list, cfg: DegradeConfig) -> dict[str, float]:
    """CPU ms/img of each stage of the fast path (the body of ``direct.degrade``, stage by stage)."""
    stages = dict.fromkeys(("plan + kernel factors", "blur+downsample", "noise", "JPEG", "upsample"), 0.0)
    for img, p in zip(imgs, params, strict=True):
        t = [time.thread_time()]
        _, factors = blur_plan(p, cfg, img.shape)
        t.append(time.thread_time())
        out_hw = lq_size(*img.shape[:2], p, cfg)
        if factors is None:
            small = degrade_dft.blur_downsample_dft(img, gaussian_kernel(p, cfg), out_hw, cfg.down_interp)
        else:
            small = degrade_fast.blur_downsample(img, *factors, out_hw, cfg.down_interp)
        t.append(time.thread_time())
        add_noise(small, p, cfg)
        t.append(time.thread_time())
        lq = jpeg_roundtrip(small, p.q)
        t.append(time.thread_time())
        upsample(lq, *img.shape[:2], cfg)
        t.append(time.thread_time())
        for key, seconds in zip(stages, np.diff(t), strict=True):
            stages[key] += seconds * 1e3 / len(imgs)
    return stages


def interleaved(imgs: list[np.ndarray], params: list, n_ref: int, cfg: DegradeConfig) -> dict[str, float]:
    """Fast path on every (image, params) pair and the reference on ``n_ref`` of them, in rounds of 25.

    The reference images are spread evenly over the rounds; returns seconds per image of each path,
    by wall clock and by this thread's CPU time.
    """
    starts = range(0, len(params), 25)
    ref_takes = [n_ref // len(starts) + (k < n_ref % len(starts)) for k in range(len(starts))]
    fast, ref, done_ref = np.zeros(2), np.zeros(2), 0
    for start, take in zip(starts, ref_takes, strict=True):
        chunk = list(zip(imgs[start:start + 25], params[start:start + 25], strict=True))
        fast += timed(run_each, degrade, chunk, cfg)
        ref += timed(run_each, degrade_reference, chunk[:take], cfg)
        done_ref += len(chunk[:take])
    return {"fast_wall": fast[0] / len(params), "fast_cpu": fast[1] / len(params),
            "ref_wall": ref[0] / done_ref, "ref_cpu": ref[1] / done_ref}


def summarise(runs: list[dict[str, float]]) -> dict[str, float]:
    """Pooled ratio reference / fast over runs (total times), and the lowest and highest run's ratio."""
    out = {}
    for clock in ("wall", "cpu"):
        per_run = [r[f"ref_{clock}"] / r[f"fast_{clock}"] for r in runs]
        pooled = np.mean([r[f"ref_{clock}"] for r in runs]) / np.mean([r[f"fast_{clock}"] for r in runs])
        out |= {f"ratio_{clock}": float(pooled), f"min_{clock}": min(per_run), f"max_{clock}": max(per_run)}
    out["ref_img_s"] = 1.0 / np.mean([r["ref_wall"] for r in runs])
    out["fast_img_s"] = 1.0 / np.mean([r["fast_wall"] for r in runs])
    out["per_run_cpu"] = [r["ref_cpu"] / r["fast_cpu"] for r in runs]
    return out


def bench_profile(profile: str, n: int, n_ref: int, runs: int, size: int, batch: int, device: str,
                  folder: Path | None) -> dict:
    cfg: DegradeConfig = load(profile).section("degrade", DegradeConfig)
    rng = np.random.default_rng(1234)
    imgs = test_images(n, size, folder)
    result: dict = {}
    with threadpool_limits(1):
        # Warm-up: one untimed pass over every image for both paths, so that the timing is the steady
        # state of a long run (lazy imports loaded, and the fast path's per-geometry operator layouts
        # cached, as they are after the first few hundred images of a dataset). The fast path warms
        # up on other draws than the timed ones: its caches then miss as often as in a real run.
        warm_rng = np.random.default_rng(4321)
        for img in imgs * 3:
            degrade(img, dataclasses.replace(draw_params(warm_rng, cfg), self_rec=False), cfg)
        for img in imgs[:n_ref]:
            degrade_reference(img, dataclasses.replace(draw_params(warm_rng, cfg), self_rec=False), cfg)
        # Each run: fresh draws (self-reconstruction off), both paths interleaved on the same params.
        per_run, params = [], []
        for _ in range(runs):
            params = [dataclasses.replace(draw_params(rng, cfg), self_rec=False) for _ in range(n)]
            per_run.append(interleaved(imgs, params, n_ref, cfg))
        result |= summarise(per_run)
        result["stages"] = stage_breakdown(imgs, params, cfg)
        hq = torch.from_numpy(np.stack(imgs))
        if device == "cpu":
            degrade_batch(hq[:batch], params[:batch], cfg)
            t = sum(timed(degrade_batch, hq[s:s + batch], params[s:s + batch], cfg)[0] for s in range(0, n, batch))
            result["torch_cpu_img_s"] = n / t
        else:
            dev_hq = hq.to(device)
            degrade_batch(dev_hq[:batch], params[:batch], cfg)
            torch.cuda.synchronize()
            for key, gpu_jpeg in (("torch_cuda_img_s", False), ("torch_cuda_nvjpeg_img_s", True)):
                start = time.perf_counter()
                for s in range(0, n, batch):
                    degrade_batch(dev_hq[s:s + batch], params[s:s + batch], cfg, gpu_jpeg=gpu_jpeg)
                torch.cuda.synchronize()
                result[key] = n / (time.perf_counter() - start)
    return result


def bench_buckets(profile: str, per_bucket: int, runs: int, size: int, folder: Path | None) -> list[dict]:
    """Both paths by r bucket x kernel type: the profile's ranges with r drawn in the bucket, kernel forced."""
    base: DegradeConfig = load(profile).section("degrade", DegradeConfig)
    imgs = test_images(per_bucket, size, folder)
    rng = np.random.default_rng(99)
    rows = []
    with threadpool_limits(1):
        for kind in ("iso", "aniso"):
            for lo, hi in BUCKETS:
                cfg = dataclasses.replace(base, downsample=(lo, hi), aniso_prob=float(kind == "aniso"))
                for img in imgs:  # warm-up, other draws
                    degrade(img, dataclasses.replace(draw_params(rng, cfg), self_rec=False), cfg)
                per_run, dft = [], 0
                for _ in range(runs):
                    params: list[DegradeParams] = [dataclasses.replace(draw_params(rng, cfg), self_rec=False)
                                                   for _ in range(per_bucket)]
                    dft += sum(blur_plan(p, cfg, imgs[0].shape)[0] == "dft" for p in params)
                    per_run.append(interleaved(imgs, params, per_bucket, cfg))
                rows.append({"kind": kind, "r": (lo, hi), "dft_share": dft / (runs * per_bucket)}
                            | summarise(per_run))
    return rows


def bench_loader(profile: str, folder: Path, n: int) -> dict:
    """Images/s of one ``OnTheFlyPairs`` worker (PNG decode, params_for, degrade, two float tensors)."""
    import pandas as pd

    cfg: DegradeConfig = load(profile).section("degrade", DegradeConfig)
    paths = sorted(folder.glob("*.png"))
    with tempfile.TemporaryDirectory() as tmp, threadpool_limits(1):
        # a minimal ingested folder: the faces stay where they are, the manifest points at them
        rows = [{"id": f"{k:05d}_{p.stem}", "path": str(p.resolve()), "split": "train"} for k, p in enumerate(paths)]
        pd.DataFrame(rows).to_parquet(Path(tmp) / "manifest.parquet")
        pairs = OnTheFlyPairs(Path(tmp), cfg, "train", seed=0)
        for i in range(len(pairs)):  # warm-up
            pairs[i]
        start_wall, start_cpu, done = time.perf_counter(), time.thread_time(), 0
        for epoch in range(-(-n // len(pairs))):
            pairs.set_epoch(epoch + 1)  # fresh draws every epoch, as in training
            for i in range(len(pairs)):
                pairs[i]
                done += 1
        return {"img_s_wall": done / (time.perf_counter() - start_wall),
                "img_s_cpu": done / (time.thread_time() - start_cpu), "images": done,
                "self_rec": cfg.p_rec}


def fit_cost_model(size: int, folder: Path | None) -> dict:
    """Refit this machine's row of ``dft.COST_MODEL`` (its BLAS family, ``fast.gemm_family``) (--fit-cost-model).

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

    s_per_flop_now, s_per_point_now = degrade_dft.COST_MODEL[degrade_fast.gemm_family()]
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
    """Measure ``fast.PASS1`` and ``fast.PASS2`` for this machine's BLAS family (--tune-blocks).

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
    shape1, block2 = degrade_fast.pass1_shape, degrade_fast.pass2_block

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
        degrade_fast.pass1_shape, degrade_fast.pass2_block = shape1, block2
    summary = {name: (float(np.exp(np.mean(np.log(r)))), float(np.max(r))) if r else (1.0, 1.0)
               for name, r in versus.items()}
    return {"family": family, "other": other, "tables": tables, "other_table_slowdown": summary}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profile", nargs="+", required=True, help="params.yaml profiles, e.g. paper released")
    parser.add_argument("--n", type=int, required=True, help="images per path and run (same drawn params)")
    parser.add_argument("--n-ref", type=int, help="images per run for the slow reference (default: all --n)")
    parser.add_argument("--runs", type=int, default=1, help="timed runs in this process, fresh draws each")
    parser.add_argument("--size", type=int, required=True, help="image side, pixels (512 = FFHQ)")
    parser.add_argument("--batch", type=int, required=True, help="torch batch size")
    parser.add_argument("--device", choices=["cpu", "cuda"], required=True, help="device of the torch path")
    parser.add_argument("--images", type=Path, help="folder of real face PNGs (else synthetic images)")
    parser.add_argument("--buckets", action="store_true", help="also time by r bucket x kernel (last profile)")
    parser.add_argument("--per-bucket", type=int, default=5, help="draws per bucket and run")
    parser.add_argument("--loader", action="store_true", help="also time OnTheFlyPairs per worker (needs --images)")
    parser.add_argument("--fit-cost-model", action="store_true", help="only refit dft.py's path cost model")
    parser.add_argument("--tune-blocks", action="store_true", help="only measure fast.py's block tables for this BLAS")
    args = parser.parse_args()
    steady = steady_allocator()
    torch.set_num_threads(1)
    cv2.setNumThreads(1)
    if args.fit_cost_model:
        fit = fit_cost_model(args.size, args.images)
        family = degrade_fast.gemm_family()
        print(f"COST_MODEL[{family!r}] = ({fit['s_per_flop']:.3g}, {fit['dft_s_per_point_log2']:.3g}) "
              f"(now {degrade_dft.COST_MODEL[family]}); median error "
              f"{fit['median_rel_err']:.0%}; faster path picked in {fit['agree']:.0%}, worst pick "
              f"{fit['worst_pick']:.2f}x the faster")
        return 0
    if args.tune_blocks:
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
    print(f"# {machine()}, torch {torch.__version__}, cv2 {cv2.__version__}, "
          f"numpy {np.__version__}" + (f", {torch.cuda.get_device_name()}" if args.device == "cuda" else "")
          + f"; glibc trim/mmap thresholds raised: {steady}")
    print(f"| profile | reference img/s/core | fast img/s/core | ratio wall (range over {args.runs} runs) | "
          "ratio CPU time (range) | torch batched img/s |")
    print("|---|---|---|---|---|---|")
    stages, per_run = {}, {}
    for profile in args.profile:
        r = bench_profile(profile, args.n, args.n_ref or args.n, args.runs, args.size, args.batch, args.device,
                          args.images)
        stages[profile], per_run[profile] = r["stages"], r["per_run_cpu"]
        if args.device == "cpu":
            torch_figure = f"{r['torch_cpu_img_s']:.1f} (cpu, 1 thread, batch {args.batch})"
        else:
            torch_figure = (f"{r['torch_cuda_img_s']:.1f} (cuda, CPU JPEG, batch {args.batch}); "
                            f"{r['torch_cuda_nvjpeg_img_s']:.1f} (nvJPEG)")
        print(f"| {profile} | {r['ref_img_s']:.1f} | {r['fast_img_s']:.1f} | {r['ratio_wall']:.2f}x "
              f"({r['min_wall']:.2f}-{r['max_wall']:.2f}) | {r['ratio_cpu']:.2f}x ({r['min_cpu']:.2f}-{r['max_cpu']:.2f}) "
              f"| {torch_figure} |", flush=True)
    print("\nPer-run ratios (CPU time): " + "; ".join(
        f"{profile}: " + ", ".join(f"{x:.2f}" for x in runs) for profile, runs in per_run.items()))
    if args.buckets:
        profile = args.profile[-1]
        print(f"\nBy r bucket x kernel ({profile} ranges otherwise; {args.per_bucket} draws x {args.runs} runs each):")
        print("| kernel | r | DFT path share | ratio wall (range) | ratio CPU time (range) |")
        print("|---|---|---|---|---|")
        for row in bench_buckets(profile, args.per_bucket, args.runs, args.size, args.images):
            lo, hi = row["r"]
            print(f"| {row['kind']} | [{lo:g}, {hi:g}) | {row['dft_share']:.0%} | {row['ratio_wall']:.2f}x "
                  f"({row['min_wall']:.2f}-{row['max_wall']:.2f}) | {row['ratio_cpu']:.2f}x "
                  f"({row['min_cpu']:.2f}-{row['max_cpu']:.2f}) |", flush=True)
    if args.loader:
        if args.images is None:
            parser.error("--loader needs --images")
        print("\nOnTheFlyPairs, one worker (one thread), per profile:")
        for profile in args.profile:
            r = bench_loader(profile, args.images, args.n)
            print(f"  {profile}: {r['img_s_wall']:.1f} img/s wall, {r['img_s_cpu']:.1f} img/s CPU time "
                  f"({r['images']} images, p_rec {r['self_rec']:g})", flush=True)
    print("\nFast path, CPU ms/img by stage (last run's draws):")
    for profile, by_stage in stages.items():
        print(f"  {profile}: " + ", ".join(f"{k} {v:.3f}" for k, v in by_stage.items())
              + f" (total {sum(by_stage.values()):.3f})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
