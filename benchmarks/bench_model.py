"""Model step benchmark: stage-1.1 / 1.2 forward+backward time and peak memory, and AR generation
with the KV cache against the no-cache baseline (same process, same model, ratio reported).

CPU (tiny profile)::

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_model.py --profile tiny --batch 4 --threads 1

GPU (paper shapes, random init; for a lent GPU)::

    python benchmarks/bench_model.py --profile paper --device cuda --dtype bf16 --batch 2 --gen-tokens 64
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import resource
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from prefrestore.core.config import load  # noqa: E402
from prefrestore.model.ar import _positions  # noqa: E402
from prefrestore.model.config import ModelConfig  # noqa: E402
from prefrestore.model.flow import FlowSchedule, flow_matching_loss, interpolate  # noqa: E402
from prefrestore.model.model import PrefRestoreModel  # noqa: E402

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def peak_mib(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # process peak RSS (Linux: KiB)


def build(profile: str, device: torch.device, dtype: torch.dtype) -> PrefRestoreModel:
    cfg = load(profile).section("model", ModelConfig)
    # random init at the profile's shapes; a word-level stand-in tokenizer with the same vocabulary size
    cfg = dataclasses.replace(cfg, ar=dataclasses.replace(cfg.ar, text_tokenizer="tiny_wordlevel"))
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device):
            model = PrefRestoreModel.build(cfg, "")
    finally:
        torch.set_default_dtype(previous)
    return model.to(device=device, dtype=dtype)


def step_time(model: PrefRestoreModel, stage: str, batch: int, schedule: FlowSchedule, iters: int,
              device: torch.device) -> tuple[float, float]:
    """Mean seconds of one forward+backward+AdamW step of ``stage`` and the peak memory."""
    model.train()
    model.freeze_for(stage)  # type: ignore[arg-type]
    opt = torch.optim.AdamW(model.trainable_parameters(stage), lr=1e-6)  # type: ignore[arg-type]
    g = torch.Generator().manual_seed(0)
    size = model.cfg.image_size
    lq = torch.rand(batch, 3, size, size, generator=g).to(device)
    hq = torch.rand(batch, 3, size, size, generator=g).to(device)
    with torch.no_grad():
        hq_codes, lq_codes, z = model.lq_codes(hq), model.lq_codes(lq), model.encode(hq)
    ids, mask = model.prompts(None, lq_codes)
    times = []
    for i in range(iters + 1):
        sync(device)
        t0 = time.perf_counter()
        ce, hidden = model.ar_forward(ids, mask, hq_codes)
        if stage == "1.1":
            cond = model.cond_from_hidden(hidden, None)
            extra = ce
        else:
            z_lq = model.encode(lq)
            cond = model.cond_from_hidden(hidden.detach(), None, lq_latent=z_lq)
            extra = torch.mean((z_lq.float() - z.float()) ** 2)
        noise = torch.randn(z.shape, generator=g).to(device=device, dtype=z.dtype)
        sigma = schedule.sample_sigma(batch, generator=g).to(device)
        v = model.velocity(interpolate(z, noise, sigma), sigma, cond, schedule)
        loss = flow_matching_loss(v, z, noise) + extra
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sync(device)
        if i:  # the first step warms up
            times.append(time.perf_counter() - t0)
    return sum(times) / len(times), peak_mib(device)


@torch.no_grad()
def generation(model: PrefRestoreModel, batch: int, tokens: int, device: torch.device) -> dict[str, float]:
    """KV-cached constrained greedy generation vs. recomputing the whole sequence per token."""
    model.eval()
    ar = model.ar
    size = model.cfg.image_size
    lq = torch.rand(batch, 3, size, size, generator=torch.Generator().manual_seed(1)).to(device)
    ids, mask = model.prompts(None, model.lq_codes(lq))  # the prompt holds all N LQ tokens
    ar.num_image_tokens = tokens  # time only the first `tokens` HQ image tokens (same for both)
    sync(device)
    t0 = time.perf_counter()
    cached, _ = ar.generate(ids, mask, greedy=True)
    sync(device)
    t_cache = time.perf_counter() - t0
    k0, k = ar.image_offset, ar.codebook_size
    seq, m = ids, mask
    t0 = time.perf_counter()
    out = []
    for _ in range(tokens):
        h = ar.lm.model(input_ids=seq, attention_mask=m, position_ids=_positions(m), use_cache=False).last_hidden_state
        code = ar.lm.lm_head(h[:, -1])[:, k0:k0 + k].float().argmax(-1)
        out.append(code)
        seq = torch.cat([seq, (code + k0)[:, None]], 1)
        m = torch.cat([m, torch.ones_like(m[:, :1])], 1)
    sync(device)
    t_plain = time.perf_counter() - t0
    ar.num_image_tokens = model.cfg.num_image_tokens
    same = bool(torch.equal(torch.stack(out, 1), cached))
    return {"tokens": tokens, "kv_cache_s": t_cache, "no_cache_s": t_plain, "speedup": t_plain / t_cache,
            "same_codes": same}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--profile", default="tiny")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", choices=sorted(DTYPES), default="fp32")
    ap.add_argument("--batch", type=int, default=4, help="per-device batch")
    ap.add_argument("--iters", type=int, default=3, help="timed steps per stage (after one warm-up)")
    ap.add_argument("--gen-tokens", type=int, default=0, help="image tokens to generate (0: all N)")
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: leave)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    torch.manual_seed(0)
    t0 = time.perf_counter()
    model = build(args.profile, device, DTYPES[args.dtype])
    schedule = load(args.profile).section("flow", FlowSchedule)
    result = {"profile": args.profile, "device": str(device), "dtype": args.dtype, "batch": args.batch,
              "build_s": time.perf_counter() - t0,
              "params_M": sum(p.numel() for p in model.parameters()) / 1e6}
    if device.type == "cuda":
        result["gpu"] = torch.cuda.get_device_name()
    for stage in ("1.1", "1.2"):
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats()
        secs, mib = step_time(model, stage, args.batch, schedule, args.iters, device)
        result[f"stage{stage}_step_s"] = secs
        result[f"stage{stage}_peak_MiB"] = mib
    result["generation"] = generation(model, args.batch, args.gen_tokens or model.cfg.num_image_tokens, device)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
