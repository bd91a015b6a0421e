"""Stage parameter groups (paper Table I, SPEC §3) and one training step of each stage on the tiny model."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from prefrestore.core.config import load
from prefrestore.model.config import ModelConfig
from prefrestore.model.flow import FlowSchedule, flow_matching_loss, interpolate
from prefrestore.model.model import PrefRestoreModel


@pytest.fixture()
def model() -> PrefRestoreModel:
    torch.manual_seed(0)
    # the paper's conditioning (z_low as cross-attention tokens through vae_connector)
    cfg = dataclasses.replace(load("tiny").section("model", ModelConfig), lq_condition="cross_attn")
    return PrefRestoreModel.build(cfg, "")


@pytest.fixture(scope="module")
def schedule() -> FlowSchedule:
    return load("tiny").section("flow", FlowSchedule)


def _snapshot(model: PrefRestoreModel) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in model.named_parameters()}


def test_stage_1_1_group(model: PrefRestoreModel) -> None:
    names = model.freeze_for("1.1")
    assert "ar.lm.model.embed_tokens.weight" in names
    assert any(n.startswith("ar.lm.model.layers.") for n in names)
    assert any(n.startswith("diffusion_connector.") for n in names)
    assert any(n.startswith("transformer.caption_projection.") for n in names)
    assert any(n.startswith("transformer.caption_norm.") for n in names)
    for prefix in ("tokenizer.", "transformer.transformer_blocks.", "vae.", "vae_connector.", "transformer.patch_embed."):
        assert not any(n.startswith(prefix) for n in names), prefix
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == set(names)


def test_stage_1_2_group(model: PrefRestoreModel) -> None:
    names = model.freeze_for("1.2")
    assert any(n.startswith("transformer.transformer_blocks.") for n in names)
    assert any(n.startswith("vae.encoder.") for n in names)
    assert any(n.startswith("vae_connector.") for n in names)
    for prefix in ("tokenizer.", "ar.", "vae.decoder.", "diffusion_connector.", "transformer.patch_embed.",
                   "transformer.caption_projection."):
        assert not any(n.startswith(prefix) for n in names), prefix


def test_stage_1_2_group_with_channel_concat_trains_the_lq_input_projection() -> None:
    """z_low enters SANA through patch_embed's extra input channels: stage 1.2 trains that projection."""
    cfg = load("tiny").section("model", ModelConfig)
    assert cfg.lq_condition == "concat_channels"
    model = PrefRestoreModel.build(cfg, "")
    names = model.freeze_for("1.2")
    assert "transformer.patch_embed.proj.weight" in names
    assert any(n.startswith("transformer.transformer_blocks.") for n in names)
    for prefix in ("tokenizer.", "ar.", "vae.decoder.", "transformer.caption_projection.", "transformer.proj_out."):
        assert not any(n.startswith(prefix) for n in names), prefix
    assert "transformer.patch_embed.proj.weight" not in model.freeze_for("1.1")


def test_stage_2_is_lora_only(model: PrefRestoreModel) -> None:
    with pytest.raises(ValueError, match="LoRA"):
        model.freeze_for("2")
    from peft import LoraConfig, inject_adapter_in_model

    targets = list(load("tiny").tree["stage2"]["lora_targets"])
    inject_adapter_in_model(LoraConfig(r=2, lora_alpha=4, target_modules=targets), model.transformer)
    names = model.freeze_for("2")
    assert names and all("lora_" in n for n in names)
    assert any("attn1.to_q.lora_A" in n for n in names) and any("attn2.to_out.0.lora_B" in n for n in names)
    assert {n for n, p in model.named_parameters() if p.requires_grad} == set(names)
    with pytest.raises(ValueError, match="unknown stage"):
        model.trainable_parameter_names("3")  # type: ignore[arg-type]


def test_stage_1_1_step_trains_ar_through_frozen_sana(model: PrefRestoreModel, schedule: FlowSchedule) -> None:
    """Eq. 10: CE + alpha L_diff; L_diff's gradient reaches the AR through the frozen SANA."""
    model.freeze_for("1.1")
    g = torch.Generator().manual_seed(0)
    lq, hq = torch.rand(2, 3, 64, 64, generator=g), torch.rand(2, 3, 64, 64, generator=g)
    with torch.no_grad():
        hq_codes, z = model.lq_codes(hq), model.encode(hq)
    ids, mask = model.prompts(None, model.lq_codes(lq))
    before = _snapshot(model)
    opt = torch.optim.AdamW(model.trainable_parameters("1.1"), lr=1e-2)
    losses = []
    for _ in range(4):
        ce, hidden = model.ar_forward(ids, mask, hq_codes)
        cond = model.cond_from_hidden(hidden, None)
        noise = torch.randn(z.shape, generator=g)
        sigma = schedule.sample_sigma(2, generator=g)
        diff = flow_matching_loss(model.velocity(interpolate(z, noise, sigma), sigma, cond, schedule), z, noise)
        opt.zero_grad()
        if not losses:  # the diffusion loss alone gives the AR a gradient (through frozen SANA)
            diff.backward(retain_graph=True)
            layer = model.ar.lm.model.layers[0].mlp.up_proj.weight
            assert layer.grad is not None and layer.grad.abs().sum() > 0
            opt.zero_grad()
        (ce + diff).backward()
        opt.step()
        losses.append(ce.item())
    assert losses[-1] < losses[0], losses
    after = dict(model.named_parameters())
    for name, old in before.items():
        changed = not torch.equal(after[name].detach(), old)
        if name.startswith(("transformer.transformer_blocks.", "vae.", "tokenizer.", "transformer.patch_embed.")):
            assert not changed, f"frozen {name} changed"
    assert not torch.equal(after["diffusion_connector.0.weight"].detach(), before["diffusion_connector.0.weight"])


def test_stage_1_2_step(model: PrefRestoreModel, schedule: FlowSchedule) -> None:
    """Stage 1.2: L_diff + beta ||E(LQ) - E_frozen(HQ)||^2 (Eq. 11) updates SANA blocks and the encoder only."""
    model.freeze_for("1.2")
    frozen = model.frozen_encoder_copy()
    g = torch.Generator().manual_seed(1)
    lq, hq = torch.rand(2, 3, 64, 64, generator=g), torch.rand(2, 3, 64, 64, generator=g)
    with torch.no_grad():
        _, hidden = model.generate(lq, None)
        z_hq = model.encode(hq, encoder=frozen)
    before = _snapshot(model)
    opt = torch.optim.AdamW(model.trainable_parameters("1.2"), lr=1e-3)
    z_lq = model.encode(lq)
    cond = model.cond_from_hidden(hidden, None, lq_latent=z_lq)
    noise = torch.randn(z_hq.shape, generator=g)
    sigma = schedule.sample_sigma(2, generator=g)
    loss = flow_matching_loss(model.velocity(interpolate(z_hq, noise, sigma), sigma, cond, schedule), z_hq, noise)
    loss = loss + torch.mean((z_lq - z_hq) ** 2)
    opt.zero_grad()
    loss.backward()
    opt.step()
    after = dict(model.named_parameters())
    changed = {n for n, old in before.items() if not torch.equal(after[n].detach(), old)}
    assert any(n.startswith("vae.encoder.") for n in changed)
    assert any(n.startswith("transformer.transformer_blocks.") for n in changed)
    assert any(n.startswith("vae_connector.") for n in changed)
    assert not any(n.startswith(("ar.", "vae.decoder.", "tokenizer.", "transformer.patch_embed.")) for n in changed)
    for p in frozen.parameters():
        assert p.grad is None
