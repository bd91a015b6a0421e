"""The DiffusionNFT objective as equations on tensors (paper Eqs. 12-15, SPEC §3).

- :func:`advantages`: Eq. 12, group-centred and globally scaled advantages -> optimality
  probabilities ``r`` (groups keyed by sample id, never caption: SPEC §6 trap 4);
- :func:`nft_loss`: Eqs. 13-15, the implicit positive/negative policies and the loss;
- :func:`old_policy_decay`: the old policy's EMA decay schedules;
- :func:`group_std`: per-sample std of its group's rewards (zero-variance groups, trap 8).

No loop, no config: :mod:`prefrestore.train.nft` runs them epoch by epoch.
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from typing import Literal

import torch

LossForm = Literal["velocity", "x0_adaptive"]


# --------------------------------------------------------------------------------------------------
# Eq. 12: group-centred, globally scaled advantages -> optimality probabilities r in [0, 1]
# --------------------------------------------------------------------------------------------------


def _group_index(group_ids: Sequence[Hashable] | torch.Tensor, n: int) -> tuple[torch.Tensor, int]:
    """Dense ``[N]`` group index from sample-id keys (ints or strings)."""
    if isinstance(group_ids, torch.Tensor):
        group_ids = group_ids.reshape(-1).tolist()
    keys = list(group_ids)
    if len(keys) != n:
        raise ValueError(f"{len(keys)} group ids for {n} rewards")
    lookup: dict[Hashable, int] = {}
    index = [lookup.setdefault(k, len(lookup)) for k in keys]
    return torch.tensor(index, dtype=torch.long), len(lookup)


def advantages(
    rewards: torch.Tensor,
    group_ids: Sequence[Hashable] | torch.Tensor,
    clip: float,
    eps: float,
) -> tuple[torch.Tensor, torch.Tensor, dict[str, float]]:
    """Paper Eq. 12 as released: ``A = (R - mean_group) / (std_global + eps)``, ``r = clip(A,-c,c)/c/2 + 1/2``.

    ``group_ids`` key the groups: pass the SAMPLE id each rollout was drawn for (ints/strings), never
    its caption (two faces with one caption are different groups; SPEC §6 trap 4). The std is the
    population std over the whole batch (the paper's ``Z`` is ``clip * std_global``).
    Returns ``(A [N], r [N], stats)``; stats count zero-variance groups (their ``A`` is 0, so their
    samples only pull the policy towards the old one; SPEC §6 trap 8).
    """
    r_raw = rewards.detach().reshape(-1).to(torch.float64)
    n = r_raw.numel()
    if n == 0:
        raise ValueError("advantages: empty reward batch")
    if not torch.isfinite(r_raw).all():
        raise ValueError("advantages: rewards contain NaN or inf")
    index, num_groups = _group_index(group_ids, n)
    index = index.to(r_raw.device)
    count = torch.zeros(num_groups, dtype=torch.float64, device=r_raw.device).index_add_(
        0, index, torch.ones_like(r_raw))
    mean = torch.zeros_like(count).index_add_(0, index, r_raw) / count
    centred = r_raw - mean[index]
    group_var = torch.zeros_like(count).index_add_(0, index, centred**2) / count
    std_global = r_raw.std(unbiased=False)
    adv = centred / (std_global + eps)
    r = (adv.clamp(-clip, clip) / clip / 2.0 + 0.5).clamp(0.0, 1.0)
    zero = int((group_var <= 0.0).sum())
    stats = {
        "num_groups": float(num_groups),
        "zero_std_groups": float(zero),
        "zero_std_ratio": zero / num_groups,
        "reward_mean": float(r_raw.mean()),
        "reward_std": float(std_global),
        "group_std_mean": float(group_var.sqrt().mean()),
        "abs_adv_mean": float(adv.abs().mean()),
        "clipped_fraction": float((adv.abs() > clip).to(torch.float64).mean()),
    }
    dtype = rewards.dtype if rewards.dtype.is_floating_point else torch.float32
    return adv.to(dtype), r.to(dtype), stats


# --------------------------------------------------------------------------------------------------
# Eqs. 13-15: the NFT loss
# --------------------------------------------------------------------------------------------------

LOSS_PARTS = ("loss", "policy_loss", "kl", "positive_loss", "negative_loss", "old_deviation")  # nft_loss's parts


def _per_sample_mean(x: torch.Tensor) -> torch.Tensor:
    return x.mean(dim=tuple(range(1, x.ndim))) if x.ndim > 1 else x


def _bcast(v: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return v.reshape(-1, *([1] * (like.ndim - 1)))


def nft_loss(
    v_theta: torch.Tensor,
    v_old: torch.Tensor,
    x_t: torch.Tensor,
    sigma: torch.Tensor,
    x0: torch.Tensor,
    r: torch.Tensor,
    *,
    beta: float,
    form: LossForm,
    kl_weight: float,
    policy_scale: float,
    target_v: torch.Tensor | None = None,
    v_ref: torch.Tensor | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The DiffusionNFT objective (paper Eqs. 13-15), in one of two forms.

    Implicit policies (Eqs. 13-14), ``g = beta``, ``v_old`` treated as a constant::

        v+ = (1 - g) v_old + g v_theta          v- = (1 + g) v_old - g v_theta

    - ``velocity`` (Eq. 15 as written): ``L = mean_B[r ||v+ - u||^2 + (1 - r) ||v- - u||^2]`` with
      ``u = noise - x0`` (``target_v``; if omitted it is recovered as ``(x_t - x0) / sigma``).
    - ``x0_adaptive`` (released code): ``x0_hat = x_t - sigma v``,
      ``L(v) = mean ||x0_hat - x0||^2 / sg(mean |x0_hat - x0|)`` per sample, and
      ``policy = mean_B[r L(v+) + (1 - r) L(v-)] / g``.

    The total is ``policy_scale * policy + kl_weight * mean ||v_theta - v_ref||^2``. Norms are means
    over all non-batch elements. Returns ``(loss, parts)`` with detached diagnostics.
    """
    if form not in ("velocity", "x0_adaptive"):
        raise ValueError(f"unknown NFT loss form '{form}'")
    if not (v_theta.shape == v_old.shape == x_t.shape == x0.shape):
        raise ValueError("v_theta, v_old, x_t and x0 must share one shape")
    if kl_weight > 0.0 and v_ref is None:
        raise ValueError("kl_weight > 0 needs v_ref (the frozen reference model's velocity)")
    g = beta
    v_old = v_old.detach()
    v_pos = (1.0 - g) * v_old + g * v_theta  # Eq. 13
    v_neg = (1.0 + g) * v_old - g * v_theta  # Eq. 14
    if form == "velocity":
        if target_v is None:
            s = _bcast(sigma.to(x_t.dtype), x_t)
            if bool((s <= 0).any()):
                raise ValueError("target_v is needed where sigma == 0")
            target_v = (x_t - x0) / s
        l_pos = _per_sample_mean((v_pos - target_v) ** 2)
        l_neg = _per_sample_mean((v_neg - target_v) ** 2)
        policy = torch.mean(r * l_pos + (1.0 - r) * l_neg)  # Eq. 15
    else:
        s = _bcast(sigma.to(x_t.dtype), x_t)

        def adaptive(v: torch.Tensor) -> torch.Tensor:
            err = (x_t - s * v) - x0  # x0_hat - x0
            with torch.no_grad():
                w = _per_sample_mean(err.detach().abs().double()).clamp_min(1e-5).to(err.dtype)
            return _per_sample_mean(err**2) / w

        l_pos, l_neg = adaptive(v_pos), adaptive(v_neg)
        policy = torch.mean(r * l_pos + (1.0 - r) * l_neg) / g
    policy = policy_scale * policy
    kl = torch.mean((v_theta - v_ref.detach()) ** 2) if v_ref is not None else v_theta.new_zeros(())
    loss = policy + kl_weight * kl
    parts = {
        "loss": loss.detach(),
        "policy_loss": policy.detach(),
        "kl": kl.detach(),
        "positive_loss": l_pos.mean().detach(),
        "negative_loss": l_neg.mean().detach(),
        "old_deviation": torch.mean((v_theta.detach() - v_old) ** 2),
    }
    return loss, parts


# --------------------------------------------------------------------------------------------------
# The old (sampling) policy
# --------------------------------------------------------------------------------------------------


def old_policy_decay(step: int, decay_type: int) -> float:
    """EMA decay ``d`` of the old policy after optimizer step ``step`` (DiffusionNFT schedules).

    - type 0: ``d = 0`` — the old policy is the current one (fully on-policy);
    - type 1: ``d = min(1e-3 step, 0.5)`` — the paper/released choice;
    - type 2: ``d = 0`` for the first 75 steps, then ``min(7.5e-3 (step - 75), 0.999)``.
    """
    if step < 0:
        raise ValueError(f"step must be >= 0, got {step}")
    if decay_type == 0:
        return 0.0
    if decay_type == 1:
        return min(1e-3 * step, 0.5)
    if decay_type == 2:
        return 0.0 if step < 75 else min(7.5e-3 * (step - 75), 0.999)
    raise ValueError(f"unknown old-policy decay type {decay_type}; use 0, 1 or 2")


def group_std(rewards: torch.Tensor, group: torch.Tensor) -> torch.Tensor:
    """Population std of the rewards of each sample's group, per sample ``[N]``."""
    out = torch.empty_like(rewards, dtype=torch.float64)
    for g in group.unique():
        m = group == g
        out[m] = rewards[m].double().std(unbiased=False)
    return out
