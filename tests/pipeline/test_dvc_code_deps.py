"""``dvc.yaml`` tracks code: each stage depends on the code that produces its outputs.

Static check: every source file in the import closure of a step's module is covered by one of its
stage's deps (a file or a folder above it). Behaviour check, with DVC itself on a copy of the
project: after recording the lock, an edit of the degradation code makes ``degrade`` and every
stage downstream of it stale, and leaves ``ingest``, ``caption`` and ``validate`` up to date.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from helpers.imports import closure, docstring_only

from prefrestore.core.config import PROJECT_ROOT
from prefrestore.pipeline import steps

DVC = Path(sys.executable).with_name("dvc")
# the package root holds a docstring and `__version__`, which no step reads: tracking it would re-run
# every stage on a version bump alone
EXEMPT = {PROJECT_ROOT / "src" / "prefrestore" / "__init__.py"}
SPEC = yaml.safe_load((PROJECT_ROOT / "dvc.yaml").read_text())["stages"]


def code_deps(stage: dict) -> list[Path]:
    body = stage.get("do", stage)
    return [PROJECT_ROOT / d for d in body.get("deps", []) if d.startswith("src/")]


def uncovered(step: steps.Step, deps: list[Path]) -> list[str]:
    """Files the step's module can import that no dep covers (docstring-only ``__init__``s aside)."""
    module = step.load().__module__
    missing = []
    for path in sorted(closure(module)):
        if docstring_only(path) or path in EXEMPT:
            continue
        if not any(path == d or d in path.parents for d in deps):
            missing.append(str(path.relative_to(PROJECT_ROOT)))
    return missing


@pytest.mark.parametrize("step", steps.STEPS, ids=lambda s: s.name)
def test_every_stage_depends_on_its_code(step: steps.Step) -> None:
    deps = code_deps(SPEC[step.name])
    assert deps, f"stage {step.name} lists no code"
    assert all(d.exists() for d in deps), [str(d) for d in deps if not d.exists()]
    assert uncovered(step, deps) == []


def test_the_coverage_check_finds_a_missing_dep() -> None:
    step = steps.get("degrade")
    deps = [d for d in code_deps(SPEC["degrade"]) if d.name != "degrade"]  # drop src/prefrestore/data/degrade
    assert "src/prefrestore/data/degrade/fast.py" in uncovered(step, deps)


def _dvc(root: Path, *args: str) -> str:
    result = subprocess.run([str(DVC), *args], cwd=root, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


@pytest.fixture(scope="module")
def locked(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A git copy of the project whose dvc.lock records the current code, over placeholder outputs."""
    root = tmp_path_factory.mktemp("dvc_project")
    files = subprocess.run(["git", "ls-files", "-z"], cwd=PROJECT_ROOT, capture_output=True, check=True).stdout
    for name in filter(None, files.decode().split("\0")):
        if (PROJECT_ROOT / name).is_file():
            (root / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(PROJECT_ROOT / name, root / name)
    (root / "dvc.lock").unlink(missing_ok=True)
    git = ["git", "-c", "user.email=ci@localhost", "-c", "user.name=ci"]
    subprocess.run([*git, "init", "-q"], cwd=root, check=True)
    for stage in SPEC.values():
        body = stage.get("do", stage)
        outs = [o if isinstance(o, str) else next(iter(o)) for o in body.get("outs", []) + body.get("metrics", [])]
        for out in outs:
            names = [out.replace("${key}", k).replace("${item}", v) for k, v in stage["foreach"].items()] \
                if "foreach" in stage else [out]
            for name in names:
                path = root / name
                if path.suffix == ".json":
                    path.parent.mkdir(parents=True, exist_ok=True)
                    path.write_text("{}")
                else:
                    path.mkdir(parents=True, exist_ok=True)
                    (path / "placeholder").write_text(name)
    (root / "data" / "pairs" / "benchmarks").mkdir(exist_ok=True)
    _dvc(root, "commit", "--force", "--quiet")
    assert json.loads(_dvc(root, "status", "--json")) == {}
    return root


def test_editing_degradation_code_reruns_degrade_and_downstream_only(locked: Path) -> None:
    code = locked / "src" / "prefrestore" / "data" / "degrade" / "fast.py"
    before = code.read_text()
    code.write_text(before + "\n# an edit\n")
    try:
        changed = json.loads(_dvc(locked, "status", "--json"))
        dry = _dvc(locked, "repro", "--dry", "--force-downstream")
    finally:
        code.write_text(before)
    assert changed["degrade"] == [{"changed deps": {"src/prefrestore/data/degrade": "modified"}}]
    assert not {"ingest", "caption", "validate"} & set(changed)
    would_run = {line.split("'")[1] for line in dry.splitlines() if line.startswith("Running stage")}
    assert would_run == {"degrade", "bootstrap", "stage1_1", "stage1_2", "stage2", "evaluate@fidelity",
                         "evaluate@quality", "register"}


def test_editing_ingest_code_reruns_everything(locked: Path) -> None:
    code = locked / "src" / "prefrestore" / "data" / "ingest.py"
    before = code.read_text()
    code.write_text(before + "\n# an edit\n")
    try:
        changed = json.loads(_dvc(locked, "status", "--json"))
    finally:
        code.write_text(before)
    assert {"ingest", "caption", "validate", "degrade"} <= set(changed)
    assert "evaluate@fidelity" not in changed and "register" not in changed  # they never import ingest
