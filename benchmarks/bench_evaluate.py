"""One-pass evaluation harness vs calling each metric separately over the folder.

Baseline: for each weight-free metric (PSNR, SSIM, MS-SSIM), loop over the benchmark, decode the
restored and HQ PNGs again and score one image at a time (how standalone metric scripts work).
Ours: ``evaluate.evaluate_folder``: each image decoded once, every metric fed from the same
batched tensors. Both run in this process on the same folder; the ratio is reported.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_evaluate.py --images 24 --size 512
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from prefrestore import evaluate
from prefrestore.images import load_rgb, save_png
from prefrestore.metrics import get as get_metrics
from prefrestore.metrics import pixel
from prefrestore.metrics.base import BuildContext

METRICS = {"psnr": pixel.psnr, "ssim": pixel.ssim, "ms_ssim": pixel.ms_ssim}


def make_folder(root: Path, n: int, size: int) -> Path:
    rng = np.random.default_rng(0)
    (root / "lq").mkdir(parents=True)
    (root / "hq").mkdir()
    rows = []
    for i in range(n):
        base = rng.integers(0, 256, (size // 8, size // 8, 3), dtype=np.uint8)
        hq = np.kron(base, np.ones((8, 8, 1), np.uint8))  # smooth-ish content, compresses like photos
        lq = np.clip(hq.astype(int) + rng.integers(-20, 20, hq.shape), 0, 255).astype(np.uint8)
        save_png(root / f"hq/{i:04d}.png", hq)
        save_png(root / f"lq/{i:04d}.png", lq)
        rows.append({"id": f"{i:04d}", "lq_path": f"lq/{i:04d}.png", "hq_path": f"hq/{i:04d}.png"})
    pd.DataFrame(rows).to_parquet(root / "manifest.parquet")
    return root


def per_metric_baseline(root: Path) -> dict[str, float]:
    """Each metric separately: its own pass over the folder, its own decoding, one image at a time."""
    rows = pd.read_parquet(root / "manifest.parquet")
    out = {}
    for name, fn in METRICS.items():
        vals = []
        for _, r in rows.iterrows():
            x = evaluate._to_tensor([load_rgb(root / r["lq_path"])])  # identity restore: restored == LQ
            y = evaluate._to_tensor([load_rgb(root / r["hq_path"])])
            vals.append(fn(x, y).item())
        out[name] = float(np.mean(vals))
    return out


def one_pass(root: Path, batch_size: int) -> dict[str, float]:
    bench = evaluate.load_benchmark(root)
    ms = evaluate.MetricSet(get_metrics(list(METRICS)), BuildContext(torch.device("cpu"), 512, "trainval70k", 512, 128),
                            False)
    res, _ = evaluate.evaluate_folder(evaluate.identity_restore, bench, ms, batch_size=batch_size,
                                      measure_input=False, progress=False)
    return {k: float(v) for k, v in res.restored.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, default=24)
    ap.add_argument("--size", type=int, default=512)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--repeats", type=int, default=2)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = make_folder(Path(tmp) / "bench", args.images, args.size)
        one_pass(root, args.batch_size)  # warm-up (allocator, imports)
        tb, to = [], []
        for _ in range(args.repeats):  # interleaved, so load on a shared machine hits both alike
            t = time.perf_counter()
            base = per_metric_baseline(root)
            tb.append(time.perf_counter() - t)
            t = time.perf_counter()
            ours = one_pass(root, args.batch_size)
            to.append(time.perf_counter() - t)
        for k in METRICS:
            assert abs(base[k] - ours[k]) <= 1e-5 * max(1.0, abs(base[k])), (k, base[k], ours[k])
        b, o = min(tb), min(to)
        print(f"{args.images} images {args.size}px, metrics {list(METRICS)}, torch threads {torch.get_num_threads()}")
        print(f"per-metric (decode per metric, batch 1): {b:.2f} s = {args.images / b:.2f} img/s")
        print(f"one-pass harness (decode once, batch {args.batch_size}): {o:.2f} s = {args.images / o:.2f} img/s")
        print(f"speed-up: {b / o:.2f}x  (values agree to 1e-5)")


if __name__ == "__main__":
    main()
