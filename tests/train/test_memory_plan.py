"""The ZeRO memory plan (``prefrestore model-info --plan``): DeepSpeed's accounting, the H200 cross-check."""

from __future__ import annotations

import pytest

from prefrestore.cli.main import main
from prefrestore.core.config import load
from prefrestore.model.config import ModelConfig
from prefrestore.train.memory_plan import (
    H200_MEASURED_GIB,
    activation_bytes,
    dcae_encoder_saved_bytes,
    deepspeed_check,
    plan_table,
    stage_plans,
)


@pytest.mark.parametrize("profile", ["paper", "released"])
def test_states_shrink_with_the_zero_stage_and_match_deepspeed(profile: str) -> None:
    for plan in stage_plans(load(profile), gpus=8):
        totals = [sum(plan.states(z, 8).values()) for z in range(4)]
        assert totals == sorted(totals, reverse=True) and totals[0] > totals[3], plan.stage
        ds = deepspeed_check(plan, 8)
        if ds["zero2"] is None:
            pytest.skip("deepspeed not installed")
        ours = 2 * plan.trainable + (plan.states(2, 8)["grads"] + plan.states(2, 8)["optimizer"])
        assert ours == pytest.approx(ds["zero2"], rel=1e-6)  # DeepSpeed: 2 P + 18 P / N


def test_paper_stage_1_1_trains_the_table_i_group_at_batch_8() -> None:
    plans = {p.stage: p for p in stage_plans(load("paper"), gpus=8)}
    assert plans["1.1"].batch == 8 and plans["2"].batch == 9  # 72 rollouts / 8 GPUs
    assert 600e6 < plans["1.1"].trainable < 800e6 and plans["2"].trainable < 50e6
    cfg = load("paper").section("model", ModelConfig)
    assert activation_bytes(cfg, "1.1", 16) == pytest.approx(2 * activation_bytes(cfg, "1.1", 8))  # linear in batch


def test_plan_cross_checks_the_h200_measurement_and_cli_needs_gpus(capsys: pytest.CaptureFixture[str]) -> None:
    text = plan_table(load("paper"), 8)
    ratios = [float(line.rsplit("= ", 1)[1]) for line in text.splitlines() if "estimate / measured" in line]
    assert len(ratios) == len(H200_MEASURED_GIB) and all(0.85 < r < 1.15 for r in ratios), ratios
    assert main(["model-info", "--profile", "paper", "--plan"]) == 2
    assert main(["model-info", "--profile", "paper", "--plan", "--gpus", "8"]) == 0
    assert "fits 80 GB" in capsys.readouterr().out


def test_fake_tensor_count_of_the_encoders_saved_activations_equals_a_real_forward() -> None:
    """The counted bytes are what a real bf16-autocast forward keeps for backward, per sample."""
    import torch

    from prefrestore.model.generator import build_vae

    vae_cfg = load("tiny").section("model", ModelConfig).vae
    counted = dcae_encoder_saved_bytes(vae_cfg, 64)
    torch.manual_seed(0)
    model = build_vae(vae_cfg)

    def real(batch: int) -> int:
        storages: dict[int, int] = {}

        def pack(t: torch.Tensor) -> torch.Tensor:
            storages[t.untyped_storage()._cdata] = t.untyped_storage().nbytes()
            return t

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t), torch.autocast("cpu", dtype=torch.bfloat16):
            model.encode(torch.rand(batch, 3, 64, 64))
        return sum(storages.values())

    assert counted == real(2) - real(1) and counted > 0
    assert dcae_encoder_saved_bytes(vae_cfg, 128) == pytest.approx(4 * counted, rel=0.05)  # grows with the pixels
