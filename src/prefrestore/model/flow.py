"""Rectified-flow schedule and loss: one schedule for training and sampling (SPEC §2 "Flow matching").

The forward process (SPEC §2, DiffusionNFT Eq. 15's ``x_t``) interpolates a clean latent ``z`` and
Gaussian noise ``eps``::

    x_sigma = (1 - sigma) z + sigma eps,     target velocity  u = eps - z = dx/dsigma

``sigma`` runs from 1 (pure noise) to 0 (data). SANA's scheduler optionally warps a uniform ``t`` by a
time shift ``sigma = s t / (1 + (s - 1) t)`` (``s = 1``: no warp). Both the training draw
(:meth:`FlowSchedule.sample_sigma`) and the sampler grid (:meth:`FlowSchedule.sigmas`) go through the
SAME :meth:`FlowSchedule.shift_fn`, so the timesteps a model is trained on are the ones it is sampled
with (SPEC §6 trap 3), and the sampler grid ends at exactly 0 (trap 2: the released rollouts stop
at 1/30 and leave noise in the "clean" latents).
"""

from __future__ import annotations

import dataclasses

import torch

from prefrestore.core.config import check_range


@dataclasses.dataclass(frozen=True)
class FlowSchedule:
    """Params section ``flow``: the noise schedule shared by training, rollouts and inference."""

    shift: float  # SANA time shift s; sigma = s t / (1 + (s - 1) t); 1 = uniform (no shift)
    num_train_timesteps: int  # the model's timestep input is sigma * this (diffusers convention)

    def __post_init__(self) -> None:
        check_range("flow.shift", self.shift, 1e-3, 1e3)
        check_range("flow.num_train_timesteps", self.num_train_timesteps, 1, 1e6)

    def shift_fn(self, t: torch.Tensor) -> torch.Tensor:
        """Map uniform time ``t`` in [0, 1] to sigma; monotone, fixes 0 and 1."""
        s = self.shift
        if s == 1.0:
            return t.clone()
        return s * t / (1.0 + (s - 1.0) * t)

    def sigmas(self, num_steps: int, device: torch.device | str | None = None) -> torch.Tensor:
        """The sampler grid: ``num_steps + 1`` sigmas descending from 1.0 to exactly 0.0 (float32)."""
        if num_steps < 1:
            raise ValueError(f"num_steps must be >= 1, got {num_steps}")
        t = torch.linspace(1.0, 0.0, num_steps + 1, dtype=torch.float64, device=device)
        sig = self.shift_fn(t)
        sig[0], sig[-1] = 1.0, 0.0  # exact end points despite float rounding
        return sig.to(torch.float32)

    def sample_sigma(self, batch: int, generator: torch.Generator | None = None,
                     device: torch.device | str | None = None) -> torch.Tensor:
        """Training sigmas ``[batch]``: ``t ~ U(0, 1)`` then the same :meth:`shift_fn` as :meth:`sigmas`."""
        t = torch.rand(batch, generator=generator, dtype=torch.float64, device=device)
        return self.shift_fn(t).to(torch.float32)

    def timestep(self, sigma: torch.Tensor) -> torch.Tensor:
        """The model's timestep input for ``sigma`` (SANA/diffusers: ``sigma * num_train_timesteps``)."""
        return sigma * self.num_train_timesteps


def _expand(sigma: torch.Tensor | float, like: torch.Tensor) -> torch.Tensor:
    """Broadcast a per-sample ``[B]`` (or scalar) sigma against ``like`` ``[B, ...]``."""
    sigma = torch.as_tensor(sigma, dtype=like.dtype, device=like.device)
    if sigma.ndim == 0:
        return sigma
    if sigma.shape[0] != like.shape[0]:
        raise ValueError(f"sigma has {sigma.shape[0]} entries but the batch has {like.shape[0]}")
    return sigma.reshape(-1, *([1] * (like.ndim - 1)))


def interpolate(z: torch.Tensor, noise: torch.Tensor, sigma: torch.Tensor | float) -> torch.Tensor:
    """``x_sigma = (1 - sigma) z + sigma noise`` (sigma per sample ``[B]`` or scalar)."""
    if z.shape != noise.shape:
        raise ValueError(f"z {tuple(z.shape)} and noise {tuple(noise.shape)} differ in shape")
    s = _expand(sigma, z)
    return (1.0 - s) * z + s * noise


def velocity_target(z: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    """The flow-matching target ``u = noise - z`` (``dx/dsigma`` along the straight path)."""
    return noise - z


def flow_matching_loss(v_pred: torch.Tensor, z: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    """Plain flow-matching MSE ``mean ||v_pred - (noise - z)||^2`` (SPEC §2; L_diff of Eq. 10)."""
    return torch.mean((v_pred.float() - velocity_target(z, noise).float()) ** 2)


def drop_condition(cond: torch.Tensor, p: float, generator: torch.Generator | None = None) -> torch.Tensor:
    """Zero whole rows of ``cond`` ``[B, ...]`` with probability ``p`` each (CFG dropout, null = zeros).

    Returns a new tensor; the input is not modified. ``p = 0`` returns ``cond`` unchanged.
    """
    check_range("drop_condition p", p, 0.0, 1.0)
    if p == 0.0:
        return cond
    keep = torch.rand(cond.shape[0], generator=generator, device=generator.device if generator else None)
    keep = (keep >= p).to(device=cond.device, dtype=cond.dtype)
    return cond * keep.reshape(-1, *([1] * (cond.ndim - 1)))
