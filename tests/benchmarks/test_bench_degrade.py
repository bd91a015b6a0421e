"""benchmarks/bench_degrade.py: the stage breakdown and the sampling error it reports beside the per-run ratios."""

from __future__ import annotations

import dataclasses

import numpy as np
from helpers.scripts import benchmark_script

from prefrestore.core.config import load
from prefrestore.data.degrade.direct import DegradeConfig, draw_params

BENCH = benchmark_script("bench_degrade")


def test_sampling_error_is_the_relative_standard_error_of_the_mean() -> None:
    assert BENCH.sampling_error(np.full(50, 1.3)) == 0.0  # every draw costs the same: no spread
    draws = np.array([1.0, 3.0] * 50)  # mean 2, sample std 1.005: cv 0.5025 over 100 draws
    assert np.isclose(BENCH.sampling_error(draws), np.std(draws, ddof=1) / 2.0 / 10.0)
    # four times the draws halve it
    assert np.isclose(BENCH.sampling_error(np.tile(draws, 4)), BENCH.sampling_error(draws) / 2, rtol=0.01)


def test_stage_breakdown_times_every_stage_and_every_draw() -> None:
    cfg = load("released").section("degrade", DegradeConfig)
    rng = np.random.default_rng(0)
    imgs = [rng.integers(0, 256, (64, 64, 3), dtype=np.uint8) for _ in range(6)]
    params = [dataclasses.replace(draw_params(rng, cfg), self_rec=False) for _ in imgs]
    stages, draw_ms = BENCH.stage_breakdown(imgs, params, cfg)
    assert list(stages) == ["plan + kernel factors", "blur+downsample", "noise", "JPEG", "upsample"]
    assert all(ms >= 0 for ms in stages.values()) and sum(stages.values()) > 0
    assert draw_ms.shape == (6,) and (draw_ms > 0).all()
    assert np.isclose(draw_ms.mean(), sum(stages.values()))  # the per-draw totals add up to the stages
