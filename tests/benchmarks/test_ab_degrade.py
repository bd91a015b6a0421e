"""benchmarks/ab_degrade.py: the same-process A/B of Eq. 16's fast path against another version of it."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
from helpers.scripts import benchmark_script

ROOT = Path(__file__).resolve().parents[2]
DEGRADE = ROOT / "src/prefrestore/data/degrade"




AB = benchmark_script("ab_degrade")
SMALL = ["--profile", "released", "--draws", "24", "--warmup", "4", "--chunk", "4", "--compare", "12", "--size", "96"]


def _copy_of_this_checkout(folder: Path) -> Path:
    for name in ("fast.py", "dft.py", "direct.py"):
        shutil.copy(DEGRADE / name, folder / name)
    return folder


def test_the_same_code_gives_the_same_bytes(tmp_path: Path) -> None:
    result = AB.run(AB.parse_args(["--base-dir", str(_copy_of_this_checkout(tmp_path)), *SMALL]))
    assert result["identical"] == result["compared"] == 12 and result["max_abs_diff"] == 0
    assert result["ms"]["baseline"] > 0 and result["ms"]["this"] > 0 and result["ref_ms"] > 0
    assert 0.3 < result["speedup"] < 3.0  # same code: no large difference either way


def test_both_versions_run_from_private_copies(tmp_path: Path) -> None:
    """Neither version is the imported package: each has its own fast module, hence its own work buffers and caches.

    When this checkout ran as the package, the reference draws warmed its buffers alone and the same code
    measured 1.02-1.045x faster than itself.
    """
    from prefrestore.data.degrade import fast

    result = AB.run(AB.parse_args(["--base-dir", str(_copy_of_this_checkout(tmp_path)), *SMALL]))
    (base_direct, base_fast), (this_direct, this_fast) = result["modules"]["baseline"], result["modules"]["this"]
    assert len({base_direct, this_direct, "prefrestore.data.degrade.direct"}) == 3
    assert len({base_fast, this_fast, fast.__name__}) == 3


def test_a_slower_different_baseline_is_measured_and_its_outputs_differ(tmp_path: Path) -> None:
    """The baseline runs its own modules: a busy loop in its degrade and a loose rank bound in its fast.py show up."""
    base = _copy_of_this_checkout(tmp_path)
    direct = (base / "direct.py").read_text()
    marker = '    image = check_image(image)\n    if p.self_rec:\n        return image.copy()\n    return upsample('
    assert direct.count(marker) == 1
    (base / "direct.py").write_text(direct.replace(marker, "    sum(range(300_000))  # burn CPU time\n" + marker))
    fast = (base / "fast.py").read_text()
    assert fast.count("SEPARABLE_TOL = 1e-3") == 1
    (base / "fast.py").write_text(fast.replace("SEPARABLE_TOL = 1e-3", "SEPARABLE_TOL = 3e-2"))
    result = AB.run(AB.parse_args(["--base-dir", str(base), *SMALL]))
    assert result["speedup"] > 1.5  # this checkout has no busy loop
    assert result["identical"] < result["compared"] and result["max_abs_diff"] > 0  # rotated kernels, fewer terms


def test_a_git_revision_is_read_as_the_baseline(capsys: pytest.CaptureFixture[str]) -> None:
    if subprocess.run(["git", "-C", str(ROOT), "rev-parse", "HEAD"], capture_output=True).returncode != 0:
        pytest.skip("not a git checkout")
    assert AB.main(["--rev", "HEAD", *SMALL]) == 0
    out = capsys.readouterr().out
    assert "speed-up of this checkout over the baseline" in out and "byte-identical" in out


@pytest.mark.parametrize(("argv", "message"), [
    (["--rev", "no-such-revision"], "cannot read src/prefrestore/data/degrade/fast.py at revision 'no-such-revision'"),
    (["--draws", "0"], "--draws must be positive"),
    (["--profile", "no-such-profile"], "unknown profile"),
])
def test_bad_arguments_are_one_line_and_exit_2(argv: list[str], message: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert AB.main([*SMALL, *argv]) == 2
    err = capsys.readouterr().err
    assert err.startswith("ab_degrade: ") and message in err and err.count("\n") == 1


def test_a_baseline_that_does_not_import_is_reported(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    base = _copy_of_this_checkout(tmp_path)
    (base / "dft.py").write_text("import no_such_module_here\n")
    assert AB.main(["--base-dir", str(base), *SMALL]) == 2
    assert "the baseline's dft.py does not import: ModuleNotFoundError" in capsys.readouterr().err


def test_a_baseline_whose_reference_fails_is_reported_with_exit_3(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    base = _copy_of_this_checkout(tmp_path)
    direct = (base / "direct.py").read_text()
    marker = "def degrade_reference(image: np.ndarray, p: DegradeParams, cfg: DegradeConfig) -> np.ndarray:\n"
    assert direct.count(marker) == 1
    (base / "direct.py").write_text(direct.replace(marker, marker + '    raise RuntimeError("broken reference")\n'))
    assert AB.main(["--base-dir", str(base), *SMALL]) == 3
    err = capsys.readouterr().err
    assert "the baseline version's reference failed" in err and "broken reference" in err and len(err.splitlines()) == 1
