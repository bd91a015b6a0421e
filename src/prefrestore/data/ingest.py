"""The ``ingest`` step: faces from a folder, a Hugging Face dataset or the synthetic generator, into
one checked, square, ``data.resolution`` set with a manifest.

Output (``docs/ARCHITECTURE.md``)::

    out/images/<id>.png        RGB, data.resolution^2
    out/manifest.parquet       id, path, source, sha256, width, height, split, attributes, caption_hint
    out/ingest_report.json     seen = accepted + quarantined, reasons, splits, fingerprint
    out/quarantine/            a copy of every rejected input + quarantine.parquet (id, source, reason, detail, copy)

Every input is decoded by :func:`prefrestore.core.images.load_rgb` (the bad-input policy), cropped and
resized by :func:`prefrestore.core.images.fit_square`, and rejected inputs are quarantined with the
policy's reason; two inputs that give the same pixels are kept once (the later one is quarantined
as ``duplicate``). The train/test split is a deterministic function of ``data.seed`` and the ids.

Resumable and idempotent: work goes into a hidden folder beside ``out`` keyed by a fingerprint
(source listing + parameters + code version) and each processed input is journalled, so a killed
run continues where it stopped; the finished folder replaces ``out`` atomically. A re-run whose
fingerprint matches the one in ``out/ingest_report.json`` does nothing.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import re
import shutil
from collections import Counter
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from prefrestore.core import atomic, images, tracking
from prefrestore.core.config import Params, as_dict, check_range
from prefrestore.core.errors import InputError
from prefrestore.data import synthetic

INGEST_VERSION = 1  # bump when the output of the same inputs changes (part of the fingerprint)
MANIFEST_COLUMNS = ("id", "path", "source", "sha256", "width", "height", "split", "attributes", "caption_hint")
QUARANTINE_COLUMNS = ("id", "source", "reason", "detail", "copy")


@dataclasses.dataclass(frozen=True)
class DataConfig:
    """``data`` section: what every step agrees on about the face set."""

    resolution: int  # side of every HQ face, pixels
    seed: int  # master seed
    test_fraction: float  # share of ingested faces held out as test

    def __post_init__(self) -> None:
        check_range("data.resolution", self.resolution, 16, 4096)
        check_range("data.test_fraction", self.test_fraction, 0.0, 0.9)


@dataclasses.dataclass(frozen=True)
class IngestConfig:
    """``ingest`` section."""

    source: str  # folder:<path>, hf:<dataset>[:split] or synthetic
    synthetic_count: int  # images the synthetic generator makes (source: synthetic)
    max_pixels: int  # larger images (from the header) are quarantined as too_large
    min_side: int  # shorter side below this is quarantined as too_small
    max_aspect: float  # non-square images are centre-cropped unless their aspect exceeds this
    hf_image_column: str  # column holding the image in a Hugging Face dataset
    min_accepted: int  # fewer accepted faces is an error (0 allows an empty ingest)

    def __post_init__(self) -> None:
        if not (self.source == "synthetic" or self.source.startswith(("folder:", "hf:"))):
            raise ValueError(f"ingest.source={self.source!r}: expected folder:<path>, hf:<dataset>[:split] or synthetic")
        check_range("ingest.synthetic_count", self.synthetic_count, 0, 10_000_000)
        check_range("ingest.max_pixels", self.max_pixels, 1, 10**10)
        check_range("ingest.min_side", self.min_side, 1, 100_000)
        check_range("ingest.max_aspect", self.max_aspect, 1.0, 100.0)
        check_range("ingest.min_accepted", self.min_accepted, 0, 10**9)


@dataclasses.dataclass(frozen=True)
class Item:
    """One input: a stable key (its id), where it came from, and how to get its pixels."""

    id: str
    source: str  # manifest "source": folder:<relpath>, hf:<dataset>:<split>:<row> or synthetic
    read: Callable[[], np.ndarray]  # decoded uint8 RGB (may raise images.BadImage)
    raw: Callable[[], bytes | None]  # the original bytes, for the quarantine copy (None: not available)
    suffix: str  # file suffix of the quarantine copy
    attributes: Mapping[str, Any]
    caption_hint: str


# ----------------------------------------------------------------------------------------------
# Sources


def _safe_id(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_-]+", "_", text).strip("_") or "img"


def _folder_items(root: Path, cfg: IngestConfig, out: Path) -> tuple[list[Item], list[Any], int]:
    if not root.is_dir():
        raise FileNotFoundError(f"ingest source folder does not exist: {root}")
    own = out.resolve().parent  # never ingest our own output (or its work folders) when it lies inside root
    files = sorted(p for p in root.rglob("*") if p.is_file()
                   and not _is_own(p.resolve(), own, out.name))
    hidden = [p for p in files if any(part.startswith(".") for part in p.relative_to(root).parts)]
    hidden_set = set(hidden)
    files = [p for p in files if p not in hidden_set]
    items, taken = [], set()
    listing = []
    for path in files:
        rel = path.relative_to(root).as_posix()
        st = path.stat()
        listing.append((rel, st.st_size, st.st_mtime_ns))
        ident = _safe_id(str(Path(rel).with_suffix("")))
        if ident in taken:  # a.png and a.jpg, or names that differ only in odd characters
            ident = f"{ident}_{hashlib.sha1(rel.encode()).hexdigest()[:8]}"
        taken.add(ident)
        items.append(Item(
            id=ident, source=f"folder:{rel}",
            read=lambda p=path: images.load_rgb(p, max_pixels=cfg.max_pixels, min_side=cfg.min_side),
            raw=lambda p=path: p.read_bytes(), suffix=path.suffix.lower()[:10],
            attributes={}, caption_hint="",
        ))
    return items, listing, len(hidden)


def _is_own(path: Path, parent: Path, name: str) -> bool:
    try:
        first = path.relative_to(parent).parts[0]
    except ValueError:
        return False
    return first == name or first.startswith(f".{name}.")


def _synthetic_items(data: DataConfig, cfg: IngestConfig) -> tuple[list[Item], list[Any], int]:
    items = []
    for index in range(cfg.synthetic_count):
        attrs = synthetic.sample_attributes(data.seed, index)
        items.append(Item(
            id=f"syn_{index:06d}", source="synthetic",
            read=lambda a=attrs, i=index: synthetic.render(a, data.resolution, data.seed, i),
            raw=lambda: None, suffix="", attributes=attrs.to_dict(),
            caption_hint=synthetic.caption_from_attributes(attrs),
        ))
    listing = [("synthetic", synthetic.GENERATOR_VERSION, data.seed, cfg.synthetic_count)]
    return items, listing, 0


def _hf_items(spec: str, cfg: IngestConfig) -> tuple[list[Item], list[Any], int]:
    """``hf:<dataset>[:split]``: a ``save_to_disk`` folder, a local data folder/files, or the HF cache (offline)."""
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")  # effective only if datasets is not imported yet
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import datasets

    name, _, split = spec.partition(":")
    split = split or "train"
    path = Path(name)
    if path.is_dir() and any((path / f).is_file() for f in ("state.json", "dataset_dict.json", "dataset_info.json")) \
            and not any(path.glob("*.parquet")):
        ds = datasets.load_from_disk(str(path))
        if isinstance(ds, datasets.DatasetDict):
            if split not in ds:
                raise ValueError(f"hf:{name}: no split {split!r}; splits: {list(ds)}")
            ds = ds[split]
    else:
        ds = datasets.load_dataset(name, split=split,
                                   download_config=datasets.DownloadConfig(local_files_only=True))
    col = cfg.hf_image_column
    if col not in ds.column_names:
        raise ValueError(f"hf:{name}: no column {col!r} (ingest.hf_image_column); columns: {ds.column_names}")
    ds = ds.cast_column(col, datasets.Image(decode=False))

    def raw(i: int) -> bytes | None:
        cell = ds[i][col]
        if cell is None:
            return None
        if cell.get("bytes"):
            return bytes(cell["bytes"])
        return Path(cell["path"]).read_bytes() if cell.get("path") else None

    def read(i: int) -> np.ndarray:
        data = raw(i)
        if data is None:
            raise images.BadImage("empty", "dataset row holds no image")
        return images.load_rgb(data, max_pixels=cfg.max_pixels, min_side=cfg.min_side)

    safe_split = _safe_id(split)
    items = [Item(id=f"hf_{safe_split}_{i:07d}", source=f"hf:{name}:{split}:{i}", read=lambda i=i: read(i),
                  raw=lambda i=i: raw(i), suffix="", attributes={}, caption_hint="") for i in range(len(ds))]
    listing = [("hf", name, split, len(ds), getattr(ds, "_fingerprint", None))]
    return items, listing, 0


def _items(data: DataConfig, cfg: IngestConfig, out: Path) -> tuple[list[Item], list[Any], int]:
    if cfg.source == "synthetic":
        return _synthetic_items(data, cfg)
    if cfg.source.startswith("folder:"):
        return _folder_items(Path(cfg.source.removeprefix("folder:")).expanduser(), cfg, out)
    return _hf_items(cfg.source.removeprefix("hf:"), cfg)


# ----------------------------------------------------------------------------------------------
# Splits and fingerprint


def assign_splits(ids: list[str], seed: int, test_fraction: float) -> dict[str, str]:
    """``id -> "train"/"test"``: the ``round(n * test_fraction)`` ids with the smallest seeded hash are test.

    Deterministic in ``(seed, ids)``; an id keeps its split when unrelated ids are added unless it is
    near the cut. At least one test image when ``test_fraction > 0`` and there are two or more ids.
    """
    n = len(ids)
    n_test = int(round(n * test_fraction))
    if test_fraction > 0 and n >= 2:
        n_test = min(max(n_test, 1), n - 1)
    ranked = sorted(ids, key=lambda i: hashlib.sha256(f"{seed}:{i}".encode()).hexdigest())
    test = set(ranked[:n_test])
    return {i: ("test" if i in test else "train") for i in ids}


def _fingerprint(data: DataConfig, cfg: IngestConfig, listing: list[Any]) -> str:
    blob = json.dumps({"version": INGEST_VERSION, "generator": synthetic.GENERATOR_VERSION,
                       "png_level": images.PNG_COMPRESS_LEVEL, "data": as_dict(data), "ingest": as_dict(cfg),
                       "listing": listing}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()


# ----------------------------------------------------------------------------------------------
# The step


def _journal(work: Path) -> dict[str, dict[str, Any]]:
    """Records of inputs already processed by an interrupted run (a torn last line is ignored)."""
    done: dict[str, dict[str, Any]] = {}
    path = work / "progress.jsonl"
    if not path.is_file():
        return done
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            continue
        if rec.get("status") == "accepted" and not (work / rec["path"]).is_file():
            continue  # its image was lost: process it again
        done[rec["id"]] = rec
    return done


def _process(item: Item, work: Path, resolution: int, cfg: IngestConfig, by_sha: dict[str, str]) -> dict[str, Any]:
    try:
        pixels = images.fit_square(item.read(), resolution, cfg.max_aspect)
    except images.BadImage as exc:
        return {"id": item.id, "source": item.source, "status": "quarantined", "reason": exc.reason,
                "detail": exc.detail}
    png = images.encode_png(pixels)
    sha = hashlib.sha256(png).hexdigest()
    if sha in by_sha:
        return {"id": item.id, "source": item.source, "status": "quarantined", "reason": "duplicate",
                "detail": f"same pixels as {by_sha[sha]}"}
    rel = f"images/{item.id}.png"
    atomic.write_bytes(work / rel, png)
    return {"id": item.id, "source": item.source, "status": "accepted", "path": rel, "sha256": sha,
            "width": int(pixels.shape[1]), "height": int(pixels.shape[0]),
            "attributes": json.dumps(dict(item.attributes), sort_keys=True), "caption_hint": item.caption_hint}


def _quarantine_copy(item: Item, rec: dict[str, Any], qdir: Path) -> str:
    """Copy a rejected input into ``quarantine/``; returns its relative path ("" when it cannot be copied)."""
    try:
        data = item.raw()
    except OSError as exc:
        rec["detail"] = f"{rec['detail']}; copy failed: {exc}"
        return ""
    if data is None:
        return ""
    rel = f"quarantine/{item.id}{item.suffix}"
    atomic.write_bytes(qdir.parent / rel, data)
    return rel


def run(params: Params, inputs: Mapping[str, Path], out: Path) -> dict[str, Any]:
    """Ingest ``ingest.source`` into ``out`` (see module docstring); returns the report's summary."""
    del inputs  # ingest reads its source from params (ingest.source)
    data = params.section("data", DataConfig)
    cfg = params.section("ingest", IngestConfig)
    out = Path(out)
    items, listing, hidden = _items(data, cfg, out)
    fingerprint = _fingerprint(data, cfg, listing)

    report_path = out / "ingest_report.json"
    if report_path.is_file() and (out / "manifest.parquet").is_file():
        old = json.loads(report_path.read_text(encoding="utf-8"))
        complete = len(list((out / "images").glob("*.png"))) == old.get("accepted")
        if old.get("fingerprint") == fingerprint and complete:
            return {**_summary(old), "skipped": True}

    work = out.parent / f".{out.name}.ingest-{fingerprint[:16]}"
    work.mkdir(parents=True, exist_ok=True)
    done = _journal(work)
    by_sha = {r["sha256"]: r["id"] for r in done.values() if r["status"] == "accepted"}
    records: list[dict[str, Any]] = []
    with open(work / "progress.jsonl", "a", encoding="utf-8") as journal:
        for item in tqdm(items, desc=f"ingest {cfg.source}", unit="img", disable=len(items) < 50):
            rec = done.get(item.id)
            if rec is None:
                rec = _process(item, work, data.resolution, cfg, by_sha)
                if rec["status"] == "accepted":
                    by_sha[rec["sha256"]] = rec["id"]
                else:
                    rec["copy"] = _quarantine_copy(item, rec, work / "quarantine")
                journal.write(json.dumps(rec, sort_keys=True) + "\n")
                journal.flush()
            records.append(rec)

    accepted = [r for r in records if r["status"] == "accepted"]
    rejected = [r for r in records if r["status"] == "quarantined"]
    if len(accepted) < cfg.min_accepted:  # before anything is written to `out`
        reasons = dict(sorted(Counter(r["reason"] for r in rejected).items()))
        raise InputError(f"ingest: {len(accepted)} face(s) accepted of {len(records)} seen in {cfg.source} "
                         f"(quarantined: {reasons or 'none'}); ingest.min_accepted is {cfg.min_accepted}")
    splits = assign_splits([r["id"] for r in accepted], data.seed, data.test_fraction)
    manifest = pd.DataFrame([{**{k: r[k] for k in MANIFEST_COLUMNS if k != "split"}, "split": splits[r["id"]]}
                             for r in accepted], columns=list(MANIFEST_COLUMNS))
    manifest = manifest.astype({"width": "int64", "height": "int64"})
    quarantine = pd.DataFrame([{k: r.get(k, "") for k in QUARANTINE_COLUMNS} for r in rejected],
                              columns=list(QUARANTINE_COLUMNS))
    atomic.write_parquet(work / "manifest.parquet", manifest)
    (work / "quarantine").mkdir(exist_ok=True)
    atomic.write_parquet(work / "quarantine" / "quarantine.parquet", quarantine)
    report = {
        "fingerprint": fingerprint,
        "source": cfg.source,
        "resolution": data.resolution,
        "seen": len(records),
        "accepted": len(accepted),
        "quarantined": len(rejected),
        "reasons": dict(sorted(Counter(r["reason"] for r in rejected).items())),
        "splits": {"train": int((manifest["split"] == "train").sum()), "test": int((manifest["split"] == "test").sum())},
        "ignored_hidden_files": hidden,
        "params": {"data": as_dict(data), "ingest": as_dict(cfg)},
    }
    if report["seen"] != report["accepted"] + report["quarantined"]:  # pragma: no cover - an invariant
        raise AssertionError(f"ingest accounting broken: {report}")
    atomic.write_json(work / "ingest_report.json", report)
    (work / "progress.jsonl").unlink()

    with atomic.atomic_path(out) as tmp:
        os.replace(work, tmp)
    _cleanup_stale(out)
    tracking.log_metrics({f"ingest/quarantined/{k}": v for k, v in report["reasons"].items()})
    tracking.log_artifact(out / "ingest_report.json")
    return {**_summary(report), "skipped": False}


def _summary(report: Mapping[str, Any]) -> dict[str, Any]:
    return {"seen": report["seen"], "accepted": report["accepted"], "quarantined": report["quarantined"],
            "train": report["splits"]["train"], "test": report["splits"]["test"],
            "reasons": dict(report["reasons"]), "fingerprint": report["fingerprint"]}


def _cleanup_stale(out: Path) -> None:
    """Remove work folders of older, different ingests into the same ``out`` (never the finished one)."""
    for stale in out.parent.glob(f".{out.name}.ingest-*"):
        shutil.rmtree(stale, ignore_errors=True)

