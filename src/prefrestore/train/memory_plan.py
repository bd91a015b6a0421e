"""Memory per GPU of each training stage under ZeRO-0/1/2/3 (``prefrestore model-info --plan --gpus N``).

Model states use DeepSpeed's accounting for bf16 mixed precision with Adam (its ``estimate_zero2/3_
model_states_mem_needs``): per trainable parameter 2 B bf16 weight, 2 B bf16 grad, 4 B fp32 grad, 4 B fp32
master weight and 8 B Adam moments; a frozen parameter costs its 2 B bf16 weight. ZeRO-1 shards the fp32
master, moments and fp32 grads over the GPUs, ZeRO-2 also the bf16 grads, ZeRO-3 also the weights
(plus a gather buffer of the largest layer, 4 B/param as DeepSpeed's estimator). The ZeRO-2/3 totals are
checked against DeepSpeed's own functions when DeepSpeed is installed.

Activations are an analytic estimate at the Table I per-device batch (no activation checkpointing, SDPA
attention so no T^2 score tensors), in bf16:
- Qwen3 (stage 1.1 only; the AR is frozen after): per layer and token 2 B x (16 H + 3 I) (the inputs of the
  q/k/v/o and gate/up/down projections, norms and SiLU; after Korthikanti et al. 2022 Eq. 2 without the
  attention-score term), plus the CE head: N x V logits in bf16, their fp32 copy and fp32 gradient (10 B).
- SANA (all stages; stage 1.1 back-propagates through it): per block and latent token 2 B x (16 D + 5 r D)
  (linear attention, Mix-FFN's inverted conv of width 2 r D, GLU, depthwise conv), plus the cross-attention
  keys/values of the condition tokens, 2 x 2 B x D per block and token.
- DC-AE encoder (stage 1.2 trains it): counted, not estimated. Its forward runs once on fake tensors
  (``FakeTensorMode``: shapes and dtypes, no data, ~0.5 s) under bf16 autocast, and a
  ``saved_tensors_hooks`` pack hook adds up the storages autograd keeps for backward. The per-sample
  figure is the difference between batch 2 and batch 1, so the weights' autocast copies are not counted
  twice. (The former analytic count, 4 maps per block, was 0.95 GiB a sample against 3.1 GiB counted:
  the RMSNorm fp32 upcasts, the SiLU inputs and the EfficientViT blocks' expanded maps it left out.)
The prompt's text tokens are an assumption (``TEXT_TOKENS``); captions add up to ~130.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

import torch

from prefrestore.core.config import Params
from prefrestore.model.config import ModelConfig, VaeConfig
from prefrestore.model.model import LORA_MARK, STAGE_PREFIXES
from prefrestore.model.params_count import build_components, extended_vocab_size
from prefrestore.train.nft import Stage2Config
from prefrestore.train.stage1 import Stage11Config, Stage12Config

GB = 1e9
GIB = float(1 << 30)
FIT_BYTES = 80 * GB  # an 80 GB card (H100/A100 80GB)
TEXT_TOKENS = 48  # chat markers + the no-caption instruction (assumed; Appendix C/F-A)
# benchmarks/RESULTS.md, bench_train.py on one H200: plain AdamW with fp32 weights, bf16 autocast, batch 8
H200_MEASURED_GIB = {"1.1": 61.9, "1.2": 71.6}
MEASURED_PROFILE = "paper"  # the shapes that measurement ran at


@dataclasses.dataclass(frozen=True)
class StagePlan:
    stage: str
    batch: int  # per-device micro-batch (Table I)
    total: int  # parameters in the model
    trainable: int
    largest_layer: int  # parameters of the largest trainable module (ZeRO-3 gather buffer)
    activations: float  # bytes per GPU at ``batch``

    def states(self, zero: int, gpus: int) -> dict[str, float]:
        """Bytes per GPU of parameters, gradients and optimizer state under ZeRO-``zero``."""
        t, f, n = self.trainable, self.total - self.trainable, gpus
        params = 2 * (t + f) if zero < 3 else 2 * (t + f) / n + 4 * self.largest_layer
        grads = {0: 6 * t, 1: 2 * t + 4 * t / n, 2: 6 * t / n, 3: 6 * t / n}[zero]
        optim = 12 * t if zero == 0 else 12 * t / n
        return {"params": params, "grads": grads, "optimizer": optim}


def _lora_params(cfg: ModelConfig, rank: int, targets: tuple[str, ...]) -> int:
    g = cfg.generator
    d, c = g.inner_dim, g.inner_dim  # attn1 is D -> D; attn2's q/out are D -> D, k/v read the C-wide condition
    shapes = {"attn1.to_q": (d, d), "attn1.to_k": (d, d), "attn1.to_v": (d, d), "attn1.to_out.0": (d, d),
              "attn2.to_q": (d, g.cross_heads * g.cross_head_dim), "attn2.to_k": (c, g.cross_heads * g.cross_head_dim),
              "attn2.to_v": (c, g.cross_heads * g.cross_head_dim), "attn2.to_out.0": (g.cross_heads * g.cross_head_dim, d)}
    return g.num_layers * sum(rank * (i + o) for name, (i, o) in shapes.items() if name in targets)


def activation_bytes(cfg: ModelConfig, stage: str, batch: int) -> float:
    """The analytic activation estimate of the module docstring, in bytes."""
    a, g, v = cfg.ar, cfg.generator, cfg.vae
    n, lat = cfg.num_image_tokens, cfg.latent_size**2
    d, r = g.inner_dim, g.mlp_ratio
    cond = (1 + n) + (cfg.num_zlow_tokens if stage != "1.1" else 0)
    sana = g.num_layers * batch * (lat * 2 * (16 * d + 5 * r * d) + cond * 2 * 2 * d)
    if stage == "1.1":
        tokens = TEXT_TOKENS + (n + 2) + (n + 1)
        ar = a.num_layers * batch * tokens * 2 * (16 * a.hidden_size + 3 * a.intermediate_size)
        head = batch * n * extended_vocab_size(cfg) * 10
        return ar + head + sana
    if stage == "1.2":
        return sana + batch * dcae_encoder_saved_bytes(v, cfg.image_size)
    return sana


@functools.lru_cache(maxsize=8)
def dcae_encoder_saved_bytes(vae: VaeConfig, image_size: int) -> float:
    """Bytes autograd saves per sample in the DC-AE encoder's forward (bf16 autocast), counted on fake tensors."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    from prefrestore.model.generator import build_vae

    def saved(batch: int) -> int:
        storages: dict[int, int] = {}

        def pack(t: torch.Tensor) -> torch.Tensor:
            storage = t.untyped_storage()
            storages[storage._cdata] = storage.nbytes()
            return t

        with FakeTensorMode(allow_non_fake_inputs=True):
            model = build_vae(vae)
            x = torch.zeros(batch, 3, image_size, image_size)
            with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t), \
                    torch.autocast("cpu", dtype=torch.bfloat16):
                model.encode(x)
        return sum(storages.values())

    return float(saved(2) - saved(1))


def stage_plans(params: Params, gpus: int) -> list[StagePlan]:
    cfg = params.section("model", ModelConfig)
    comps = build_components(cfg)
    names = {(f"ar.lm.{k}" if c == "ar" else f"{c}.{k}"): p.numel()
             for c, m in comps.items() for k, p in m.named_parameters()}
    total = sum(names.values())
    s11, s12 = params.section("stage1_1", Stage11Config), params.section("stage1_2", Stage12Config)
    s2 = params.section("stage2", Stage2Config)
    plans = []
    for stage, batch in (("1.1", s11.per_device_batch), ("1.2", s12.per_device_batch)):
        picked = {k: n for k, n in names.items() if k.startswith(STAGE_PREFIXES[stage]) and LORA_MARK not in k}
        plans.append(StagePlan(stage, batch, total, sum(picked.values()), max(picked.values()),
                               activation_bytes(cfg, stage, batch)))
    lora = _lora_params(cfg, s2.lora_rank, tuple(s2.lora_targets))
    batch2 = max(1, s2.train_batch // gpus)
    # stage 2 holds two LoRA adapters (policy + old policy, SPEC §3); only the policy trains
    plans.append(StagePlan("2", batch2, total + 2 * lora, lora, lora // max(cfg.generator.num_layers, 1),
                           activation_bytes(cfg, "2", batch2)))
    return plans


def deepspeed_check(plan: StagePlan, gpus: int) -> dict[str, Any]:
    """DeepSpeed's own ZeRO-2/3 GPU estimates of the trainable parameters' states (None if not installed)."""
    try:
        from deepspeed.runtime.zero.stage3 import estimate_zero3_model_states_mem_needs
        from deepspeed.runtime.zero.stage_1_and_2 import estimate_zero2_model_states_mem_needs
    except ImportError:
        return {"zero2": None, "zero3": None}
    _, z2 = estimate_zero2_model_states_mem_needs(plan.trainable, gpus, 1, cpu_offload=False)
    _, z3, _ = estimate_zero3_model_states_mem_needs(plan.trainable, plan.largest_layer, gpus, 1, cpu_offload=False,
                                                  cpu_offload_params=False)
    return {"zero2": z2, "zero3": z3}


def plan_table(params: Params, gpus: int) -> str:
    plans = stage_plans(params, gpus)
    lines = [f"Memory per GPU, profile '{params.profile}', {gpus} GPU(s), bf16 + Adam (DeepSpeed accounting), "
             f"Table I per-device batch; GB = 1e9 bytes, fits = total <= 80 GB", "",
             f"{'stage':<6}{'batch':>6}{'trainable':>12}{'ZeRO':>5}{'params':>9}{'grads':>8}{'optim':>8}"
             f"{'activ.':>8}{'total':>8}  fits 80 GB"]
    for p in plans:
        for zero in range(4):
            s = p.states(zero, gpus)
            total = sum(s.values()) + p.activations
            lines.append(f"{p.stage:<6}{p.batch:>6}{p.trainable / 1e6:>11.0f}M{zero:>5}{s['params'] / GB:>9.1f}"
                         f"{s['grads'] / GB:>8.1f}{s['optimizer'] / GB:>8.1f}{p.activations / GB:>8.1f}{total / GB:>8.1f}"
                         f"  {'yes' if total <= FIT_BYTES else 'NO'}")
        ds = deepspeed_check(p, gpus)
        if ds["zero2"] is not None:
            ours2 = 2 * p.trainable + 18 * p.trainable / gpus
            lines.append(f"{'':<6}DeepSpeed estimate_zero2/3 (trainable only): {ds['zero2'] / GB:.1f} / "
                         f"{ds['zero3'] / GB:.1f} GB; this table's ZeRO-2 trainable share {ours2 / GB:.1f} GB")
    lines += ["", "Cross-check against the H200 measurement (benchmarks/RESULTS.md, bench_train.py: one GPU, plain AdamW,",
              "fp32 weights + bf16 autocast, batch 8; states = 16 B per trainable + 4 B per frozen parameter):"]
    cfg = params.section("model", ModelConfig)
    if params.profile != MEASURED_PROFILE:
        lines.append(f"  (measured for the '{MEASURED_PROFILE}' profile's shapes only: no measurement to compare for this one)")
        plans = []
    for p in plans:
        if p.stage not in H200_MEASURED_GIB:
            continue
        states = 16 * p.trainable + 4 * (p.total - p.trainable)
        act8 = activation_bytes(cfg, p.stage, 8)
        autocast = 2 * p.total  # bf16 copies of the weights autocast caches during the step
        est = (states + act8 + autocast) / GIB
        lines.append(f"  stage {p.stage}: measured peak {H200_MEASURED_GIB[p.stage]:.1f} GiB; estimate {est:.1f} GiB "
                     f"(states {states / GIB:.1f} + activations {act8 / GIB:.1f} + autocast copies {autocast / GIB:.1f}); "
                     f"estimate / measured = {est / H200_MEASURED_GIB[p.stage]:.2f}")
    lines.append("No GPU was available when this plan was written; the cross-check uses the committed H200 numbers.")
    return "\n".join(lines)
