"""Imports point one way (docs/ARCHITECTURE.md): the import-linter contracts in pyproject.toml hold,
and they fail on an upward import, on a cycle, and on the library importing the KFP wrappers."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from prefrestore.core.config import PROJECT_ROOT

LINT = Path(sys.executable).with_name("lint-imports")


def _lint(root: Path) -> subprocess.CompletedProcess:
    """``lint-imports`` with the project's contracts over the packages found under ``root`` first."""
    env = {"PYTHONPATH": f"{root / 'src'}:{root}", "PATH": "/usr/bin:/bin"}
    return subprocess.run([str(LINT), str(PROJECT_ROOT / "pyproject.toml"), "--no-cache"],
                          cwd=root, env=env, capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def copy(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("layers")
    shutil.copytree(PROJECT_ROOT / "src" / "prefrestore", root / "src" / "prefrestore",
                    ignore=shutil.ignore_patterns("__pycache__"))
    for pkg in ("pipelines", "components"):
        shutil.copytree(PROJECT_ROOT / pkg, root / pkg, ignore=shutil.ignore_patterns("__pycache__", "compiled"))
    return root


def _append(path: Path, line: str) -> str:
    old = path.read_text()
    path.write_text(old + "\n" + line + "\n")
    return old


def test_contracts_hold_on_the_tree() -> None:
    result = _lint(PROJECT_ROOT)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "3 kept, 0 broken" in result.stdout


@pytest.mark.parametrize("target, line, broken", [
    ("core/atomic.py", "from prefrestore.train import checkpoint  # noqa", "layered"),
    ("model/flow.py", "from prefrestore.data import ingest  # noqa", "layered"),  # siblings are independent
    ("pipeline/steps.py", "import pipelines.cli  # noqa", "never imports the Kubeflow wrappers"),
    ("train/checkpoint.py", "from prefrestore.train import stage2  # noqa", "no import cycles"),
])
def test_contracts_fail_on_a_broken_copy(copy: Path, target: str, line: str, broken: str) -> None:
    path = copy / "src" / "prefrestore" / target
    old = _append(path, line)
    try:
        result = _lint(copy)
    finally:
        path.write_text(old)
    assert result.returncode != 0
    summary = " ".join(result.stdout.split("Broken contracts")[0].split())  # 'name KEPT|BROKEN' per contract
    assert re.search(re.escape(broken) + r"[^.]*? BROKEN", summary), result.stdout
