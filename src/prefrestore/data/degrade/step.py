"""The ``degrade`` step: offline (LQ, HQ) training pairs and the synthetic CelebA-Test-style benchmark.

``run(params, {"faces": dir}, out)`` reads the ingested faces (``manifest.parquet``) and writes::

    out/lq/<id>.png                      one degraded image per *train* face (Eq. 16, degrade.py)
    out/pairs.parquet                    id, lq_path (in out), hq_path (in the faces dir), split,
                                         the drawn DegradeParams, lq_h, lq_w, kernel_size, seed, epoch
    out/benchmarks/celeba_test/          the *test* faces degraded with degrade.benchmark_seed
                                         (hq/, lq/, manifest.parquet, benchmark.json; benchmarks_data.py)
    out/summary.json                     counts, self-reconstruction fraction, fingerprint

Each sample's parameters come from ``(seed, id)`` only (:func:`prefrestore.data.degrade.direct.params_for`), so
the output is identical for any ``degrade.workers``. The work goes into a staging folder named after
the input fingerprint; an interrupted run resumes there (finished PNGs are kept), and the finished
folder replaces ``out`` in one rename. A re-run with the same inputs and params returns at once.
Training stages that want fresh degradations every epoch use ``data.degrade.on_the_fly.OnTheFlyPairs`` instead.
"""

from __future__ import annotations

import concurrent.futures
import hashlib
import json
import multiprocessing
import os
import shutil
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import cv2
import pandas as pd
import torch
from threadpoolctl import threadpool_limits
from tqdm.auto import tqdm

from prefrestore.core import atomic, images, tracking
from prefrestore.core.config import Params, as_dict
from prefrestore.data import benchmarks as benchmarks_data
from prefrestore.data.degrade.direct import (
    DegradeConfig,
    DegradeParams,
    degrade,
    kernel_radius,
    lq_size,
    params_for,
)
from prefrestore.data.ingest import DataConfig

DEGRADE_VERSION = 1  # bump when the same inputs and params give different output (part of the fingerprint)
BENCHMARK_NAME = "celeba_test"


def _job(args: tuple[str, str, str, int, int, DegradeConfig, bool]) -> dict[str, Any]:
    """Degrade one HQ file into ``lq_dir/<id>.png`` (kept if already there) and return its row."""
    sample_id, hq_path, lq_dir, seed, resolution, cfg, force_degrade = args
    p: DegradeParams = params_for(sample_id, seed, cfg)
    if force_degrade and p.self_rec:  # benchmarks are always degraded
        p = DegradeParams(**{**p.as_row(), "self_rec": False})
    target = Path(lq_dir) / f"{sample_id}.png"
    hq = images.load_rgb(hq_path)
    if hq.shape[:2] != (resolution, resolution):
        raise ValueError(f"{hq_path}: {hq.shape[1]}x{hq.shape[0]}, expected {resolution}x{resolution} "
                         f"(data.resolution); ingest the folder first")
    if not target.is_file():
        images.save_png(target, degrade(hq, p, cfg))
    h, w = lq_size(hq.shape[0], hq.shape[1], p, cfg)
    return {"id": sample_id, **p.as_row(), "lq_h": h, "lq_w": w, "kernel_size": 2 * kernel_radius(p, cfg) + 1}


def _init_worker() -> None:
    torch.set_num_threads(1)
    cv2.setNumThreads(1)
    threadpool_limits(1)


def degrade_files(
    items: Sequence[tuple[str, Path]], lq_dir: Path, seed: int, resolution: int, cfg: DegradeConfig,
    workers: int, desc: str, force_degrade: bool = False,
) -> pd.DataFrame:
    """Degrade ``(id, hq_path)`` items into ``lq_dir`` with ``workers`` processes; one row per item.

    Output bytes and rows are the same for any ``workers`` (per-sample seeds, one BLAS thread each).
    """
    lq_dir.mkdir(parents=True, exist_ok=True)
    jobs = [(i, str(p), str(lq_dir), seed, resolution, cfg, force_degrade) for i, p in items]
    bar = tqdm(total=len(jobs), desc=desc, unit="img", disable=len(jobs) < 50)
    rows = []
    if workers <= 1 or len(jobs) < 2:
        with threadpool_limits(1):
            threads = torch.get_num_threads()
            torch.set_num_threads(1)
            try:
                for job in jobs:
                    rows.append(_job(job))
                    bar.update()
            finally:
                torch.set_num_threads(threads)
    else:
        ctx = multiprocessing.get_context("spawn")
        with concurrent.futures.ProcessPoolExecutor(min(workers, len(jobs)), mp_context=ctx,
                                                    initializer=_init_worker) as pool:
            for row in pool.map(_job, jobs, chunksize=max(1, min(16, len(jobs) // (4 * workers)))):
                rows.append(row)
                bar.update()
    bar.close()
    return pd.DataFrame(rows)


def synthesize_benchmark(
    name: str, hq_source: Path, out_root: Path, cfg: DegradeConfig, resolution: int, split: str = "test",
    workers: int = 1,
) -> dict[str, Any]:
    """A CelebA-Test-style paired benchmark ``out_root/<name>/`` from an HQ folder, seed ``cfg.benchmark_seed``.

    ``hq_source`` is an ingested faces folder (its ``manifest.parquet`` rows of ``split`` are used) or
    a plain folder of images (all of them; they must already be ``resolution`` square). Every sample
    is degraded (no self-reconstruction). Returns the benchmark's metadata.
    """
    hq_source = Path(hq_source)
    if (hq_source / "manifest.parquet").is_file():
        frame = pd.read_parquet(hq_source / "manifest.parquet")
        frame = frame[frame["split"] == split]
        items = [(str(i), hq_source / str(p)) for i, p in zip(frame["id"], frame["path"], strict=True)]
    else:
        paths = benchmarks_data.list_images(hq_source)
        items = list(zip(benchmarks_data.unique_ids(paths), paths, strict=True))
    if not items:
        raise ValueError(f"benchmark {name}: no HQ images ({split} split) in {hq_source}")
    dest = Path(out_root) / name
    with atomic.atomic_path(dest) as tmp:
        rows = degrade_files(items, tmp / "lq", cfg.benchmark_seed, resolution, cfg, workers,
                             f"benchmark {name}", force_degrade=True)
        hq_dir = tmp / "hq"
        hq_dir.mkdir()
        for sample_id, path in items:  # a PNG copy of each HQ (re-encoded when the source is not PNG)
            if Path(path).suffix.lower() == ".png":
                shutil.copyfile(path, hq_dir / f"{sample_id}.png")
            else:
                images.save_png(hq_dir / f"{sample_id}.png", images.load_rgb(path))
        rows = rows.assign(lq_path=[f"lq/{i}.png" for i in rows["id"]], hq_path=[f"hq/{i}.png" for i in rows["id"]],
                           paired=True, source=[Path(p).relative_to(hq_source).as_posix() for _, p in items], width=resolution, height=resolution)
        meta = {"name": name, "kind": "synthetic", "paired": True, "skipped": [], "seed": cfg.benchmark_seed,
                "degrade": as_dict(cfg)}
        benchmarks_data.write_benchmark(tmp, rows.to_dict("records"), meta)
    return {**meta, "count": len(rows)}


def _fingerprint(faces: Path, data: DataConfig, cfg: DegradeConfig) -> str:
    manifest = hashlib.sha256((faces / "manifest.parquet").read_bytes()).hexdigest()
    blob = json.dumps({"version": DEGRADE_VERSION, "manifest": manifest, "seed": data.seed,
                       "resolution": data.resolution, "degrade": as_dict(cfg)}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()


def run(params: Params, inputs: Mapping[str, Path], out: Path) -> dict[str, Any]:
    """Write the offline training pairs and the synthetic test benchmark (module docstring)."""
    data = params.section("data", DataConfig)
    cfg = params.section("degrade", DegradeConfig)
    faces = Path(inputs["faces"])
    if not (faces / "manifest.parquet").is_file():
        raise FileNotFoundError(f"degrade: no manifest.parquet in the faces input {faces} (run ingest first)")
    out = Path(out)
    fingerprint = _fingerprint(faces, data, cfg)
    summary_path = out / "summary.json"
    if summary_path.is_file() and (out / "pairs.parquet").is_file():
        old = json.loads(summary_path.read_text("utf-8"))
        if old.get("fingerprint") == fingerprint:
            return {**old, "skipped": True}

    manifest = pd.read_parquet(faces / "manifest.parquet")
    train = manifest[manifest["split"] == "train"]
    if train.empty:
        raise ValueError(f"degrade: the faces manifest in {faces} has no train rows")
    work = out.parent / f".{out.name}.degrade-{fingerprint[:16]}"
    items = [(str(i), faces / str(p)) for i, p in zip(train["id"], train["path"], strict=True)]
    rows = degrade_files(items, work / "lq", data.seed, data.resolution, cfg, cfg.workers, "degrade train pairs")
    rows = rows.assign(lq_path=[f"lq/{i}.png" for i in rows["id"]], hq_path=[str(p) for p in train["path"]],
                       split="train", seed=data.seed, epoch=0)
    atomic.write_parquet(work / "pairs.parquet", rows)

    bench: dict[str, Any] = {"count": 0}
    if (manifest["split"] == "test").any():
        bench = synthesize_benchmark(BENCHMARK_NAME, faces, work / "benchmarks", cfg, data.resolution,
                                     "test", cfg.workers)
    n_rec = int(rows["self_rec"].sum())
    summary = {"pairs": len(rows), "self_rec": n_rec, "self_rec_fraction": n_rec / len(rows),
               "benchmark_images": bench["count"], "benchmark": BENCHMARK_NAME if bench["count"] else None,
               "profile": params.profile, "fingerprint": fingerprint}
    atomic.write_json(work / "summary.json", summary)
    with atomic.atomic_path(out) as tmp:
        os.replace(work, tmp)
    tracking.log_metrics({"degrade/pairs": len(rows), "degrade/self_rec_fraction": summary["self_rec_fraction"]})
    return summary
