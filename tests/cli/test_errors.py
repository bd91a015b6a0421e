"""One error path (core/errors.py): every expected failure of the real CLI, run in a subprocess, is
one line on stderr with a documented exit code, writes nothing half, and shows a traceback only
with --debug or PREFRESTORE_DEBUG=1."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from prefrestore.core.config import PROJECT_ROOT


def _cli(args: list[str], cwd: Path, **env: str) -> subprocess.CompletedProcess:
    full = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{cwd / 'mlflow.db'}", **env}
    full.pop("PREFRESTORE_DEBUG", None) if "PREFRESTORE_DEBUG" not in env else None
    return subprocess.run([sys.executable, "-m", "prefrestore", *args], cwd=cwd, env=full, capture_output=True,
                          text=True, timeout=300)


def _error_lines(stderr: str) -> list[str]:
    """What the CLI itself printed (MLflow's own INFO log lines aside)."""
    return [line for line in stderr.splitlines() if line.startswith("prefrestore ")]


@pytest.fixture(scope="module")
def work(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("cli_errors")
    (root / "empty").mkdir()
    (root / "junk").mkdir()
    (root / "junk" / "a.png").write_bytes(b"\x89PNG\r\n\x1a\n not an image")
    (root / "junk" / "b.jpg").write_bytes(b"")
    Image.new("RGB", (8, 8)).save(root / "junk" / "tiny.png")  # below ingest.min_side
    (root / "broken.yaml").write_text("defaults: [\n  profiles: {\n")
    return root


CASES = [
    # (id, argv, env, exit code, message fragment, path that must not exist afterwards)
    ("missing ingest folder", ["ingest", "--profile", "tiny", "--source", "folder:nope", "--out", "o1"], {},
     1, "ingest source folder does not exist", "o1"),
    ("empty ingest folder", ["ingest", "--profile", "tiny", "--source", "folder:empty", "--out", "o2"], {},
     1, "0 face(s) accepted of 0 seen", "o2"),
    ("only unusable images", ["ingest", "--profile", "tiny", "--source", "folder:junk", "--out", "o3"], {},
     1, "0 face(s) accepted of 3 seen", "o3"),
    ("broken params.yaml", ["params", "--profile", "tiny"], {"PREFRESTORE_PARAMS": "broken.yaml"},
     2, "not valid YAML at line", None),
    ("missing params.yaml", ["params"], {"PREFRESTORE_PARAMS": "absent.yaml"}, 2, "params file not found", None),
    ("unknown profile", ["params", "--profile", "nope"], {}, 2, "nope", None),
    ("unknown params key", ["degrade", "--profile", "tiny", "--in", "faces=empty", "--out", "o4",
                            "--set", "degrade.no_such_key=1"], {}, 2, "no_such_key", "o4"),
    ("bad params value", ["degrade", "--profile", "tiny", "--in", "faces=empty", "--out", "o5",
                          "--set", "degrade.p_rec=7"], {}, 2, "p_rec", "o5"),
    ("malformed --set", ["degrade", "--profile", "tiny", "--in", "faces=empty", "--out", "o6", "--set", "x"], {},
     2, "--set expects NAME=VALUE", "o6"),
    ("unknown input name", ["degrade", "--profile", "tiny", "--in", "fases=empty", "--out", "o7"], {},
     2, "unknown inputs ['fases']", "o7"),
    ("input path missing", ["degrade", "--profile", "tiny", "--in", "faces=nowhere", "--out", "o8"], {},
     1, "input 'faces' does not exist", "o8"),
    ("faces folder without a manifest", ["degrade", "--profile", "tiny", "--in", "faces=empty", "--out", "o9"], {},
     1, "manifest", "o9"),
    ("registered model that does not exist", ["restore", "junk/tiny.png", "--variant", "quality", "--out", "o10"], {},
     1, "Registered Model with name=prefrestore-quality not found", "o10"),
    ("model folder that is not one", ["restore", "junk/tiny.png", "--model", "empty", "--out", "o11"], {},
     1, "not a Pref-Restore model directory", "o11"),
]


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_expected_failures_are_one_line(work: Path, case) -> None:
    _, argv, env, code, fragment, absent = case
    env = {k: str(work / v) if k == "PREFRESTORE_PARAMS" else v for k, v in env.items()}
    result = _cli(argv, work, **env)
    lines = _error_lines(result.stderr)
    assert result.returncode == code, result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    assert len(lines) == 1 and fragment in lines[0], result.stderr
    assert lines[0].startswith(f"prefrestore {argv[0]}: ")
    if absent:
        assert not (work / absent).exists()
        assert not list(work.glob(f"{absent}.*")) and not list(work.glob(f".{absent}.tmp*"))


@pytest.mark.parametrize("how", ["flag", "env"])
def test_debug_shows_the_traceback(work: Path, how: str) -> None:
    argv = ["ingest", "--profile", "tiny", "--source", "folder:nope", "--out", "o1"]
    result = _cli(["--debug", *argv] if how == "flag" else argv, work,
                  **({"PREFRESTORE_DEBUG": "1"} if how == "env" else {}))
    assert result.returncode == 1 and "Traceback" in result.stderr and "FileNotFoundError" in result.stderr


def test_help_and_params_are_quiet(work: Path) -> None:
    """No third-party warning and no hub fetch on a plain --help, or when the model code is imported."""
    for argv in (["--help"], ["params", "--profile", "tiny", "--section", "flow"], ["model-info", "--profile", "tiny"]):
        result = _cli(argv, work)
        assert result.returncode == 0, result.stderr
        assert result.stderr == "", result.stderr
    assert "exit" in _cli(["--help"], work).stdout  # the exit codes are documented in --help


def test_python_dash_m_is_the_cli(work: Path) -> None:
    result = subprocess.run([sys.executable, "-m", "prefrestore", "params", "--list"], cwd=PROJECT_ROOT,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0 and "tiny" in result.stdout.split()


def test_bad_weight_files_name_the_file(tmp_path: Path) -> None:
    """A truncated, empty or missing weight file of a model directory: an InputError naming it (exit 1)."""
    import torch

    from prefrestore.core.config import load
    from prefrestore.core.errors import InputError, classify
    from prefrestore.model.config import ModelConfig
    from prefrestore.model.model import PrefRestoreModel

    torch.manual_seed(0)
    PrefRestoreModel.build(load("tiny").section("model", ModelConfig), "").save_pretrained(tmp_path / "m")
    files = sorted((tmp_path / "m").rglob("*.safetensors"))
    assert len(files) >= 5
    for file in files:
        data = file.read_bytes()
        for broken in (data[: len(data) // 2], b""):
            file.write_bytes(broken)
            with pytest.raises(InputError) as info:
                PrefRestoreModel.from_pretrained(tmp_path / "m")
            assert str(file) in str(info.value)
            assert classify(info.value)[0] == 1
        file.write_bytes(data)
    shutil_target = tmp_path / "m" / "vae"
    import shutil

    shutil.rmtree(shutil_target)
    with pytest.raises(InputError, match="missing component folder"):
        PrefRestoreModel.from_pretrained(tmp_path / "m")
    with pytest.raises(FileNotFoundError, match="not a Pref-Restore model directory"):
        PrefRestoreModel.from_pretrained(tmp_path)
