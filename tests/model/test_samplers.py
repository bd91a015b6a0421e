"""Samplers on known answers: a linear ODE and Gaussian-to-Gaussian flow matching (exact velocity)."""

from __future__ import annotations

import math

import pytest
import torch

from prefrestore.model.flow import FlowSchedule
from prefrestore.model.samplers import sample, with_cfg

MU = torch.tensor([2.0, -1.0])  # data N(MU, SD^2) per dimension
SD = torch.tensor([0.5, 1.5])


def gaussian_velocity(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """Exact flow-matching field E[eps - z | x_sigma = x] for z ~ N(MU, SD^2), eps ~ N(0, 1)."""
    s = sigma.to(x.dtype)[:, None]
    mean = (1 - s) * MU
    var = (1 - s) ** 2 * SD**2 + s**2
    return -MU + (s - (1 - s) * SD**2) * (x - mean) / var


def exact_map(noise: torch.Tensor) -> torch.Tensor:
    """The flow ODE's end point: the Gaussian-to-Gaussian map is affine, z = MU + SD * x1."""
    return MU + SD * noise


def grid(n: int, shift: float = 1.0) -> torch.Tensor:
    return FlowSchedule(shift=shift, num_train_timesteps=1000).sigmas(n)


@pytest.mark.parametrize("method", ["euler", "dpm2"])
def test_linear_field_closed_form(method: str) -> None:
    """dx/dsigma = a x  =>  x(0) = x(1) exp(-a)."""
    a = 0.7
    x1 = torch.randn(5, 3, dtype=torch.float64)
    out = sample(lambda x, s: a * x, x1, grid(400).double(), method=method)
    assert torch.allclose(out, x1 * math.exp(-a), rtol=5e-3)


def test_euler_is_exact_for_constant_field() -> None:
    x1 = torch.randn(4, 2)
    c = torch.tensor([0.3, -2.0])
    out = sample(lambda x, s: c.expand_as(x), x1, grid(3))
    assert torch.allclose(out, x1 - c, atol=1e-6)


@pytest.mark.parametrize("method", ["euler", "dpm2"])
@pytest.mark.parametrize("shift", [1.0, 3.0])
def test_gaussian_flow_maps_noise_to_data_distribution(method: str, shift: float) -> None:
    noise = torch.randn(5000, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    noise = (noise - noise.mean(0)) / noise.std(0)  # exact N(0, 1) sample moments: checks the solver, not luck
    steps = 100 if method == "dpm2" else 500  # Euler is first order: it needs more steps for 1e-2
    out = sample(gaussian_velocity, noise, grid(steps, shift).double(), method=method)
    assert torch.allclose(out.mean(0), MU.double(), atol=0.02)
    assert torch.allclose(out.std(0), SD.double(), atol=0.02)
    assert torch.allclose(out, exact_map(noise), atol=0.02)


def test_dpm2_beats_euler_at_equal_steps_and_is_second_order() -> None:
    noise = torch.randn(2000, 2, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    target = exact_map(noise)

    def err(method: str, n: int) -> float:
        return float((sample(gaussian_velocity, noise, grid(n).double(), method=method) - target).abs().max())

    for n in (8, 16, 32):
        assert err("dpm2", n) < 0.5 * err("euler", n)
    # halving the step: Euler's error ~halves, DPM-Solver-2's drops ~4x
    assert err("euler", 16) / err("euler", 32) < 2.5
    assert err("dpm2", 16) / err("dpm2", 32) > 3.0


def test_sampler_is_deterministic_and_returns_trajectory() -> None:
    noise = torch.randn(6, 2)
    a = sample(gaussian_velocity, noise, grid(5), method="dpm2")
    b, traj = sample(gaussian_velocity, noise, grid(5), method="dpm2", return_trajectory=True)
    assert torch.equal(a, b)
    assert len(traj) == 6 and torch.equal(traj[0], noise) and torch.equal(traj[-1], b)


def test_velocity_fn_sees_per_row_sigma_batch() -> None:
    seen = []

    def v(x, s):
        seen.append(s.clone())
        return torch.zeros_like(x)

    sample(v, torch.randn(3, 2), grid(4), method="euler")
    assert [float(s[0]) for s in seen] == [1.0, 0.75, 0.5, 0.25]
    assert all(s.shape == (3,) for s in seen)


def test_bad_grid_is_rejected() -> None:
    with pytest.raises(ValueError, match="decreasing"):
        sample(gaussian_velocity, torch.randn(2, 2), torch.tensor([0.0, 1.0]))
    with pytest.raises(ValueError, match="unknown sampler"):
        sample(gaussian_velocity, torch.randn(2, 2), grid(2), method="heun")  # type: ignore[arg-type]


def test_cfg_scale_one_calls_only_conditional() -> None:
    calls = []

    def cond(x, s):
        calls.append("c")
        return torch.ones_like(x)

    def uncond(x, s):
        calls.append("u")
        return torch.zeros_like(x)

    x, s = torch.zeros(2, 2), torch.ones(2)
    assert torch.equal(with_cfg(cond, uncond, 1.0)(x, s), torch.ones(2, 2)) and calls == ["c"]
    assert torch.equal(with_cfg(cond, uncond, 2.0)(x, s), torch.full((2, 2), 2.0))  # u + 2 (c - u)
    assert calls == ["c", "c", "u"]
