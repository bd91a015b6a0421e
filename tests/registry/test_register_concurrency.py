"""Concurrent promotions against a real ``mlflow server`` backed by PostgreSQL (tests/helpers/mlflow_server.py).

Candidate versions are created directly in the registry (with the evaluation-summary tag the gate
reads), then ``register.promote`` runs for several of them at once, each thread with its own
client. Whatever the interleaving, the registry must end consistent: one champion, equal to the
champion resolved from every recorded decision, and every candidate's decision recorded.
"""

from __future__ import annotations

import json
import threading
import uuid
from concurrent.futures import ThreadPoolExecutor

import pytest
from mlflow import MlflowClient

from prefrestore.core.config import load
from prefrestore.registry import register


@pytest.fixture(scope="module")
def sqlite_store(tmp_path_factory: pytest.TempPathFactory) -> str:
    return f"sqlite:///{tmp_path_factory.mktemp('race_store') / 'mlflow.db'}"


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=[pytest.mark.postgres, pytest.mark.slow])])
def server(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """The store under test: the SQLite default (fast, default run) or a PostgreSQL-backed
    ``mlflow server`` on loopback (REST, separate server process; slow: run with -m slow)."""
    uri = request.getfixturevalue("sqlite_store" if request.param == "sqlite" else "mlflow_pg_server")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    return uri


@pytest.fixture(scope="module")
def cfg() -> register.RegisterConfig:
    return load("tiny").section("register", register.RegisterConfig)


def new_model(client: MlflowClient) -> str:
    name = f"race-{uuid.uuid4().hex[:8]}"
    client.create_registered_model(name)
    return name


def add_candidate(client: MlflowClient, name: str, psnr: float | str, ssim: float) -> int:
    m = {"celeba_test/psnr": psnr, "celeba_test/ssim": ssim}
    exp = client.get_experiment_by_name("Default")
    run = client.create_run(exp.experiment_id)
    mv = client.create_model_version(name, f"{run.info.artifact_uri}/model", run_id=run.info.run_id, tags={
        register.TAG_EVAL: json.dumps(m), register.TAG_CANDIDATE: uuid.uuid4().hex})
    return int(mv.version)


def promote_all(uri: str, name: str, cfg, candidates: dict[int, dict],
                variant: str = "fidelity") -> dict[int, register.PromotionResult]:
    start = threading.Barrier(len(candidates))

    def one(version: int) -> register.PromotionResult:
        client = MlflowClient(tracking_uri=uri)  # each promoter its own client, as separate pods would
        start.wait(timeout=60)
        return register.promote(client, name, version, candidates[version], cfg.gates[variant], cfg)

    with ThreadPoolExecutor(len(candidates)) as pool:
        futures = {v: pool.submit(one, v) for v in candidates}
        return {v: f.result(timeout=300) for v, f in futures.items()}


def assert_consistent(client: MlflowClient, name: str, cfg, variant: str = "fidelity") -> int | None:
    versions = register.all_versions(client, name)
    chain = register.chain(versions, cfg.gates[variant])
    resolved = chain[-1] if chain else None
    assert register.alias_version(client, name, cfg.champion_alias) == resolved
    champions = [int(v.version) for v in versions if v.tags.get(register.TAG_OUTCOME) == "champion"]
    assert champions == ([resolved] if resolved is not None else []), "stale gate.outcome=champion tags"
    for v in versions:
        assert register.TAG_OUTCOME in v.tags, f"v{v.version} has no recorded outcome"
        assert any(k.startswith(register.TAG_DECISION_PREFIX) for k in v.tags) or (
            int(v.version) == resolved), f"v{v.version} has no recorded decision"
    return resolved


def test_simultaneous_passes_against_one_champion_resolve_to_the_best(server, cfg, monkeypatch):
    client = MlflowClient(tracking_uri=server)
    name = new_model(client)
    v1 = add_candidate(client, name, 20.0, 0.5)
    assert register.promote(client, name, v1, {"celeba_test/psnr": 20.0, "celeba_test/ssim": 0.5},
                            cfg.gates["fidelity"], cfg).outcome == "champion"
    candidates = {add_candidate(client, name, 21.0 + i, 0.5): {"celeba_test/psnr": 21.0 + i, "celeba_test/ssim": 0.5}
                  for i in range(4)}

    # Hold every decision write against v1 until all four promoters have made theirs: they all pass
    # the compare-and-set re-read (nobody has moved the alias yet) and record at the same instant.
    hold = threading.Barrier(len(candidates))
    real_set = MlflowClient.set_model_version_tag

    def held_set(self, name_, version=None, key=None, value=None, stage=None):  # noqa: ANN001, ANN202
        if key == f"{register.TAG_DECISION_PREFIX}{v1}":
            hold.wait(timeout=60)
        return real_set(self, name_, version, key, value, stage)

    monkeypatch.setattr(MlflowClient, "set_model_version_tag", held_set)
    results = promote_all(server, name, cfg, candidates)

    winner = max(candidates)
    assert assert_consistent(client, name, cfg) == winner
    assert {v: r.outcome for v, r in results.items()} == {
        v: "champion" if v == winner else "superseded" for v in candidates}
    assert all(r.champion == winner for r in results.values())
    for v in candidates:  # every loser's evidence is kept
        decision = json.loads(client.get_model_version(name, str(v)).tags[f"gate.vs.{v1}"])
        assert decision["passed"] and decision["compared_to"] == str(v1)


def test_free_running_promotions_leave_a_consistent_registry(server, cfg):
    client = MlflowClient(tracking_uri=server)
    name = new_model(client)
    # A mix: clear gains, ties within tolerance, losses, and an unavailable metric.
    specs = [(20.0, 0.50), (20.5, 0.52), (19.0, 0.40), (21.0, 0.55), ("unavailable", 0.9), (20.95, 0.549)]
    candidates = {add_candidate(client, name, p, s): {"celeba_test/psnr": p, "celeba_test/ssim": s} for p, s in specs}
    results = promote_all(server, name, cfg, candidates)

    champion = assert_consistent(client, name, cfg)
    assert champion is not None and sum(r.champion == champion for r in results.values()) >= 1
    unavailable = next(v for v, m in candidates.items() if m["celeba_test/psnr"] == "unavailable")
    assert results[unavailable].outcome == "rejected" and champion != unavailable
    assert candidates[champion]["celeba_test/psnr"] != 19.0  # the clear loss never wins
    # Re-running every promotion changes nothing: decisions are reused, the champion stays.
    before = {int(v.version): dict(v.tags) for v in register.all_versions(client, name)}
    again = promote_all(server, name, cfg, candidates)
    assert assert_consistent(client, name, cfg) == champion
    after = {int(v.version): dict(v.tags) for v in register.all_versions(client, name)}
    assert {v: {k: t for k, t in tags.items() if k.startswith("gate.vs.")} for v, tags in after.items()} == {
        v: {k: t for k, t in tags.items() if k.startswith("gate.vs.")} for v, tags in before.items()}
    assert all(r.champion == champion for r in again.values())


@pytest.mark.parametrize("rnd", range(4))
def test_concurrent_candidates_the_best_wins_not_the_newest(server, cfg, rnd: int):
    """N candidates registered and promoted at once against one champion, their gains in a shuffled
    order of version numbers: the champion is the best of them every time (v8 at +1.2 dB never beats
    v7 at +1.4 dB), and only it carries gate.outcome=champion."""
    race_once(server, cfg, rnd)


@pytest.mark.postgres
def test_best_wins_on_the_postgres_backed_server(mlflow_pg_server, cfg, monkeypatch):
    """The same race on the real PostgreSQL-backed ``mlflow server`` (REST), in the default suite."""
    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_pg_server)
    for rnd in range(3):
        race_once(mlflow_pg_server, cfg, 100 + rnd)


def race_once(server: str, cfg, rnd: int) -> None:
    import random

    client = MlflowClient(tracking_uri=server)
    name = new_model(client)
    v1 = add_candidate(client, name, 20.0, 0.5)
    register.promote(client, name, v1, {"celeba_test/psnr": 20.0, "celeba_test/ssim": 0.5}, cfg.gates["fidelity"], cfg)
    gains = [0.2, 0.6, 1.4, 1.2, 0.9]
    random.Random(rnd).shuffle(gains)
    candidates = {}
    for gain in gains:
        m = {"celeba_test/psnr": 20.0 + gain, "celeba_test/ssim": 0.5}
        candidates[add_candidate(client, name, m["celeba_test/psnr"], 0.5)] = m
    results = promote_all(server, name, cfg, candidates)
    best = max(candidates, key=lambda v: candidates[v]["celeba_test/psnr"])
    assert assert_consistent(client, name, cfg) == best  # the alias, and the only champion tag
    assert results[best].champion == best and results[best].outcome == "champion"
    # Once all have returned, every loser's recorded outcome says so (swept). A promoter's return value is
    # what held when it returned: one that finished before a better candidate recorded its pass may
    # report itself champion then, and only with itself as the champion it saw (the module's guarantee
    # is about the registry after all promoters return, not about earlier return values).
    for v, r in results.items():
        if v != best:
            assert client.get_model_version(name, str(v)).tags[register.TAG_OUTCOME] in ("superseded", "rejected")
            assert r.outcome in ("superseded", "rejected") or (r.outcome == "champion" and r.champion == v)


def test_a_chain_of_small_losses_stops_at_the_tolerance(server, cfg):
    """quality tolerates -0.5 dB PSNR per promotion, anchored to the first champion: candidates at
    -0.3 dB each take the alias once, then the next one (-0.6 dB from the anchor) is rejected, and the
    champion it would have displaced keeps the alias and the only champion tag."""
    client = MlflowClient(tracking_uri=server)
    name = new_model(client)
    gate = cfg.gates["quality"]
    outcomes = []
    for i, psnr in enumerate((20.0, 19.7, 19.4, 19.1)):
        m = {"celeba_test/psnr": psnr, "celeba_test/ssim": 0.5}
        v = add_candidate(client, name, psnr, 0.5)
        outcomes.append((v, register.promote(client, name, v, m, gate, cfg).outcome))
        if i == 1:
            assert register.alias_version(client, name, cfg.champion_alias) == v
    assert [o for _, o in outcomes] == ["champion", "champion", "rejected", "rejected"]
    champion = assert_consistent(client, name, cfg, "quality")
    assert champion == outcomes[1][0]
    first = client.get_model_version(name, str(outcomes[0][0])).tags
    assert first[register.TAG_OUTCOME] == "superseded"  # retagged when the alias moved on
    evidence = json.loads(client.get_model_version(name, str(outcomes[2][0])).tags[f"gate.vs.{champion}"])
    anchor = [c for c in evidence["checks"] if c["kind"] == "anchor"]
    assert anchor and not all(c["passed"] for c in anchor) and anchor[0]["reference"] == 20.0
