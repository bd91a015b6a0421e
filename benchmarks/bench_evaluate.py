"""One-pass evaluation harness vs calling each metric separately over the folder.

Baseline: for each weight-free metric (PSNR, SSIM, MS-SSIM), loop over the benchmark, decode the
restored and HQ PNGs again and score one image at a time with that metric's own function (how
standalone metric scripts work). Ours: ``evaluate.evaluate_folder``: each image decoded once, every
metric fed from the same batched tensors, SSIM's first scale shared with MS-SSIM. Both run in this
process on the same folder, interleaved, with the same metric code; the ratio is reported.

Second baseline (``--pyiqa-images``): pyiqa's own ``psnr``, ``ssimc`` and ``ms_ssim`` (RGB), each
called separately on the folder's file paths, as a user of the library would; its values are
checked against ours, and its per-image time is compared with the one pass's. That ratio mostly
measures the faster metric implementation, not the sharing: the same-code ratio above is the one
that isolates the one pass.

Times are wall clock and this process's CPU time (``time.process_time``: single-threaded here, and
far less disturbed than wall time by other jobs on a shared machine). It also prints what one image
costs per component and the ratio's ceiling: the one pass still does every metric's own work, so it
can save only the repeated decodes and SSIM's first scale.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_evaluate.py --images 16 --size 512
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import torch

from prefrestore.core.images import load_rgb, save_png
from prefrestore.evaluation import evaluate
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


def per_metric_baseline(root: Path, limit: int | None = None) -> dict[str, float]:
    """Each metric separately: its own pass over the folder, its own decoding, one image at a time."""
    rows = pd.read_parquet(root / "manifest.parquet").head(limit)
    out = {}
    for name, fn in METRICS.items():
        vals = []
        for _, r in rows.iterrows():
            x = evaluate._to_tensor([load_rgb(root / r["lq_path"])])  # identity restore: restored == LQ
            y = evaluate._to_tensor([load_rgb(root / r["hq_path"])])
            vals.append(fn(x, y).item())
        out[name] = float(np.mean(vals))
    return out


PYIQA = {"psnr": ("psnr", {}), "ssim": ("ssimc", {}), "ms_ssim": ("ms_ssim", {"test_y_channel": False})}


def pyiqa_baseline(root: Path, limit: int) -> tuple[dict[str, float], float, float]:
    """pyiqa's own metrics (RGB variants), each over the folder's first ``limit`` pairs as file paths:
    what a user calling each metric separately with the library does. -> (means, wall s, CPU s)."""
    import pyiqa

    rows = pd.read_parquet(root / "manifest.parquet").head(limit)
    nets = {k: pyiqa.create_metric(name, device="cpu", **kw) for k, (name, kw) in PYIQA.items()}
    for net in nets.values():  # warm-up on one pair, outside the timing
        net(str(root / rows["lq_path"].iloc[0]), str(root / rows["hq_path"].iloc[0]))
    t, c = time.perf_counter(), time.process_time()
    out = {k: float(np.mean([net(str(root / r["lq_path"]), str(root / r["hq_path"])).item()
                             for _, r in rows.iterrows()])) for k, net in nets.items()}
    return out, time.perf_counter() - t, time.process_time() - c


def one_pass(root: Path, batch_size: int) -> dict[str, float]:
    bench = evaluate.load_benchmark(root)
    ms = evaluate.MetricSet(get_metrics(list(METRICS)), BuildContext(torch.device("cpu"), 512, "trainval70k", 512, 128),
                            False)
    res, _ = evaluate.evaluate_folder(evaluate.identity_restore, bench, ms, batch_size=batch_size,
                                      measure_input=False, progress=False)
    return {k: float(v) for k, v in res.restored.items()}


def _ms(fn, repeats: int = 10) -> float:
    fn()
    t = time.process_time()
    for _ in range(repeats):
        fn()
    return (time.process_time() - t) / repeats * 1000


def components(root: Path) -> dict[str, float]:
    """CPU milliseconds per image of each piece of work (one pair; mean of 10 runs after a warm-up)."""
    lq_path, hq_path = root / "lq/0000.png", root / "hq/0000.png"
    lq, hq = load_rgb(lq_path), load_rgb(hq_path)

    def fresh():  # new tensor objects, so SSIM's first scale is not reused from an earlier call
        return evaluate._to_tensor([lq]), evaluate._to_tensor([hq])

    t_pair = _ms(fresh)
    ssim_ms = _ms(lambda: pixel.ssim(*fresh())) - t_pair
    return {
        "decode (LQ + HQ)": _ms(lambda: (load_rgb(lq_path), load_rgb(hq_path))),
        "to tensor (LQ + HQ)": t_pair,
        "PSNR": _ms(lambda: pixel.psnr(*fresh())) - t_pair,
        "SSIM (= MS-SSIM scale 1)": ssim_ms,
        "MS-SSIM scales 2-5": _ms(lambda: pixel.ms_ssim(*fresh())) - t_pair - ssim_ms,
    }


def ceiling(c: dict[str, float]) -> float:
    """The ratio these components allow: the baseline decodes each pair once per metric and computes
    SSIM's first scale twice, the one pass each once. Below 3 for three metrics whatever the costs;
    per-call overheads (the baseline's Python loop, the harness's bookkeeping) are left out."""
    io = c["decode (LQ + HQ)"] + c["to tensor (LQ + HQ)"]
    work = c["PSNR"] + c["SSIM (= MS-SSIM scale 1)"] + c["MS-SSIM scales 2-5"]
    return (len(METRICS) * io + work + c["SSIM (= MS-SSIM scale 1)"]) / (io + work)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, default=24)
    ap.add_argument("--size", type=int, default=512)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--pyiqa-images", type=int, default=4,
                    help="pairs for the pyiqa baseline (slow on CPU: seconds per SSIM); 0 skips it")
    args = ap.parse_args()
    cv2.setNumThreads(1)  # SSIM's OpenCV filter on one thread too, like torch under OMP_NUM_THREADS=1
    with tempfile.TemporaryDirectory() as tmp:
        root = make_folder(Path(tmp) / "bench", args.images, args.size)
        one_pass(root, args.batch_size)  # warm-up (allocator, imports)
        runs = {"base": lambda: per_metric_baseline(root), "ours": lambda: one_pass(root, args.batch_size)}
        wall: dict[str, list[float]] = {"base": [], "ours": []}
        cpu: dict[str, list[float]] = {"base": [], "ours": []}  # this process only: robust to other jobs
        values: dict[str, dict[str, float]] = {}
        for _ in range(args.repeats):  # interleaved, so load on a shared machine hits both alike
            for key, fn in runs.items():
                t, c = time.perf_counter(), time.process_time()
                values[key] = fn()
                wall[key].append(time.perf_counter() - t)
                cpu[key].append(time.process_time() - c)
        base, ours = values["base"], values["ours"]
        for k in METRICS:
            assert abs(base[k] - ours[k]) <= 1e-5 * max(1.0, abs(base[k])), (k, base[k], ours[k])
        b, o = min(wall["base"]), min(wall["ours"])
        bc, oc = min(cpu["base"]), min(cpu["ours"])
        print(f"{args.images} images {args.size}px, metrics {list(METRICS)}, torch threads {torch.get_num_threads()}, "
              f"best of {args.repeats}")
        print(f"per-metric (decode per metric, batch 1): wall {b:.2f} s = {args.images / b:.2f} img/s, CPU {bc:.2f} s")
        print(f"one-pass harness (decode once, batch {args.batch_size}): wall {o:.2f} s = {args.images / o:.2f} img/s, "
              f"CPU {oc:.2f} s")
        print(f"speed-up: wall {b / o:.2f}x, CPU time {bc / oc:.2f}x  (values agree to 1e-5)")
        parts = components(root)
        print("per image (ms): " + ", ".join(f"{k} {v:.2f}" for k, v in parts.items()))
        print(f"speed-up these components allow (per-call overheads left out): {ceiling(parts):.2f}x")
        if args.pyiqa_images:
            n = min(args.pyiqa_images, args.images)
            lib, lw, lc = pyiqa_baseline(root, n)
            same = per_metric_baseline(root, n)
            diff = max(abs(lib[k] - same[k]) for k in METRICS)
            print(f"pyiqa per-metric ({', '.join(v[0] for v in PYIQA.values())}; file paths, its own decoding), "
                  f"{n} pairs: wall {lw / n:.3f} s/img, CPU {lc / n:.3f} s/img; max |pyiqa - ours| of the means "
                  f"{diff:.1e}")
            print(f"speed-up of the one pass over pyiqa per metric: wall {lw / n / (o / args.images):.0f}x, "
                  f"CPU time {lc / n / (oc / args.images):.0f}x")


if __name__ == "__main__":
    main()
