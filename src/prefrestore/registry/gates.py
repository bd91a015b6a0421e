"""Promotion gates: pure functions that decide whether a candidate model may become champion.

A gate compares a candidate's evaluation metrics (the evaluate step's flat ``metrics.json``:
``"<benchmark>/<metric>" -> float`` or the string ``"unavailable"``) with those of the current
champion of the same variant, metric by metric, in the direction each metric improves:

- a **rule** ``(metric, direction, min_delta)`` passes when the candidate's improvement over the
  champion, measured in the metric's direction, is at least ``min_delta``. ``min_delta < 0`` is a
  tolerated loss (e.g. the quality variant may lose at most 0.25 LMD), ``min_delta = 0`` means
  "improve or hold", ``min_delta > 0`` demands a real gain;
- a **floor** ``(metric, direction, bound)`` is an absolute bar (e.g. Deg <= 60 degrees). Floors
  always apply; they are all that is checked when there is no champion yet.

A metric that is missing, ``"unavailable"`` or not finite on either side makes its check fail:
a gate never passes on evidence it does not have.

:func:`resolve_champion` turns the decisions recorded in the registry into the one version that
must hold the champion alias; ``register.promote`` uses it to make concurrent promotions converge.
When several candidates pass against the same champion, the best on the gate's ``rank`` metric
wins (version number breaks ties only). A tolerated loss is measured against the current champion
and against the first champion of the chain (the anchor), so losses cannot compound.
Nothing here touches MLflow.
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Iterable, Mapping
from typing import Any, Literal

UNAVAILABLE = "unavailable"

Direction = Literal["up", "down"]
Metrics = Mapping[str, "float | str"]


@dataclasses.dataclass(frozen=True)
class GateRule:
    """Compare the candidate with the champion on one metric."""

    metric: str  # "<benchmark>/<metric>", as in the evaluate step's metrics.json
    direction: Direction  # "up": higher is better; "down": lower is better
    min_delta: float  # least improvement over the champion in that direction (negative: tolerated loss)

    def __post_init__(self) -> None:
        _check_metric_name(self.metric)


@dataclasses.dataclass(frozen=True)
class Floor:
    """An absolute bar on one metric; the only test for the first champion of a variant."""

    metric: str  # "<benchmark>/<metric>"
    direction: Direction  # "up": value must be >= bound; "down": value must be <= bound
    bound: float  # the bar

    def __post_init__(self) -> None:
        _check_metric_name(self.metric)
        if not math.isfinite(self.bound):
            raise ValueError(f"floor on {self.metric}: bound must be finite, got {self.bound}")


@dataclasses.dataclass(frozen=True)
class Rank:
    """The gate metric: among candidates that pass against the same champion, the best on it wins."""

    metric: str  # "<benchmark>/<metric>"
    direction: Direction  # "up": higher is better; "down": lower is better

    def __post_init__(self) -> None:
        _check_metric_name(self.metric)


@dataclasses.dataclass(frozen=True)
class VariantGate:
    """The gate of one model variant (``fidelity`` or ``quality``)."""

    rules: tuple[GateRule, ...]  # comparisons with the current champion (a tolerated loss also with the anchor)
    floors: tuple[Floor, ...]  # absolute bars, always applied
    rank: Rank  # orders candidates that pass against the same champion

    def __post_init__(self) -> None:
        if not self.rules or not self.floors:
            raise ValueError("a gate needs at least one rule and one floor (an empty gate passes anything)")


@dataclasses.dataclass(frozen=True)
class Check:
    """The evidence for one rule or floor: the numbers compared and the outcome."""

    kind: Literal["rule", "anchor", "floor"]  # anchor: a tolerated loss measured against the first champion
    metric: str
    direction: Direction
    candidate: float | str | None  # the candidate's value ("unavailable" / None when absent)
    reference: float | str | None  # the champion's value (rule) or the bound (floor)
    threshold: float  # min_delta (rule) or bound (floor)
    passed: bool
    reason: str


@dataclasses.dataclass(frozen=True)
class Decision:
    """A gate's verdict for one candidate against one champion (``None``: floors only)."""

    passed: bool
    compared_to: str | None  # champion version compared against; None when there was no champion
    checks: tuple[Check, ...]

    @property
    def reason(self) -> str:
        failed = [c.reason for c in self.checks if not c.passed]
        if failed:
            return "; ".join(failed)
        against = f"champion v{self.compared_to}" if self.compared_to else "the absolute floors (no champion)"
        return f"all {len(self.checks)} checks passed against {against}"

    def to_dict(self) -> dict[str, Any]:
        return {
            "passed": self.passed,
            "compared_to": self.compared_to,
            "reason": self.reason,
            "checks": [dataclasses.asdict(c) for c in self.checks],
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True, allow_nan=False, default=str)


def _check_metric_name(name: str) -> None:
    if name.count("/") != 1 or not all(name.split("/")):
        raise ValueError(f"metric name {name!r} must be '<benchmark>/<metric>'")


def validate_metrics(metrics: Mapping[str, Any], where: str) -> dict[str, float | str]:
    """Check an evaluation summary: names ``<benchmark>/<metric>``, values numbers or ``"unavailable"``."""
    if not isinstance(metrics, Mapping) or not metrics:
        raise ValueError(f"{where}: expected a non-empty mapping of '<benchmark>/<metric>' -> value")
    out: dict[str, float | str] = {}
    for name, value in metrics.items():
        try:
            _check_metric_name(name)
        except ValueError as exc:
            raise ValueError(f"{where}: {exc}") from None
        if value == UNAVAILABLE:
            out[name] = UNAVAILABLE
        elif isinstance(value, int | float) and not isinstance(value, bool):
            out[name] = float(value)
        else:
            raise ValueError(f"{where}: {name} = {value!r} is neither a number nor '{UNAVAILABLE}'")
    return out


def metric_value(metrics: Metrics | None, name: str) -> float | None:
    """The finite float value of ``name``, or ``None`` when it is missing, unavailable or not finite."""
    if metrics is None:
        return None
    value = metrics.get(name)
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        return None
    return float(value)


def _shown(metrics: Metrics | None, name: str) -> float | str | None:
    if metrics is None or name not in metrics:
        return None
    value = metrics[name]
    return value if isinstance(value, str) else float(value)


def check_floor(floor: Floor, candidate: Metrics) -> Check:
    value = metric_value(candidate, floor.metric)
    shown = _shown(candidate, floor.metric)
    if value is None:
        ok, why = False, f"{floor.metric}: candidate value is {shown!r}, a floor cannot pass without it"
    else:
        ok = value >= floor.bound if floor.direction == "up" else value <= floor.bound
        op = ">=" if floor.direction == "up" else "<="
        why = f"{floor.metric}: {value:.6g} {op} {floor.bound:.6g} is {ok}"
    return Check("floor", floor.metric, floor.direction, shown, floor.bound, floor.bound, ok, why)


def check_rule(rule: GateRule, candidate: Metrics, champion: Metrics, kind: Literal["rule", "anchor"] = "rule") -> Check:
    cand, champ = metric_value(candidate, rule.metric), metric_value(champion, rule.metric)
    who = "champion" if kind == "rule" else "anchor"
    shown_c, shown_ch = _shown(candidate, rule.metric), _shown(champion, rule.metric)
    if cand is None or champ is None:
        side = "candidate" if cand is None else who
        value = shown_c if cand is None else shown_ch
        ok, why = False, f"{rule.metric}: {side} value is {value!r}, the comparison cannot pass without it"
    else:
        gain = cand - champ if rule.direction == "up" else champ - cand
        ok = gain >= rule.min_delta
        why = (f"{rule.metric} ({rule.direction}): candidate {cand:.6g} vs {who} {champ:.6g}, "
               f"improvement {gain:+.6g} >= {rule.min_delta:+.6g} is {ok}")
    return Check(kind, rule.metric, rule.direction, shown_c, shown_ch, rule.min_delta, ok, why)


def decide(
    gate: VariantGate,
    candidate: Metrics,
    champion: Metrics | None,
    champion_version: str | None,
    anchor: Metrics | None = None,
) -> Decision:
    """Gate ``candidate`` against the champion's metrics (``None``: no champion, floors only).

    Floors always apply; with a champion every rule applies too. A rule that tolerates a loss
    (``min_delta < 0``) is also measured against ``anchor``, the first champion of the chain, so a
    run of small losses cannot walk the champion down: each step may lose up to the tolerance
    against its champion, and all of them together at most the tolerance against the anchor.
    (A rule with ``min_delta >= 0`` needs no anchor: every hand-over held or improved it.)
    All checks must pass.
    """
    if (champion is None) != (champion_version is None):
        raise ValueError("champion metrics and champion version must be given together")
    checks = [check_floor(f, candidate) for f in gate.floors]
    if champion is not None:
        checks += [check_rule(r, candidate, champion) for r in gate.rules]
        if anchor is not None:
            checks += [check_rule(r, candidate, anchor, "anchor") for r in gate.rules if r.min_delta < 0]
    return Decision(all(c.passed for c in checks), champion_version, tuple(checks))


def rank_score(gate: VariantGate, metrics: Metrics | None) -> float:
    """The gate metric, oriented so that higher is better; ``-inf`` when it is missing or unavailable."""
    value = metric_value(metrics, gate.rank.metric)
    if value is None:
        return -math.inf
    return value if gate.rank.direction == "up" else -value


def champion_chain(passes: Iterable[tuple[int, int | None]], score: Mapping[int, float] | None = None) -> list[int]:
    """The chain of justified hand-overs, first champion first, given every recorded *passing* decision.

    ``passes`` holds ``(candidate_version, compared_to)`` pairs, ``compared_to`` being the champion
    version the candidate beat (``None``: it passed the floors with no champion). Start from no
    champion and repeatedly hand over to the best of the versions that passed against the current
    one (never revisiting a version): best by ``score`` (:func:`rank_score`, higher is better),
    the version number breaking ties only. The result depends only on the recorded decisions and
    scores, not on the order they were recorded in, so every promoter that reads them agrees.
    """
    score = score or {}
    beat: dict[int | None, set[int]] = {}
    for version, compared_to in passes:
        beat.setdefault(compared_to, set()).add(int(version))
    chain: list[int] = []
    current: int | None = None
    while True:
        nxt = beat.get(current, set()) - set(chain)
        if not nxt:
            return chain
        current = max(nxt, key=lambda v: (score.get(v, -math.inf), v))
        chain.append(current)


def resolve_champion(passes: Iterable[tuple[int, int | None]], score: Mapping[int, float] | None = None) -> int | None:
    """The version that must hold the champion alias: the end of :func:`champion_chain`."""
    chain = champion_chain(passes, score)
    return chain[-1] if chain else None
