"""benchmarks/tune_degrade.py and degrade_common.py: the tuning of Eq. 16's fast path and the benchmarks' shared helpers."""

from __future__ import annotations

import math
import sys
from pathlib import Path

import numpy as np
import pytest
from helpers.scripts import benchmark_script

TUNE = benchmark_script("tune_degrade")
COMMON = sys.modules["degrade_common"]  # the one tune_degrade imported


def test_steps_merge_runs_and_split_at_geometric_midpoints() -> None:
    ratios = (1.0, 4.0, 9.0, 16.0)
    picks = [(8, 1), (8, 1), (2, 4), (1, 1)]
    assert TUNE._steps(ratios, picks) == ((6.0, 8, 1), (12.0, 2, 4), (math.inf, 1, 1))
    assert TUNE._steps(ratios, [(4,)] * 4) == ((math.inf, 4),)  # one choice: one unbounded step


def test_cost_model_fit_on_small_images() -> None:
    fit = TUNE.fit_cost_model(64, None)
    assert fit["s_per_flop"] > 0 and fit["dft_s_per_point_log2"] > 0
    assert 0.0 <= fit["agree"] <= 1.0 and fit["worst_pick"] >= 1.0 and fit["median_rel_err"] >= 0


def test_main_refuses_a_size_too_small_for_the_kernel(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as stop:
        TUNE.main(["blocks", "--size", "32"])
    assert stop.value.code == 2 and "--size must be at least 64" in capsys.readouterr().err


def test_test_images_cycle_real_faces_and_refuse_an_empty_folder(tmp_path: Path) -> None:
    import cv2

    for k in range(2):
        cv2.imwrite(str(tmp_path / f"{k}.png"), np.full((40, 30, 3), 50 * (k + 1), np.uint8))
    faces = COMMON.test_images(5, 32, tmp_path)
    assert [f.shape for f in faces] == [(32, 32, 3)] * 5
    assert [int(f[0, 0, 0]) for f in faces] == [50, 100, 50, 100, 50]  # sorted, cycled, resized
    synthetic = COMMON.test_images(3, 48, None)
    assert synthetic[0].shape == (48, 48, 3) and synthetic[0].dtype == np.uint8 and synthetic[0].std() > 10
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ValueError, match="no PNG images"):
        COMMON.test_images(1, 32, empty)
    with pytest.raises(ValueError, match="is not a folder"):
        COMMON.test_images(1, 32, tmp_path / "missing")


def test_machine_names_the_block_family_and_the_pass1_path(monkeypatch) -> None:
    assert "block family" in COMMON.machine()
    monkeypatch.setattr(COMMON.degrade_kernel, "compiled_pass1", lambda: None)
    assert COMMON.machine().endswith("compiled pass 1 off (BLAS pass 1)")
    monkeypatch.setattr(COMMON.degrade_kernel, "compiled_pass1", lambda: object())
    assert COMMON.machine().endswith("compiled pass 1 on")
