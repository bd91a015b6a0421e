"""The step table, the CLI and dvc.yaml agree (the KFP pipeline joins in test_pipelines.py)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from prefrestore.cli.main import build_parser
from prefrestore.core.config import load, read_params_file
from prefrestore.pipeline import steps

DVC = Path(__file__).resolve().parents[2] / "dvc.yaml"


def _dvc_stages() -> dict[str, dict]:
    data = yaml.safe_load(DVC.read_text())
    out = {}
    for name, stage in data["stages"].items():
        body = stage.get("do", stage)
        out[name] = body
    return out


def test_every_step_is_a_dvc_stage_and_back():
    assert set(_dvc_stages()) == {s.name for s in steps.STEPS}


@pytest.mark.parametrize("step", steps.STEPS, ids=lambda s: s.name)
def test_dvc_stage_matches_step(step):
    stage = _dvc_stages()[step.name]
    cmd = stage["cmd"]
    assert re.search(rf"\$\{{run\}} {step.name} --profile \$\{{profile\}}", cmd), cmd
    named = dict(re.findall(r"--in (\w+)=(\S+)", cmd))
    assert set(step.inputs) <= set(named), f"{step.name}: dvc passes {sorted(named)}"
    assert set(named) <= set(step.inputs) | set(step.optional_inputs)
    declared = {p.removeprefix("defaults.") for p in stage["params"] if p.startswith("defaults.")}
    assert declared == set(step.sections), f"{step.name}: dvc params {sorted(declared)}"
    assert "profile" in stage["params"] and "profiles.${profile}" in stage["params"]
    # every --in path is produced by another stage or declared as a dependency
    deps = set(stage.get("deps", []))
    for path in named.values():
        assert path.replace("${item}", "") == "" or any(
            path == d or path.startswith(d + "/") or d.startswith(path + "/") or d == "${item}" for d in deps
        ), f"{step.name}: input {path} not in deps {sorted(deps)}"


def test_every_step_section_exists_in_every_profile():
    profiles = read_params_file()["profiles"]
    for profile in profiles:
        tree = load(profile).tree
        for step in steps.STEPS:
            missing = [s for s in step.sections if s not in tree]
            assert not missing, f"profile {profile}: step {step.name} reads missing sections {missing}"


def test_cli_has_a_subcommand_per_step():
    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    assert {s.name for s in steps.STEPS} <= set(sub.choices)


def test_step_loaders_import():
    for step in steps.STEPS:
        assert callable(step.load()), step.name
