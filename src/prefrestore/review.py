"""Reviewer helpers: turn tracked MLflow runs into the paper's views.

The notebook ``notebooks/compare_experiments.ipynb`` only calls these functions. Each takes an
``MlflowClient`` (any tracking URI: the embedded SQLite store or a remote server) and returns a
pandas DataFrame or a matplotlib Figure, so each is testable without a notebook.

Views: benchmark tables (Tables II–VI layout, our rows next to the paper's quoted rows), the
stage-1 validation curve (Fig. 3), stage-2 reward curves (Figs. 6 and 9), the determinism box
plots (Fig. 8), the caption ablation (Table VII), sample grids, and the registry's aliases with
the gate's recorded reasons.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import pandas as pd


def _plt():
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    return plt


def pipeline_runs(client: Any, experiment: str) -> pd.DataFrame:
    """Parent (pipeline) runs of an experiment, newest first: run id, name, profile, start, status."""
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        raise ValueError(f"no MLflow experiment named {experiment!r}")
    runs = client.search_runs([exp.experiment_id], "tags.kind = 'pipeline'", order_by=["start_time DESC"])
    return pd.DataFrame(
        [
            {
                "run_id": r.info.run_id,
                "name": r.info.run_name,
                "profile": r.data.tags.get("profile"),
                "git_sha": r.data.tags.get("git_sha", "")[:12],
                "start": pd.to_datetime(r.info.start_time, unit="ms"),
                "status": r.info.status,
            }
            for r in runs
        ],
        columns=["run_id", "name", "profile", "git_sha", "start", "status"],
    )


def step_runs(client: Any, parent_run_id: str) -> dict[str, Any]:
    """The nested step runs of one pipeline run, by step name (the newest one per step)."""
    parent = client.get_run(parent_run_id)
    children = client.search_runs(
        [parent.info.experiment_id], f"tags.mlflow.parentRunId = '{parent_run_id}'", order_by=["start_time ASC"]
    )
    return {r.data.tags.get("step", r.info.run_name): r for r in children}


def metric_history(client: Any, run_id: str, key: str) -> pd.DataFrame:
    """One metric's logged history (step, value), sorted by step."""
    hist = client.get_metric_history(run_id, key)
    return pd.DataFrame(
        sorted(((m.step, m.value) for m in hist)), columns=["step", "value"]
    )


def plot_curves(client: Any, runs: dict[str, str], keys: Sequence[str], title: str):
    """Curves of ``keys`` for several runs (label -> run id): the Fig. 3 / 6 / 9 views."""
    plt = _plt()
    fig, axes = plt.subplots(1, len(keys), figsize=(4.5 * len(keys), 3.4), squeeze=False)
    for ax, key in zip(axes[0], keys, strict=True):
        for label, run_id in runs.items():
            hist = metric_history(client, run_id, key)
            if not hist.empty:
                ax.plot(hist["step"], hist["value"], marker="o", ms=3, label=label)
        ax.set_title(key)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    return fig


def benchmark_table(
    client: Any,
    runs: dict[str, str],
    benchmark: str,
    metrics: Sequence[str],
    quoted: pd.DataFrame | None = None,
) -> pd.DataFrame:
    """A Tables II–VI view: one row per run (label -> run id) with ``<benchmark>/<metric>``.

    ``quoted`` (rows quoted from the paper, indexed by method) is appended below, labelled as such.
    A metric a run did not log shows as NaN; a metric logged as unavailable is never made up.
    """
    rows = {}
    for label, run_id in runs.items():
        logged = client.get_run(run_id).data.metrics
        rows[f"{label} (ours)"] = {m: logged.get(f"{benchmark}/{m}") for m in metrics}
    table = pd.DataFrame.from_dict(rows, orient="index", columns=list(metrics))
    if quoted is not None and not quoted.empty:
        q = quoted.reindex(columns=list(metrics))
        q.index = [f"{i} (paper)" for i in q.index]
        table = pd.concat([table, q])
    return table


def caption_ablation(client: Any, with_caption: str, without_caption: str, keys: Sequence[str]) -> pd.DataFrame:
    """Table VII view: the same metrics for a run with captions and one without."""
    out = {}
    for label, run_id in (("with caption", with_caption), ("without caption", without_caption)):
        logged = client.get_run(run_id).data.metrics
        out[label] = {k: logged.get(k) for k in keys}
    table = pd.DataFrame.from_dict(out, orient="index", columns=list(keys))
    table.loc["delta"] = table.loc["with caption"] - table.loc["without caption"]
    return table


def determinism_boxplot(spreads: dict[str, Iterable[float]], title: str = "per-image std across seeds"):
    """Fig. 8 view: per-image std of the summed score, one box per model (e.g. before/after stage 2)."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(4.5, 3.4))
    labels = list(spreads)
    ax.boxplot([list(spreads[k]) for k in labels], tick_labels=labels, showmeans=True)
    ax.set_ylabel("std")
    ax.set_title(title)
    ax.grid(alpha=0.3, axis="y")
    fig.tight_layout()
    return fig


def load_json_artifact(client: Any, run_id: str, path: str, dst: Path) -> Any:
    """Download one JSON artifact of a run and parse it."""
    local = client.download_artifacts(run_id, path, str(dst))
    return json.loads(Path(local).read_text())


def registry_aliases(client: Any, model_names: Sequence[str]) -> pd.DataFrame:
    """Which version holds each alias of each registered model, with the gate's recorded reasons."""
    rows = []
    for name in model_names:
        try:
            model = client.get_registered_model(name)
        except Exception:  # not registered yet: say so, do not invent a row
            rows.append({"model": name, "alias": None, "version": None, "decision": "not registered"})
            continue
        for alias, version in sorted((model.aliases or {}).items()):
            tags = client.get_model_version(name, version).tags
            rows.append({
                "model": name,
                "alias": alias,
                "version": version,
                "decision": tags.get("gate.decision"),
                "reasons": tags.get("gate.reasons"),
            })
    return pd.DataFrame(rows, columns=["model", "alias", "version", "decision", "reasons"])


def image_grid(paths: Sequence[Path], titles: Sequence[str], ncols: int = 3):
    """A sample grid (e.g. LQ | restored | HQ) from image files."""
    from PIL import Image

    plt = _plt()
    nrows = (len(paths) + ncols - 1) // ncols
    fig, axes = plt.subplots(nrows, ncols, figsize=(2.6 * ncols, 2.6 * nrows), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, path, title in zip(axes.flat, paths, titles, strict=False):
        ax.imshow(Image.open(path).convert("RGB"))
        ax.set_title(title, fontsize=8)
    fig.tight_layout()
    return fig
