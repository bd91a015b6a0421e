"""Reviewer helpers: turn tracked MLflow runs into the paper's views.

The notebook ``notebooks/compare_experiments.ipynb`` only calls these functions. This module reads
the store (runs, evaluations, the caption and determinism arms, the registry, image artifacts);
:mod:`prefrestore.registry.review_tables` lays out the tables and
:mod:`prefrestore.registry.review_figures` draws the figures from what it returns. Each takes an
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
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from prefrestore.core.variants import MODEL_DIR_VARIANTS
from prefrestore.evaluation import paper_tables

NOT_MEASURED = "—"  # a metric the run did not log
UNAVAILABLE = "unavailable"  # a metric the run logged as unavailable (weights missing)
STAGE1_STEPS = ("stage1_1", "stage1_2")
DETERMINISM_ARTIFACT = "determinism/determinism.json"  # train_stage2.DETERMINISM_FILE under "determinism"
EVAL_ARTIFACT = "evaluate/metrics.json"  # evaluate.run's summary, logged under "evaluate"
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")


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


def benchmark_metrics(ev: Evaluation, benchmark: str) -> set[str]:
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
