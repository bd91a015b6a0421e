"""Degradation speed (Eq. 16): direct reference vs the fast exact path, per core, same drawn params.

    python benchmarks/bench_degrade.py --profile paper released --n 300 [--device cuda]

* reference: ``degrade.degrade_reference`` (released ``degrade_image`` style: full-resolution
  ``cv2.filter2D`` with the 2-D kernel, then resize, noise, JPEG, resize back).
* fast: ``degrade.degrade`` (blur only where the resize samples; degrade_fast.py).
* torch: ``degrade_torch.degrade_batch`` on batches (CPU, one thread; or ``--device cuda``).

One thread everywhere (torch, OpenCV, BLAS), so the CPU figures are images/s per core. Both CPU
paths get the same images and the same drawn params (self-reconstruction off, so every sample is
degraded), interleaved in rounds so that machine noise hits both alike, after one untimed warm-up
pass (steady state: the fast path's per-geometry caches filled). The ratio is given by wall clock and
by this thread's CPU time (which a shared, loaded machine disturbs less). Prints a markdown table for
benchmarks/RESULTS.md, then where the fast path's time goes, stage by stage.
"""

from __future__ import annotations

import argparse
import dataclasses
import platform
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import torch
from threadpoolctl import threadpool_limits

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from prefrestore.core.config import load  # noqa: E402
from prefrestore.data.degrade import fast as degrade_fast  # noqa: E402
from prefrestore.data.degrade.direct import (  # noqa: E402
    DegradeConfig,
    add_noise,
    degrade,
    degrade_reference,
    draw_params,
    jpeg_roundtrip,
    kernel_factors,
    lq_size,
    upsample,
)
from prefrestore.data.degrade.on_the_fly import degrade_batch  # noqa: E402


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
    """CPU ms/img of each stage of the fast path (the body of ``degrade.degrade``, stage by stage)."""
    stages = dict.fromkeys(("kernel factors", "blur+downsample", "noise", "JPEG", "upsample"), 0.0)
    for img, p in zip(imgs, params, strict=True):
        t = [time.thread_time()]
        v, h = kernel_factors(p, cfg)
        t.append(time.thread_time())
        small = degrade_fast.blur_downsample(img, v, h, lq_size(*img.shape[:2], p, cfg), cfg.down_interp)
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


def bench_profile(profile: str, n: int, n_ref: int, size: int, batch: int, device: str,
                  folder: Path | None) -> dict:
    cfg: DegradeConfig = load(profile).section("degrade", DegradeConfig)
    rng = np.random.default_rng(1234)
    params = [dataclasses.replace(draw_params(rng, cfg), self_rec=False) for _ in range(n)]
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
        for img, p in zip(imgs[:n_ref], params[:n_ref], strict=True):
            degrade_reference(img, p, cfg)
        # Interleave in rounds of 25 so that machine noise hits both paths alike; the reference
        # images are spread evenly over the rounds; same params for both.
        starts = range(0, n, 25)
        ref_takes = [n_ref // len(starts) + (k < n_ref % len(starts)) for k in range(len(starts))]
        fast = np.zeros(2)
        ref = np.zeros(2)
        done_ref = 0
        for start, take in zip(starts, ref_takes, strict=True):
            chunk = list(zip(imgs[start:start + 25], params[start:start + 25], strict=True))
            fast += timed(run_each, degrade, chunk, cfg)
            ref += timed(run_each, degrade_reference, chunk[:take], cfg)
            done_ref += len(chunk[:take])
        result["reference_img_s"] = done_ref / ref[0]
        result["fast_img_s"] = n / fast[0]
        result["ratio"] = result["fast_img_s"] / result["reference_img_s"]
        result["ratio_cpu"] = (ref[1] / done_ref) / (fast[1] / n)
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


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profile", nargs="+", required=True, help="params.yaml profiles, e.g. paper released")
    parser.add_argument("--n", type=int, required=True, help="images per path (same drawn params)")
    parser.add_argument("--n-ref", type=int, help="images for the slow reference (default: all --n)")
    parser.add_argument("--size", type=int, required=True, help="image side, pixels (512 = FFHQ)")
    parser.add_argument("--batch", type=int, required=True, help="torch batch size")
    parser.add_argument("--device", choices=["cpu", "cuda"], required=True, help="device of the torch path")
    parser.add_argument("--images", type=Path, help="folder of real face PNGs (else synthetic images)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    cv2.setNumThreads(1)
    print(f"# {platform.processor() or platform.machine()}, torch {torch.__version__}, cv2 {cv2.__version__}, "
          f"numpy {np.__version__}" + (f", {torch.cuda.get_device_name()}" if args.device == "cuda" else ""))
    print("| profile | reference img/s/core | fast img/s/core | ratio (wall) | ratio (CPU time) | torch batched img/s |")
    print("|---|---|---|---|---|---|")
    stages = {}
    for profile in args.profile:
        r = bench_profile(profile, args.n, args.n_ref or args.n, args.size, args.batch, args.device, args.images)
        stages[profile] = r["stages"]
        if args.device == "cpu":
            torch_figure = f"{r['torch_cpu_img_s']:.1f} (cpu, 1 thread, batch {args.batch})"
        else:
            torch_figure = (f"{r['torch_cuda_img_s']:.1f} (cuda, CPU JPEG, batch {args.batch}); "
                            f"{r['torch_cuda_nvjpeg_img_s']:.1f} (nvJPEG)")
        print(f"| {profile} | {r['reference_img_s']:.1f} | {r['fast_img_s']:.1f} | {r['ratio']:.2f}x | "
              f"{r['ratio_cpu']:.2f}x | {torch_figure} |", flush=True)
    print("\nFast path, CPU ms/img by stage:")
    for profile, by_stage in stages.items():
        print(f"  {profile}: " + ", ".join(f"{k} {v:.3f}" for k, v in by_stage.items())
              + f" (total {sum(by_stage.values()):.3f})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
