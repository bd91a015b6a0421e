"""Reviewer helpers: turn tracked MLflow runs into the paper's views.

The notebook ``notebooks/compare_experiments.ipynb`` only calls these functions. Each takes an
``MlflowClient`` (any tracking URI: the embedded SQLite store or a remote server) and returns a
pandas DataFrame or a matplotlib ``Figure``, so each is testable without a notebook. A view whose
data is not in the store raises :class:`NoData` with the reason; :func:`view` turns that into an
:class:`Absent` note that the notebook displays instead of a table or plot. Nothing here makes up a
number: a metric a run did not log is shown as "—", one logged as unavailable as "unavailable".

Views (paper numbering) and the producers whose names they read:

- benchmark tables, Tables II-VI layout (:mod:`prefrestore.evaluation.evaluate`: ``<benchmark>/<metric>``,
  ``<benchmark>/input/<metric>``, tags ``unavailable/<metric>``, artifact ``evaluate/metrics.json``),
  our rows next to the rows quoted by :mod:`prefrestore.evaluation.paper_tables`;
- the stage-1 validation curve, Fig. 3 (:mod:`prefrestore.train.heldout`: ``val/*`` per step of the
  ``stage1_1`` and ``stage1_2`` runs);
- stage-2 reward curves, Fig. 6 (``reward/total_mean``, ``reward/<name>_mean`` per epoch) and
  Fig. 9 (``heldout/reward_total``, ``heldout/psnr``, ``heldout/ssim``) from
  :mod:`prefrestore.train.stage2`;
- determinism box plots, Fig. 8 (``determinism/determinism.json`` artifact and the
  ``determinism/median_std_*`` metrics of the ``stage2`` run);
- the caption ablation, Table VII (two pipeline runs: trained with ``instructions.p_txt > 0`` and
  evaluated with captions, vs. ``p_txt = 0`` and no captions) and preference metrics, Table VIII;
- sample grids (PNG artifacts under ``validation/``, ``evaluate/<benchmark>/grid.png``,
  ``determinism/``);
- the registry: which version holds each alias, with the gate's recorded decision and reasons
  (:mod:`prefrestore.registry.register` version tags ``gate.decision``, ``gate.outcome``, ``gate.evidence``).
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from prefrestore.core.variants import MODEL_DIR_VARIANTS, VARIANT_LABELS
from prefrestore.evaluation import paper_tables

NOT_MEASURED = "—"  # a metric the run did not log
UNAVAILABLE = "unavailable"  # a metric the run logged as unavailable (weights missing)
STAGE1_STEPS = ("stage1_1", "stage1_2")
DETERMINISM_ARTIFACT = "determinism/determinism.json"  # train_stage2.DETERMINISM_FILE under "determinism"
EVAL_ARTIFACT = "evaluate/metrics.json"  # evaluate.run's summary, logged under "evaluate"
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
# Fig. 8 as stated in the paper's text (Sec. V-F): median std of the Sum Score, base -> Pref-Restore.
PAPER_FIG8_SUM_MEDIAN_STD = {"before (base model)": 0.032, "after (Pref-Restore)": 0.016}
# Fig. 9 as stated in the paper's text (Appendix E): held-out compound reward.
PAPER_FIG9 = {"base model (step 0)": 20.66, "CodeFormer": 21.37, "plateau (step 210)": 24.49}


class NoData(LookupError):
    """The store holds no data for a view; the message says what is missing and who logs it."""


@dataclasses.dataclass(frozen=True)
class Absent:
    """What a view shows instead of a table or figure when its data is absent."""

    view: str
    reason: str

    def __str__(self) -> str:
        return f"{self.view}: no data. {self.reason}"

    def _repr_markdown_(self) -> str:
        return f"**{self.view}: no data.** {self.reason}"


def view(name: str, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """``fn(*args, **kwargs)``, or :class:`Absent` with the reason when it raises :class:`NoData`."""
    try:
        return fn(*args, **kwargs)
    except NoData as exc:
        return Absent(name, str(exc))


def connect(tracking_uri: str | None = None) -> Any:
    """An ``MlflowClient`` for ``tracking_uri`` (None: ``$MLFLOW_TRACKING_URI`` or the project's SQLite store)."""
    from mlflow import MlflowClient

    from prefrestore.core import tracking

    return MlflowClient(tracking_uri=tracking_uri or tracking.tracking_uri())


def _figure(ncols: int, width: float = 4.5, height: float = 3.4) -> tuple[Any, list[Any]]:
    """A pyplot-free Figure (no global state, no double display in notebooks) and its axes."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width * ncols, height), layout="constrained")
    axes = fig.subplots(1, ncols, squeeze=False)[0]
    return fig, list(axes)


# ------------------------------------------------------------------------------------------ runs
def pipeline_runs(client: Any, experiment: str, run_ids: Sequence[str] = (), limit: int | None = None) -> pd.DataFrame:
    """Pipeline (parent) runs, newest first: run id, label, name, profile, orchestrator, git SHA, start, status.

    ``run_ids`` selects runs by id (each must exist and be a pipeline run); otherwise the newest
    ``limit`` pipeline runs of ``experiment`` (all when None).
    """
    from mlflow.exceptions import MlflowException

    if run_ids:
        runs = []
        for rid in run_ids:
            try:
                run = client.get_run(rid)
            except MlflowException as exc:
                raise ValueError(f"run {rid!r} not found in the tracking store ({exc.message})") from None
            if run.data.tags.get("kind") != "pipeline":
                raise ValueError(f"run {rid!r} is not a pipeline run (tag kind={run.data.tags.get('kind')!r})")
            runs.append(run)
    else:
        exp = client.get_experiment_by_name(experiment)
        if exp is None:
            raise NoData(f"no MLflow experiment named {experiment!r} at this tracking URI")
        runs = client.search_runs([exp.experiment_id], "tags.kind = 'pipeline'", order_by=["start_time DESC"],
                                  max_results=limit or 1000)
    rows = [{
        "run_id": r.info.run_id,
        "label": f"{r.info.run_name} ({r.info.run_id[:8]})",
        "name": r.info.run_name,
        "profile": r.data.tags.get("profile"),
        "orchestrator": r.data.tags.get("orchestrator"),
        "git_sha": r.data.tags.get("git_sha", "")[:12],
        "start": pd.to_datetime(r.info.start_time, unit="ms"),
        "status": r.info.status,
    } for r in runs]
    if not rows:
        raise NoData(f"experiment {experiment!r} has no pipeline runs (tag kind=pipeline): run `prefrestore demo`")
    return pd.DataFrame(rows, columns=list(rows[0]))


def child_runs(client: Any, parent_run_id: str) -> list[Any]:
    """Every step run nested under a pipeline run, oldest first."""
    parent = client.get_run(parent_run_id)
    return list(client.search_runs([parent.info.experiment_id], f"tags.mlflow.parentRunId = '{parent_run_id}'",
                                   order_by=["start_time ASC"], max_results=1000))


def step_runs(client: Any, parent_run_id: str) -> dict[str, Any]:
    """The nested step runs of one pipeline run by step name (the newest one per step).

    ``evaluate`` may run several times per pipeline (one per variant, or per benchmark on KFP); use
    :func:`evaluations` for it.
    """
    return {r.data.tags.get("step", r.info.run_name): r for r in child_runs(client, parent_run_id)}


def metric_history(client: Any, run_id: str, key: str) -> pd.DataFrame:
    """One metric's logged history (step, value), sorted by step (empty when never logged)."""
    hist = client.get_metric_history(run_id, key)
    return pd.DataFrame(sorted((m.step, m.value) for m in hist), columns=["step", "value"])


# ---------------------------------------------------------------------------------- evaluations
@dataclasses.dataclass(frozen=True)
class Evaluation:
    """The evaluate runs of one model variant in one pipeline run, merged (KFP fans out per benchmark)."""

    variant: str  # "fidelity", "quality", or "evaluate <run id>" when the model is not recognised
    run_ids: tuple[str, ...]
    metrics: Mapping[str, float]  # "<benchmark>/<metric>" and "<benchmark>/input/<metric>"
    unavailable: Mapping[str, str]  # metric id -> reason (tags ``unavailable/<metric>``)
    params: Mapping[str, str]  # the logged ``evaluate.*`` / ``data.*`` params


def _variant_of(client: Any, run: Any, dst: Path) -> str:
    """A run's model variant: its ``variant`` tag, else the model folder named in ``evaluate/metrics.json``."""
    from mlflow.exceptions import MlflowException

    if run.data.tags.get("variant"):
        return run.data.tags["variant"]
    try:
        local = client.download_artifacts(run.info.run_id, EVAL_ARTIFACT, str(dst / run.info.run_id))
        model = json.loads(Path(local).read_text()).get("model", "")
    except (MlflowException, OSError, ValueError):
        model = ""
    return MODEL_DIR_VARIANTS.get(Path(model).name, f"evaluate {run.info.run_id[:8]}")


def evaluations(client: Any, parent_run_id: str, dst: Path) -> dict[str, Evaluation]:
    """The evaluate step runs of a pipeline run, by variant (``dst``: where small artifacts are downloaded)."""
    merged: dict[str, dict[str, Any]] = {}
    for run in child_runs(client, parent_run_id):
        if run.data.tags.get("step") != "evaluate":
            continue
        variant = _variant_of(client, run, Path(dst))
        slot = merged.setdefault(variant, {"run_ids": [], "metrics": {}, "unavailable": {}, "params": {}})
        slot["run_ids"].append(run.info.run_id)
        slot["metrics"].update({k: v for k, v in run.data.metrics.items() if "/" in k})
        slot["unavailable"].update({k.removeprefix("unavailable/"): v for k, v in run.data.tags.items()
                                    if k.startswith("unavailable/")})
        slot["params"].update(run.data.params)
    return {k: Evaluation(k, tuple(v["run_ids"]), v["metrics"], v["unavailable"], v["params"])
            for k, v in merged.items()}


def _benchmark_metrics(ev: Evaluation, benchmark: str) -> set[str]:
    """Metric ids (``prefrestore.metrics.SPECS``) an evaluation logged or marked unavailable for ``benchmark``."""
    from prefrestore.metrics import SPECS

    logged = {k.split("/", 1)[1] for k in ev.metrics if k.startswith(f"{benchmark}/") and k.count("/") == 1}
    return {m for m in logged if m in SPECS} | ({m for m in ev.unavailable if m in SPECS} if logged else set())


def logged_benchmarks(evals: Mapping[str, Evaluation]) -> list[str]:
    """Benchmarks with metrics in any evaluation: the paper's (Tables II-VI order) first, then others."""
    from prefrestore.metrics import SPECS

    found = {k.split("/", 1)[0] for ev in evals.values() for k in ev.metrics
             if k.count("/") == 1 and k.split("/", 1)[1] in SPECS}
    return [b for b in paper_tables.BY_BENCHMARK if b in found] + sorted(found - set(paper_tables.BY_BENCHMARK))


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
    logged = {m for ev in ours.values() for m in _benchmark_metrics(ev, benchmark)}
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


# ------------------------------------------------------------------------------ caption ablation
def caption_setting(client: Any, parent_run_id: str) -> dict[str, Any]:
    """How a pipeline run used captions: training ``instructions.p_txt`` (stage-1 runs) and
    ``evaluate.use_captions``; ``arm`` is "with caption", "without caption", or None when mixed/unknown."""
    steps = step_runs(client, parent_run_id)
    p_txt = None
    for name in STAGE1_STEPS:
        if name in steps and "instructions.p_txt" in steps[name].data.params:
            p_txt = float(steps[name].data.params["instructions.p_txt"])
    use = {r.data.params.get("evaluate.use_captions") for r in child_runs(client, parent_run_id)
           if r.data.tags.get("step") == "evaluate"} - {None}
    use_captions = None if len(use) != 1 else use.pop() == "True"
    arm = None
    if p_txt is not None and use_captions is not None:
        arm = "with caption" if p_txt > 0 and use_captions else "without caption" if p_txt == 0 and not use_captions \
            else None
    return {"run_id": parent_run_id, "p_txt": p_txt, "use_captions": use_captions, "arm": arm}


def caption_pair(settings: pd.DataFrame) -> tuple[str, str]:
    """The newest run of each arm (``settings``: rows of :func:`caption_setting`, newest first)."""
    found = {}
    for _, row in settings.iterrows():
        if row["arm"] and row["arm"] not in found:
            found[row["arm"]] = row["run_id"]
    missing = [a for a in ("with caption", "without caption") if a not in found]
    if missing:
        raise NoData(f"Table VII needs a pipeline run of each arm; missing: {missing}. 'with caption' = trained "
                     "with instructions.p_txt > 0 and evaluated with evaluate.use_captions: true; 'without "
                     "caption' = p_txt 0 and use_captions false (or pass both run ids explicitly).")
    return found["with caption"], found["without caption"]


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


# ---------------------------------------------------------------------------------------- curves
def stage1_curves(client: Any, steps: Mapping[str, Any]) -> pd.DataFrame:
    """Fig. 3 data: the ``val/*`` curves of stage 1.1 then 1.2 on one step axis (1.2 offset by 1.1's last step)."""
    frames, offset = [], 0
    for stage in STAGE1_STEPS:
        run = steps.get(stage)
        if run is None:
            continue
        keys = sorted(k for k in run.data.metrics if k.startswith("val/"))
        last = 0
        for key in keys:
            hist = metric_history(client, run.info.run_id, key)
            if hist.empty:
                continue
            last = max(last, int(hist["step"].max()))
            frames.append(hist.assign(stage=stage, key=key, global_step=hist["step"] + offset))
        offset += last
    if not frames:
        raise NoData("no stage-1 validation curve: the stage1_1/stage1_2 runs logged no 'val/*' metrics "
                     "(validation.py logs them every stage1_*.validate_every steps and at the last step)")
    return pd.concat(frames, ignore_index=True)


def plot_stage1(curves: Mapping[str, pd.DataFrame]):
    """Fig. 3 view: FID(HQ) (when logged), PSNR and SSIM of restored vs. input, per run (label -> curves)."""
    panels = [("FID(HQ)↓", ("val/fid_hq",)), ("PSNR↑", ("val/psnr_restored", "val/psnr_input")),
              ("SSIM↑", ("val/ssim_restored", "val/ssim_input"))]
    fig, axes = _figure(len(panels))
    for ax, (title, keys) in zip(axes, panels, strict=True):
        drawn = 0
        for label, frame in curves.items():
            for key in keys:
                part = frame[frame["key"] == key].sort_values("global_step")
                if part.empty:
                    continue
                style = "--" if key.endswith("_input") else "-"
                ax.plot(part["global_step"], part["value"], style, marker="o", ms=3,
                        label=f"{label}: {key.removeprefix('val/')}")
                drawn += 1
            bound = frame[frame["stage"] == STAGE1_STEPS[0]]["global_step"]
            if not bound.empty and (frame["stage"] == STAGE1_STEPS[1]).any():
                ax.axvline(bound.max(), color="grey", lw=0.8, ls=":")
        if drawn:
            ax.legend(fontsize=7)
        else:
            flags = [f[f["key"] == "val/fid_hq_available"]["value"] for f in curves.values()]
            avail = [float(v.iloc[-1]) for v in flags if not v.empty]
            why = "unavailable: Inception weights not staged" if avail and max(avail) == 0 else "not logged"
            ax.text(0.5, 0.5, f"{title}\n{why}", ha="center", va="center", transform=ax.transAxes)
        ax.set_title(title)
        ax.set_xlabel("step (stage 1.1 | stage 1.2)")
        ax.grid(alpha=0.3)
    fig.suptitle("Stage-1 validation (Fig. 3 view)")
    return fig


def _keys(run: Any, prefix: str, suffix: str = "") -> list[str]:
    return sorted(k for k in run.data.metrics if k.startswith(prefix) and k.endswith(suffix))


def reward_curves(client: Any, stage2_runs: Mapping[str, Any]):
    """Fig. 6 view: the total training reward (left axis) and each reward term (right axis) per epoch."""
    runs = {k: r for k, r in stage2_runs.items() if r is not None and "reward/total_mean" in r.data.metrics}
    if not runs:
        raise NoData("no stage-2 reward curve: no stage2 run logged 'reward/total_mean' (train_stage2.py, per epoch)")
    fig, axes = _figure(len(runs), width=5.5)
    for ax, (label, run) in zip(axes, runs.items(), strict=True):
        total = metric_history(client, run.info.run_id, "reward/total_mean")
        ax.plot(total["step"], total["value"], color="purple", marker="o", ms=3, label="total reward")
        ax.set_ylabel("total reward")
        ax.set_xlabel("epoch (optimizer step)")
        right = ax.twinx()
        for key in _keys(run, "reward/", "_mean"):
            if key == "reward/total_mean":
                continue
            hist = metric_history(client, run.info.run_id, key)
            right.plot(hist["step"], hist["value"], ls="--", marker=".", label=key[len("reward/"):-len("_mean")])
        right.set_ylabel("reward terms")
        handles = ax.get_legend_handles_labels()
        more = right.get_legend_handles_labels()
        ax.legend(handles[0] + more[0], handles[1] + more[1], fontsize=7, loc="best")
        ax.set_title(label, fontsize=9)
        ax.grid(alpha=0.3)
    fig.suptitle("Stage-2 training rewards (Fig. 6 view)")
    return fig


def heldout_curves(client: Any, stage2_runs: Mapping[str, Any]):
    """Fig. 9 view: held-out total reward per epoch, the stage-1 model (epoch 0) dashed; PSNR/SSIM
    to HQ beside it (they must not collapse while the reward climbs: reward hacking, SPEC §6.8)."""
    runs = {k: r for k, r in stage2_runs.items() if r is not None and "heldout/reward_total" in r.data.metrics}
    if not runs:
        raise NoData("no held-out reward curve: no stage2 run logged 'heldout/reward_total' (train_stage2.py)")
    keys = ("heldout/reward_total", "heldout/psnr", "heldout/ssim")
    fig, axes = _figure(len(keys))
    for ax, key in zip(axes, keys, strict=True):
        for label, run in runs.items():
            hist = metric_history(client, run.info.run_id, key)
            if hist.empty:
                continue
            (line,) = ax.plot(hist["step"], hist["value"], marker="o", ms=3, label=label)
            start = hist[hist["step"] == 0]
            if not start.empty:
                ax.axhline(float(start["value"].iloc[0]), color=line.get_color(), ls="--", lw=0.8,
                           label=f"{label}: stage 1 (epoch 0)")
        ax.set_title(key)
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    quoted = ", ".join(f"{k} {v}" for k, v in PAPER_FIG9.items())
    fig.suptitle(f"Stage-2 held-out reward (Fig. 9 view). Paper, quoted (its reward scale): {quoted}", fontsize=9)
    return fig


# ----------------------------------------------------------------------------------- determinism
def determinism_spreads(client: Any, stage2_run: Any, dst: Path) -> dict[str, dict[str, list[float]]]:
    """Fig. 8 data from a stage-2 run: ``{"stage 1" | "stage 2": {score: per-image std over seeds}}``."""
    from mlflow.exceptions import MlflowException

    if stage2_run is None:
        raise NoData("no stage2 run in this pipeline run")
    try:
        local = client.download_artifacts(stage2_run.info.run_id, DETERMINISM_ARTIFACT, str(dst))
    except (MlflowException, OSError) as exc:
        raise NoData(f"stage2 run {stage2_run.info.run_id[:8]} has no '{DETERMINISM_ARTIFACT}' artifact "
                     f"(stage2.determinism_seeds = 0, or the run did not finish): {exc}") from None
    data = json.loads(Path(local).read_text())
    return {"stage 1": data["before"]["per_image_std"], "stage 2": data["after"]["per_image_std"]}


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


def determinism_boxplot(spreads: Mapping[str, Mapping[str, Sequence[float]]], title: str | None = None):
    """Fig. 8 view: one panel per score (the sum last), one box per model, median in each panel's title."""
    if not spreads:
        raise NoData("no determinism spreads to plot")
    common = set.intersection(*(set(s) for s in spreads.values()))
    names = sorted(common - {"sum"}) + (["sum"] if "sum" in common else [])
    if not names:
        raise NoData("the spreads share no score")
    fig, axes = _figure(len(names), width=3.2)
    models = list(spreads)
    for ax, name in zip(axes, names, strict=True):
        data = [list(spreads[m][name]) for m in models]
        ax.boxplot(data, showfliers=False)
        ax.set_xticks(range(1, len(models) + 1), models)
        meds = ", ".join(f"{pd.Series(d).median():.4g}" for d in data)
        ax.set_title(f"{name}\nmedian std: {meds}", fontsize=8)
        ax.set_ylabel("std over seeds")
        ax.grid(alpha=0.3, axis="y")
    fig.suptitle(title or "Score std over sampling seeds (Fig. 8 view)", fontsize=9)
    return fig


# -------------------------------------------------------------------------------------- registry
def _reasons(tags: Mapping[str, str]) -> str | None:
    """The gate's recorded reasons: every decision in ``gate.evidence``, else the ``gate.vs.*`` tags."""
    decisions = json.loads(tags["gate.evidence"]) if "gate.evidence" in tags else [
        json.loads(v) for k, v in sorted(tags.items()) if k.startswith("gate.vs.")]
    if not decisions:
        return None
    return " | ".join(
        f"vs {'champion v' + str(d['compared_to']) if d.get('compared_to') else 'floors only'}: "
        f"{'pass' if d['passed'] else 'FAIL'}: {d['reason']}" for d in decisions)


def registry_aliases(client: Any, model_names: Sequence[str]) -> pd.DataFrame:
    """Which version holds each alias of each registered model, with the gate's recorded verdict and reasons.

    A model not registered (or with no alias) gets one row that says so; nothing is inferred.
    """
    from mlflow.exceptions import MlflowException

    cols = ["model", "alias", "version", "decision", "outcome", "reasons", "eval_summary", "pipeline_run_id"]
    rows = []
    for name in model_names:
        try:
            model = client.get_registered_model(name)
        except MlflowException:
            rows.append({"model": name, "alias": None, "version": None, "decision": "not registered"})
            continue
        aliases = dict(model.aliases or {})
        if not aliases:
            rows.append({"model": name, "alias": None, "version": None, "decision": "no alias set"})
        for alias, version in sorted(aliases.items()):
            tags = client.get_model_version(name, str(version)).tags
            rows.append({
                "model": name, "alias": alias, "version": int(version),
                "decision": tags.get("gate.decision", "not recorded"),
                "outcome": tags.get("gate.outcome", "not recorded"),
                "reasons": _reasons(tags),
                "eval_summary": tags.get("eval_summary"),
                "pipeline_run_id": tags.get("pipeline_run_id"),
            })
    return pd.DataFrame(rows, columns=cols)


# ---------------------------------------------------------------------------------------- images
def image_artifacts(client: Any, run_id: str, path: str = "") -> list[str]:
    """Every image artifact path of a run under ``path`` (recursive), sorted."""
    out: list[str] = []
    for info in client.list_artifacts(run_id, path or None):
        if info.is_dir:
            out += image_artifacts(client, run_id, info.path)
        elif info.path.lower().endswith(IMAGE_SUFFIXES):
            out.append(info.path)
    return sorted(out)


def sample_grids(client: Any, steps: Mapping[str, Any], evals: Mapping[str, Evaluation], dst: Path
                 ) -> list[tuple[str, Path]]:
    """The newest logged sample grid of each producer, downloaded: (title, local path).

    Stage-1 validation grids (``validation/step-*.png``: LQ | restored | HQ), the stage-2 held-out
    grid (``validation/epoch-*.png``: LQ | stage 1 | now | HQ), each benchmark's evaluation grid
    (``evaluate/<benchmark>/grid.png``) and the stage-2 determinism box plot.
    """
    wanted: list[tuple[str, str, str]] = []  # (title, run id, artifact path)
    for stage in (*STAGE1_STEPS, "stage2"):
        run = steps.get(stage)
        if run is None:
            continue
        grids = [p for p in image_artifacts(client, run.info.run_id, "validation")]
        if grids:
            wanted.append((f"{stage}: {grids[-1]}", run.info.run_id, grids[-1]))
        if stage == "stage2":
            wanted += [(f"stage2: {p}", run.info.run_id, p) for p in image_artifacts(client, run.info.run_id,
                                                                                      "determinism")]
    for variant, ev in evals.items():
        for rid in ev.run_ids:
            wanted += [(f"evaluate {variant}: {p}", rid, p) for p in image_artifacts(client, rid, "evaluate")
                       if p.endswith("/grid.png")]
    if not wanted:
        raise NoData("no image artifacts: validation grids (stage1_*/stage2), evaluate/<benchmark>/grid.png")
    out = []
    for title, rid, path in wanted:
        local = client.download_artifacts(rid, path, str(Path(dst) / rid))
        out.append((title, Path(local)))
    return out


def image_grid(items: Sequence[tuple[str, Path]], width: float = 9.0):
    """The images one below the other, each with its title (sample grids are wide: keep them full-width)."""
    from matplotlib.figure import Figure
    from PIL import Image

    if not items:
        raise NoData("no images to show")
    imgs = [Image.open(p).convert("RGB") for _, p in items]
    heights = [width * im.height / im.width + 0.4 for im in imgs]
    fig = Figure(figsize=(width, sum(heights)), layout="constrained")
    axes = fig.subplots(len(imgs), 1, squeeze=False, height_ratios=heights)[:, 0]
    for ax, (title, _), im in zip(axes, items, imgs, strict=True):
        ax.imshow(im)
        ax.set_title(title, fontsize=8)
        ax.axis("off")
    return fig
