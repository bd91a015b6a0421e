"""Promotion gates (pure functions): rules vs the champion, floors, unavailable metrics, resolution."""

from __future__ import annotations

import itertools
import json

import pytest

from prefrestore.core.config import ConfigError, load
from prefrestore.registry import gates
from prefrestore.registry.gates import Floor, GateRule, Rank, VariantGate

QUALITY = VariantGate(
    rules=(GateRule("celeba_test/lmd", "down", -0.25), GateRule("celeba_test/hpsv2", "up", 0.0)),
    floors=(Floor("celeba_test/lmd", "down", 9.0),),
    rank=Rank("celeba_test/hpsv2", "up"),
)
CHAMP = {"celeba_test/lmd": 8.0, "celeba_test/hpsv2": 30.0}


def test_pass_within_tolerance_while_gaining_preference():
    d = gates.decide(QUALITY, {"celeba_test/lmd": 8.2, "celeba_test/hpsv2": 30.5}, CHAMP, "3")
    assert d.passed and d.compared_to == "3"
    assert [c.kind for c in d.checks] == ["floor", "rule", "rule"]
    assert d.reason == "all 3 checks passed against champion v3"
    assert json.loads(d.to_json())["checks"][1]["reference"] == 8.0


@pytest.mark.parametrize(("lmd", "hps", "failing"), [
    (8.3, 30.5, "celeba_test/lmd (down)"),    # loses 0.3 px > 0.25 tolerance
    (8.0, 29.9, "celeba_test/hpsv2 (up)"),    # preference went down
    (9.5, 40.0, "celeba_test/lmd: 9.5 <= 9"),  # floor, even with a big preference gain
])
def test_fail_cases_name_the_failing_check(lmd, hps, failing):
    d = gates.decide(QUALITY, {"celeba_test/lmd": lmd, "celeba_test/hpsv2": hps}, CHAMP, "3")
    assert not d.passed
    assert failing in d.reason


def test_boundaries_are_inclusive():
    d = gates.decide(QUALITY, {"celeba_test/lmd": 8.25, "celeba_test/hpsv2": 30.0}, CHAMP, "3")
    assert d.passed


@pytest.mark.parametrize("where", ["candidate", "champion"])
@pytest.mark.parametrize("value", ["unavailable", None, float("nan")])
def test_unavailable_missing_or_nan_metric_never_passes(where, value):
    cand = {"celeba_test/lmd": 7.0, "celeba_test/hpsv2": 35.0}  # would clearly win
    champ = dict(CHAMP)
    target = cand if where == "candidate" else champ
    if value is None:
        del target["celeba_test/hpsv2"]
    else:
        target["celeba_test/hpsv2"] = value
    d = gates.decide(QUALITY, cand, champ, "1")
    assert not d.passed
    assert f"{where} value is" in d.reason


def test_first_champion_is_judged_by_floors_only():
    assert gates.decide(QUALITY, {"celeba_test/lmd": 8.9, "celeba_test/hpsv2": "unavailable"}, None, None).passed
    d = gates.decide(QUALITY, {"celeba_test/lmd": "unavailable"}, None, None)
    assert not d.passed and "floor cannot pass" in d.reason
    with pytest.raises(ValueError, match="together"):
        gates.decide(QUALITY, CHAMP, CHAMP, None)


def test_metric_summaries_are_validated():
    assert gates.validate_metrics({"a/b": 1, "a/c": "unavailable"}, "x") == {"a/b": 1.0, "a/c": "unavailable"}
    for bad in ({"ab": 1.0}, {"a/b": "n/a"}, {"a/b": True}, {}):
        with pytest.raises(ValueError):
            gates.validate_metrics(bad, "x")


def test_gate_definitions_are_checked():
    with pytest.raises(ValueError, match="at least one rule"):
        VariantGate(rules=(), floors=(Floor("a/b", "up", 1.0),), rank=Rank("a/b", "up"))
    with pytest.raises(ValueError, match="<benchmark>/<metric>"):
        GateRule("psnr", "up", 0.0)


def test_every_profile_has_valid_gates():
    from prefrestore.registry.register import RegisterConfig

    for profile in ("tiny", "paper", "released"):
        cfg = load(profile).section("register", RegisterConfig)
        assert set(cfg.gates) == {"fidelity", "quality"}
    tiny = load("tiny").section("register", RegisterConfig)
    assert {r.metric for r in tiny.gates["fidelity"].rules} == {"celeba_test/psnr", "celeba_test/ssim"}
    with pytest.raises(ConfigError, match="direction"):
        load("tiny").with_overrides({"register.gates.fidelity.floors": [
            {"metric": "celeba_test/psnr", "direction": "sideways", "bound": 1.0}]}).section("register", RegisterConfig)


def test_resolve_champion_follows_the_chain_and_breaks_ties_by_version():
    assert gates.resolve_champion([]) is None
    assert gates.resolve_champion([(1, None)]) == 1
    # 2 and 3 both beat 1 (a race): the higher wins; 5 beat 3, so 5 is champion; 4 beat 2 (a dead branch).
    passes = [(1, None), (2, 1), (3, 1), (5, 3), (4, 2)]
    assert gates.resolve_champion(passes) == 5
    # Order of recording does not matter.
    assert {gates.resolve_champion(list(p)) for p in itertools.permutations(passes)} == {5}
    # Mutual passes (within tolerance) cannot loop.
    assert gates.resolve_champion([(1, None), (2, 1), (1, 2)]) == 2


def test_the_best_candidate_wins_not_the_highest_version():
    """2 (+1.4) and 3 (+1.2) both beat 1: 2 is better on the rank metric and wins; the version
    number only breaks an exact tie; an unscored passer ranks last."""
    passes = [(1, None), (2, 1), (3, 1)]
    assert gates.resolve_champion(passes, {1: 20.0, 2: 21.4, 3: 21.2}) == 2
    assert {gates.resolve_champion(list(p), {1: 20.0, 2: 21.4, 3: 21.2})
            for p in itertools.permutations(passes)} == {2}
    assert gates.resolve_champion(passes, {1: 20.0, 2: 21.0, 3: 21.0}) == 3
    assert gates.resolve_champion(passes, {1: 20.0, 3: 19.0}) == 3  # 2 has no score
    assert gates.champion_chain(passes + [(4, 2)], {1: 20.0, 2: 21.4, 3: 21.2, 4: 21.5}) == [1, 2, 4]
    assert gates.rank_score(QUALITY, {"celeba_test/hpsv2": 31.0}) == 31.0
    down = VariantGate(QUALITY.rules, QUALITY.floors, Rank("celeba_test/lmd", "down"))
    assert gates.rank_score(down, {"celeba_test/lmd": 8.0}) == -8.0
    assert gates.rank_score(down, {"celeba_test/lmd": "unavailable"}) == float("-inf")


def test_tolerated_losses_are_anchored_to_the_first_champion():
    """Each step may lose up to 0.25 px LMD against its champion, but not more than that in total
    against the anchor: a chain of -0.15 px steps stops at the second one."""
    anchor = {"celeba_test/lmd": 8.0, "celeba_test/hpsv2": 30.0}
    second = {"celeba_test/lmd": 8.15, "celeba_test/hpsv2": 30.0}
    third = {"celeba_test/lmd": 8.30, "celeba_test/hpsv2": 30.0}
    assert gates.decide(QUALITY, third, second, "2").passed  # against its champion alone: within tolerance
    d = gates.decide(QUALITY, third, second, "2", anchor)
    assert not d.passed and [c.kind for c in d.checks] == ["floor", "rule", "rule", "anchor"]
    assert "vs anchor 8" in d.reason
    assert gates.decide(QUALITY, second, anchor, "1", anchor).passed
