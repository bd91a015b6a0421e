"""Degradation speed (Eq. 16): direct reference vs the fast exact path, per core, same drawn params.

    python benchmarks/bench_degrade.py --profile paper released --n 300 [--device cuda]

* reference: ``degrade.degrade_reference`` (released ``degrade_image`` style: full-resolution
  ``cv2.filter2D`` with the 2-D kernel, then resize, noise, JPEG, resize back).
* fast: ``degrade.degrade`` (blur only where the resize samples; degrade_fast.py).
* torch: ``degrade_torch.degrade_batch`` on batches (CPU, one thread; or ``--device cuda``).

One thread everywhere (torch, OpenCV, BLAS), so the CPU figures are images/s per core. Both CPU
paths get the same images and the same drawn params (self-reconstruction off, so every sample is
degraded). Prints a markdown table for benchmarks/RESULTS.md.
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

from prefrestore.config import load  # noqa: E402
from prefrestore.degrade import DegradeConfig, degrade, degrade_reference, draw_params  # noqa: E402
from prefrestore.degrade_torch import degrade_batch  # noqa: E402


def test_images(n: int, size: int, folder: Path | None) -> list[np.ndarray]:
    """Real faces from ``folder`` when given (cycled), else smooth synthetic images with edges."""
    if folder is not None:
        from prefrestore.images import load_rgb

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


def timed(fn, *args) -> float:
    start = time.perf_counter()
    fn(*args)
    return time.perf_counter() - start


def bench_profile(profile: str, n: int, n_ref: int, size: int, batch: int, device: str,
                  folder: Path | None) -> dict[str, float]:
    cfg: DegradeConfig = load(profile).section("degrade", DegradeConfig)
    rng = np.random.default_rng(1234)
    params = [dataclasses.replace(draw_params(rng, cfg), self_rec=False) for _ in range(n)]
    imgs = test_images(n, size, folder)
    result: dict[str, float] = {}
    with threadpool_limits(1):
        for img, p in zip(imgs[:5], params[:5], strict=True):  # warm-up (caches, lazy imports)
            degrade(img, p, cfg)
            degrade_reference(img, p, cfg)
        # Interleave in rounds so that machine noise hits both paths alike; same params for both.
        t_fast = t_ref = 0.0
        done_ref = 0
        for start in range(0, n, 25):
            chunk = list(zip(imgs[start:start + 25], params[start:start + 25], strict=True))
            t_fast += timed(lambda c: [degrade(i, p, cfg) for i, p in c], chunk)
            if done_ref < n_ref:
                take = chunk[: n_ref - done_ref]
                t_ref += timed(lambda c: [degrade_reference(i, p, cfg) for i, p in c], take)
                done_ref += len(take)
        result["reference_img_s"] = done_ref / t_ref
        result["fast_img_s"] = n / t_fast
        result["ratio"] = result["fast_img_s"] / result["reference_img_s"]
        hq = torch.from_numpy(np.stack(imgs))
        if device == "cpu":
            degrade_batch(hq[:batch], params[:batch], cfg)
            t = sum(timed(degrade_batch, hq[s:s + batch], params[s:s + batch], cfg) for s in range(0, n, batch))
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
    print("| profile | reference img/s/core | fast img/s/core | ratio | torch batched img/s |")
    print("|---|---|---|---|---|")
    for profile in args.profile:
        r = bench_profile(profile, args.n, args.n_ref or args.n, args.size, args.batch, args.device, args.images)
        if args.device == "cpu":
            torch_figure = f"{r['torch_cpu_img_s']:.1f} (cpu, 1 thread, batch {args.batch})"
        else:
            torch_figure = (f"{r['torch_cuda_img_s']:.1f} (cuda, CPU JPEG, batch {args.batch}); "
                            f"{r['torch_cuda_nvjpeg_img_s']:.1f} (nvJPEG)")
        print(f"| {profile} | {r['reference_img_s']:.1f} | {r['fast_img_s']:.1f} | {r['ratio']:.2f}x | "
              f"{torch_figure} |", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
