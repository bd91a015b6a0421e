"""Degradation speed (Eq. 16): direct reference vs the fast exact path, per core, same drawn params.

    python benchmarks/bench_degrade.py --profile paper released released_defaults --n 200 --n-ref 40 \
        --runs 8 --size 512 --batch 16 --device cpu --images ../shared/data/faces/hq --buckets --loader

* reference: ``direct.degrade_reference`` (released ``degrade_image`` style: full-resolution
  ``cv2.filter2D`` with the 2-D kernel, then resize, noise, JPEG, resize back).
* fast: ``direct.degrade`` (per sample, by ``direct.blur_plan``: the banded blur computed only where
  the resize samples, its pass 1 compiled where ``_kernels.c`` is built and the CPU has AVX-512, or the
  whole blur by DFT; fast.py, dft.py). The header line says which pass 1 ran.
* torch: ``on_the_fly.degrade_batch`` on batches (CPU, one thread; or ``--device cuda``).

One thread everywhere (torch, OpenCV, BLAS), so the CPU figures are images/s per core. Both CPU
paths get the same images and the same drawn params (self-reconstruction off, so every sample is
degraded), interleaved in rounds so that machine noise hits both alike, after one untimed warm-up
pass (steady state: the fast path's per-geometry caches filled). ``--runs`` repeats the timed rounds
in the same process on fresh draws; each run's ratio is printed and the table gives the pooled ratio
and the range over runs, by wall clock and by this thread's CPU time (which a shared, loaded machine
disturbs less), with each profile's sampling error of one run: how far a run's ratio moves with the
draws it got alone (:func:`sampling_error`; about +-7% at ``released`` with 200 draws; the box drifts about as much, RESULTS.md, issue 20, follow-up 10). ``--buckets`` times both paths by r bucket x kernel type (released ranges otherwise);
``--loader`` times ``OnTheFlyPairs`` (PNG decode + degrade + tensors) per worker. Prints markdown
tables for benchmarks/RESULTS.md, then where the fast path's time goes, stage by stage.

The tables and cost model this path picks its blocks and paths by are measured by ``tune_degrade.py``;
the same-process A/B of two versions of the fast path is ``ab_degrade.py``. Shared: ``degrade_common.py``.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np
import torch
from threadpoolctl import threadpool_limits

sys.path.insert(0, str(Path(__file__).resolve().parent))  # degrade_common.py, beside this script
from degrade_common import machine, steady_allocator, test_images, timed  # noqa: E402  (also puts src/ first)

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


def run_each(fn, chunk: list, cfg: DegradeConfig) -> None:
    """``fn(image, params, cfg)`` for each pair, each result dropped at once (as the degrade step does)."""
    for img, p in chunk:
        fn(img, p, cfg)


def stage_breakdown(imgs: list[np.ndarray], params: list, cfg: DegradeConfig) -> tuple[dict[str, float], np.ndarray]:
    """CPU ms/img of each stage of the fast path (the body of ``direct.degrade``, stage by stage), and each draw's total ms."""
    stages = dict.fromkeys(("plan + kernel factors", "blur+downsample", "noise", "JPEG", "upsample"), 0.0)
    totals = []
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
        totals.append((t[-1] - t[0]) * 1e3)
    return stages, np.array(totals)


def sampling_error(draw_ms: np.ndarray) -> float:
    """The relative standard error of a run's mean fast-path time that comes from which draws it got alone.

    A draw's cost spreads widely (r in [1, 30]: the LQ size varies 30x, rotated kernels take several rank
    terms), so a run of ``n`` draws has a mean that moves by ``cv / sqrt(n)`` from one set of draws to the next
    even on a steady machine; the reference's cost hardly depends on the draw, so the run's ratio moves as much.
    """
    return float(draw_ms.std(ddof=1) / draw_ms.mean() / np.sqrt(len(draw_ms)))


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
        result["stages"], draw_ms = stage_breakdown(imgs, params, cfg)
        result["draw_cv"] = float(draw_ms.std(ddof=1) / draw_ms.mean())
        result["run_se"] = sampling_error(draw_ms)
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
    args = parser.parse_args()
    steady = steady_allocator()
    torch.set_num_threads(1)
    cv2.setNumThreads(1)
    print(f"# {machine()}, torch {torch.__version__}, cv2 {cv2.__version__}, "
          f"numpy {np.__version__}" + (f", {torch.cuda.get_device_name()}" if args.device == "cuda" else "")
          + f"; glibc trim/mmap thresholds raised: {steady}")
    print(f"| profile | reference img/s/core | fast img/s/core | ratio wall (range over {args.runs} runs) | "
          "ratio CPU time (range) | torch batched img/s |")
    print("|---|---|---|---|---|---|")
    stages, per_run, spread = {}, {}, {}
    for profile in args.profile:
        r = bench_profile(profile, args.n, args.n_ref or args.n, args.runs, args.size, args.batch, args.device,
                          args.images)
        stages[profile], per_run[profile], spread[profile] = r["stages"], r["per_run_cpu"], (r["draw_cv"], r["run_se"])
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
    print(f"Sampling error of one run's ratio from its {args.n} draws alone (per-draw cost spread of the last run's "
          "draws, hot): " + "; ".join(f"{profile}: cv {cv:.2f}, +-{se:.1%}" for profile, (cv, se) in spread.items()))
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
