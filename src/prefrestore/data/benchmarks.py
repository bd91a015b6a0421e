"""Benchmark folders: the layout the evaluate step reads, and registering real-world sets.

A benchmark is a folder ``<root>/<name>/`` holding::

    lq/<id>.png          the inputs (RGB PNG, decoded with images.load_rgb)
    hq/<id>.png          the ground truth, for paired sets only (same file stem as lq)
    manifest.parquet     id, lq_path, hq_path ("" when unpaired), paired, source, width, height
                         (+ the drawn DegradeParams columns for synthetic sets)
    benchmark.json       name, kind (synthetic | real), paired, count, skipped inputs, fingerprint

The synthetic CelebA-Test-style set is written by :func:`prefrestore.data.degrade.step.synthesize_benchmark`.
The real-world sets of the paper (LFW-Test, WIDER-Test, WebPhoto-Test, CelebChild-Test; SPEC §1,
Tables III-VI) come as folders of already-degraded faces and are registered from any path with
:func:`register_benchmark` (unpaired unless an HQ folder with matching file stems is given).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import pandas as pd
from tqdm.auto import tqdm

from prefrestore.core import atomic, images

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff")
MANIFEST_BASE = ("id", "lq_path", "hq_path", "paired", "source", "width", "height")
# The paper's real-world sets and their sizes (SPEC §1; WebPhoto-Test: 407 in the paper, 469 in VQFR).
REAL_WORLD = {"lfw_test": 1711, "wider_test": 970, "webphoto_test": 407, "celebchild_test": 180}


def list_images(folder: Path) -> list[Path]:
    """Image files directly in ``folder`` (sorted by name), by suffix; hidden files skipped."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"not a folder: {folder}")
    return sorted(p for p in folder.iterdir()
                  if p.is_file() and not p.name.startswith(".") and p.suffix.lower() in IMAGE_SUFFIXES)


def unique_ids(paths: Sequence[Path]) -> list[str]:
    """File stems as ids; two files with one stem (a.png, a.jpg) are an error, not a silent overwrite."""
    ids = [p.stem for p in paths]
    seen: dict[str, Path] = {}
    for i, p in zip(ids, paths, strict=True):
        if i in seen:
            raise ValueError(f"two images share the id {i!r}: {seen[i].name} and {p.name}")
        seen[i] = p
    return ids


def write_benchmark(folder: Path, rows: Iterable[Mapping[str, Any]], meta: Mapping[str, Any]) -> pd.DataFrame:
    """Write ``manifest.parquet`` and ``benchmark.json`` into ``folder`` (atomically, each file)."""
    frame = pd.DataFrame(list(rows))
    if frame.empty:
        raise ValueError(f"benchmark {folder.name}: no images")
    missing = [c for c in MANIFEST_BASE if c not in frame]
    if missing:
        raise ValueError(f"benchmark {folder.name}: rows lack columns {missing}")
    frame = frame.sort_values("id", kind="stable").reset_index(drop=True)
    atomic.write_parquet(folder / "manifest.parquet", frame)
    atomic.write_json(folder / "benchmark.json", {**meta, "count": len(frame)})
    return frame


def read_benchmark(folder: Path) -> tuple[pd.DataFrame, dict[str, Any]]:
    """The manifest and metadata of a benchmark folder written here."""
    folder = Path(folder)
    return pd.read_parquet(folder / "manifest.parquet"), json.loads((folder / "benchmark.json").read_text("utf-8"))


def _folder_fingerprint(paths: Sequence[Path]) -> str:
    h = hashlib.sha256()
    for p in paths:
        st = p.stat()
        h.update(f"{p.name}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return h.hexdigest()


def register_benchmark(name: str, lq_folder: Path, hq_folder: Path | None, out: Path) -> dict[str, Any]:
    """Register a real-world benchmark from any folder as ``out/<name>/`` (see module docstring).

    Each image is decoded with :func:`prefrestore.core.images.load_rgb` (its bad-input policy applies) and
    re-written as PNG, so the set is self-contained and DVC-trackable. Unreadable inputs are listed
    in ``benchmark.json`` under ``skipped`` and left out; nothing else is lost. With ``hq_folder`` the
    set is paired, and every LQ must have an HQ with the same stem and size (else ``ValueError``).
    Idempotent: an up-to-date folder (same inputs) is left as it is.
    """
    if not name or not name.replace("_", "").replace("-", "").isalnum():
        raise ValueError(f"benchmark name {name!r}: use letters, digits, '_' and '-'")
    lq_paths = list_images(Path(lq_folder))
    if not lq_paths:
        raise ValueError(f"benchmark {name}: no images in {lq_folder}")
    ids = unique_ids(lq_paths)
    hq_by_id: dict[str, Path] = {}
    if hq_folder is not None:
        hq_paths = list_images(Path(hq_folder))
        hq_by_id = dict(zip(unique_ids(hq_paths), hq_paths, strict=True))
        absent = [i for i in ids if i not in hq_by_id]
        if absent:
            raise ValueError(f"benchmark {name}: {len(absent)} LQ images have no HQ of the same name, e.g. {absent[:3]}")
    fingerprint = _folder_fingerprint(lq_paths + [hq_by_id[i] for i in ids if i in hq_by_id])
    dest = Path(out) / name
    meta_path = dest / "benchmark.json"
    if meta_path.is_file() and json.loads(meta_path.read_text("utf-8")).get("fingerprint") == fingerprint:
        return {**json.loads(meta_path.read_text("utf-8")), "skipped_run": True}

    rows, skipped = [], []
    with atomic.atomic_path(dest) as tmp:
        for sample_id, lq_path in tqdm(list(zip(ids, lq_paths, strict=True)), desc=f"register {name}",
                                       unit="img", disable=len(ids) < 50):
            try:
                lq = images.load_rgb(lq_path)
                hq = images.load_rgb(hq_by_id[sample_id]) if hq_folder is not None else None
            except images.BadImage as exc:
                skipped.append({"id": sample_id, "reason": exc.reason, "detail": exc.detail})
                continue
            if hq is not None and hq.shape != lq.shape:
                raise ValueError(f"benchmark {name}, id {sample_id}: LQ {lq.shape} and HQ {hq.shape} sizes differ")
            images.save_png(tmp / "lq" / f"{sample_id}.png", lq)
            if hq is not None:
                images.save_png(tmp / "hq" / f"{sample_id}.png", hq)
            rows.append({"id": sample_id, "lq_path": f"lq/{sample_id}.png",
                         "hq_path": f"hq/{sample_id}.png" if hq is not None else "",
                         "paired": hq is not None, "source": str(lq_path), "width": lq.shape[1], "height": lq.shape[0]})
        meta = {"name": name, "kind": "real", "paired": hq_folder is not None, "skipped": skipped,
                "fingerprint": fingerprint, "expected_count": REAL_WORLD.get(name)}
        write_benchmark(tmp, rows, meta)
    return {**meta, "count": len(rows)}


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m prefrestore.data.benchmarks NAME LQ_FOLDER [--hq HQ_FOLDER] --out OUT``."""
    import argparse

    parser = argparse.ArgumentParser(description=register_benchmark.__doc__.splitlines()[0])
    parser.add_argument("name", help="benchmark name, e.g. lfw_test, wider_test, webphoto_test, celebchild_test")
    parser.add_argument("lq_folder", type=Path, help="folder of degraded (input) face images")
    parser.add_argument("--hq", type=Path, help="folder of ground-truth images with the same names (paired set)")
    parser.add_argument("--out", type=Path, required=True, help="benchmarks root, e.g. data/pairs/benchmarks")
    args = parser.parse_args(argv)
    print(json.dumps(register_benchmark(args.name, args.lq_folder, args.hq, args.out), indent=2, default=str))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
