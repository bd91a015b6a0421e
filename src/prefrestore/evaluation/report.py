"""Evaluation tables in the paper's layout (Tables II-VI): our rows next to the quoted baselines.

Paired benchmarks use Table II's columns, real-world ones Tables III-VI's; metrics we measured
that the paper's table lacks (PSNR, SSIM, ClipScore, ...) follow as extra columns. Rows:
the paper's published rows (labelled "quoted from the paper, Table N"), then ours ("Input": the
degraded input itself; the model), then an optional earlier run (``baseline``). Cells say
``unavailable`` where a metric could not run here and ``—`` where it was not measured.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pandas as pd

from prefrestore.core.variants import VARIANT_LABELS, variant_of
from prefrestore.evaluation import paper_tables
from prefrestore.metrics import SPECS
from prefrestore.metrics.base import Unavailable

UNAVAILABLE = "unavailable"
NOT_MEASURED = "—"


@dataclasses.dataclass(frozen=True)
class Table:
    title: str
    columns: tuple[str, ...]  # metric ids
    frame: pd.DataFrame  # method, source, one column per metric label (float or text)
    notes: tuple[str, ...]


def label(metric: str) -> str:
    spec = SPECS[metric]
    return f"{spec.label}{'↓' if spec.lower_better else '↑'}"


def variant_label(model_dir: Path) -> str:
    variant = variant_of(model_dir)
    return f"{VARIANT_LABELS[variant] if variant else Path(model_dir).name} (ours)"


def _cell(v: Any) -> Any:
    if isinstance(v, Unavailable) or (isinstance(v, str) and v.startswith(UNAVAILABLE)):
        return UNAVAILABLE
    return NOT_MEASURED if v is None else v


def load_baseline(path: Path) -> dict[str, Any]:
    """An earlier evaluate output (its ``metrics.json``): rows shown as 'baseline: <model>'."""
    f = Path(path) / "metrics.json" if Path(path).is_dir() else Path(path)
    data = json.loads(f.read_text())
    return {"label": f"baseline: {Path(data['model']).name}",
            "benchmarks": {b: v["restored"] for b, v in data["benchmarks"].items()}}


def benchmark_table(name: str, res: Any, model_label: str, baseline: Mapping[str, Any] | None = None) -> Table:
    """The table of one benchmark (``res``: an ``evaluate.BenchmarkResult``)."""
    paper = paper_tables.BY_BENCHMARK.get(name)
    layout = paper.columns if paper else (paper_tables.PAIRED_COLUMNS if res.paired else paper_tables.REAL_COLUMNS)
    measured = [m for m in res.restored if m not in layout]
    columns = tuple(layout) + tuple(measured)
    rows: list[dict[str, Any]] = []
    if paper:
        for method, values in paper.rows:
            row = {"method": method, "source": f"quoted from the paper, Table {paper.number}"}
            row.update({label(m): v for m, v in zip(paper.columns, values, strict=True)})
            rows.append(row)
    for method, source, vals in (("Input", "ours: the degraded input", res.input),
                                 (model_label, "ours: measured", res.restored)):
        if not vals:
            continue
        row = {"method": method, "source": source}
        row.update({label(m): _cell(vals.get(m)) for m in columns})
        rows.append(row)
    if baseline and name in baseline["benchmarks"]:
        vals = baseline["benchmarks"][name]
        row = {"method": baseline["label"], "source": "earlier run"}
        row.update({label(m): _cell(vals.get(m)) for m in columns})
        rows.append(row)
    frame = pd.DataFrame(rows, columns=["method", "source", *[label(m) for m in columns]])
    frame = frame.fillna(NOT_MEASURED)
    kind = "paired" if res.paired else "unpaired"
    title = (f"{name} ({kind}): {res.n_images - len(res.excluded)} of {res.n_images} images evaluated, "
             f"{len(res.excluded)} excluded (unreadable)")
    notes = tuple(f"{m}: {UNAVAILABLE} ({v.reason})" for m, v in res.restored.items() if isinstance(v, Unavailable))
    not_applicable = [m for m in layout if m not in res.restored]
    if not_applicable:
        notes += (f"not measured here (not applicable or not configured): {', '.join(not_applicable)}",)
    return Table(title, columns, frame, notes)


def _fmt(v: Any) -> str:
    return f"{v:.4f}" if isinstance(v, float | int) and not isinstance(v, bool) else str(v)


def to_markdown(table: Table) -> str:
    head = list(table.frame.columns)
    lines = [f"### {table.title}", "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for _, row in table.frame.iterrows():
        lines.append("| " + " | ".join(_fmt(row[c]) for c in head) + " |")
    if table.notes:
        lines += ["", *[f"- {n}" for n in table.notes]]
    return "\n".join(lines) + "\n"


def full_report(results: Mapping[str, Any], unavailable: Mapping[str, str], model_dir: Path,
                baseline: Mapping[str, Any] | None) -> str:
    parts = [f"# Evaluation of {model_dir}", "",
             "Rows marked 'quoted from the paper' are the paper's published numbers, not our measurements.", ""]
    for name, res in results.items():
        parts.append(to_markdown(benchmark_table(name, res, variant_label(model_dir), baseline)))
    if unavailable:
        parts += ["## Unavailable metrics", "", *[f"- `{k}`: {v}" for k, v in sorted(unavailable.items())], ""]
    return "\n".join(parts)
