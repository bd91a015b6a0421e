"""DiffusionNFT end to end on a known answer (issue 7): a 2-D flow model of a two-mode mixture.

A tiny MLP velocity field is pretrained by flow matching on modes at (-2, 0) and (+2, 0). The NFT
loop (deterministic DPM-Solver-2 rollouts from the old policy, K samples per group, a reward that
prefers the right-hand mode, Eq. 12 advantages, Eqs. 13-15 loss, old-policy EMA) must move the
samples into that mode: the mean reward rises and the sample variance collapses.

The loop is :func:`prefrestore.train.nft.nft_epoch`, the one ``prefrestore stage2`` runs, with the
toy's policies plugged in through :class:`~prefrestore.train.nft.Policies`.
"""

from __future__ import annotations

import copy
import dataclasses

import pytest
import torch

from prefrestore.model.flow import FlowSchedule, flow_matching_loss, interpolate
from prefrestore.model.lora import ema_update_
from prefrestore.model.samplers import sample
from prefrestore.train.nft import Policies, Stage2Config, nft_epoch
from prefrestore.train.rollout_shards import GroupShard

TARGET = torch.tensor([2.0, 0.0])


class ToyVelocity(torch.nn.Module):
    """v(x, sigma) for 2-D points; the group index is accepted and ignored (one constant condition)."""

    def __init__(self, hidden: int = 64):
        super().__init__()
        self.net = torch.nn.Sequential(torch.nn.Linear(3, hidden), torch.nn.SiLU(),
                                       torch.nn.Linear(hidden, hidden), torch.nn.SiLU(),
                                       torch.nn.Linear(hidden, 2))

    def forward(self, x: torch.Tensor, sigma: torch.Tensor, group: torch.Tensor | None = None) -> torch.Tensor:
        return self.net(torch.cat([x, sigma[:, None].to(x.dtype)], dim=1))


def two_modes(n: int, g: torch.Generator) -> torch.Tensor:
    centre = torch.randint(0, 2, (n,), generator=g).float() * 4 - 2
    return torch.stack([centre, torch.zeros(n)], 1) + 0.25 * torch.randn(n, 2, generator=g)


def reward(x0: torch.Tensor, group: torch.Tensor) -> dict[str, torch.Tensor]:
    return {"target": -((x0 - TARGET) ** 2).sum(1)}


SCHED = FlowSchedule(shift=1.0, num_train_timesteps=1000)


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    """Tiny matmuls: extra intra-op threads only add contention on a shared machine."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def pretrained() -> ToyVelocity:
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    net = ToyVelocity()
    opt = torch.optim.Adam(net.parameters(), lr=3e-3)
    for _ in range(500):
        z, e = two_modes(256, g), torch.randn(256, 2, generator=g)
        s = SCHED.sample_sigma(256, generator=g)
        loss = flow_matching_loss(net(interpolate(z, e, s), s), z, e)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return net


def toy_cfg(tiny_params, form: str) -> Stage2Config:
    base = tiny_params.section("stage2", Stage2Config)
    return dataclasses.replace(base, group_size=16, sample_batch=64, train_batch=64, timesteps_per_sample=4,
                               sampler="dpm2", sampler_steps=8, lr=3e-3, weight_decay=0.0, loss_form=form,
                               policy_scale=1.0, decay_type=1)


class Run:
    """Policy, old policy, frozen reference and optimizer of one NFT run."""

    def __init__(self, base: ToyVelocity, cfg: Stage2Config):
        self.net = copy.deepcopy(base)
        self.old = copy.deepcopy(base).requires_grad_(False)
        self.ref = copy.deepcopy(base).requires_grad_(False)
        self.cfg = cfg
        self.opt = torch.optim.AdamW(self.net.parameters(), lr=cfg.lr, betas=cfg.adam_betas, eps=cfg.adam_eps,
                                     weight_decay=cfg.weight_decay)

    def epoch(self, step: int, g: torch.Generator) -> dict:
        policies = Policies(current=self.net, old=self.old, ref=self.ref, sampler=self.old, noise_shape=(2,),
                            score=reward, update_old=lambda d: ema_update_(self.old.parameters(),
                                                                           self.net.parameters(), d))
        shard = GroupShard(("s0", "s1", "s2", "s3"), self.cfg.group_size, 0, 1)
        stats, x0, stepped = nft_epoch(policies, shard, {"target": 1.0}, self.cfg, SCHED, self.opt,
                                       list(self.net.parameters()), step, g)
        assert stepped
        flat = x0.reshape(x0.shape[0], -1)
        return {**stats, "x0": x0, "rollout_var": float(flat.var(dim=0, unbiased=True).mean())}


def test_pretrained_toy_has_both_modes(pretrained: ToyVelocity) -> None:
    noise = torch.randn(2000, 2, generator=torch.Generator().manual_seed(5))
    x = sample(lambda x, s: pretrained(x, s), noise, SCHED.sigmas(10), method="dpm2")
    right = float((x[:, 0] > 0).float().mean())
    assert 0.35 < right < 0.65
    assert float(x[:, 0].abs().mean()) == pytest.approx(2.0, abs=0.3)


@pytest.mark.parametrize("form", ["x0_adaptive", "velocity"])
def test_nft_moves_samples_to_the_rewarded_mode(pretrained: ToyVelocity, tiny_params, form: str) -> None:
    run = Run(pretrained, toy_cfg(tiny_params, form))
    ref_before = [p.clone() for p in run.ref.parameters()]
    g = torch.Generator().manual_seed(1)
    history = [run.epoch(step, g) for step in range(40)]
    r0 = history[0]["reward/total_mean"]
    r_end = sum(h["reward/total_mean"] for h in history[-3:]) / 3
    v0, v_end = history[0]["rollout_var"], history[-1]["rollout_var"]
    assert r0 < -5.0  # half the samples start in the wrong mode (squared distance ~16)
    assert r_end > -1.0 and r_end > r0 + 4.0  # mean reward rises
    assert v_end < 0.1 * v0  # sample variance collapses onto one mode
    assert float((history[-1]["x0"][:, 0] > 0).float().mean()) > 0.95
    assert all(torch.equal(a, b) for a, b in zip(ref_before, run.ref.parameters(), strict=True))  # frozen ref
    assert history[-1]["train/old_decay"] == pytest.approx(0.04)  # type 1 after 40 steps
    # the old policy trails the current one: it moved, but is not identical to it
    diff = sum(float((a - b).detach().abs().sum()) for a, b in zip(run.old.parameters(), run.net.parameters(), strict=True))
    assert diff > 0


def test_resume_equals_uninterrupted(pretrained: ToyVelocity, tiny_params) -> None:
    cfg = dataclasses.replace(toy_cfg(tiny_params, "x0_adaptive"), group_size=4, timesteps_per_sample=2)
    straight = Run(pretrained, cfg)
    g = torch.Generator().manual_seed(3)
    for step in range(4):
        straight.epoch(step, g)

    first = Run(pretrained, cfg)
    g = torch.Generator().manual_seed(3)
    for step in range(2):
        first.epoch(step, g)
    saved = copy.deepcopy({"net": first.net.state_dict(), "old": first.old.state_dict(),
                           "opt": first.opt.state_dict(), "rng": g.get_state()})
    resumed = Run(pretrained, cfg)
    resumed.net.load_state_dict(saved["net"])
    resumed.old.load_state_dict(saved["old"])
    resumed.opt.load_state_dict(saved["opt"])
    g2 = torch.Generator()
    g2.set_state(saved["rng"])
    for step in range(2, 4):
        resumed.epoch(step, g2)
    for a, b in zip(straight.net.parameters(), resumed.net.parameters(), strict=True):
        assert torch.equal(a, b)
    for a, b in zip(straight.old.parameters(), resumed.old.parameters(), strict=True):
        assert torch.equal(a, b)
