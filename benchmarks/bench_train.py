"""Stage-1 training step time and peak memory, baseline and variant side by side in one process.

One "step" is what :func:`prefrestore.train.common.fit` does per micro-batch: the stage's loss
(:class:`SemanticAlignLoss` for 1.1, :class:`TextureAlignLoss` for 1.2), backward, grad clipping
and an AdamW step on the stage's trainable group, on a random-init model of the profile's shapes.

- CPU (default, tiny shapes): baseline = torch with ``--threads-base`` threads, variant = ``--threads``.
- CUDA (``--profile paper --device cuda``): baseline = fp32, variant = bf16 autocast (the recipe's
  ``mixed_precision: bf16``); per-device batch 8 as released. DeepSpeed is not involved in a
  single-process step; the ZeRO configs only shard optimizer state across ranks.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_train.py --profile tiny --batch 16 --steps 10
    python benchmarks/bench_train.py --profile paper --device cuda --batch 8 --steps 10
"""

from __future__ import annotations

import argparse
import contextlib
import json
import time

import torch

from prefrestore.core.config import load
from prefrestore.model.config import ModelConfig
from prefrestore.model.flow import FlowSchedule
from prefrestore.model.model import PrefRestoreModel
from prefrestore.train.common import peak_memory_mb
from prefrestore.train.stage1 import SemanticAlignLoss, TextureAlignLoss


def build(profile: str, device: torch.device) -> tuple[PrefRestoreModel, FlowSchedule]:
    params = load(profile)
    if profile != "tiny":  # random init from shapes: no store weights, an offline stand-in text tokenizer
        params = params.with_overrides({"model.init": "random", "model.ar.text_tokenizer": "tiny_wordlevel"})
    torch.manual_seed(0)
    model = PrefRestoreModel.build(params.section("model", ModelConfig), "").to(device)
    return model, params.section("flow", FlowSchedule)


def time_steps(model: PrefRestoreModel, schedule: FlowSchedule, stage: str, batch: int, steps: int,
               autocast: bool, device: torch.device) -> dict[str, float]:
    model.freeze_for(stage)  # type: ignore[arg-type]
    loss = (SemanticAlignLoss(model, schedule, 1.0) if stage == "1.1" else TextureAlignLoss(model, schedule, 1.0))
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-5)
    size = model.cfg.image_size
    g = torch.Generator().manual_seed(1)
    hq = torch.rand(batch, 3, size, size, generator=g)
    data = {"hq": hq, "lq": (hq * 0.8).clamp(0, 1),
            "instructions": ["<image>\nPlease reconstruct the given image based on the image content: "
                             "a photography of a man with short brown hair"] * batch}
    ctx = torch.autocast(device.type, dtype=torch.bfloat16) if autocast else contextlib.nullcontext()

    def one() -> None:
        with ctx:
            out = loss(data)
        out["loss"].backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)

    one()  # warm-up (allocations, kernels)
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    for _ in range(steps):
        one()
    if device.type == "cuda":
        torch.cuda.synchronize()
    dt = (time.perf_counter() - t0) / steps
    return {"ms_per_step": round(dt * 1000, 1), "samples_per_s": round(batch / dt, 2),
            "peak_mem_mb": round(peak_memory_mb(device), 1),
            "trainable_params": sum(p.numel() for p in params)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--profile", default="tiny")
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--threads", type=int, default=1, help="CPU variant: torch threads")
    ap.add_argument("--threads-base", type=int, default=2, help="CPU baseline: torch threads")
    ap.add_argument("--stages", nargs="+", default=["1.1", "1.2"])
    args = ap.parse_args()
    device = torch.device(args.device)
    model, schedule = build(args.profile, device)
    rows = []
    for stage in args.stages:
        if device.type == "cpu":
            torch.set_num_threads(args.threads_base)
            base = time_steps(model, schedule, stage, args.batch, args.steps, False, device)
            torch.set_num_threads(args.threads)
            var = time_steps(model, schedule, stage, args.batch, args.steps, False, device)
            names = (f"{args.threads_base} threads", f"{args.threads} threads")
        else:
            base = time_steps(model, schedule, stage, args.batch, args.steps, False, device)
            var = time_steps(model, schedule, stage, args.batch, args.steps, True, device)
            names = ("fp32", "bf16 autocast")
        ratio = base["ms_per_step"] / var["ms_per_step"]
        rows.append({"stage": stage, "baseline": names[0], "variant": names[1], "base": base, "var": var,
                     "speedup": round(ratio, 2)})
        print(f"stage {stage}: {names[0]} {base['ms_per_step']} ms/step ({base['peak_mem_mb']} MiB) | "
              f"{names[1]} {var['ms_per_step']} ms/step ({var['peak_mem_mb']} MiB) | speedup x{ratio:.2f}",
              flush=True)
    print(json.dumps({"profile": args.profile, "device": args.device, "batch": args.batch, "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
