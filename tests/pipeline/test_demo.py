"""The demo's closing summary reads the stages' metrics files and never invents a number."""

from __future__ import annotations

import json

from prefrestore.pipeline import demo


def test_summary_reads_stage_metrics(tmp_path, monkeypatch):
    monkeypatch.setattr(demo, "METRICS", tmp_path)
    (tmp_path / "stage1_2.json").write_text(json.dumps(
        {"val/psnr_restored": 23.25, "val/ssim_restored": 0.7, "val/psnr_input": 22.5, "val/ssim_input": 0.66,
         "restores": True}))
    (tmp_path / "register.json").write_text(json.dumps(
        {"fidelity_version": 3, "fidelity_promoted": True, "fidelity_champion": 3}))
    lines = "\n".join(demo.summary_lines())
    assert "restored PSNR 23.25 / SSIM 0.7 vs degraded input PSNR 22.5 / SSIM 0.66 (restores: True)" in lines
    assert "held-out reward n/a -> n/a" in lines  # stage 2 has not run: said so, not zero
    assert "fidelity v3 promoted=True" in lines
