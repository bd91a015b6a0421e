"""DiffusionNFT pieces against hand computations: Eq. 12 advantages, Eqs. 13-15 loss, old-policy EMA."""

from __future__ import annotations

import pytest
import torch

from prefrestore.core.config import ConfigError
from prefrestore.train.nft import Stage2Config
from prefrestore.train.nft_objective import advantages, nft_loss, old_policy_decay

# ---------------------------------------------------------------------------------------------- Eq. 12


def test_advantages_hand_computed() -> None:
    rewards = torch.tensor([1.0, 3.0, 10.0, 14.0])
    ids = ["face_a", "face_a", "face_b", "face_b"]
    a, r, stats = advantages(rewards, ids, clip=5.0, eps=1e-4)
    std_global = rewards.double().std(unbiased=False).item()  # population std of the whole batch
    expected = torch.tensor([-1.0, 1.0, -2.0, 2.0]) / (std_global + 1e-4)
    assert torch.allclose(a, expected.float(), atol=1e-6)
    assert torch.allclose(r, (expected.clamp(-5, 5) / 5 / 2 + 0.5).float(), atol=1e-6)
    assert stats["num_groups"] == 2 and stats["zero_std_groups"] == 0


def test_advantages_clip_and_range() -> None:
    rewards = torch.tensor([0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 100.0])
    a, r, stats = advantages(rewards, [0] * 8, clip=1.0, eps=1e-4)
    assert float(a.max()) > 1.0  # raw advantage exceeds the clip ...
    assert float(r.max()) == 1.0 and float(r.min()) >= 0.0  # ... r saturates at 1
    assert stats["clipped_fraction"] > 0


def test_groups_are_keyed_by_sample_id_not_caption() -> None:
    """Trap 4: two faces with the same caption are two groups; each is centred on its own mean."""
    rewards = torch.tensor([1.0, 2.0, 5.0, 6.0])
    captions = ["a photography of a man"] * 4
    sample_ids = [7, 7, 9, 9]
    a_id, _, s_id = advantages(rewards, sample_ids, clip=5.0, eps=1e-4)
    a_cap, _, s_cap = advantages(rewards, captions, clip=5.0, eps=1e-4)
    assert s_id["num_groups"] == 2 and s_cap["num_groups"] == 1
    assert torch.allclose(a_id[:2].sum(), torch.tensor(0.0), atol=1e-6)  # centred within sample 7
    assert float(a_cap[0]) < float(a_id[0])  # merged by caption, face 7 looks uniformly bad


def test_zero_variance_groups_are_counted_and_neutral() -> None:
    rewards = torch.tensor([2.0, 2.0, 2.0, 1.0, 3.0, 5.0])
    a, r, stats = advantages(rewards, ["x", "x", "x", "y", "y", "y"], clip=5.0, eps=1e-4)
    assert stats["zero_std_groups"] == 1 and stats["zero_std_ratio"] == 0.5
    assert torch.equal(a[:3], torch.zeros(3)) and torch.equal(r[:3], torch.full((3,), 0.5))
    # all-equal batch: no NaN, everything neutral
    a, r, stats = advantages(torch.ones(4), [0, 0, 1, 1], clip=5.0, eps=1e-4)
    assert torch.equal(r, torch.full((4,), 0.5)) and stats["zero_std_groups"] == 2


def test_advantages_reject_bad_input() -> None:
    with pytest.raises(ValueError, match="group ids"):
        advantages(torch.ones(3), [0, 1], clip=5.0, eps=1e-4)
    with pytest.raises(ValueError, match="NaN"):
        advantages(torch.tensor([1.0, float("nan")]), [0, 0], clip=5.0, eps=1e-4)


# ---------------------------------------------------------------------------------------------- Eqs. 13-15


def _case():
    g = torch.Generator().manual_seed(0)
    shape = (3, 2, 2)
    x0 = torch.randn(shape, generator=g, dtype=torch.float64)
    eps = torch.randn(shape, generator=g, dtype=torch.float64)
    sigma = torch.tensor([0.2, 0.5, 0.9], dtype=torch.float64)
    x_t = (1 - sigma[:, None, None]) * x0 + sigma[:, None, None] * eps
    v_theta = torch.randn(shape, generator=g, dtype=torch.float64, requires_grad=True)
    v_old = torch.randn(shape, generator=g, dtype=torch.float64)
    v_ref = torch.randn(shape, generator=g, dtype=torch.float64)
    r = torch.tensor([1.0, 0.25, 0.0], dtype=torch.float64)
    return x0, eps, sigma, x_t, v_theta, v_old, v_ref, r


def test_velocity_form_hand_computed() -> None:
    x0, eps, sigma, x_t, vt, vo, vr, r = _case()
    g, kl_w = 0.1, 0.01
    loss, parts = nft_loss(vt, vo, x_t, sigma, x0, r, beta=g, form="velocity", kl_weight=kl_w,
                           policy_scale=1.0, target_v=eps - x0, v_ref=vr)
    total = 0.0
    for i in range(3):  # element by element, as written in Eq. 15
        u = eps[i] - x0[i]
        vp = (1 - g) * vo[i] + g * vt[i]
        vn = (1 + g) * vo[i] - g * vt[i]
        total += r[i] * ((vp - u) ** 2).mean() + (1 - r[i]) * ((vn - u) ** 2).mean()
    expected = total / 3 + kl_w * ((vt - vr) ** 2).mean()
    assert loss.item() == pytest.approx(expected.item(), rel=1e-12)
    assert parts["kl"].item() == pytest.approx(((vt - vr) ** 2).mean().item())
    # target recovered from x_t when not given
    loss2, _ = nft_loss(vt, vo, x_t, sigma, x0, r, beta=g, form="velocity", kl_weight=kl_w,
                        policy_scale=1.0, v_ref=vr)
    assert loss2.item() == pytest.approx(loss.item(), rel=1e-9)


def test_x0_adaptive_form_hand_computed() -> None:
    x0, eps, sigma, x_t, vt, vo, vr, r = _case()
    g, scale = 0.1, 5.0
    loss, _ = nft_loss(vt, vo, x_t, sigma, x0, r, beta=g, form="x0_adaptive", kl_weight=0.0,
                       policy_scale=scale)
    total = 0.0
    for i in range(3):
        terms = []
        for v in ((1 - g) * vo[i] + g * vt[i], (1 + g) * vo[i] - g * vt[i]):
            err = x_t[i] - sigma[i] * v - x0[i]
            terms.append((err**2).mean() / err.abs().mean().detach())
        total += r[i] * terms[0] + (1 - r[i]) * terms[1]
    assert loss.item() == pytest.approx((scale * total / 3 / g).item(), rel=1e-12)


@pytest.mark.parametrize("form", ["velocity", "x0_adaptive"])
def test_r_one_and_zero_reduce_to_pure_positive_and_negative(form: str) -> None:
    x0, eps, sigma, x_t, vt, vo, _, _ = _case()
    g = 0.1
    kw = dict(beta=g, form=form, kl_weight=0.0, policy_scale=1.0, target_v=eps - x0)
    ones, zeros = torch.ones(3, dtype=torch.float64), torch.zeros(3, dtype=torch.float64)
    l_pos, parts_pos = nft_loss(vt, vo, x_t, sigma, x0, ones, **kw)
    l_neg, parts_neg = nft_loss(vt, vo, x_t, sigma, x0, zeros, **kw)
    div = g if form == "x0_adaptive" else 1.0
    assert l_pos.item() == pytest.approx(parts_pos["positive_loss"].item() / div, rel=1e-12)
    assert l_neg.item() == pytest.approx(parts_neg["negative_loss"].item() / div, rel=1e-12)
    # the positive objective is minimised by v_theta moving v+ onto the target: v+ = u exactly
    u = eps - x0
    if form == "velocity":
        v_star = (u - (1 - g) * vo) / g
        best, _ = nft_loss(v_star, vo, x_t, sigma, x0, ones, **kw)
        assert best.item() == pytest.approx(0.0, abs=1e-20)
        # and the negative objective pushes v_theta the other way: v- = u at the mirrored point
        v_neg_star = ((1 + g) * vo - u) / g
        best_neg, _ = nft_loss(v_neg_star, vo, x_t, sigma, x0, zeros, **kw)
        assert best_neg.item() == pytest.approx(0.0, abs=1e-20)


def test_gradient_flows_only_into_v_theta() -> None:
    x0, eps, sigma, x_t, vt, vo, vr, r = _case()
    vo = vo.clone().requires_grad_(True)
    loss, _ = nft_loss(vt, vo, x_t, sigma, x0, r, beta=0.1, form="x0_adaptive", kl_weight=1e-4,
                       policy_scale=1.0, v_ref=vr)
    loss.backward()
    assert vt.grad is not None and float(vt.grad.abs().sum()) > 0
    assert vo.grad is None  # v_old is a constant of the objective


def test_nft_loss_rejects_bad_calls() -> None:
    x0, eps, sigma, x_t, vt, vo, vr, r = _case()
    with pytest.raises(ValueError, match="v_ref"):
        nft_loss(vt, vo, x_t, sigma, x0, r, beta=0.1, form="velocity", kl_weight=1e-4, policy_scale=1.0)
    with pytest.raises(ValueError, match="form"):
        nft_loss(vt, vo, x_t, sigma, x0, r, beta=0.1, form="eps", kl_weight=0.0, policy_scale=1.0)  # type: ignore[arg-type]


# ---------------------------------------------------------------------------------------------- old policy


def test_old_policy_decay_schedules() -> None:
    assert [old_policy_decay(s, 0) for s in (0, 10, 10_000)] == [0.0, 0.0, 0.0]
    assert old_policy_decay(0, 1) == 0.0
    assert old_policy_decay(100, 1) == pytest.approx(0.1)
    assert old_policy_decay(499, 1) == pytest.approx(0.499)
    assert old_policy_decay(10_000, 1) == 0.5
    assert old_policy_decay(74, 2) == 0.0 and old_policy_decay(75, 2) == 0.0
    assert old_policy_decay(175, 2) == pytest.approx(0.75)
    assert old_policy_decay(10_000, 2) == 0.999
    with pytest.raises(ValueError):
        old_policy_decay(1, 3)


# ---------------------------------------------------------------------------------------------- config


@pytest.mark.parametrize("profile", ["paper", "released", "tiny"])
def test_stage2_section_loads(profile: str) -> None:
    from prefrestore.core.config import load

    cfg = load(profile).section("stage2", Stage2Config)
    assert cfg.beta == 0.1 and cfg.adv_clip == 5.0 and cfg.kl_weight == 1e-4 and cfg.decay_type == 1
    if profile == "paper":
        assert (cfg.group_size, cfg.groups_per_epoch, cfg.sample_batch) == (24, 48, 72)
        assert cfg.lr == 3e-4 and cfg.lora_rank == 32 and cfg.lora_alpha == 64 and cfg.loss_form == "velocity"
        assert cfg.train_timesteps == "fresh" and cfg.zero_std_groups == "keep"
    if profile == "released":
        assert cfg.loss_form == "x0_adaptive" and cfg.policy_scale == 5.0
        assert cfg.train_timesteps == "grid" and cfg.zero_std_groups == "keep"
        assert (cfg.timesteps_per_sample, cfg.sampler_steps) == (29, 30)  # int(30 * 0.99) of 30


def test_stage2_ranges_are_checked(tiny_params) -> None:
    with pytest.raises(ConfigError, match="beta"):
        tiny_params.with_overrides({"stage2.beta": 2.0}).section("stage2", Stage2Config)
    with pytest.raises(ConfigError):
        tiny_params.with_overrides({"stage2.loss_form": "eps"}).section("stage2", Stage2Config)
    with pytest.raises(ConfigError, match="zero_std_groups"):
        tiny_params.with_overrides({"stage2.zero_std_groups": "skip"}).section("stage2", Stage2Config)
    with pytest.raises(ConfigError, match="rollout grid"):
        tiny_params.with_overrides({"stage2.train_timesteps": "grid", "stage2.sampler_steps": 2,
                                    "stage2.timesteps_per_sample": 3}).section("stage2", Stage2Config)


# ---------------------------------------------------------------------------------------------- timesteps


def test_grid_timesteps_are_a_shuffled_subset_of_the_rollout_grid() -> None:
    """``train_timesteps: grid``: each rollout trains at k distinct sigmas of its own sampler grid
    (never sigma = 0), in an order that differs between rollouts and is fixed by the generator."""
    from prefrestore.core.config import load
    from prefrestore.model.flow import FlowSchedule
    from prefrestore.train.nft import grid_timesteps

    params = load("released")
    cfg = params.section("stage2", Stage2Config)
    schedule = params.section("flow", FlowSchedule)
    grid = schedule.sigmas(cfg.sampler_steps)[:-1]
    a = grid_timesteps(64, cfg, schedule, torch.Generator().manual_seed(0))
    b = grid_timesteps(64, cfg, schedule, torch.Generator().manual_seed(0))
    assert a.shape == (64, 29) and torch.equal(a, b)
    assert bool((a > 0).all())
    for row in a:
        assert len(set(row.tolist())) == 29 and set(row.tolist()) <= set(grid.tolist())
    assert len({tuple(row.tolist()) for row in a}) > 60  # shuffled per rollout
    assert not torch.equal(a, grid_timesteps(64, cfg, schedule, torch.Generator().manual_seed(1)))


@pytest.mark.parametrize("mode", ["fresh", "grid"])
def test_nft_train_step_trains_at_the_chosen_timesteps(tiny_params, mode: str) -> None:
    """The sigmas the policy is trained at come from the rollout grid under ``grid``, and are fresh
    draws (almost surely off the grid) under ``fresh``."""
    import dataclasses

    from prefrestore.model.flow import FlowSchedule
    from prefrestore.train.nft import Rollouts, nft_train_step

    cfg = dataclasses.replace(tiny_params.section("stage2", Stage2Config), train_timesteps=mode,
                              sampler_steps=6, timesteps_per_sample=4, train_batch=3, kl_weight=0.0)
    schedule = tiny_params.section("flow", FlowSchedule)
    grid = set(schedule.sigmas(cfg.sampler_steps)[:-1].tolist())
    net = torch.nn.Linear(3, 2)
    seen: list[float] = []

    def v_theta(x, sigma, group):
        seen.extend(sigma.tolist())
        return net(torch.cat([x, sigma[:, None]], 1))

    def v_old(x, sigma, group):
        return torch.zeros_like(x)

    rolls = Rollouts(x0=torch.randn(5, 2), group=torch.zeros(5, dtype=torch.long), noise=torch.randn(5, 2))
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    nft_train_step(v_theta, v_old, None, rolls, torch.full((5,), 0.7), cfg, schedule, opt, list(net.parameters()),
                   torch.Generator().manual_seed(0))
    assert len(seen) == 5 * 4
    on_grid = sum(s in grid for s in seen)
    assert on_grid == (len(seen) if mode == "grid" else 0)
