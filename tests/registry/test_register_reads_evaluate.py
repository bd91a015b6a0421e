"""register reads the evaluate step's own metrics.json (nested), keeping unavailable metrics unavailable."""

from __future__ import annotations

import json

import pytest

from prefrestore.registry import register


def test_nested_evaluate_summary_is_flattened(tmp_path):
    summary = {
        "profile": "tiny",
        "benchmarks": {
            "celeba_test": {"paired": True, "restored": {"psnr": 24.5, "ssim": 0.71, "lpips": "unavailable: weights"}},
            "lfw_test": {"paired": False, "restored": {"musiq": "unavailable: weights"}},
        },
    }
    (tmp_path / "eval_fidelity").mkdir()
    (tmp_path / "eval_fidelity" / "metrics.json").write_text(json.dumps(summary))
    flat = register.read_metrics(tmp_path, "fidelity")
    assert flat == {
        "celeba_test/psnr": 24.5,
        "celeba_test/ssim": 0.71,
        "celeba_test/lpips": "unavailable",
        "lfw_test/musiq": "unavailable",
    }


def test_missing_summary_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="prefrestore evaluate"):
        register.read_metrics(tmp_path, "quality")
