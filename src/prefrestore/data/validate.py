"""The ``validate`` step: great-expectations (GX Core 1.x) suites over the ingested faces and captions.

Suites (each expectation carries a one-line description that the report shows):

* ``manifest`` on ``manifest.parquet``: columns present, ids and checksums unique, split in
  {train, test} (both present when ``data.test_fraction > 0``), width = height = ``data.resolution``,
  at least ``validate.min_rows`` rows.
* ``files``: every image is decoded (``images.load_rgb``) and its per-file results become columns
  that GX validates: the file exists and decodes, is stored as 8-bit RGB, has the expected size,
  and its sha256 equals the manifest's.
* ``captions`` (only when a ``captions`` input is given; Appendix D): ids unique, caption non-empty,
  starts with ``validate.caption_prefix``, fewer than ``validate.caption_max_words`` words, and every
  manifest image has exactly one caption (no caption without an image). :func:`validate_captions`
  exposes this suite for the captioning step.

``run`` writes ``report.json`` and ``report.md`` (which expectation failed, on how many rows, with
example ids and values), logs both to MLflow, and then raises :class:`ValidationFailed` if any suite
failed, so a pipeline stops before training on bad data.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import itertools
import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pandas as pd
from tqdm.auto import tqdm

from prefrestore.core import atomic, images, tracking
from prefrestore.core.config import Params, check_range
from prefrestore.data.ingest import MANIFEST_COLUMNS, DataConfig

CAPTION_COLUMNS = ("id", "caption", "valid", "attempts", "flag")
MAX_EXAMPLES = 5  # failing rows quoted per expectation in the report


@dataclasses.dataclass(frozen=True)
class ValidateConfig:
    """``validate`` section."""

    min_rows: int  # an image manifest with fewer rows fails
    caption_prefix: str  # every valid caption starts with this (Appendix D)
    caption_max_words: int  # a valid caption has fewer words than this (Appendix D)

    def __post_init__(self) -> None:
        check_range("validate.min_rows", self.min_rows, 0, 10**9)
        check_range("validate.caption_max_words", self.caption_max_words, 1, 10_000)
        if not self.caption_prefix.strip():
            raise ValueError("validate.caption_prefix must not be blank")


class ValidationFailed(RuntimeError):
    """A suite failed; the report has been written to ``report_dir`` before this is raised."""

    def __init__(self, report_dir: Path, failed: Sequence[str]) -> None:
        self.report_dir = Path(report_dir)
        self.failed = list(failed)
        super().__init__(f"validation failed ({len(failed)} expectation(s)): {'; '.join(failed)}. "
                         f"See {self.report_dir / 'report.md'}")


@dataclasses.dataclass(frozen=True)
class SuiteResult:
    """One suite's outcome: per expectation, what was checked and which rows broke it."""

    name: str
    rows: int
    expectations: tuple[dict[str, Any], ...]

    @property
    def success(self) -> bool:
        return all(e["success"] for e in self.expectations)

    @property
    def failed(self) -> list[str]:
        return [f"{self.name}: {e['description']}" for e in self.expectations if not e["success"]]

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "success": self.success, "rows": self.rows,
                "expectations": list(self.expectations)}


# ----------------------------------------------------------------------------------------------
# GX plumbing


@functools.lru_cache(maxsize=1)
def _context() -> Any:
    os.environ.setdefault("GX_ANALYTICS_ENABLED", "False")  # no network calls from an offline job
    import great_expectations as gx
    from great_expectations.data_context.types.base import ProgressBarsConfig

    ctx = gx.get_context(mode="ephemeral")
    ctx.variables.progress_bars = ProgressBarsConfig(globally=False)  # one bar per metric is noise
    return ctx


_names = itertools.count()


def _check(table: str, frame: pd.DataFrame, expectations: Sequence[tuple[str, Any]], id_column: str | None
           ) -> list[dict[str, Any]]:
    """Validate ``frame`` against ``(description, gx expectation)`` pairs; one plain dict per expectation."""
    import great_expectations as gx

    ctx = _context()
    n = next(_names)
    batch_def = (ctx.data_sources.add_pandas(f"prefrestore_{n}").add_dataframe_asset(table)
                 .add_batch_definition_whole_dataframe("all"))
    suite = gx.ExpectationSuite(name=f"{table}_{n}")
    for description, exp in expectations:
        exp.description = description
        suite.add_expectation(exp)
    frame = frame.reset_index(drop=True)
    result = batch_def.get_batch(batch_parameters={"dataframe": frame}).validate(suite, result_format="COMPLETE")
    by_description = {r.expectation_config.description: r for r in result.results}
    out = []
    for description, _ in expectations:
        r = by_description[description]
        cfg = r.expectation_config
        res = r.result or {}
        kwargs = {k: v for k, v in cfg.kwargs.items() if k != "batch_id"}
        error = (r.exception_info or {}).get("exception_message") if isinstance(r.exception_info, dict) else None
        if error is None and isinstance(r.exception_info, dict):  # nested per-metric exception info
            error = next((v.get("exception_message") for v in r.exception_info.values()
                          if isinstance(v, dict) and v.get("exception_message")), None)
        examples = []
        for idx in (res.get("unexpected_index_list") or [])[:MAX_EXAMPLES]:
            row = frame.iloc[idx] if isinstance(idx, int) else None
            if row is not None:
                ex = {"value": _plain(row[cfg.kwargs["column"]])} if "column" in cfg.kwargs else {}
                if id_column and id_column in frame.columns:
                    ex = {"id": _plain(row[id_column]), **ex}
                examples.append(ex)
        out.append({
            "table": table,
            "description": description,
            "expectation": cfg.type,
            "column": cfg.kwargs.get("column"),
            "kwargs": {k: _plain(v) for k, v in kwargs.items()},
            "success": bool(r.success),
            "element_count": res.get("element_count", len(frame)),
            "unexpected_count": res.get("unexpected_count"),
            "unexpected_percent": res.get("unexpected_percent"),
            "observed_value": _plain(res.get("observed_value")),
            "examples": examples,
            "error": error,
        })
    return out


def _plain(v: Any) -> Any:
    """JSON-friendly values (numpy scalars, sets)."""
    if hasattr(v, "item") and not isinstance(v, str | bytes):
        try:
            return v.item()
        except (ValueError, AttributeError):
            pass
    if isinstance(v, set | frozenset | tuple):
        return [_plain(x) for x in sorted(v, key=str)]
    if isinstance(v, list):
        return [_plain(x) for x in v]
    return v


# ----------------------------------------------------------------------------------------------
# Suites


def validate_manifest(frame: pd.DataFrame, data: DataConfig, cfg: ValidateConfig) -> SuiteResult:
    """The image-manifest suite (table-level checks of ``manifest.parquet``)."""
    import great_expectations as gx

    E = gx.expectations
    exps: list[tuple[str, Any]] = [
        ("all manifest columns present",
         E.ExpectTableColumnsToMatchSet(column_set=list(MANIFEST_COLUMNS), exact_match=False)),
        (f"at least {cfg.min_rows} rows (validate.min_rows)", E.ExpectTableRowCountToBeBetween(min_value=cfg.min_rows)),
        ("ids are unique", E.ExpectColumnValuesToBeUnique(column="id")),
        ("ids are not null", E.ExpectColumnValuesToNotBeNull(column="id")),
        ("checksums are unique (no duplicate images)", E.ExpectColumnValuesToBeUnique(column="sha256")),
        ("checksums are sha256 hex", E.ExpectColumnValuesToMatchRegex(column="sha256", regex=r"^[0-9a-f]{64}$")),
        ("split is train or test", E.ExpectColumnValuesToBeInSet(column="split", value_set=["train", "test"])),
        ("split is not null", E.ExpectColumnValuesToNotBeNull(column="split")),
        (f"width == data.resolution ({data.resolution})",
         E.ExpectColumnValuesToBeBetween(column="width", min_value=data.resolution, max_value=data.resolution)),
        (f"height == data.resolution ({data.resolution})",
         E.ExpectColumnValuesToBeBetween(column="height", min_value=data.resolution, max_value=data.resolution)),
        ("attributes are JSON", E.ExpectColumnValuesToBeJsonParseable(column="attributes")),
    ]
    if data.test_fraction > 0 and len(frame) >= 2:
        exps.append(("both splits are present (data.test_fraction > 0)",
                     E.ExpectColumnDistinctValuesToContainSet(column="split", value_set=["train", "test"])))
    return SuiteResult("manifest", len(frame), tuple(_check("manifest", frame, exps, "id")))


def decode_table(folder: Path, frame: pd.DataFrame) -> pd.DataFrame:
    """Decode every image of the manifest; one row of results per file (the ``files`` suite's table)."""
    from PIL import Image

    rows = []
    for rec in tqdm(frame.to_dict("records"), desc="decode check", unit="img", disable=len(frame) < 200):
        path = Path(folder) / str(rec.get("path", ""))
        row = {"id": rec.get("id"), "exists": path.is_file(), "decodes": False, "error": "", "mode": "",
               "width": -1, "height": -1, "sha256_matches": False}
        if row["exists"]:
            try:
                with Image.open(path) as im:
                    row["mode"] = im.mode  # as stored: ingest writes 8-bit RGB only
                arr = images.load_rgb(path)
                row["decodes"] = True
                row["height"], row["width"] = int(arr.shape[0]), int(arr.shape[1])
            except (images.BadImage, OSError) as exc:
                row["error"] = str(exc)
            row["sha256_matches"] = hashlib.sha256(path.read_bytes()).hexdigest() == rec.get("sha256")
        rows.append(row)
    return pd.DataFrame(rows, columns=["id", "exists", "decodes", "error", "mode", "width", "height",
                                       "sha256_matches"])


def validate_files(table: pd.DataFrame, data: DataConfig) -> SuiteResult:
    """The per-file decode suite over :func:`decode_table`'s results."""
    import great_expectations as gx

    E = gx.expectations
    r = data.resolution
    exps = [
        ("every image file exists", E.ExpectColumnValuesToBeInSet(column="exists", value_set=[True])),
        ("every image decodes", E.ExpectColumnValuesToBeInSet(column="decodes", value_set=[True])),
        ("every image is stored as 8-bit RGB", E.ExpectColumnValuesToBeInSet(column="mode", value_set=["RGB"])),
        (f"decoded width == {r}", E.ExpectColumnValuesToBeBetween(column="width", min_value=r, max_value=r)),
        (f"decoded height == {r}", E.ExpectColumnValuesToBeBetween(column="height", min_value=r, max_value=r)),
        ("file sha256 equals the manifest's",
         E.ExpectColumnValuesToBeInSet(column="sha256_matches", value_set=[True])),
    ]
    return SuiteResult("files", len(table), tuple(_check("files", table, exps, "id")))


def validate_captions(frame: pd.DataFrame, cfg: ValidateConfig, image_ids: Sequence[str] | None = None
                      ) -> SuiteResult:
    """The caption suite (Appendix D) on a ``captions.parquet`` frame; with ``image_ids``, also coverage.

    Returns a :class:`SuiteResult` (``.success``, ``.failed``, ``.to_dict()``); raises nothing.
    """
    import great_expectations as gx

    E = gx.expectations
    table = frame.copy().reset_index(drop=True)
    if "caption" in table.columns:
        table["n_words"] = [len(c.split()) if isinstance(c, str) else 0 for c in table["caption"]]
    exps: list[tuple[str, Any]] = [
        ("all caption columns present",
         E.ExpectTableColumnsToMatchSet(column_set=list(CAPTION_COLUMNS), exact_match=False)),
        ("caption ids are unique", E.ExpectColumnValuesToBeUnique(column="id")),
        ("caption is not null", E.ExpectColumnValuesToNotBeNull(column="caption")),
        ("caption is non-empty", E.ExpectColumnValuesToMatchRegex(column="caption", regex=r"\S")),
        (f"caption starts with {cfg.caption_prefix!r}",
         E.ExpectColumnValuesToMatchRegex(column="caption", regex="^" + re.escape(cfg.caption_prefix))),
        (f"caption has fewer than {cfg.caption_max_words} words",
         E.ExpectColumnValuesToBeBetween(column="n_words", max_value=cfg.caption_max_words - 1)),
    ]
    results = _check("captions", table, exps, "id")
    if image_ids is not None:
        have = set(table["id"]) if "id" in table.columns else set()
        wanted = set(image_ids)
        coverage = pd.DataFrame({"id": sorted(wanted | have)})
        coverage["has_caption"] = coverage["id"].isin(have)
        coverage["has_image"] = coverage["id"].isin(wanted)
        results += _check("caption_coverage", coverage, [
            ("every image id has a caption", E.ExpectColumnValuesToBeInSet(column="has_caption", value_set=[True])),
            ("every caption id is a manifest image", E.ExpectColumnValuesToBeInSet(column="has_image", value_set=[True])),
        ], "id")
    return SuiteResult("captions", len(table), tuple(results))


# ----------------------------------------------------------------------------------------------
# Report and step


def render_markdown(suites: Sequence[SuiteResult]) -> str:
    ok = all(s.success for s in suites)
    lines = ["# Validation report", "", f"**Result: {'PASSED' if ok else 'FAILED'}**", ""]
    for s in suites:
        n_bad = sum(not e["success"] for e in s.expectations)
        lines += [f"## Suite `{s.name}`: {'passed' if s.success else 'FAILED'} "
                  f"({s.rows} rows, {len(s.expectations)} expectations, {n_bad} failed)", "",
                  "| ok | check | GX expectation | column | failing rows | examples / observed |",
                  "|---|---|---|---|---|---|"]
        for e in s.expectations:
            bad = e["unexpected_count"]
            bad_txt = "" if bad is None else f"{bad} ({(e['unexpected_percent'] or 0):.1f}%)"
            detail = ", ".join(_example(ex) for ex in e["examples"])
            if not detail and e["observed_value"] is not None and not e["success"]:
                detail = f"observed {e['observed_value']}"
            if e["error"]:
                detail = f"error: {e['error']}"
            lines.append(f"| {'yes' if e['success'] else '**NO**'} | {e['description']} | `{e['expectation']}` | "
                         f"{e['column'] or ''} | {bad_txt} | {detail.replace('|', '/')[:300]} |")
        lines.append("")
    return "\n".join(lines)


def _example(ex: Mapping[str, Any]) -> str:
    value = ex.get("value")
    shown = repr(value if not isinstance(value, str) or len(value) < 60 else value[:57] + "...")
    return f"`{ex['id']}`: {shown}" if "id" in ex else shown


def _captions_path(path: Path) -> Path:
    return path / "captions.parquet" if path.is_dir() else path


def run(params: Params, inputs: Mapping[str, Path], out: Path) -> dict[str, Any]:
    """Validate ``inputs["faces"]`` (and ``inputs["captions"]`` if given); write the report to ``out``.

    Raises :class:`ValidationFailed` after writing the report when any expectation fails.
    """
    data = params.section("data", DataConfig)
    cfg = params.section("validate", ValidateConfig)
    faces = Path(inputs["faces"])
    manifest_path = faces / "manifest.parquet"
    if not manifest_path.is_file():
        raise FileNotFoundError(f"validate: no manifest.parquet in {faces} (run `prefrestore ingest` first)")
    manifest = pd.read_parquet(manifest_path)
    suites = [validate_manifest(manifest, data, cfg)]
    if {"id", "path"} <= set(manifest.columns):
        suites.append(validate_files(decode_table(faces, manifest), data))
    if inputs.get("captions") is not None:
        cap_path = _captions_path(Path(inputs["captions"]))
        if not cap_path.is_file():
            raise FileNotFoundError(f"validate: captions input has no captions.parquet: {cap_path}")
        ids = manifest["id"].tolist() if "id" in manifest.columns else []
        suites.append(validate_captions(pd.read_parquet(cap_path), cfg, ids))

    report = {"success": all(s.success for s in suites), "faces": str(faces),
              "suites": {s.name: s.to_dict() for s in suites}}
    out = Path(out)
    with atomic.atomic_path(out) as tmp:
        tmp.mkdir()
        atomic.write_json(tmp / "report.json", report)
        atomic.write_text(tmp / "report.md", render_markdown(suites))
    tracking.log_artifact(out / "report.json", "validation")
    tracking.log_artifact(out / "report.md", "validation")
    failed = [f for s in suites for f in s.failed]
    tracking.log_metrics({"validate/failed_expectations": len(failed)})
    if failed:
        raise ValidationFailed(out, failed)
    return {"success": True, "manifest_rows": len(manifest),
            "expectations": sum(len(s.expectations) for s in suites), "failed_expectations": 0,
            "suites": [s.name for s in suites]}
