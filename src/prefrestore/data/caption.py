"""The caption step: one caption per ingested face (Appendix D), resumable and exactly-once.

Backends (``params.yaml`` ``caption.backend``):
- ``qwen2_5_vl``: the paper's Qwen2.5-VL-32B-Instruct with the Appendix D prompt
  (:mod:`prefrestore.data.captioner_qwen`).
- ``attributes``: the synthetic source's own description. It uses the manifest's ``caption_hint``,
  else a caption composed from its ``attributes``. This is the tiny profile's default.

On disk, under ``out``:
- ``shards/NNNNNN.jsonl``: one shard per finished batch, written atomically, keyed by image id.
  - A killed run loses at most the batch in flight. The next run skips every id already in a
    shard, so there are no duplicates and no gaps.
  - ``shards/settings.json`` records the settings that shape a caption (backend, model, prompt,
    decoding). Resuming with other settings is an error: the shards would mix two captioners.
- ``captions.parquet``: the consolidated table, written atomically at the end. Columns: ``id``,
  ``caption``, ``valid``, ``attempts``, ``flag``.
- ``caption_report.json``: the summary returned by :func:`run`, less its run-dependent fields
  (throughput, ids captioned this run), so that a re-run writes the same bytes.

One run at a time per ``out``: two concurrent runs on the same folder would caption the same ids.

Validity (Appendix D): a caption is valid when it is non-empty, starts with "a photography of a"
and has fewer than 100 words. The prefix and the limit come from ``params.yaml`` ``validate``.
At the end, the rows marked valid are re-checked with the great-expectations caption suite of
:mod:`prefrestore.data.validate`; a disagreement is an error.
- Before the check, :func:`clean_caption` trims whitespace and wrapping quotes, and lower-cases
  a leading "A photography of a".
- An invalid caption is retried (``max_attempts`` in all). A greedy retry would repeat itself,
  so retries sample with ``retry_temperature`` / ``retry_top_p``.
- A caption still invalid after its last attempt is kept with ``valid = False`` and a ``flag``
  naming the reason. It is never passed off as valid.
"""

from __future__ import annotations

import dataclasses
import json
import time
import zlib
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal, Protocol

import numpy as np
import pandas as pd
from tqdm import tqdm

from prefrestore.core import atomic, tracking
from prefrestore.core.config import ConfigError, Params, check_range
from prefrestore.core.images import BadImage, load_rgb
from prefrestore.data.captioner_qwen import GenerationSettings

COLUMNS = ("id", "caption", "valid", "attempts", "flag")


@dataclasses.dataclass(frozen=True)
class CaptionConfig:
    backend: Literal["qwen2_5_vl", "attributes"]  # who writes the captions
    model: str  # Qwen2.5-VL hub id (offline hub cache) or local model directory
    system_prompt: str  # Appendix D prompt, verbatim
    prompt_role: Literal["system", "user"]  # which chat turn carries the prompt
    batch_size: int  # images per generate() call, and per shard
    max_new_tokens: int  # generated-token cap per caption
    max_attempts: int  # tries per image before an invalid caption is flagged (1 + retries)
    retry_temperature: float  # sampling temperature of a retry (the first try is greedy)
    retry_top_p: float  # nucleus mass of a retry
    device: str  # auto (CUDA if present), cpu, cuda, cuda:N
    dtype: Literal["auto", "bfloat16", "float16", "float32"]  # auto: bf16 on CUDA, fp32 on CPU

    def __post_init__(self) -> None:
        check_range("batch_size", self.batch_size, 1, 4096)
        check_range("max_new_tokens", self.max_new_tokens, 1, 4096)
        check_range("max_attempts", self.max_attempts, 1, 10)
        check_range("retry_temperature", self.retry_temperature, 1e-3, 10.0)
        check_range("retry_top_p", self.retry_top_p, 1e-3, 1.0)
        if not self.system_prompt.strip():
            raise ValueError("system_prompt is empty")


@dataclasses.dataclass(frozen=True)
class CaptionRule:
    """The Appendix D validity rule (read from ``params.yaml`` ``validate``)."""

    prefix: str  # a valid caption starts with this
    max_words: int  # a valid caption has fewer words than this


@dataclasses.dataclass(frozen=True)
class Item:
    """One face to caption: its id, image path and the manifest's synthetic hints."""

    id: str
    path: Path
    caption_hint: str
    attributes: Mapping[str, Any]


class Captioner(Protocol):
    name: str
    needs_pixels: bool  # whether caption() wants decoded images

    def caption(self, items: Sequence[Item], images: Sequence[np.ndarray] | None, attempt: int) -> list[str]:
        """One caption per item; ``attempt`` counts from 0 (0: first try)."""
        ...


# --------------------------------------------------------------------------- validity


def clean_caption(text: str, prefix: str) -> str:
    """Trim whitespace and wrapping quotes; collapse inner whitespace; lower-case a capitalised prefix."""
    text = " ".join(text.split()).strip().strip("\"'“”‘’").strip()
    if text[: len(prefix)].lower() == prefix.lower():
        text = prefix + text[len(prefix) :]
    return text


def invalid_reason(text: str, rule: CaptionRule) -> str:
    """``""`` for a valid caption, else ``empty``, ``missing_prefix`` or ``too_long`` (Appendix D)."""
    if not text.strip():
        return "empty"
    if not text.startswith(rule.prefix):
        return "missing_prefix"
    if len(text.split()) >= rule.max_words:
        return "too_long"
    return ""


def is_valid_caption(text: str, rule: CaptionRule) -> bool:
    return invalid_reason(text, rule) == ""


# --------------------------------------------------------------------------- backends


class AttributeCaptioner:
    """The synthetic source's caption: ``caption_hint``, else composed from ``attributes``.

    A face with neither yields ``""``, which is invalid and ends up flagged. The attributes
    caption is deterministic, so a retry returns the same text.
    """

    name = "attributes"
    needs_pixels = False

    def caption(self, items: Sequence[Item], images: Sequence[np.ndarray] | None, attempt: int) -> list[str]:
        from prefrestore.data.synthetic import caption_from_attributes

        out = []
        for item in items:
            if item.caption_hint.strip():
                out.append(item.caption_hint)
                continue
            try:
                out.append(caption_from_attributes(item.attributes) if item.attributes else "")
            except KeyError:  # attributes from another source: not the synthetic schema
                out.append("")
        return out


class QwenBackend:
    """Adapts :class:`prefrestore.data.captioner_qwen.QwenCaptioner` to the step: greedy first, sampled retries."""

    name = "qwen2_5_vl"
    needs_pixels = True

    def __init__(self, captioner: Any, cfg: CaptionConfig, seed: int) -> None:
        self.captioner = captioner
        self.cfg = cfg
        self.seed = seed

    def caption(self, items: Sequence[Item], images: Sequence[np.ndarray] | None, attempt: int) -> list[str]:
        assert images is not None
        # The retry seed depends on the batch's ids and the attempt only: reruns sample alike.
        key = zlib.crc32("\n".join(i.id for i in items).encode())
        settings = GenerationSettings(
            max_new_tokens=self.cfg.max_new_tokens,
            do_sample=attempt > 0,
            temperature=self.cfg.retry_temperature,
            top_p=self.cfg.retry_top_p,
            seed=(self.seed * 1_000_003 + key * 31 + attempt) % (2**63),
        )
        return self.captioner.caption(images, settings)


def build_captioner(cfg: CaptionConfig, seed: int) -> Captioner:
    """The configured backend. Qwen weights that are absent raise ``MissingWeights``."""
    if cfg.backend == "attributes":
        return AttributeCaptioner()
    from prefrestore.data import captioner_qwen

    qwen = captioner_qwen.load(cfg.model, cfg.system_prompt, cfg.prompt_role, cfg.device, cfg.dtype)
    return QwenBackend(qwen, cfg, seed)


def settings_fingerprint(cfg: CaptionConfig, rule: CaptionRule) -> dict[str, Any]:
    """What shapes a caption; shards from other settings must not be mixed in."""
    keys = ("backend", "system_prompt", "prompt_role", "max_new_tokens", "max_attempts",
            "retry_temperature", "retry_top_p")
    fp: dict[str, Any] = {k: getattr(cfg, k) for k in keys}
    if cfg.backend == "qwen2_5_vl":
        fp["model"] = cfg.model
    fp["rule"] = dataclasses.asdict(rule)
    return fp


# --------------------------------------------------------------------------- manifest and shards


def read_items(faces: Path) -> list[Item]:
    """The faces to caption, from ``faces/manifest.parquet`` (ARCHITECTURE.md schema), in id order."""
    manifest = faces / "manifest.parquet"
    if not manifest.is_file():
        raise FileNotFoundError(f"caption: no manifest at {manifest} (run the ingest step first)")
    df = pd.read_parquet(manifest)
    missing = sorted({"id", "path", "caption_hint", "attributes"} - set(df.columns))
    if missing:
        raise ValueError(f"caption: {manifest} lacks column(s) {missing}")
    if df["id"].duplicated().any():
        dup = df.loc[df["id"].duplicated(), "id"].iloc[0]
        raise ValueError(f"caption: {manifest} has duplicate id {dup!r}")
    items = []
    for row in df.sort_values("id").itertuples(index=False):
        try:
            attrs = json.loads(row.attributes) if row.attributes else {}
        except json.JSONDecodeError as exc:
            raise ValueError(f"caption: {manifest}: id {row.id!r} has malformed attributes JSON: {exc}") from exc
        items.append(Item(str(row.id), faces / str(row.path), str(row.caption_hint or ""), attrs))
    return items


def read_shards(shard_dir: Path) -> list[dict[str, Any]]:
    """Every record of every finished shard (temporary files of a killed write are ignored)."""
    rows: list[dict[str, Any]] = []
    for shard in sorted(shard_dir.glob("[0-9]*.jsonl")):
        with open(shard, encoding="utf-8") as fh:
            rows.extend(json.loads(line) for line in fh if line.strip())
    return rows


def _next_shard_index(shard_dir: Path) -> int:
    indices = [int(p.stem) for p in shard_dir.glob("[0-9]*.jsonl")]
    return max(indices, default=-1) + 1


def _check_settings(shard_dir: Path, fp: Mapping[str, Any]) -> None:
    path = shard_dir / "settings.json"
    if path.is_file():
        old = json.loads(path.read_text(encoding="utf-8"))
        if old != json.loads(json.dumps(fp)):
            changed = sorted(k for k in set(old) | set(fp) if old.get(k) != fp.get(k))
            raise ConfigError(
                f"caption: {shard_dir} holds shards written with other settings (changed: {changed}); "
                f"use a new --out, or delete {shard_dir} to caption everything again"
            )
    else:
        atomic.write_json(path, fp)


def _load_images(items: Sequence[Item]) -> list[np.ndarray]:
    """Decode the batch's faces; a bad file raises an error that names it (nothing is written)."""
    images = []
    for item in items:
        try:
            images.append(load_rgb(item.path))
        except BadImage as exc:
            raise BadImage(exc.reason, f"caption: cannot load {item.path} (id {item.id}): {exc}") from exc
        except FileNotFoundError as exc:
            raise FileNotFoundError(f"caption: image of id {item.id} is missing: {item.path}") from exc
    return images


def caption_batch(
    captioner: Captioner, items: Sequence[Item], rule: CaptionRule, max_attempts: int
) -> list[dict[str, Any]]:
    """Caption a batch; re-ask only the invalid ones, up to ``max_attempts`` tries; flag the rest."""
    images = _load_images(items) if captioner.needs_pixels else None
    records: list[dict[str, Any]] = [{} for _ in items]
    todo = list(range(len(items)))
    for attempt in range(max_attempts):
        texts = captioner.caption(
            [items[i] for i in todo], [images[i] for i in todo] if images is not None else None, attempt
        )
        if len(texts) != len(todo):
            raise RuntimeError(f"caption: captioner {captioner.name} returned {len(texts)} captions for {len(todo)} images")
        still = []
        for i, text in zip(todo, texts, strict=True):
            text = clean_caption(text, rule.prefix)
            reason = invalid_reason(text, rule)
            records[i] = {"id": items[i].id, "caption": text, "valid": not reason, "attempts": attempt + 1,
                          "flag": f"invalid:{reason}" if reason else ""}
            if reason:
                still.append(i)
        todo = still
        if not todo:
            break
    return records


def caption_items(
    captioner: Captioner,
    items: Sequence[Item],
    out: Path,
    cfg: CaptionConfig,
    rule: CaptionRule,
) -> dict[str, Any]:
    """Caption every item not yet in ``out/shards``, one atomic shard per batch; then consolidate."""
    shard_dir = out / "shards"
    shard_dir.mkdir(parents=True, exist_ok=True)
    _check_settings(shard_dir, settings_fingerprint(cfg, rule))
    for stale in shard_dir.glob(".*.tmp"):  # a write killed mid-way; its batch is not in any shard
        stale.unlink()
    done = {r["id"] for r in read_shards(shard_dir)}
    todo = [it for it in items if it.id not in done]
    index = _next_shard_index(shard_dir)
    t0 = time.perf_counter()
    with tqdm(total=len(items), initial=len(items) - len(todo), unit="img", desc="caption") as bar:
        for start in range(0, len(todo), cfg.batch_size):
            batch = todo[start : start + cfg.batch_size]
            records = caption_batch(captioner, batch, rule, cfg.max_attempts)
            text = "".join(json.dumps(r, ensure_ascii=False, sort_keys=True) + "\n" for r in records)
            atomic.write_text(shard_dir / f"{index:06d}.jsonl", text)
            index += 1
            bar.update(len(batch))
    elapsed = time.perf_counter() - t0
    return consolidate(items, out, elapsed, len(todo))


def consolidate(items: Sequence[Item], out: Path, elapsed_s: float, new: int) -> dict[str, Any]:
    """Merge the shards into ``captions.parquet``; check every id exactly once; write the report."""
    rows = read_shards(out / "shards")
    frame = pd.DataFrame(rows, columns=list(COLUMNS))
    dup = frame["id"][frame["id"].duplicated()]
    if len(dup):
        raise RuntimeError(f"caption: shards hold id {dup.iloc[0]!r} more than once ({len(dup)} duplicates)")
    wanted = {it.id for it in items}
    missing = sorted(wanted - set(frame["id"]))
    extra = sorted(set(frame["id"]) - wanted)
    if missing or extra:
        raise RuntimeError(f"caption: shards miss {len(missing)} id(s) {missing[:3]} and hold {len(extra)} "
                           f"unknown id(s) {extra[:3]} (a different faces input than the one captioned before?)")
    frame = frame.sort_values("id").reset_index(drop=True)
    frame["valid"] = frame["valid"].astype(bool)
    frame["attempts"] = frame["attempts"].astype("int64")
    atomic.write_parquet(out / "captions.parquet", frame)
    summary = {
        "captioned": int(len(frame)),
        "captioned_this_run": int(new),
        "valid": int(frame["valid"].sum()),
        "retried": int((frame["attempts"] > 1).sum()),
        "flagged": int((~frame["valid"]).sum()),
        "images_per_s": round(new / elapsed_s, 3) if new and elapsed_s > 0 else 0.0,
        "flags": {k: int(v) for k, v in frame.loc[~frame["valid"], "flag"].value_counts().items()},
    }
    atomic.write_json(out / "caption_report.json", _data_report(summary))
    return summary


# run-dependent fields stay out of the data folder, so a re-run writes the same bytes (DVC hash)
RUN_FIELDS = ("captioned_this_run", "images_per_s")


def _data_report(summary: Mapping[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in summary.items() if k not in RUN_FIELDS}


def load_rule(params: Params) -> CaptionRule:
    """The validity rule from the ``validate`` section (one home for the prefix and word limit)."""
    from prefrestore.data.validate import ValidateConfig

    vcfg = params.section("validate", ValidateConfig)
    return CaptionRule(prefix=vcfg.caption_prefix, max_words=vcfg.caption_max_words)


def cross_check(out: Path, rule: CaptionRule) -> int:
    """Run the great-expectations caption suite (:func:`prefrestore.data.validate.validate_captions`) on
    the rows marked valid; a disagreement with :func:`invalid_reason` is a bug and raises."""
    from prefrestore.data.validate import ValidateConfig, validate_captions

    frame = pd.read_parquet(out / "captions.parquet")
    valid = frame[frame["valid"]]
    if valid.empty:
        return 0
    suite = validate_captions(valid, ValidateConfig(min_rows=0, caption_prefix=rule.prefix,
                                                    caption_max_words=rule.max_words))
    if not suite.success:
        raise RuntimeError(f"caption: rows marked valid fail the caption suite: {'; '.join(suite.failed)}")
    return len(valid)


def run(params: Params, inputs: Mapping[str, Path], out: Path) -> dict[str, Any]:
    """Caption every face in ``inputs["faces"]`` into ``out`` (see the module doc). Resumable."""
    cfg = params.section("caption", CaptionConfig)
    rule = load_rule(params)
    seed = int(params.tree["data"]["seed"])
    items = read_items(Path(inputs["faces"]))
    out = Path(out)
    done = {r["id"] for r in read_shards(out / "shards")} if (out / "shards").is_dir() else set()
    if all(it.id in done for it in items):  # nothing left: consolidate without loading a model
        _check_settings(out / "shards", settings_fingerprint(cfg, rule))
        summary = consolidate(items, out, 0.0, 0)
    else:
        summary = caption_items(build_captioner(cfg, seed), items, out, cfg, rule)
    summary["backend"] = cfg.backend
    summary["suite_checked"] = cross_check(out, rule)
    atomic.write_json(out / "caption_report.json", _data_report(summary))
    tracking.log_artifact(out / "caption_report.json")
    return summary


def load_captions(path: Path) -> dict[str, str]:
    """``id -> caption`` from the caption step's ``captions.parquet`` (or its folder); flagged ones -> ``""``
    (the no-caption template). The one reader of this step's output for every training stage."""
    path = Path(path)
    table = path / "captions.parquet" if path.is_dir() else path
    if not table.is_file():
        raise FileNotFoundError(f"no captions.parquet at {path} (run the caption step)")
    frame = pd.read_parquet(table)
    missing = sorted({"id", "caption", "valid"} - set(frame.columns))
    if missing:
        raise ValueError(f"{table}: missing column(s) {missing}")
    return {str(i): (str(c) if bool(v) else "") for i, c, v in zip(frame["id"], frame["caption"], frame["valid"],
                                                                  strict=True)}
