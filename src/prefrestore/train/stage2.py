"""Stage 2, Preference-Aware Fine-tuning via DiffusionNFT (paper Sec. IV-C.2, Eqs. 12-15, Table I; SPEC §3).

``run(params, inputs={"faces", "captions", "base"}, out)`` fine-tunes the stage-1 model ``base`` with
LoRA on SANA's attention (:mod:`prefrestore.model.lora`) and writes a model directory that loads like any
other (LoRA merged into the transformer) plus the adapters themselves under ``lora/``.

One epoch = one optimizer step (SPEC §3 "Stage 2 in detail"):
1. ``groups_per_epoch`` training faces, degraded with this epoch's parameters (Eq. 16). The AR
   condition of each LQ image is computed ONCE (greedy, the fixed prompt "Please reconstruct the given
   image.") and cached without gradient.
2. Rollouts from the OLD policy: ``group_size`` samples per condition that differ only in their
   initial noise, deterministic DPM-Solver-2 on the ``flow`` schedule's grid, which ends at sigma = 0
   (SPEC §6 traps 2-3).
3. Rewards (:mod:`prefrestore.train.rewards`, captions as text, HQ for GT-aware rewards) -> Eq. 12
   advantages grouped by SAMPLE id (trap 4). Groups whose rewards have zero variance are counted;
   ``stage2.zero_std_groups`` keeps them at r = 0.5 (both released codes) or drops them (trap 8).
4. The NFT loss (Eqs. 13-15, :func:`prefrestore.train.nft.nft_train_step`) with the KL term to the stage-1
   model (adapters disabled), accumulated over the epoch; AdamW, constant lr, global-norm clipping.
   Training sigmas: fresh draws (paper) or the rollout grid's own (``train_timesteps: grid``, released).
5. Old adapter <- ``d`` old + ``(1 - d)`` current, ``d = old_policy_decay(steps + 1)``, where ``steps``
   counts the optimizer steps taken (an epoch without a step moves neither).

Steps 2-5 are :func:`prefrestore.train.nft.nft_epoch`, the same loop the toy known-answer test runs;
this module plugs the SANA model into it (:func:`sana_policies`) and owns data, checkpoints and
monitoring.

Held-out monitoring (:mod:`prefrestore.train.stage2_heldout`): every ``eval_every`` epochs (and before/after) the reward and PSNR/SSIM to HQ on
the test split (Fig. 9; PSNR/SSIM watch for reward hacking, trap 8), with LQ | before | now | HQ grids.
Fig. 8: per-image std of every reward and of their weighted sum over ``determinism_seeds`` seeds,
for the stage-1 model (adapters off) and the result; medians logged and box-plotted.

Several processes (``torchrun``, gloo on CPU, NCCL on GPUs): each rank rolls out and scores its share
of the epoch's groups (:mod:`prefrestore.train.rollout_shards`); rewards are gathered so that Eq. 12 uses the
whole epoch, and LoRA gradients are summed over ranks, so every rank takes the step (and the old-policy
update) a single process would. Rank 0 alone runs the held-out monitoring and writes checkpoints,
MLflow metrics and the model directory.

Precision: on CUDA every policy forward (rollouts, the NFT step, held-out sampling) runs under bf16
autocast (``stage2.mixed_precision``); weights, LoRA adapters, AdamW and the loss stay fp32, and CPU
runs are fp32 throughout (1.27x per epoch at paper shapes on an H200, ``benchmarks/RESULTS.md``).

Resumable: checkpoints (both adapters, AdamW state, RNG, epoch, held-out history) every
``checkpoint_every`` epochs; every random draw of epoch ``e`` comes from a generator seeded by
``(data.seed, e)``, so a resumed run equals an uninterrupted one.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file
from tqdm.auto import tqdm

from prefrestore.core import tracking
from prefrestore.core.atomic import atomic_path, write_json
from prefrestore.core.config import Params, as_dict
from prefrestore.data.caption import load_captions
from prefrestore.data.degrade.direct import DegradeConfig
from prefrestore.data.degrade.on_the_fly import OnTheFlyPairs
from prefrestore.data.ingest import DataConfig
from prefrestore.metrics.determinism import SUM, spread_boxplot
from prefrestore.model import lora
from prefrestore.model.flow import FlowSchedule
from prefrestore.model.model import PrefRestoreModel
from prefrestore.model.restore import RestoreConfig, save_inference
from prefrestore.train import checkpoint, distributed
from prefrestore.train.common import CHECKPOINTS, VALIDATION_DIR, finalize, fingerprint, finished
from prefrestore.train.nft import Policies, Stage2Config, nft_epoch
from prefrestore.train.rewards import RewardsConfig, Scorer, build_scorers, needs_hq
from prefrestore.train.rollout_shards import GroupShard
from prefrestore.train.stage2_batch import Batch, decode, derive_seed, make_batch, policy
from prefrestore.train.stage2_batch import score as score_batch
from prefrestore.train.stage2_heldout import (
    determinism,
    heldout_eval,
    restore_heldout_all,
    spread_from,
    spread_metrics,
    spread_summary,
    write_grid,
)

log = logging.getLogger(__name__)

LORA_DIR = "lora"
DETERMINISM_FILE = "determinism.json"
BOXPLOT_FILE = "determinism_boxplot.png"
LOOP_ONLY = ("epochs", "eval_every", "checkpoint_every", "checkpoint_keep", "grid_samples")  # not in the fingerprint
TEXT_REWARDS = ("pickscore", "hpsv21", "clip")


# --------------------------------------------------------------------------------------------------
# One epoch
# --------------------------------------------------------------------------------------------------


def sana_policies(model: PrefRestoreModel, batch: Batch, scorers: Mapping[str, Scorer], rcfg: RewardsConfig,
                  cfg: Stage2Config, schedule: FlowSchedule) -> Policies:
    """The SANA model's pieces of :func:`prefrestore.train.nft.nft_epoch` for ``batch``'s groups.

    The current and old policies are the two LoRA adapters, the KL reference is the stage-1 model
    (adapters disabled); rollouts are decoded by the DC-AE and scored by every active reward
    (captions as text, HQ for the GT-aware ones).
    """
    amp = cfg.mixed_precision

    def score(x0: torch.Tensor, group: torch.Tensor) -> dict[str, torch.Tensor]:
        images = decode(model, x0, tuple(batch.hq.shape[-2:]), cfg.sample_batch)
        return score_batch(scorers, images, batch, group, needs_hq(rcfg))

    return Policies(
        current=policy(model, batch, schedule, lora.CURRENT, mixed_precision=amp),
        old=policy(model, batch, schedule, lora.OLD, mixed_precision=amp),
        ref=policy(model, batch, schedule, None, mixed_precision=amp) if cfg.kl_weight > 0 else None,
        sampler=policy(model, batch, schedule, lora.OLD, cfg.cfg_scale, amp),
        noise_shape=tuple(model.latent_shape(1)[1:]), score=score,
        update_old=lambda d: lora.update_old_(model.transformer, d))


# --------------------------------------------------------------------------------------------------
# The step
# --------------------------------------------------------------------------------------------------


def _trainable_state(model: PrefRestoreModel) -> dict[str, torch.Tensor]:
    state = {f"current.{k}": v for k, v in lora.adapter_state(model.transformer, lora.CURRENT).items()}
    state.update({f"old.{k}": v for k, v in lora.adapter_state(model.transformer, lora.OLD).items()})
    return state


def _load_trainable(model: PrefRestoreModel, state: Mapping[str, torch.Tensor]) -> None:
    for adapter, prefix in ((lora.CURRENT, "current."), (lora.OLD, "old.")):
        part = {k.removeprefix(prefix): v for k, v in state.items() if k.startswith(prefix)}
        lora.load_adapter_state(model.transformer, adapter, part)


def _save_lora(folder: Path, adapters: Mapping[str, Mapping[str, torch.Tensor]], cfg: Stage2Config,
               base: Path) -> None:
    """The adapters alone (safetensors, from :func:`lora.adapter_state`) + their settings."""
    folder.mkdir(parents=True, exist_ok=True)
    for adapter, name in ((lora.CURRENT, "adapter_model.safetensors"), (lora.OLD, "old_adapter.safetensors")):
        state = {k: v.contiguous() for k, v in adapters[adapter].items()}
        with atomic_path(folder / name) as tmp:
            save_file(state, str(tmp))
    write_json(folder / "adapter_config.json", {
        "peft_type": "LORA", "r": cfg.lora_rank, "lora_alpha": cfg.lora_alpha,
        "target_modules": list(cfg.lora_targets), "module": "transformer", "base_model": str(base),
        "merged": True, "note": "adapter_model.safetensors is already merged into transformer/; "
                                "old_adapter.safetensors is the DiffusionNFT old policy at the end of training",
    })


def run(params: Params, inputs: Mapping[str, Path], out: Path, progress: bool = True) -> dict[str, Any]:
    """Stage 2 (DiffusionNFT + LoRA) from ``inputs["base"]`` to the model directory ``out``.

    Under ``torchrun`` every rank rolls out its share of each epoch's groups and takes the same
    optimizer step (:func:`nft_epoch`); rank 0 alone evaluates the held-out set and writes
    checkpoints, MLflow metrics and ``out``, and every rank returns its summary.
    """
    t0 = time.perf_counter()
    cfg = params.section("stage2", Stage2Config)
    rcfg = params.section("rewards", RewardsConfig)
    dcfg = params.section("degrade", DegradeConfig)
    data_cfg = params.section("data", DataConfig)
    schedule = params.section("flow", FlowSchedule)
    restore_cfg = params.section("restore", RestoreConfig)
    faces, base = Path(inputs["faces"]), Path(inputs["base"])
    out = Path(out)
    seed = data_cfg.seed

    sections = {"stage2": {k: v for k, v in as_dict(cfg).items() if k not in LOOP_ONLY},
                "rewards": as_dict(rcfg), "degrade": as_dict(dcfg), "data": as_dict(data_cfg),
                "flow": as_dict(schedule)}
    fp = fingerprint("stage2", sections, {k: Path(v) for k, v in inputs.items()})
    done = finished(out, fp)
    if done is not None and done.get("epochs") == cfg.epochs:
        log.info("stage2: %s already holds this run's result", out)
        return done

    device = distributed.device()  # under a launcher this also starts the process group
    rank, world = distributed.rank(), distributed.world_size()
    main = rank == 0
    scorers = build_scorers(rcfg, device)  # a reward whose weights are missing fails here, before any work
    captions = load_captions(Path(inputs["captions"]))
    model = PrefRestoreModel.from_pretrained(base).to(device)
    model.requires_grad_(False)
    wrapped = lora.add_lora(model.transformer, cfg.lora_rank, cfg.lora_alpha, cfg.lora_targets,
                            derive_seed(seed, "lora") % 2**31)
    trainable = list(lora.adapter_parameters(model.transformer, lora.CURRENT).values())
    optimizer = torch.optim.AdamW(trainable, lr=cfg.lr, betas=cfg.adam_betas, eps=cfg.adam_eps,
                                  weight_decay=cfg.weight_decay)

    train = OnTheFlyPairs(faces, dcfg, "train", seed)
    test = OnTheFlyPairs(faces, dcfg, "test", seed, epoch=0)
    text = [n for n in rcfg.active() if n in TEXT_REWARDS]
    if text:
        lacking = [i for i in train.ids + test.ids if not captions.get(i)]
        if lacking:
            raise ValueError(f"text reward(s) {text} need a valid caption per face; {len(lacking)} faces have none "
                             f"(e.g. {lacking[:3]}) in {inputs['captions']}")
    if cfg.groups_per_epoch > len(train):
        raise ValueError(f"stage2.groups_per_epoch={cfg.groups_per_epoch} exceeds the {len(train)} training faces")
    if cfg.groups_per_epoch < world:
        raise ValueError(f"stage2.groups_per_epoch={cfg.groups_per_epoch} leaves some of the {world} processes "
                         "without a group to roll out; use at least one group per process")
    n_held = min(cfg.heldout_size, len(test))
    if n_held < cfg.heldout_size:
        log.warning("stage2: held-out set has %d faces, fewer than heldout_size=%d", n_held, cfg.heldout_size)
    held = make_batch(model, test, range(n_held), captions, cfg.sample_batch) if main else None

    ckpt_dir = out / CHECKPOINTS
    grids = out / VALIDATION_DIR
    start, steps, extra, report = _resume(ckpt_dir, fp, model, optimizer, cfg.epochs, main)

    # ---- before: the stage-1 model (adapters disabled), computed once and kept in the checkpoints
    before_imgs = None
    if main:
        if "before" not in extra:
            metrics, _ = heldout_eval(model, held, scorers, rcfg, cfg, schedule, seed, None)
            spread = determinism(model, held, scorers, rcfg, cfg, schedule, seed, None) \
                if cfg.determinism_seeds else None
            extra = {"before": metrics, "spread_before": spread_summary(spread), "curve": [{"epoch": 0, **metrics}]}
        tracking.log_metrics({k: v for k, v in extra["curve"][0].items() if k != "epoch"}, step=0)
        before_imgs = restore_heldout_all(model, held, cfg, schedule, seed, None) if cfg.grid_samples else None

    def save_ckpt(epoch: int) -> None:
        checkpoint.save(ckpt_dir, epoch, trainable=_trainable_state(model), optimizer=optimizer.state_dict(),
                        scheduler={"lr": cfg.lr, "schedule": cfg.lr_schedule}, data={"epoch": epoch, "steps": steps},
                        fingerprint=fp, extra=extra, keep=cfg.checkpoint_keep)

    last: dict[str, float] = {}
    bar = tqdm(range(start, cfg.epochs), desc="stage2", disable=not (progress and main))
    for epoch in bar:
        gen = torch.Generator().manual_seed(derive_seed(seed, "epoch", epoch))
        train.set_epoch(epoch)
        picks = torch.randperm(len(train), generator=gen)[:cfg.groups_per_epoch].tolist()
        shard = GroupShard(tuple(train.ids[i] for i in picks), cfg.group_size, rank, world)
        batch = make_batch(model, train, [picks[p] for p in shard.positions], captions, cfg.sample_batch)
        last, _, stepped = nft_epoch(sana_policies(model, batch, scorers, rcfg, cfg, schedule), shard, rcfg.weights,
                                     cfg, schedule, optimizer, trainable, steps, gen, device)
        steps += int(stepped)
        if main:
            tracking.log_metrics(last, step=epoch + 1)
        bar.set_postfix(reward=f"{last['reward/total_mean']:.4f}", loss=f"{last['train/loss']:.4f}")
        for k, v in last.items():
            if not math.isfinite(v):
                raise FloatingPointError(f"stage2 epoch {epoch}: {k} = {v}")
        done_epochs = epoch + 1
        if main and cfg.eval_every and done_epochs % cfg.eval_every == 0 and done_epochs < cfg.epochs:
            metrics, now = heldout_eval(model, held, scorers, rcfg, cfg, schedule, seed, lora.CURRENT)
            extra["curve"].append({"epoch": done_epochs, **metrics})
            tracking.log_metrics(metrics, step=done_epochs)
            if before_imgs is not None:
                tracking.log_artifact(write_grid(grids / f"epoch-{done_epochs:06d}.png", held, before_imgs, now,
                                                 cfg.grid_samples), VALIDATION_DIR)
        if main and cfg.checkpoint_every and done_epochs % cfg.checkpoint_every == 0:
            save_ckpt(done_epochs)

    if not main:  # rank 0 evaluates and writes the result; the others wait for its summary
        distributed.barrier()
        return distributed.broadcast(None)

    # ---- after
    after, now = heldout_eval(model, held, scorers, rcfg, cfg, schedule, seed, lora.CURRENT)
    if extra["curve"][-1]["epoch"] != cfg.epochs:
        extra["curve"].append({"epoch": cfg.epochs, **after})
    tracking.log_metrics(after, step=cfg.epochs)
    save_ckpt(cfg.epochs)
    if before_imgs is not None:
        tracking.log_artifact(write_grid(grids / f"epoch-{cfg.epochs:06d}.png", held, before_imgs, now,
                                         cfg.grid_samples), VALIDATION_DIR)
    spread_after = determinism(model, held, scorers, rcfg, cfg, schedule, seed, lora.CURRENT) \
        if cfg.determinism_seeds else None
    spread_before = spread_from(extra["spread_before"]) if extra["spread_before"] else None

    summary: dict[str, Any] = {
        "stage": "2", "fingerprint": fp, "epochs": cfg.epochs, "resumed_from": start, "device": device.type,
        "lora_modules": len(wrapped), "lora_params": sum(p.numel() for p in trainable),
        "heldout_size": n_held, "heldout_reward_before": extra["before"]["heldout/reward_total"],
        "heldout_reward_after": after["heldout/reward_total"],
        "heldout_psnr_before": extra["before"]["heldout/psnr"], "heldout_psnr_after": after["heldout/psnr"],
        "heldout_ssim_before": extra["before"]["heldout/ssim"], "heldout_ssim_after": after["heldout/ssim"],
        "final_reward_mean": last.get("reward/total_mean", math.nan),
        "final_zero_std_ratio": last.get("train/zero_std_ratio", math.nan),
        "final_old_gap": last.get("train/old_gap", math.nan), "optimizer_steps": steps,
        "curve": extra["curve"], "checkpoint_report": report,
    }
    if spread_before is not None and spread_after is not None:
        summary["median_std_before"] = spread_before.median[SUM]
        summary["median_std_after"] = spread_after.median[SUM]
        tracking.log_metrics(spread_metrics(spread_before, spread_after))

    def save_model(tmp: Path) -> None:
        adapters = {name: lora.adapter_state(model.transformer, name) for name in (lora.CURRENT, lora.OLD)}
        lora.merge_into_base(model.transformer)  # the directory loads like any model (no adapters)
        model.save_pretrained(tmp)  # (re)creates tmp: everything else is written after it
        _save_lora(tmp / LORA_DIR, adapters, cfg, base)
        save_inference(tmp, restore_cfg, schedule)
        if spread_before is not None and spread_after is not None:
            write_json(tmp / DETERMINISM_FILE, {"before": spread_before.as_dict(), "after": spread_after.as_dict()})
            spread_boxplot({"stage 1": spread_before, "stage 2": spread_after}, tmp / BOXPLOT_FILE)

    summary["seconds"] = time.perf_counter() - t0
    finalize(out, save_model, summary)
    for name in (DETERMINISM_FILE, BOXPLOT_FILE):
        if (out / name).is_file():
            tracking.log_artifact(out / name, "determinism")
    distributed.barrier()
    return distributed.broadcast(summary)


def _resume(ckpt_dir: Path, fp: str, model: PrefRestoreModel, optimizer: torch.optim.Optimizer, epochs: int,
            main: bool) -> tuple[int, int, dict[str, Any], list[str]]:
    """The newest sound checkpoint of this run, if any: ``(start epoch, optimizer steps, extra state, report)``.

    Rank 0 looks (and removes partial saves); every rank loads the same checkpoint. A checkpoint of
    other settings or inputs, or one past ``epochs``, is an error rather than a silent fresh start.
    """
    path, report = distributed.broadcast(checkpoint.latest(ckpt_dir) if main else None)
    for line in report if main else []:
        log.warning("stage2: %s", line)
    if path is None:
        return 0, 0, {}, report
    ck = checkpoint.load(path)
    if ck.fingerprint != fp:
        raise RuntimeError(f"stage2: checkpoint {path} was written for different settings or inputs "
                           f"(fingerprint {ck.fingerprint} != {fp}); delete {ckpt_dir} to start over")
    _load_trainable(model, ck.trainable)
    optimizer.load_state_dict(ck.optimizer)
    checkpoint.set_rng_state(checkpoint.load_rng(path, 0))
    start = int(ck.data["epoch"])
    if start > epochs:
        raise ValueError(f"stage2: checkpoint {path} is at epoch {start}, past stage2.epochs={epochs}; "
                         f"raise epochs or delete {ckpt_dir}")
    log.info("stage2: resuming from %s (epoch %d)", path, start)
    return start, int(ck.data["steps"]), dict(ck.extra), report
