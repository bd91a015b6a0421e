"""The register step: log both variants as MLflow pyfunc models, register them, gate, promote.

``run(params, inputs={"fidelity": dir, "quality": dir, "reports": dir}, out)``:

1. For each variant (``fidelity`` = stage-1 output, ``quality`` = stage-2 output; SPEC.md §4) read
   ``reports/eval_<variant>/metrics.json`` and fingerprint the candidate (model bytes + metrics).
   A registry version that already carries that ``candidate_key`` tag is reused: re-running the
   step registers nothing new.
2. Otherwise log a :class:`~prefrestore.registry.pyfunc.PrefRestorePyfunc` (artifact: the model
   directory, signature, input example) in the step's MLflow run and register it under
   ``register.models[variant]`` with provenance tags (git SHA, data hash, dvc.lock hash, pipeline
   run id, profile, resolved config, evaluation summary), and point the ``challenger`` alias at it.
3. :func:`promote` gates it against the current ``champion`` (:mod:`prefrestore.registry.gates`) and moves
   the alias when it passes.
4. Write ``out/<variant>/decision.json`` and ``out/<variant>/MODEL_CARD.md`` (also logged as
   artifacts of the version's run), ``out/decision.json`` (both variants), and print how to
   restore an image with the champion.

Promotion under concurrency (:func:`promote`)
---------------------------------------------
MLflow's registry has no compare-and-set on aliases and its database is not reachable through the
API, so the guarantee is built from the registry alone:

- Every decision is recorded *before* the alias moves, as a tag on the candidate version:
  ``gate.vs.<champion version>`` (``gate.vs.none`` without a champion) holding the JSON evidence.
  A recorded decision is never changed (re-runs reuse it instead of re-deciding).
- Who must be champion is a pure function of the recorded decisions and the recorded evaluation
  summaries, :func:`prefrestore.registry.gates.resolve_champion`: follow the chain of passing
  decisions from "no champion", always taking the best (on the gate's ``rank`` metric; version
  number breaks ties) of the versions that beat the current one. Two candidates that both beat the
  same champion are therefore resolved deterministically, and the better one wins.
- A tolerated loss is measured against the champion and against the chain's first champion (the
  anchor, :func:`prefrestore.registry.gates.decide`), so a run of small losses stops at the tolerance.
- Each promoter then *settles*: read all decisions and the alias; if the alias differs from the
  resolved champion, set it and read again; stop when a read finds them equal.
- Compare-and-set: after gating, a promoter re-reads the alias and records its decision only if
  the champion is still the one it compared against; otherwise it gates again against the new
  champion (up to ``register.max_promotion_rounds`` times, the last decision being recorded
  whatever). What remains is the instant between that re-read and the tag write: candidates that
  record passes against the same champion there are resolved by the rank metric (the best wins;
  the others end ``superseded`` with their evidence kept, and are not gated again).
- After settling, every promoter sweeps the ``gate.outcome`` tags: a version tagged ``champion``
  that no longer holds the alias becomes ``superseded``, so the tags never name two champions.

Guarantee: when all promoters have returned, the alias points at ``resolve_champion(all decisions)``.
Proof sketch: consider the last settling read that found the alias correct. Any alias write after
it would be followed by its writer's own settling read, later still, so there is none. Every
decision was recorded before its promoter's final settling read, hence before that last read,
which therefore saw all of them. So the final alias is the resolved champion: one winner, every
decision (winners' and losers') recorded with its evidence, whatever the interleaving. A promoter
killed mid-way leaves at most a stale alias that the next run (or any other promoter) corrects.
The alias is owned by the gate: moving it by hand is undone by the next promotion; record a
decision instead.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import os
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from prefrestore.core import atomic, integrity, tracking
from prefrestore.core.config import PROJECT_ROOT, Params, as_dict, check_range
from prefrestore.core.images import ImageLimits
from prefrestore.registry import gates, model_card
from prefrestore.registry import pyfunc as pyfunc_model
from prefrestore.registry.gates import VariantGate

VARIANTS = ("fidelity", "quality")

# Version tags (the registry is the record; these names are the schema).
TAG_CANDIDATE = "candidate_key"
TAG_DUPLICATE = "duplicate_of"
TAG_EVAL = "eval_summary"
TAG_DECISION_PREFIX = "gate.vs."
TAG_DECISION = "gate.decision"
TAG_EVIDENCE = "gate.evidence"
TAG_OUTCOME = "gate.outcome"


@dataclasses.dataclass(frozen=True)
class RegisterConfig:
    models: Mapping[str, str]  # variant -> registered model name
    champion_alias: str  # alias of the serving model of a variant
    challenger_alias: str  # alias of the latest registered candidate
    gates: Mapping[str, VariantGate]  # variant -> promotion gate (rules vs champion + floors)
    max_promotion_rounds: int  # re-gates of one candidate when the champion moves under it
    max_settle_rounds: int  # alias write/read rounds before settling gives up (concurrency)
    default_seed: int  # sampling seed of `prefrestore restore` and the pyfunc when none is given
    max_aspect: float  # restore refuses photos whose side ratio exceeds this (no face detector)
    batch_size: int  # faces per restore call (pyfunc predict and `prefrestore restore`)
    starting_weights: str  # what the model was initialised from, with licences (model card)

    def __post_init__(self) -> None:
        for what, mapping in (("models", self.models), ("gates", self.gates)):
            if set(mapping) != set(VARIANTS):
                raise ValueError(f"register.{what} must name exactly the variants {list(VARIANTS)}")
        if len(set(self.models.values())) != len(VARIANTS):
            raise ValueError("register.models: each variant needs its own registered model name")
        if not self.champion_alias or self.champion_alias == self.challenger_alias:
            raise ValueError("register: champion and challenger aliases must be distinct and non-empty")
        check_range("register.max_promotion_rounds", self.max_promotion_rounds, 1, 100)
        check_range("register.max_settle_rounds", self.max_settle_rounds, 2, 1000)
        check_range("register.max_aspect", self.max_aspect, 1.0, 10.0)
        check_range("register.batch_size", self.batch_size, 1, 4096)
        check_range("register.default_seed", self.default_seed, 0, 2**31 - 1)


@dataclasses.dataclass(frozen=True)
class PromotionResult:
    version: int
    champion: int | None  # the champion after this promotion settled
    outcome: str  # "champion", "rejected" or "superseded"
    decisions: tuple[dict[str, Any], ...]  # every decision made or reused, with evidence


# ---------------------------------------------------------------------------------------------
# Registry reads
# ---------------------------------------------------------------------------------------------


def all_versions(client: Any, name: str) -> list[Any]:
    """Every version of a registered model, with its tags (fresh read, paginated)."""
    out: list[Any] = []
    token = None
    while True:
        page = client.search_model_versions(f"name = '{name}'", max_results=1000, page_token=token)
        out.extend(page)
        token = page.token
        if not token:
            return sorted(out, key=lambda v: int(v.version))


def alias_version(client: Any, name: str, alias: str) -> int | None:
    aliases = client.get_registered_model(name).aliases or {}
    return int(aliases[alias]) if alias in aliases else None


def version_metrics(version: Any) -> dict[str, float | str]:
    """The evaluation summary recorded on a version at registration."""
    if TAG_EVAL not in version.tags:
        raise ValueError(f"{version.name} v{version.version} has no '{TAG_EVAL}' tag: not registered by this step")
    return gates.validate_metrics(json.loads(version.tags[TAG_EVAL]), f"{version.name} v{version.version}")


def rank_scores(versions: list[Any], gate: VariantGate) -> dict[int, float]:
    """Every version's gate-metric score (:func:`gates.rank_score`) from its recorded evaluation summary."""
    out: dict[int, float] = {}
    for v in versions:
        if TAG_EVAL in v.tags:
            out[int(v.version)] = gates.rank_score(gate, json.loads(v.tags[TAG_EVAL]))
    return out


def chain(versions: list[Any], gate: VariantGate) -> list[int]:
    """The resolved champion chain (first champion first) of these versions' recorded decisions."""
    return gates.champion_chain(recorded_passes(versions), rank_scores(versions, gate))


def recorded_passes(versions: list[Any]) -> list[tuple[int, int | None]]:
    """``(version, compared_to)`` for every recorded passing decision (duplicates excluded)."""
    out: list[tuple[int, int | None]] = []
    for v in versions:
        if TAG_DUPLICATE in v.tags:
            continue
        for key, value in v.tags.items():
            if key.startswith(TAG_DECISION_PREFIX) and json.loads(value)["passed"]:
                against = key.removeprefix(TAG_DECISION_PREFIX)
                out.append((int(v.version), None if against == "none" else int(against)))
    return out


def settle(client: Any, name: str, alias: str, max_rounds: int, gate: VariantGate) -> int | None:
    """Make the alias equal to the champion resolved from the recorded decisions; see the module doc.

    Returns the champion confirmed by the final read. Raises ``RuntimeError`` if the registry keeps
    changing for ``max_rounds`` rounds (it cannot, unless something outside the gate moves the alias).
    """
    from mlflow.exceptions import MlflowException

    last_error: Exception | None = None
    for _ in range(max_rounds):
        resolved = chain(all_versions(client, name), gate)
        target = resolved[-1] if resolved else None
        current = alias_version(client, name, alias)
        if target is None or current == target:
            return current
        try:
            client.set_registered_model_alias(name, alias, str(target))
        except MlflowException as exc:  # a concurrent first write of the alias won (unique key): re-read
            last_error = exc
    raise RuntimeError(f"{name}: alias '{alias}' did not settle in {max_rounds} rounds (last error: {last_error})")


# ---------------------------------------------------------------------------------------------
# Promotion
# ---------------------------------------------------------------------------------------------


def promote(
    client: Any,
    name: str,
    version: int,
    metrics: Mapping[str, float | str],
    gate: VariantGate,
    cfg: RegisterConfig,
) -> PromotionResult:
    """Gate ``version`` against the current champion and move the champion alias if it passes.

    Safe to run concurrently for different versions of the same model and to re-run for the same
    version (the module docstring states the guarantee). Tags the version with every decision
    (``gate.vs.<champion>``), the latest verdict (``gate.decision``), the evidence and the outcome.
    """
    alias = cfg.champion_alias
    recorded = client.get_model_version(name, str(version)).tags
    if TAG_OUTCOME in recorded:  # promoted before (a re-run): report the recorded evidence, never re-decide
        decisions: list[dict[str, Any]] = json.loads(recorded.get(TAG_EVIDENCE, "[]"))
        final = settle(client, name, alias, cfg.max_settle_rounds, gate)
    else:
        decisions = []
        for _ in range(cfg.max_promotion_rounds):
            decisions += _gate_with_cas(client, name, version, metrics, gate, cfg)
            final = settle(client, name, alias, cfg.max_settle_rounds, gate)
            if not _gate_again(client, name, version, final, decisions, gate):
                break
    latest = decisions[-1] if decisions else None
    if final == version:
        outcome = "champion"
    elif latest is not None and latest["passed"]:
        outcome = "superseded"
    else:
        outcome = "rejected"
    if latest is not None:
        client.set_model_version_tag(name, str(version), TAG_DECISION, "pass" if latest["passed"] else "fail")
        client.set_model_version_tag(name, str(version), TAG_EVIDENCE, json.dumps(decisions, sort_keys=True))
    client.set_model_version_tag(name, str(version), TAG_OUTCOME, outcome)
    sweep_outcomes(client, name, alias)
    return PromotionResult(version, final, outcome, tuple(decisions))


def _gate_again(client: Any, name: str, version: int, final: int | None, decisions: list[dict[str, Any]],
                gate: VariantGate) -> bool:
    """A passing candidate that another promotion's chain left behind, but that ranks above the
    champion it ended under, is gated against that champion too: the better model must not lose
    the race to the order in which decisions were recorded."""
    if final is None or final == version or not decisions or not decisions[-1]["passed"]:
        return False
    if decisions[-1]["compared_to"] == str(final):
        return False  # already decided against this champion
    scores = rank_scores([client.get_model_version(name, str(v)) for v in (version, final)], gate)
    return scores.get(version, -float("inf")) > scores.get(final, -float("inf"))


def sweep_outcomes(client: Any, name: str, alias: str) -> None:
    """Retag versions that say ``champion`` but no longer hold the alias as ``superseded``
    (after this promoter's own writes, so the last sweep of all sees every one of them)."""
    holder = alias_version(client, name, alias)
    for v in all_versions(client, name):
        if v.tags.get(TAG_OUTCOME) == "champion" and int(v.version) != holder:
            client.set_model_version_tag(name, str(v.version), TAG_OUTCOME, "superseded")


def _gate_with_cas(
    client: Any,
    name: str,
    version: int,
    metrics: Mapping[str, float | str],
    gate: VariantGate,
    cfg: RegisterConfig,
) -> list[dict[str, Any]]:
    """Gate against the champion and record the decision if the champion did not move meanwhile."""
    alias = cfg.champion_alias
    for attempt in range(cfg.max_promotion_rounds):
        champ = alias_version(client, name, alias)
        if champ == version:
            return []
        key = f"{TAG_DECISION_PREFIX}{champ if champ is not None else 'none'}"
        tags = client.get_model_version(name, str(version)).tags
        if key in tags:  # decided against this champion before (an interrupted run): reuse it
            return [json.loads(tags[key])]
        champ_metrics = version_metrics(client.get_model_version(name, str(champ))) if champ else None
        first = chain(all_versions(client, name), gate)[:1]  # the anchor of tolerated losses
        anchor = version_metrics(client.get_model_version(name, str(first[0]))) \
            if first and champ is not None and first[0] != champ else None
        decision = gates.decide(gate, metrics, champ_metrics, str(champ) if champ else None, anchor)
        last = attempt == cfg.max_promotion_rounds - 1
        if alias_version(client, name, alias) != champ and not last:
            continue  # compare-and-set failed: the champion moved while we gated; gate again
        client.set_model_version_tag(name, str(version), key, decision.to_json())
        return [decision.to_dict()]
    raise AssertionError("unreachable: the last round always records")


# ---------------------------------------------------------------------------------------------
# Registration
# ---------------------------------------------------------------------------------------------


def candidate_key(variant: str, model_digest: str, metrics: Mapping[str, float | str]) -> str:
    payload = json.dumps({"variant": variant, "model": model_digest, "metrics": dict(metrics)}, sort_keys=True)
    return hashlib.sha256(payload.encode()).hexdigest()[:24]


def find_candidate(client: Any, name: str, key: str) -> int | None:
    """The registered version carrying ``candidate_key`` (the lowest, if a race made several)."""
    try:
        versions = all_versions(client, name)
    except Exception as exc:  # the registered model does not exist yet
        if "RESOURCE_DOES_NOT_EXIST" in str(getattr(exc, "error_code", "")):
            return None
        raise
    hits = [int(v.version) for v in versions if v.tags.get(TAG_CANDIDATE) == key and TAG_DUPLICATE not in v.tags]
    return min(hits) if hits else None


def read_metrics(reports: Path, variant: str) -> dict[str, float | str]:
    path = Path(reports) / f"eval_{variant}" / "metrics.json"
    if not path.is_file():
        raise FileNotFoundError(f"evaluation summary for '{variant}' not found: {path} (run `prefrestore evaluate`)")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path}: not valid JSON ({exc})") from None
    if isinstance(data, dict) and isinstance(data.get("benchmarks"), dict):
        data = flatten_evaluation(data)
    return gates.validate_metrics(data, str(path))


def flatten_evaluation(summary: Mapping[str, Any]) -> dict[str, float | str]:
    """``evaluate``'s nested summary as ``<benchmark>/<metric>`` -> value, or "unavailable".

    A metric the evaluation could not compute (its value is a reason string) stays
    "unavailable", so a gate on it fails; it is never turned into a number.
    """
    flat: dict[str, float | str] = {}
    for bench, result in summary["benchmarks"].items():
        for metric, value in result["restored"].items():
            ok = isinstance(value, int | float) and not isinstance(value, bool)
            flat[f"{bench}/{metric}"] = float(value) if ok else "unavailable"
    return flat


def provenance(params: Params, inputs: Mapping[str, Path]) -> dict[str, str]:
    """Tags shared by both variants: where the candidate came from."""
    import mlflow

    run = mlflow.active_run()
    run_tags = mlflow.get_run(run.info.run_id).data.tags if run else {}
    lock = PROJECT_ROOT / "dvc.lock"
    return {
        "git_sha": run_tags.get("git_sha") or tracking.git_sha(),
        "data_hash": run_tags.get("data_hash") or tracking.tree_digest([Path(p) for p in inputs.values()]),
        "dvc_lock_sha256": hashlib.sha256(lock.read_bytes()).hexdigest()[:16] if lock.is_file() else "none",
        "pipeline_run_id": os.environ.get(tracking.PARENT_ENV) or run_tags.get("mlflow.parentRunId") or "none",
        "source_run_id": run.info.run_id if run else "none",
        "profile": params.profile,
    }


def register_candidate(
    client: Any,
    cfg: RegisterConfig,
    variant: str,
    model_dir: Path,
    metrics: Mapping[str, float | str],
    tags: Mapping[str, str],
    loader: pyfunc_model.Loader,
    limits: ImageLimits,
) -> tuple[int, bool]:
    """Log and register one candidate, or find it already registered. Returns (version, created)."""
    import mlflow

    name = cfg.models[variant]
    digest = integrity.dir_digest(model_dir)
    key = candidate_key(variant, digest, metrics)
    existing = find_candidate(client, name, key)
    if existing is not None:
        return existing, False
    requirements = [f"mlflow=={mlflow.__version__}", "prefrestore", "torch", "numpy", "pandas", "pillow"]
    with tempfile.TemporaryDirectory(prefix="prefrestore-register-") as staging:
        staged = pyfunc_model.stage_model_dir(Path(model_dir), Path(staging))
        config = pyfunc_model.model_config(variant, cfg.default_seed, cfg.max_aspect, limits.max_pixels, limits.min_side,
                                           cfg.batch_size, staged, loader)
        info = pyfunc_model.log_pyfunc(variant, staged, config, requirements)
    version_tags = {
        **tags,
        TAG_CANDIDATE: key,
        "variant": variant,
        "model_digest": digest,
        TAG_EVAL: json.dumps(dict(metrics), sort_keys=True),
        **{f"eval.{k}": str(v) for k, v in metrics.items()},
    }
    mv = mlflow.register_model(info.model_uri, name, tags=version_tags)
    version = int(mv.version)
    # Two re-runs racing on the same candidate: the lowest version is canonical, others are marked.
    canonical = find_candidate(client, name, key)
    if canonical is not None and canonical != version:
        client.set_model_version_tag(name, str(version), TAG_DUPLICATE, str(canonical))
        return canonical, False
    client.set_registered_model_alias(name, cfg.challenger_alias, str(version))
    return version, True


# ---------------------------------------------------------------------------------------------
# The step
# ---------------------------------------------------------------------------------------------


def restore_hint(cfg: RegisterConfig, variant: str) -> str:
    uri = f"models:/{cfg.models[variant]}@{cfg.champion_alias}"
    return (
        f"prefrestore restore face.png --variant {variant} --model {uri} --out restored/\n"
        f"  # or in Python: mlflow.pyfunc.load_model('{uri}').predict(pandas.DataFrame({{'image': [base64_png]}}))"
    )


def run(
    params: Params,
    inputs: Mapping[str, Path],
    out: Path,
    *,
    loader: pyfunc_model.Loader = pyfunc_model.load_restorer,
) -> dict[str, Any]:
    """Register, gate and promote both variants; see the module docstring. ``loader`` is for tests."""
    import mlflow
    from mlflow import MlflowClient

    cfg = params.section("register", RegisterConfig)
    limits = params.section("image_limits", ImageLimits)
    missing = [k for k in (*VARIANTS, "reports") if k not in inputs]
    if missing:
        raise ValueError(f"register: missing inputs {missing}")
    metrics = {v: read_metrics(Path(inputs["reports"]), v) for v in VARIANTS}  # fail before any write
    for v in VARIANTS:
        integrity.dir_digest(Path(inputs[v]))  # an empty or missing model directory is an error up front
    out = Path(out)
    mlflow.set_tracking_uri(tracking.tracking_uri())
    client = MlflowClient(tracking_uri=tracking.tracking_uri())
    own_run: contextlib.AbstractContextManager[Any] = contextlib.nullcontext()
    if mlflow.active_run() is None:  # called outside `prefrestore register` (tests, notebooks)
        exp_id = tracking._ensure_experiment(
            mlflow, os.environ.get(tracking.EXPERIMENT_ENV, tracking.DEFAULT_EXPERIMENT))
        own_run = mlflow.start_run(experiment_id=exp_id, run_name="register", tags={"step": "register"})
    summary: dict[str, Any] = {}
    decisions: dict[str, Any] = {}
    with own_run:
        tags = provenance(params, inputs)
        tags["config"] = json.dumps(as_dict(cfg), sort_keys=True)
        for variant in VARIANTS:
            name = cfg.models[variant]
            version, created = register_candidate(
                client, cfg, variant, Path(inputs[variant]), metrics[variant], tags, loader, limits)
            result = promote(client, name, version, metrics[variant], cfg.gates[variant], cfg)
            mv = client.get_model_version(name, str(version))
            record = {
                "variant": variant,
                "registered_model": name,
                "version": version,
                "newly_registered": created,
                "candidate_key": mv.tags[TAG_CANDIDATE],
                "champion_after": result.champion,
                "outcome": result.outcome,
                "promoted": result.outcome == "champion",
                "decisions": list(result.decisions),
                "model_uri": f"models:/{name}/{version}",
                "champion_uri": f"models:/{name}@{cfg.champion_alias}",
                "provenance": {k: mv.tags.get(k, "none") for k in (*provenance_keys(), "model_digest")},
            }
            card = model_card.render(model_card.CardInputs(
                variant=variant, registered_model=name, version=version, outcome=result.outcome,
                champion=result.champion, metrics=metrics[variant], decisions=list(result.decisions),
                provenance=record["provenance"], model_config=model_card.read_model_config(Path(inputs[variant])),
                recipe={s: params.tree[s] for s in model_card.RECIPE_SECTIONS if s in params.tree},
                starting_weights=cfg.starting_weights, restore_hint=restore_hint(cfg, variant),
            ))
            atomic.write_json(out / variant / "decision.json", record)
            atomic.write_text(out / variant / "MODEL_CARD.md", card)
            if mv.run_id:
                client.log_artifacts(mv.run_id, str(out / variant), f"register/{variant}/v{version}")
            decisions[variant] = record
            summary[f"{variant}_version"] = version
            summary[f"{variant}_promoted"] = int(record["promoted"])
            summary[f"{variant}_champion"] = result.champion if result.champion is not None else -1
        summary["promoted"] = int(any(d["promoted"] for d in decisions.values()))
        atomic.write_json(out / "decision.json", decisions)
    for variant in VARIANTS:
        print(f"[register] {variant}: v{decisions[variant]['version']} {decisions[variant]['outcome']}; "
              f"restore with the champion:\n  {restore_hint(cfg, variant)}")
    return summary


def provenance_keys() -> tuple[str, ...]:
    return ("git_sha", "data_hash", "dvc_lock_sha256", "pipeline_run_id", "source_run_id", "profile")
