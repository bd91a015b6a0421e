"""Deterministic flow-ODE samplers: Euler and DPM-Solver-2 in x0 form (SPEC §2 "Inference", §3 rollouts).

The model predicts a velocity ``v(x, sigma)`` of the flow ``x_sigma = (1 - sigma) z + sigma eps``
(:mod:`prefrestore.model.flow`), i.e. the ODE ``dx/dsigma = v``, integrated from sigma = 1 (noise) down
to sigma = 0 (data) over a grid from :meth:`prefrestore.model.flow.FlowSchedule.sigmas`. No randomness
lives here: the initial noise is an argument, so a rollout is a pure function of (model, noise).

Samplers:
- ``euler``: ``x <- x + (sigma_next - sigma) v``.
- ``dpm2``: DPM-Solver++(2M), the multistep second-order solver in data (x0) prediction
  (Lu et al. 2022), which is what the released stage-2 rollouts use. With ``alpha = 1 - sigma`` and
  ``lambda = log(alpha / sigma)``, the x0 prediction is ``D = x - sigma v`` and one step from s to t is
  ``x_t = (t/s) x_s + (1 - t/s) (D_0 + (D_0 - D_prev) / (2 r))``, ``r = h_prev / h``. The first step
  (no history; lambda(1) = -inf) and the last step to sigma = 0 (lambda = +inf, where ``x_0 = D_0``
  exactly) are first-order. One velocity evaluation per step, like Euler.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Literal

import torch
from tqdm.auto import tqdm

VelocityFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
Method = Literal["euler", "dpm2"]


def with_cfg(cond_fn: VelocityFn, uncond_fn: VelocityFn, scale: float) -> VelocityFn:
    """Classifier-free guidance ``v = v_u + scale (v_c - v_u)``; ``scale == 1`` calls ``cond_fn`` only."""
    if scale == 1.0:
        return cond_fn

    def guided(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        v_c = cond_fn(x, sigma)
        v_u = uncond_fn(x, sigma)
        return v_u + scale * (v_c - v_u)

    return guided


def _check_grid(sigmas: torch.Tensor) -> list[float]:
    grid = [float(s) for s in sigmas.detach().cpu().reshape(-1)]
    if len(grid) < 2:
        raise ValueError("sigmas needs at least 2 entries (start and end)")
    if any(b >= a for a, b in zip(grid, grid[1:], strict=False)):
        raise ValueError(f"sigmas must be strictly decreasing, got {grid}")
    if grid[0] > 1.0 or grid[-1] < 0.0:
        raise ValueError(f"sigmas must lie in [0, 1], got {grid[0]} .. {grid[-1]}")
    return grid


def _lam(sigma: float) -> float:
    """Half log-SNR ``log((1 - sigma) / sigma)``; -inf at sigma = 1, +inf at sigma = 0."""
    if sigma >= 1.0:
        return -math.inf
    if sigma <= 0.0:
        return math.inf
    return math.log((1.0 - sigma) / sigma)


@torch.no_grad()
def sample(
    velocity_fn: VelocityFn,
    noise: torch.Tensor,
    sigmas: torch.Tensor,
    method: Method = "euler",
    return_trajectory: bool = False,
    progress: bool = False,
) -> torch.Tensor | tuple[torch.Tensor, list[torch.Tensor]]:
    """Integrate the flow ODE from ``noise`` (at ``sigmas[0]``) to ``sigmas[-1]`` (normally 0).

    ``velocity_fn(x, sigma_batch)`` gets ``sigma_batch`` of shape ``[B]`` (the same value per row).
    Returns the final ``x`` (the restored latent when the grid ends at 0), and with
    ``return_trajectory`` also the list of all ``len(sigmas)`` states, the noise first.
    """
    if method not in ("euler", "dpm2"):
        raise ValueError(f"unknown sampler '{method}'; use 'euler' or 'dpm2'")
    grid = _check_grid(sigmas)
    x = noise
    batch = x.shape[0]
    trajectory = [x] if return_trajectory else []
    d_prev: torch.Tensor | None = None  # the previous step's x0 prediction (dpm2 history)
    steps = range(len(grid) - 1)
    for i in tqdm(steps, desc=f"sample[{method}]", disable=not progress, leave=False):
        s, t = grid[i], grid[i + 1]
        v = velocity_fn(x, torch.full((batch,), s, dtype=x.dtype, device=x.device))
        if method == "euler":
            x = x + (t - s) * v
        else:
            d0 = x - s * v  # data prediction D(x, s)
            ratio = t / s  # sigma_t / sigma_s; (1 - ratio) = alpha_t (1 - e^{-h})
            first_order = d_prev is None or t == 0.0 or grid[i - 1] >= 1.0
            if first_order:
                x = ratio * x + (1.0 - ratio) * d0
            else:
                h = _lam(t) - _lam(s)
                r = (_lam(s) - _lam(grid[i - 1])) / h
                x = ratio * x + (1.0 - ratio) * (d0 + (d0 - d_prev) / (2.0 * r))
            d_prev = d0
        if return_trajectory:
            trajectory.append(x)
    return (x, trajectory) if return_trajectory else x
