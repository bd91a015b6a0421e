"""The reviewer's tables in the paper's layouts, from what :mod:`prefrestore.registry.review` reads.

Tables II-VI (:func:`benchmark_table`), VII (:func:`caption_ablation`), VIII (:func:`preference_table`)
and the Fig. 8 medians (:func:`determinism_table`): our rows next to the rows quoted by
:mod:`prefrestore.evaluation.paper_tables`. A metric a run did not log is "—", one logged as
unavailable is "unavailable"; nothing is made up.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import pandas as pd

from prefrestore.core.variants import VARIANT_LABELS
from prefrestore.evaluation import paper_tables
from prefrestore.registry.review import (
    NOT_MEASURED,
    UNAVAILABLE,
    Evaluation,
    NoData,
    benchmark_metrics,
)

# Fig. 8 as stated in the paper's text (Sec. V-F): median std of the Sum Score, base -> Pref-Restore.
PAPER_FIG8_SUM_MEDIAN_STD = {"before (base model)": 0.032, "after (Pref-Restore)": 0.016}


def _metric_label(metric: str) -> str:
    from prefrestore.metrics import SPECS

    spec = SPECS.get(metric)
    return metric if spec is None else f"{spec.label}{'↓' if spec.lower_better else '↑'}"


def _cell(metrics: Mapping[str, float], unavailable: Mapping[str, str], key: str, metric: str) -> Any:
    value = metrics.get(key)
    if value is not None and math.isfinite(value):
        return value
    return UNAVAILABLE if metric in unavailable else NOT_MEASURED


def benchmark_table(benchmark: str, ours: Mapping[str, Evaluation], quoted: bool = True) -> pd.DataFrame:
    """Tables II-VI view of one benchmark: the paper's quoted rows, then ours (label -> evaluation).

    Columns are the paper's (our metric ids, as labels with their direction), then any other
    metric one of our runs logged for this benchmark (PSNR, SSIM, ...). Each of our evaluations
    adds an "Input" row (the degraded input itself) when it logged one, and its model's row.
    """
    paper = paper_tables.BY_BENCHMARK.get(benchmark)
    layout = list(paper.columns) if paper else []
    logged = {m for ev in ours.values() for m in benchmark_metrics(ev, benchmark)}
    if not logged:
        raise NoData(f"no run logged metrics '{benchmark}/<metric>' (the evaluate step logs them; is "
                     f"'{benchmark}' in evaluate.benchmarks?)")
    columns = layout + sorted(logged - set(layout))
    rows: list[dict[str, Any]] = []
    if quoted and paper:
        for method, values in paper.rows:
            rows.append({"method": method, "source": f"quoted from the paper, Table {paper.number}",
                         **dict(zip(layout, values, strict=True))})
    for label, ev in ours.items():
        inputs = {m: _cell(ev.metrics, {}, f"{benchmark}/input/{m}", m) for m in columns}
        if any(v != NOT_MEASURED for v in inputs.values()):
            rows.append({"method": "Input (degraded)", "source": f"ours: {label}", **inputs})
        rows.append({"method": VARIANT_LABELS.get(ev.variant, ev.variant), "source": f"ours: {label}",
                     **{m: _cell(ev.metrics, ev.unavailable, f"{benchmark}/{m}", m) for m in columns}})
    frame = pd.DataFrame(rows, columns=["method", "source", *columns]).fillna(NOT_MEASURED)
    return frame.rename(columns={m: _metric_label(m) for m in columns})


def preference_table(benchmark: str, before: Evaluation, after: Evaluation, quoted: bool = True) -> pd.DataFrame:
    """Table VIII view: HPSv2, CLIP score and PickScore of the stage-1 model and the stage-2 model."""
    table = paper_tables.TABLE_VIII
    cols = list(table.columns)
    rows = []
    if quoted:
        rows += [{"model": m, "source": "quoted from the paper, Table VIII", **dict(zip(cols, v, strict=True))}
                 for m, v in table.rows]
    for name, ev in (("Stage 1 (fidelity)", before), ("Stage 2 (quality)", after)):
        rows.append({"model": name, "source": f"ours: {', '.join(r[:8] for r in ev.run_ids)}",
                     **{m: _cell(ev.metrics, ev.unavailable, f"{benchmark}/{m}", m) for m in cols}})
    return pd.DataFrame(rows, columns=["model", "source", *cols]).rename(columns={m: _metric_label(m) for m in cols})


def caption_ablation(benchmark: str, with_caption: Evaluation, without_caption: Evaluation,
                     quoted: bool = True) -> pd.DataFrame:
    """Table VII view: ClipScore-I, ClipScore-T and DreamSim without and with captions, and the change.

    Rows are metrics (the paper's layout); ours next to the paper's quoted columns.
    """
    table = paper_tables.TABLE_VII
    rows = []
    for i, metric in enumerate(table.columns):
        base = _cell(without_caption.metrics, without_caption.unavailable, f"{benchmark}/{metric}", metric)
        cap = _cell(with_caption.metrics, with_caption.unavailable, f"{benchmark}/{metric}", metric)
        both = isinstance(base, float) and isinstance(cap, float)
        row = {"metric": _metric_label(metric), "base model (ours)": base, "+caption (ours)": cap,
               "improvement (ours)": cap - base if both else NOT_MEASURED}
        if quoted:
            (_, p_base), (_, p_cap) = table.rows
            row.update({"base model (paper)": p_base[i], "+caption (paper)": p_cap[i],
                        "improvement (paper)": round(p_cap[i] - p_base[i], 4)})
        rows.append(row)
    return pd.DataFrame(rows).set_index("metric")


def determinism_table(stage2_runs: Mapping[str, Any]) -> pd.DataFrame:
    """Median over images of the per-image std over seeds, before/after stage 2 (Fig. 8 headline).

    The paper's quoted Sum Score medians (about 0.032 -> 0.016) come last.
    """
    rows = []
    for label, run in stage2_runs.items():
        m = {} if run is None else run.data.metrics
        if "determinism/median_std_before" not in m:
            continue
        rows.append({"run": label, "score": "sum", "before": m["determinism/median_std_before"],
                     "after": m["determinism/median_std_after"]})
        for key in sorted(k for k in m if k.startswith("determinism/") and k.endswith("_median_std_before")):
            name = key[len("determinism/"):-len("_median_std_before")]
            rows.append({"run": label, "score": name, "before": m[key],
                         "after": m.get(f"determinism/{name}_median_std_after", math.nan)})
    if not rows:
        raise NoData("no stage2 run logged 'determinism/median_std_before' (stage2.determinism_seeds = 0?)")
    before, after = PAPER_FIG8_SUM_MEDIAN_STD.values()
    rows.append({"run": "paper (quoted, approximate, Sec. V-F)", "score": "sum", "before": before, "after": after})
    table = pd.DataFrame(rows)
    table["ratio after/before"] = table["after"] / table["before"]
    return table
