"""Flow schedule and loss: the end points, one shift for training and sampling, interpolation, CFG drop."""

from __future__ import annotations

import pytest
import torch

from prefrestore.core.config import ConfigError
from prefrestore.model.flow import (
    FlowSchedule,
    drop_condition,
    flow_matching_loss,
    interpolate,
    velocity_target,
)


@pytest.mark.parametrize("shift", [1.0, 3.0])
def test_sigmas_descend_from_one_to_exactly_zero(shift: float) -> None:
    sig = FlowSchedule(shift=shift, num_train_timesteps=1000).sigmas(30)
    assert sig.shape == (31,)
    assert sig[0].item() == 1.0 and sig[-1].item() == 0.0  # trap 2: not 1/30
    assert bool((sig[1:] < sig[:-1]).all())


def test_shift_one_is_uniform_grid() -> None:
    sig = FlowSchedule(shift=1.0, num_train_timesteps=1000).sigmas(4)
    assert torch.allclose(sig, torch.tensor([1.0, 0.75, 0.5, 0.25, 0.0]))


def test_shift_pushes_sigmas_towards_noise() -> None:
    plain = FlowSchedule(1.0, 1000).sigmas(10)
    shifted = FlowSchedule(3.0, 1000).sigmas(10)
    assert bool((shifted[1:-1] > plain[1:-1]).all())
    assert torch.allclose(shifted[5], torch.tensor(3 * 0.5 / (1 + 2 * 0.5)))


@pytest.mark.parametrize("shift", [1.0, 3.0])
def test_training_sigmas_follow_the_sampling_shift(shift: float) -> None:
    """Trap 3: the training draw is the image of U(0,1) under the very shift_fn behind sigmas()."""
    sched = FlowSchedule(shift=shift, num_train_timesteps=1000)
    g = torch.Generator().manual_seed(0)
    train = sched.sample_sigma(200_000, generator=g).double()
    # the grid with N steps puts sigma_k = shift_fn(1 - k/N): the fraction of training sigmas below
    # each grid value must be 1 - k/N (the CDF of uniform t mapped through the same function)
    grid = sched.sigmas(10).double()
    for k in range(1, 10):
        frac_below = float((train < grid[k]).double().mean())
        assert frac_below == pytest.approx(1 - k / 10, abs=4e-3)
    # and with another schedule's shift it would NOT match
    other = FlowSchedule(shift=shift + 2.0, num_train_timesteps=1000).sigmas(10).double()
    assert abs(float((train < other[5]).double().mean()) - 0.5) > 0.05


def test_sample_sigma_is_reproducible_and_in_range() -> None:
    sched = FlowSchedule(3.0, 1000)
    a = sched.sample_sigma(64, generator=torch.Generator().manual_seed(1))
    b = sched.sample_sigma(64, generator=torch.Generator().manual_seed(1))
    assert torch.equal(a, b) and a.shape == (64,)
    assert bool(((a >= 0) & (a <= 1)).all())


def test_timestep_convention() -> None:
    assert torch.allclose(FlowSchedule(1.0, 1000).timestep(torch.tensor([0.5, 1.0])), torch.tensor([500.0, 1000.0]))


def test_interpolate_and_target() -> None:
    z = torch.randn(3, 2, 4, 4)
    noise = torch.randn(3, 2, 4, 4)
    sigma = torch.tensor([0.0, 0.5, 1.0])
    x = interpolate(z, noise, sigma)
    assert torch.equal(x[0], z[0]) and torch.equal(x[2], noise[2])
    assert torch.allclose(x[1], 0.5 * z[1] + 0.5 * noise[1])
    # the target is the derivative of x wrt sigma
    d = (interpolate(z, noise, sigma + 1e-3) - interpolate(z, noise, sigma - 1e-3)) / 2e-3
    assert torch.allclose(d, velocity_target(z, noise), atol=1e-3)
    with pytest.raises(ValueError, match="batch"):
        interpolate(z, noise, torch.tensor([0.1, 0.2]))


def test_flow_matching_loss_zero_at_target_and_positive_elsewhere() -> None:
    z, noise = torch.randn(2, 8), torch.randn(2, 8)
    assert flow_matching_loss(noise - z, z, noise).item() == 0.0
    assert flow_matching_loss(torch.zeros(2, 8), z, noise).item() == pytest.approx(((noise - z) ** 2).mean().item())


def test_drop_condition_zeroes_whole_rows_at_rate_p() -> None:
    cond = torch.ones(4000, 3, 5)
    out = drop_condition(cond, 0.1, generator=torch.Generator().manual_seed(0))
    rows = out.flatten(1)
    dropped = (rows == 0).all(1)
    assert bool(((rows == 1).all(1) | dropped).all())  # each row kept or zeroed whole
    assert float(dropped.float().mean()) == pytest.approx(0.1, abs=0.02)
    assert torch.equal(cond, torch.ones(4000, 3, 5))  # input untouched
    assert drop_condition(cond, 0.0) is cond


def test_schedule_from_params(tiny_params) -> None:
    sched = tiny_params.section("flow", FlowSchedule)
    assert sched.num_train_timesteps == 1000
    with pytest.raises(ConfigError):
        tiny_params.with_overrides({"flow.shift": -1.0}).section("flow", FlowSchedule)
