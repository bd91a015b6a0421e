"""Stage-2 (DiffusionNFT) throughput: rollouts, decode, rewards and the NFT training step.

Builds the profile's model with random init (paper shapes on a lent GPU), adds the LoRA adapters
stage 2 trains, and times the real pieces ``train_stage2.nft_epoch`` is made of, on ``--groups``
conditions x ``group_size`` rollouts:

- **AR condition**: constrained greedy generation for the groups' LQ images (once per LQ image
  per epoch): the time of 8 and of 8 + ``--gen-tokens`` image tokens gives the prefill and the
  per-token time; the epoch projection scales them to the profile's ``num_image_tokens``.
- **rollouts**: ``nft.collect_rollouts`` with the profile's sampler and steps, for each
  ``--sample-batches`` value; the first is the baseline (the paper's per-GPU 72 / 8 = 9) and the
  others report their ratio to it, in the same process on the same noises.
- **decode** (DC-AE) and **rewards** (PSNR + SSIM to HQ: the weight-free rewards; the paper's
  preference rewards need staged weights).
- **train**: ``nft.nft_train_step`` with one process's share of the profile's ``train_batch``
  (``train_batch / --gpus``) and ``--timesteps`` sigmas per rollout, reported per rollout-timestep (the epoch does ``timesteps_per_sample`` of them).

Then a projected epoch per GPU: the profile's ``groups_per_epoch x group_size`` rollouts split
over ``--gpus`` processes, each piece scaled by its measured rate. It is a projection from these
rates, not a timed epoch. Each ``--dtypes`` entry converts the same model in place and repeats
everything on the same noises and seeds: ``fp32``; ``amp`` = fp32 weights with bf16 autocast of the
policy forwards (``stage2.mixed_precision: bf16``, what ``train_stage2`` runs on CUDA); ``bf16``
weights. Each also reports how far its rollouts are from the first entry's, and its NFT loss.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_rollout.py --profile tiny --threads 1
    python3 benchmarks/bench_rollout.py --profile paper --device cuda --dtypes fp32 amp
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_model import build, peak_mib, sync  # noqa: E402

from prefrestore.core.config import load  # noqa: E402
from prefrestore.model import lora  # noqa: E402
from prefrestore.model.flow import FlowSchedule  # noqa: E402
from prefrestore.train.nft import Stage2Config, collect_rollouts, nft_train_step  # noqa: E402
from prefrestore.train.rewards import RewardsConfig, build_scorers, total_reward  # noqa: E402
from prefrestore.train.stage2_batch import Batch, decode, policy, score  # noqa: E402

# weights dtype and stage2.mixed_precision of each --dtypes choice; "amp" is what train_stage2 runs on CUDA
PRECISIONS = {"fp32": (torch.float32, "no"), "amp": (torch.float32, "bf16"), "bf16": (torch.bfloat16, "no")}


def timed(fn, device: torch.device):
    sync(device)
    t0 = time.perf_counter()
    out = fn()
    sync(device)
    return out, time.perf_counter() - t0


@torch.no_grad()
def make_groups(model, groups: int, device: torch.device) -> Batch:
    """LQ/HQ images and their conditions; the AR hidden states come from one teacher-forced pass
    (same shapes as generated ones; generation itself is timed separately)."""
    g = torch.Generator().manual_seed(0)
    size = model.cfg.image_size
    lq, hq = torch.rand(groups, 3, size, size, generator=g), torch.rand(groups, 3, size, size, generator=g)
    ids, mask = model.prompts(None, model.lq_codes(lq.to(device)))
    _, hidden = model.ar_forward(ids, mask, model.lq_codes(hq.to(device)))
    cond = model.cond_from_hidden(hidden, lq.to(device))
    return Batch([f"g{i}" for i in range(groups)], lq, hq, [""] * groups, cond)


@torch.no_grad()
def generation_time(model, batch: Batch, tokens: int, device: torch.device) -> float:
    """Seconds to generate ``tokens`` image tokens (prompt prefill included) for ``batch``'s LQ images."""
    ar = model.ar
    ids, mask = model.prompts(None, model.lq_codes(batch.lq.to(device)))
    ar.num_image_tokens = tokens
    try:
        return timed(lambda: ar.generate(ids, mask, greedy=True), device)[1]
    finally:
        ar.num_image_tokens = model.cfg.num_image_tokens


def measure(model, cfg: Stage2Config, schedule: FlowSchedule, rcfg: RewardsConfig, args, device,
            amp: str) -> tuple[dict, torch.Tensor]:
    """The rates of one precision, and the rollouts at the first sample batch (to compare precisions)."""
    model.eval()
    batch = make_groups(model, args.groups, device)
    n = args.groups * cfg.group_size
    shape = model.latent_shape(1)[1:]
    gen = torch.Generator().manual_seed(1)
    noise = torch.randn((n, *shape), generator=gen)
    sigmas = schedule.sigmas(cfg.sampler_steps, device=device)
    sampler = policy(model, batch, schedule, lora.OLD, cfg.cfg_scale, amp)
    out: dict = {"rollouts": n}
    generation_time(model, batch, 2, device)  # warm-up
    short, long = generation_time(model, batch, 8, device), generation_time(model, batch, 8 + args.gen_tokens, device)
    out["ar_s_per_token"] = (long - short) / args.gen_tokens
    out["ar_prefill_s"] = max(short - 8 * out["ar_s_per_token"], 0.0)

    def roll(sb: int):
        return collect_rollouts(sampler, range(args.groups), cfg.group_size, shape, sigmas, cfg.sampler, sb,
                                gen, device, noise=noise)

    with torch.no_grad():
        roll(args.sample_batches[0])  # warm-up
        rates, first = {}, None
        for sb in args.sample_batches:
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats()
            rolls, secs = timed(lambda sb=sb: roll(sb), device)
            rates[sb] = {"rollouts_per_s": n / secs, "peak_MiB": peak_mib(device)}
            first = rolls if first is None else first
            rates[sb]["max_abs_diff_vs_baseline"] = float((rolls.x0.float() - first.x0.float()).abs().max())
        out["sampling"] = rates
        images, secs = timed(lambda: decode(model, first.x0, tuple(batch.hq.shape[-2:]), cfg.sample_batch), device)
        out["decode_img_per_s"] = n / secs
        scorers = build_scorers(rcfg, device)
        scores, secs = timed(lambda: score(scorers, images, batch, first.group, True), device)
        out["reward_img_per_s"] = n / secs
        rewards = total_reward(scores, rcfg.weights).float()
    r = ((rewards - rewards.mean()) / (rewards.std() + 1e-4)).clamp(-1, 1) * 0.5 + 0.5  # any [0, 1] values
    # one process's share of each micro-batch (under torchrun every rank trains its rows of it)
    train_cfg = dataclasses.replace(cfg, timesteps_per_sample=args.timesteps,
                                    train_batch=max(cfg.train_batch // args.gpus, 1))
    trainable = list(lora.adapter_parameters(model.transformer, lora.CURRENT).values())
    opt = torch.optim.AdamW(trainable, lr=1e-6)
    v_cur = policy(model, batch, schedule, lora.CURRENT, mixed_precision=amp)
    v_old = policy(model, batch, schedule, lora.OLD, mixed_precision=amp)
    v_ref = policy(model, batch, schedule, None, mixed_precision=amp) if cfg.kl_weight > 0 else None
    model.train()
    step = lambda: nft_train_step(v_cur, v_old, v_ref, first, r.to(device), train_cfg, schedule, opt,  # noqa: E731
                                  trainable, torch.Generator().manual_seed(2))
    state = lora.adapter_state(model.transformer, lora.CURRENT)
    out["train_loss"] = step()["loss"]  # warm-up; same seeds and weights for every precision
    lora.load_adapter_state(model.transformer, lora.CURRENT, state)  # every precision starts from the same adapters
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    _, secs = timed(step, device)
    lora.load_adapter_state(model.transformer, lora.CURRENT, state)
    out["train_s_per_rollout_timestep"] = secs / (n * args.timesteps)
    out["train_peak_MiB"] = peak_mib(device)
    return out, first.x0.float().cpu()


def project(m: dict, cfg: Stage2Config, tokens: int, gpus: int, sb: int) -> dict:
    """Seconds of one epoch per GPU from the measured rates (see module doc)."""
    per_gpu = cfg.groups_per_epoch * cfg.group_size / gpus
    parts = {
        "ar_condition_s": m["ar_prefill_s"] + m["ar_s_per_token"] * tokens,  # this GPU's LQ images, one batch
        "rollouts_s": per_gpu / m["sampling"][sb]["rollouts_per_s"],
        "decode_s": per_gpu / m["decode_img_per_s"],
        "rewards_s": per_gpu / m["reward_img_per_s"],
        "train_s": per_gpu * cfg.timesteps_per_sample * m["train_s_per_rollout_timestep"],
    }
    parts["epoch_s"] = sum(parts.values())
    return parts


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--profile", default="tiny")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtypes", nargs="+", choices=sorted(PRECISIONS), default=["fp32"],
                    help="fp32: plain; amp: fp32 weights + bf16 autocast (stage2.mixed_precision: bf16, what "
                         "train_stage2 runs on CUDA); bf16: bf16 weights")
    ap.add_argument("--groups", type=int, default=2, help="conditions rolled out (x group_size rollouts)")
    ap.add_argument("--sample-batches", type=int, nargs="+", default=[9, 24, 48])
    ap.add_argument("--timesteps", type=int, default=2, help="training sigmas per rollout in the timed step")
    ap.add_argument("--gen-tokens", type=int, default=32, help="AR image tokens generated for the per-token time")
    ap.add_argument("--gpus", type=int, default=8, help="processes the projected epoch is split over")
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: leave)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    params = load(args.profile)
    cfg = params.section("stage2", Stage2Config)
    schedule = params.section("flow", FlowSchedule)
    rcfg = dataclasses.replace(load("tiny").section("rewards", RewardsConfig), weights={"psnr": 1.0, "ssim": 1.0})
    torch.manual_seed(0)
    t0 = time.perf_counter()
    model = build(args.profile, device, torch.float32)
    lora.add_lora(model.transformer, cfg.lora_rank, cfg.lora_alpha, cfg.lora_targets, 0)
    model.requires_grad_(False)
    for p in lora.adapter_parameters(model.transformer, lora.CURRENT).values():
        p.requires_grad_(True)
    result: dict = {"profile": args.profile, "device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu",
                    "build_s": time.perf_counter() - t0, "params_M": sum(p.numel() for p in model.parameters()) / 1e6,
                    "group_size": cfg.group_size, "sampler": f"{cfg.sampler} x {cfg.sampler_steps}",
                    "train_batch": cfg.train_batch, "gpus": args.gpus}
    sb = args.sample_batches[0]
    rollouts: dict[str, torch.Tensor] = {}
    for name in args.dtypes:
        dtype, amp = PRECISIONS[name]
        model.to(dtype)
        m, rollouts[name] = measure(model, cfg, schedule, rcfg, args, device, amp)
        m["projected_epoch_per_gpu"] = project(m, cfg, model.cfg.num_image_tokens, args.gpus, sb)
        base = rollouts[args.dtypes[0]]
        m[f"rollouts_max_abs_diff_vs_{args.dtypes[0]}"] = float((rollouts[name] - base).abs().max())
        m[f"rollouts_rms_vs_{args.dtypes[0]}"] = float((rollouts[name] - base).pow(2).mean().sqrt())
        result[name] = m
        print(json.dumps({name: m}, indent=2), flush=True)
    base = result[args.dtypes[0]]
    for name in args.dtypes:
        m = result[name]
        base_rate = m["sampling"][sb]["rollouts_per_s"]
        print(f"{name}: rollouts/s at sample_batch " + ", ".join(
            f"{k}: {v['rollouts_per_s']:.2f} ({v['rollouts_per_s'] / base_rate:.2f}x, {v['peak_MiB'] / 1024:.1f} GiB)"
            for k, v in m["sampling"].items()))
        e, e0 = m["projected_epoch_per_gpu"], base["projected_epoch_per_gpu"]
        print(f"{name}: projected epoch per GPU {e['epoch_s']:.1f} s ({e0['epoch_s'] / e['epoch_s']:.2f}x vs "
              f"{args.dtypes[0]}): " + ", ".join(f"{k} {v:.1f}" for k, v in e.items() if k != "epoch_s")
              + f"; {cfg.epochs} epochs ~ {e['epoch_s'] * cfg.epochs / 3600:.1f} h")
    assert all(math.isfinite(result[n]["train_s_per_rollout_timestep"]) for n in args.dtypes)


if __name__ == "__main__":
    main()
