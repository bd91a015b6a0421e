"""DiffusionNFT, model-agnostic: the stage-2 config and its one epoch loop (paper Sec. IV-C.2).

The equations (Eq. 12 advantages, Eqs. 13-15 loss, the old-policy decay) are
:mod:`prefrestore.train.nft_objective`; this module rolls out, scores and trains with them.

Everything here works on tensors and velocity callables (:class:`Policies`), so ``prefrestore
stage2`` (:mod:`prefrestore.train.stage2` plugs in the SANA model) and the toy 2-D known-answer test
run the same :func:`nft_epoch`. A policy callable is ``fn(x, sigma, group) -> v`` where ``sigma``
is ``[B]`` and ``group`` ``[B]`` (long) indexes the caller's cached conditions (one per group).

One epoch (:func:`nft_epoch`, SPEC §3 "Stage 2 in detail"):
1. rollouts: ``group_size`` deterministic samples per condition from the OLD policy, differing only
   in their initial noise (:func:`prefrestore.model.samplers.sample`, grid ending at sigma = 0);
2. rewards -> advantages -> optimality probabilities ``r`` (:func:`~prefrestore.train.nft_objective.advantages`; groups keyed by
   sample id, never by caption — SPEC §6 trap 4);
3. ``timesteps_per_sample`` forward-noised copies of every rollout, loss :func:`nft_loss`, gradients
   accumulated over the whole epoch, one clipped optimizer step;
4. old policy <- ``d`` old + ``(1 - d)`` current (``Policies.update_old``, :func:`old_policy_decay`).
"""

from __future__ import annotations

import dataclasses
import logging
import math
from collections.abc import Callable, Mapping, Sequence
from typing import Literal

import torch
from tqdm.auto import tqdm

from prefrestore.core.config import check_range
from prefrestore.model.flow import FlowSchedule, interpolate, velocity_target
from prefrestore.model.samplers import sample
from prefrestore.train import distributed
from prefrestore.train.nft_objective import (
    LOSS_PARTS,
    LossForm,
    advantages,
    group_std,
    nft_loss,
    old_policy_decay,
)
from prefrestore.train.rewards import total_reward
from prefrestore.train.rollout_shards import GroupShard

log = logging.getLogger(__name__)

PolicyFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


@dataclasses.dataclass(frozen=True)
class Stage2Config:
    """Params section ``stage2`` (every field is commented in ``params.yaml``)."""

    beta: float
    adv_clip: float
    adv_eps: float
    kl_weight: float
    loss_form: LossForm
    policy_scale: float
    group_size: int
    groups_per_epoch: int
    sample_batch: int
    train_batch: int
    timesteps_per_sample: int
    sampler: Literal["euler", "dpm2"]
    sampler_steps: int
    cfg_scale: float
    decay_type: Literal[0, 1, 2]
    lr: float
    lr_schedule: Literal["constant"]
    weight_decay: float
    adam_betas: tuple[float, float]
    adam_eps: float
    grad_clip: float
    lora_rank: int
    lora_alpha: int
    lora_targets: tuple[str, ...]
    epochs: int
    eval_every: int
    heldout_size: int
    eval_seeds: int
    determinism_seeds: int
    checkpoint_every: int
    checkpoint_keep: int
    grid_samples: int
    mixed_precision: Literal["bf16", "no"]
    zero_std_groups: Literal["keep", "drop"]
    train_timesteps: Literal["fresh", "grid"]

    def __post_init__(self) -> None:
        check_range("beta", self.beta, 1e-6, 1.0)
        check_range("adv_clip", self.adv_clip, 1e-6, 1e6)
        check_range("adv_eps", self.adv_eps, 0.0, 1.0)
        check_range("kl_weight", self.kl_weight, 0.0, 1e6)
        check_range("policy_scale", self.policy_scale, 1e-9, 1e6)
        check_range("group_size", self.group_size, 2, 1e6)
        check_range("groups_per_epoch", self.groups_per_epoch, 1, 1e6)
        check_range("sample_batch", self.sample_batch, 1, 1e6)
        check_range("train_batch", self.train_batch, 1, 1e6)
        check_range("timesteps_per_sample", self.timesteps_per_sample, 1, 1e4)
        check_range("sampler_steps", self.sampler_steps, 1, 1e4)
        check_range("cfg_scale", self.cfg_scale, 0.0, 100.0)
        check_range("lr", self.lr, 0.0, 1.0)
        check_range("weight_decay", self.weight_decay, 0.0, 1.0)
        check_range("adam_betas[0]", self.adam_betas[0], 0.0, 1.0 - 1e-9)
        check_range("adam_betas[1]", self.adam_betas[1], 0.0, 1.0 - 1e-9)
        check_range("adam_eps", self.adam_eps, 0.0, 1.0)
        check_range("grad_clip", self.grad_clip, 1e-9, 1e9)
        check_range("lora_rank", self.lora_rank, 1, 4096)
        check_range("lora_alpha", self.lora_alpha, 1, 1e5)
        if not self.lora_targets:
            raise ValueError("lora_targets must name at least one module")
        check_range("epochs", self.epochs, 0, 1e7)
        check_range("eval_every", self.eval_every, 0, 1e7)
        check_range("heldout_size", self.heldout_size, 1, 1e7)
        check_range("eval_seeds", self.eval_seeds, 1, 1e4)
        check_range("determinism_seeds", self.determinism_seeds, 0, 1e4)
        if self.determinism_seeds == 1:
            raise ValueError("determinism_seeds must be 0 (off) or >= 2: a std needs two seeds")
        check_range("checkpoint_every", self.checkpoint_every, 0, 1e7)
        check_range("checkpoint_keep", self.checkpoint_keep, 1, 1e4)
        check_range("grid_samples", self.grid_samples, 0, 1e4)
        if self.zero_std_groups not in ("keep", "drop"):
            raise ValueError(f"zero_std_groups must be keep or drop, got {self.zero_std_groups!r}")
        if self.train_timesteps not in ("fresh", "grid"):
            raise ValueError(f"train_timesteps must be fresh or grid, got {self.train_timesteps!r}")
        if self.train_timesteps == "grid" and self.timesteps_per_sample > self.sampler_steps:
            raise ValueError(f"train_timesteps=grid draws timesteps_per_sample={self.timesteps_per_sample} of the "
                             f"rollout grid's sampler_steps={self.sampler_steps} sigmas; lower it or use fresh")


# --------------------------------------------------------------------------------------------------
# One epoch: rollouts -> rewards -> advantages -> loss -> step -> old-policy EMA
# --------------------------------------------------------------------------------------------------


@dataclasses.dataclass
class Rollouts:
    """Clean samples of one epoch: ``x0 [N, ...]`` and the group (condition) index of each."""

    x0: torch.Tensor
    group: torch.Tensor  # [N] long: index into the caller's conditions
    noise: torch.Tensor  # [N, ...] the initial noises (the rollouts are a function of these)


def collect_rollouts(
    v_old: PolicyFn,
    groups: Sequence[int],
    group_size: int,
    noise_shape: Sequence[int],
    sigmas: torch.Tensor,
    sampler: Literal["euler", "dpm2"],
    sample_batch: int,
    generator: torch.Generator,
    device: torch.device | str = "cpu",
    progress: bool = False,
    noise: torch.Tensor | None = None,
) -> Rollouts:
    """``group_size`` deterministic samples per group from ``v_old``, differing only in noise.

    ``noise``: the initial noises ``[len(groups) group_size, ...]`` when the caller drew them
    (a rank's share of an epoch, :mod:`prefrestore.train.rollout_shards`); default: drawn from ``generator``.
    """
    group = torch.tensor([g for g in groups for _ in range(group_size)], dtype=torch.long, device=device)
    if noise is None:
        noise = torch.randn((group.numel(), *noise_shape), generator=generator, device=generator.device)
    if noise.shape[0] != group.numel():
        raise ValueError(f"{noise.shape[0]} noises for {group.numel()} rollouts")
    noise = noise.to(device)
    outs = []
    starts = range(0, group.numel(), sample_batch)
    for start in tqdm(starts, desc="rollouts", disable=not progress, leave=False):
        gb = group[start:start + sample_batch]

        def fn(x: torch.Tensor, s: torch.Tensor, gb: torch.Tensor = gb) -> torch.Tensor:
            return v_old(x, s, gb)

        outs.append(sample(fn, noise[start:start + sample_batch], sigmas, method=sampler))
    return Rollouts(x0=torch.cat(outs), group=group, noise=noise)


def nft_train_step(
    v_theta: PolicyFn,
    v_old: PolicyFn,
    v_ref: PolicyFn | None,
    rollouts: Rollouts,
    r: torch.Tensor,
    cfg: Stage2Config,
    schedule: FlowSchedule,
    optimizer: torch.optim.Optimizer,
    params: Sequence[torch.Tensor],
    generator: torch.Generator,
    progress: bool = False,
    slots: torch.Tensor | None = None,
) -> dict[str, float]:
    """One optimizer step: the NFT loss (Eqs. 13-15) over every rollout x ``timesteps_per_sample`` sigmas.

    The sigmas are fresh draws of the training schedule (``train_timesteps: fresh``) or, as both
    released codes do, the rollout grid's own (``grid``: :func:`grid_timesteps`).

    Gradients accumulate over micro-batches of ``train_batch``; the loss of each micro-batch is
    weighted by its share of the epoch, so the step sees the mean loss. Clips the global norm.

    Under several processes, ``slots [N]`` covers the epoch's N rollouts (all ranks): the index of
    each in this rank's ``rollouts`` and ``r``, or -1 for another rank's. Every rank draws the same
    permutation, sigmas and noises for all N, trains on its own rows of each micro-batch, and the
    gradients and loss terms are summed over ranks before the clipped step, so every rank takes
    the step a single process would take on all N.
    """
    n = rollouts.x0.shape[0] if slots is None else slots.numel()
    device = rollouts.x0.device
    optimizer.zero_grad(set_to_none=True)
    perm = torch.randperm(n, generator=generator, device=generator.device).to(device)
    grid = grid_timesteps(n, cfg, schedule, generator) if cfg.train_timesteps == "grid" else None
    totals: dict[str, float] = {}
    chunks = [perm[i:i + cfg.train_batch] for i in range(0, n, cfg.train_batch)]
    work = [(c, j) for c in chunks for j in range(cfg.timesteps_per_sample)]
    for idx, j in tqdm(work, desc="nft train", disable=not progress, leave=False):
        if grid is None:  # fresh t ~ U(0, 1) per sample and pass (paper profile)
            sigma = schedule.sample_sigma(idx.numel(), generator=generator).to(device)
        else:  # the rollout grid's own sigmas, a shuffled subset per sample (released code)
            sigma = grid[idx.to(grid.device), j].to(device)
        eps = torch.randn((idx.numel(), *rollouts.x0.shape[1:]), generator=generator,
                          device=generator.device).to(device)
        if slots is not None:  # this rank's rows of the micro-batch (the draws above cover all of it)
            local = slots.to(device)[idx]
            mine = local >= 0
            if not bool(mine.any()):
                continue
            idx, sigma, eps = local[mine], sigma[mine], eps[mine]
        x0 = rollouts.x0[idx]
        grp = rollouts.group[idx]
        x_t = interpolate(x0, eps, sigma)
        with torch.no_grad():
            vo = v_old(x_t, sigma, grp)
            vr = v_ref(x_t, sigma, grp) if v_ref is not None else None
        vt = v_theta(x_t, sigma, grp)
        loss, parts = nft_loss(
            vt, vo, x_t, sigma, x0, r[idx], beta=cfg.beta, form=cfg.loss_form,
            kl_weight=cfg.kl_weight if v_ref is not None else 0.0, policy_scale=cfg.policy_scale,
            target_v=velocity_target(x0, eps), v_ref=vr,
        )
        weight = idx.numel() / (n * cfg.timesteps_per_sample)
        (loss * weight).backward()
        for k, v in parts.items():
            totals[k] = totals.get(k, 0.0) + float(v) * weight
    if slots is not None:  # each rank's terms are weighted by its share of N: the sums are the epoch's
        distributed.sum_grads_(params)
        totals = distributed.sum_floats({k: totals.get(k, 0.0) for k in LOSS_PARTS})
    grad_norm = torch.nn.utils.clip_grad_norm_(list(params), cfg.grad_clip)
    if not math.isfinite(float(grad_norm)):
        optimizer.zero_grad(set_to_none=True)
        raise FloatingPointError(f"non-finite gradient norm {float(grad_norm)}; step skipped")
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    totals["grad_norm"] = float(grad_norm)
    return totals


def grid_timesteps(n: int, cfg: Stage2Config, schedule: FlowSchedule, generator: torch.Generator) -> torch.Tensor:
    """``[n, timesteps_per_sample]`` training sigmas taken from the rollout grid (released code).

    Both released codes (Pref_Restore ``train_nft``, NVlabs/DiffusionNFT ``train_nft_sd3.py``) train
    each rollout at the timesteps of the sampling trajectory it came from: the ``sampler_steps``
    non-terminal sigmas of the grid, shuffled per sample, the first ``timesteps_per_sample`` of
    them (29 of 30 at ``timestep_fraction = 0.99``).
    """
    grid = schedule.sigmas(cfg.sampler_steps)[:-1]  # sigma = 0 is never a training time
    order = torch.rand((n, grid.numel()), generator=generator, device=generator.device).argsort(dim=1)
    return grid.to(order.device)[order[:, :cfg.timesteps_per_sample]]


ScoreFn = Callable[[torch.Tensor, torch.Tensor], dict[str, torch.Tensor]]


@dataclasses.dataclass
class Policies:
    """What one NFT epoch needs from a model; the SANA stage 2 and the toy test each build one.

    Every callable sees only this rank's groups: ``group`` indexes the caller's conditions.
    """

    current: PolicyFn  # v_theta, trainable (its parameters are the ``params`` of :func:`nft_epoch`)
    old: PolicyFn  # v_old, no gradient: the loss's reference for Eqs. 13-14
    ref: PolicyFn | None  # the frozen starting model for the KL term; None when kl_weight = 0
    sampler: PolicyFn  # the old policy as rolled out (with CFG when cfg_scale != 1)
    noise_shape: tuple[int, ...]  # one rollout's initial noise (latent) shape
    score: ScoreFn  # (x0 [n, ...], group [n]) -> {reward name: [n]} for this rank's rollouts
    update_old: Callable[[float], None]  # old <- d old + (1 - d) current (the EMA of step 4)


def nft_epoch(policies: Policies, shard: GroupShard, weights: Mapping[str, float], cfg: Stage2Config,
              schedule: FlowSchedule, optimizer: torch.optim.Optimizer, params: Sequence[torch.Tensor],
              step: int, generator: torch.Generator, device: torch.device | str = "cpu",
              progress: bool = False) -> tuple[dict[str, float], torch.Tensor, bool]:
    """One DiffusionNFT epoch (module docstring): the one loop that ``prefrestore stage2`` runs.

    ``shard`` says which of the epoch's groups this rank rolls out (:mod:`.rollout_shards`; a single
    process holds all of them). The initial noise of every rollout of the epoch is drawn on every
    rank, rewards are gathered so that Eq. 12 sees the whole epoch (group means by SAMPLE id, the
    global std), and gradients are summed over ranks before the clipped step.

    Zero-variance groups (every rollout scored alike): ``zero_std_groups: keep`` trains on them at
    ``r = 0.5``, as both released codes do; there they still pull ``v_theta`` towards ``v_old`` once
    the two differ (the policy loss's gradient is ``2 beta^2 (v_theta - v_old)`` at r = 0.5) and
    count in the mean. ``drop`` leaves them out of the loss and of the mean; an epoch where every
    group is flat then takes no optimizer step.

    ``step`` counts the optimizer steps taken before this epoch; the old-policy decay is
    ``old_policy_decay(step + 1)``, and the old policy moves only after a step. Returns
    ``(stats, x0 of this rank's rollouts, whether a step was taken)``.
    """
    shape = tuple(policies.noise_shape)
    noise = torch.randn((shard.num_rows, *shape), generator=generator, device=generator.device)  # all ranks' rows
    rolls = collect_rollouts(policies.sampler, range(len(shard.positions)), cfg.group_size, shape,
                             schedule.sigmas(cfg.sampler_steps, device=device), cfg.sampler,
                             shard.per_rank(cfg.sample_batch), generator, device, progress,
                             noise=noise[shard.rows()])
    with torch.no_grad():
        scores = shard.gather(policies.score(rolls.x0, rolls.group))  # every rollout's, all ranks
    rewards = total_reward(scores, weights)
    _, r, adv = advantages(rewards, shard.row_keys(), cfg.adv_clip, cfg.adv_eps)  # by sample id (trap 4)
    stats: dict[str, float] = {
        "train/zero_std_groups": adv["zero_std_groups"], "train/zero_std_ratio": adv["zero_std_ratio"],
        "train/group_std_mean": adv["group_std_mean"], "train/clipped_fraction": adv["clipped_fraction"],
        "reward/total_mean": float(rewards.mean()), "reward/total_std": float(rewards.std(unbiased=False)),
    }
    for name, s in scores.items():
        stats[f"reward/{name}_mean"] = float(s.mean())
        stats[f"reward/{name}_std"] = float(s.std(unbiased=False))
    if cfg.zero_std_groups == "keep":
        kept = torch.arange(shard.num_rows)
    else:
        kept = (group_std(rewards, shard.row_groups()) > 0).nonzero().squeeze(1)
    stepped = kept.numel() > 0
    if stepped:
        k = shard.local(kept).to(rolls.x0.device)  # this rank's kept rollouts, in the order of `kept`
        sub = Rollouts(x0=rolls.x0[k], group=rolls.group[k], noise=rolls.noise[k])
        mine = shard.slots(kept)
        parts = nft_train_step(policies.current, policies.old, policies.ref, sub, r[kept][mine >= 0].to(device),
                               cfg, schedule, optimizer, params, generator, progress,
                               slots=mine if shard.world > 1 else None)
        stats.update({
            "train/loss": parts["loss"], "train/policy_loss": parts["policy_loss"], "train/kl": parts["kl"],
            "train/positive_loss": parts["positive_loss"], "train/negative_loss": parts["negative_loss"],
            "train/old_gap": parts["old_deviation"], "train/grad_norm": parts["grad_norm"],
        })
        d = old_policy_decay(step + 1, cfg.decay_type)
        policies.update_old(d)
        stats["train/old_decay"] = d
    else:  # drop: every group was flat, nothing to learn; no step, and the old policy stays
        log.warning("stage2 step %d: every group has zero reward variance; no update", step)
        stats.update({"train/loss": 0.0, "train/policy_loss": 0.0, "train/grad_norm": 0.0})
    return stats, rolls.x0, stepped
