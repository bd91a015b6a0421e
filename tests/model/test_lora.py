"""LoRA wiring of stage 2 on the real (tiny) SANA transformer: targets, freezing, policies, EMA, merge."""

from __future__ import annotations

import pytest
import torch

from prefrestore.core.config import load
from prefrestore.model import lora
from prefrestore.model.config import ModelConfig
from prefrestore.model.generator import build_transformer
from prefrestore.model.lora import ema_update_
from prefrestore.train.nft import Stage2Config

TINY = load("tiny")
S2 = TINY.section("stage2", Stage2Config)
MODEL = TINY.section("model", ModelConfig)


def _transformer(seed: int = 0):
    torch.manual_seed(seed)
    return build_transformer(MODEL.generator, MODEL.vae.latent_channels, MODEL.latent_size,
                             MODEL.extra_in_channels).eval()


def _inputs(batch: int = 2):
    g = torch.Generator().manual_seed(3)
    c, s = MODEL.vae.latent_channels + MODEL.extra_in_channels, MODEL.latent_size  # [x_t | LQ latent] when concat
    x = torch.randn(batch, c, s, s, generator=g)
    cond = torch.randn(batch, 12, MODEL.generator.caption_channels, generator=g)
    t = torch.tensor([300.0, 800.0][:batch])
    return x, cond, t


def _v(tr, x, cond, t):
    return tr(x, encoder_hidden_states=cond, timestep=t, return_dict=False)[0]


@torch.no_grad()
def _perturb(tr, adapter: str, scale: float = 0.1, seed: int = 1) -> None:
    g = torch.Generator().manual_seed(seed)
    for p in lora.adapter_parameters(tr, adapter).values():
        p.add_(torch.randn(p.shape, generator=g) * scale)


def test_lora_targets_exactly_the_attention_projections() -> None:
    tr = _transformer()
    wrapped = lora.add_lora(tr, S2.lora_rank, S2.lora_alpha, S2.lora_targets)
    layers = MODEL.generator.num_layers
    assert len(wrapped) == 8 * layers  # attn1/attn2 x to_q/to_k/to_v/to_out.0 in every block
    suffixes = {w.split(".", 2)[2] for w in wrapped}
    assert suffixes == set(S2.lora_targets)
    trainable = {n for n, p in tr.named_parameters() if p.requires_grad}
    assert trainable == set(lora.adapter_parameters(tr, lora.CURRENT))
    assert len(trainable) == 2 * len(wrapped)  # lora_A and lora_B per wrapped module
    assert all(".default." in n and "lora_" in n for n in trainable)
    a = lora.adapter_parameters(tr, lora.CURRENT)
    first_a = next(v for k, v in a.items() if "lora_A" in k)
    assert first_a.shape[0] == S2.lora_rank


def test_unknown_target_is_an_error() -> None:
    with pytest.raises(ValueError, match="attn9.to_q"):
        lora.add_lora(_transformer(), 4, 8, ("attn1.to_q", "attn9.to_q"))


def test_fresh_adapters_leave_the_model_unchanged() -> None:
    base = _transformer()
    x, cond, t = _inputs()
    with torch.no_grad():
        v0 = _v(base, x, cond, t)
        lora.add_lora(base, S2.lora_rank, S2.lora_alpha, S2.lora_targets)
        assert torch.equal(_v(base, x, cond, t), v0)  # B = 0 at init


def test_policies_current_old_reference() -> None:
    tr = _transformer()
    x, cond, t = _inputs()
    with torch.no_grad():
        v_base = _v(tr, x, cond, t)
    lora.add_lora(tr, S2.lora_rank, S2.lora_alpha, S2.lora_targets)
    _perturb(tr, lora.CURRENT)
    with torch.no_grad():
        v_cur = _v(tr, x, cond, t)
        with lora.use_policy(tr, lora.OLD):
            v_old = _v(tr, x, cond, t)
        with lora.use_policy(tr, None):
            v_ref = _v(tr, x, cond, t)
    assert not torch.allclose(v_cur, v_base, atol=1e-4)
    assert torch.allclose(v_old, v_base, atol=1e-6)  # old is still the initial copy
    assert torch.allclose(v_ref, v_base, atol=1e-6)  # adapters disabled = the stage-1 model
    # after the context the current adapter is back, and it is the only trainable tensor set
    with torch.no_grad():
        assert torch.allclose(_v(tr, x, cond, t), v_cur)
    assert {n for n, p in tr.named_parameters() if p.requires_grad} == set(lora.adapter_parameters(tr, lora.CURRENT))


def test_optimizer_step_changes_only_the_current_adapter_and_old_moves_by_ema() -> None:
    tr = _transformer()
    lora.add_lora(tr, S2.lora_rank, S2.lora_alpha, S2.lora_targets)
    before = {n: p.detach().clone() for n, p in tr.named_parameters()}
    params = list(lora.adapter_parameters(tr, lora.CURRENT).values())
    opt = torch.optim.AdamW(params, lr=1e-2)
    x, cond, t = _inputs()
    with lora.use_policy(tr, lora.OLD), torch.no_grad():
        target = _v(tr, x, cond, t) + 1.0
    loss = ((_v(tr, x, cond, t) - target) ** 2).mean()
    loss.backward()
    opt.step()
    changed = {n for n, p in tr.named_parameters() if not torch.equal(p, before[n])}
    assert changed and changed <= set(lora.adapter_parameters(tr, lora.CURRENT))
    old = lora.adapter_parameters(tr, lora.OLD)
    assert all(torch.equal(p, before[n]) for n, p in old.items())  # no gradient ever reaches the old one
    cur = lora.adapter_state(tr, lora.CURRENT)
    old_before = lora.adapter_state(tr, lora.OLD)
    lora.update_old_(tr, 0.25)
    old_after = lora.adapter_state(tr, lora.OLD)
    for k in cur:
        assert torch.allclose(old_after[k], 0.25 * old_before[k] + 0.75 * cur[k], atol=1e-7)


def test_merge_into_base_equals_the_adapted_model() -> None:
    tr = _transformer()
    names = set(tr.state_dict())
    lora.add_lora(tr, S2.lora_rank, S2.lora_alpha, S2.lora_targets)
    _perturb(tr, lora.CURRENT, seed=5)
    _perturb(tr, lora.OLD, seed=6)  # the old adapter must NOT leak into the merged weights
    x, cond, t = _inputs()
    with torch.no_grad():
        v_cur = _v(tr, x, cond, t)
    lora.merge_into_base(tr)
    assert set(tr.state_dict()) == names  # plain diffusers names: loads like any transformer
    with torch.no_grad():
        assert torch.allclose(_v(tr, x, cond, t), v_cur, atol=1e-5)


def test_adapter_state_round_trip_and_mismatch() -> None:
    a, b = _transformer(), _transformer()
    for tr in (a, b):
        lora.add_lora(tr, S2.lora_rank, S2.lora_alpha, S2.lora_targets)
    _perturb(a, lora.CURRENT, seed=9)
    state = lora.adapter_state(a, lora.CURRENT)
    assert all(".default." not in k for k in state)  # portable keys
    lora.load_adapter_state(b, lora.OLD, state)
    assert all(torch.equal(state[k], v) for k, v in lora.adapter_state(b, lora.OLD).items())
    state.pop(next(iter(state)))
    with pytest.raises(ValueError, match="mismatch"):
        lora.load_adapter_state(b, lora.CURRENT, state)


def test_init_is_seeded_and_leaves_the_global_rng_alone() -> None:
    a, b, c = _transformer(), _transformer(), _transformer()
    state = torch.get_rng_state()
    lora.add_lora(a, 4, 8, S2.lora_targets, seed=11)
    assert torch.equal(torch.get_rng_state(), state)
    torch.rand(3)  # move the global RNG: the init must not depend on it
    lora.add_lora(b, 4, 8, S2.lora_targets, seed=11)
    lora.add_lora(c, 4, 8, S2.lora_targets, seed=12)
    sa, sb, sc = (lora.adapter_state(t, lora.CURRENT) for t in (a, b, c))
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert not all(torch.equal(sa[k], sc[k]) for k in sa)


def test_ema_update_in_place() -> None:
    old = [torch.full((2,), 4.0), torch.zeros(3)]
    new = [torch.full((2,), 2.0), torch.ones(3)]
    ema_update_(old, new, 0.25)
    assert torch.allclose(old[0], torch.full((2,), 0.25 * 4 + 0.75 * 2))
    assert torch.allclose(old[1], torch.full((3,), 0.75))
    assert torch.equal(new[0], torch.full((2,), 2.0))  # the current policy is not touched
    ema_update_(old, new, 0.0)
    assert torch.equal(old[0], new[0])  # d = 0: copy
    with pytest.raises(ValueError, match="share"):
        ema_update_(new, new, 0.5)

