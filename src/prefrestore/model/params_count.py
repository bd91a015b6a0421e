"""Parameter counts per component, at any profile's shapes, without weights (``prefrestore model-info``).

Paper shapes are built on the ``meta`` device (no memory, nothing downloaded): SigLIP2-so400m TA-Tok,
Qwen3 with the extended vocabulary (Sec. V-A), the two connectors, SANA-1.5 1.6B and DC-AE f32c32.
"""

from __future__ import annotations

import torch
from torch import nn
from transformers import Qwen3ForCausalLM

from prefrestore.core.config import load
from prefrestore.model.ar import qwen3_config
from prefrestore.model.config import ModelConfig
from prefrestore.model.connectors import Connector
from prefrestore.model.generator import build_transformer, build_vae
from prefrestore.model.tokenizer import SemanticTokenizer

COMPONENTS = ("tokenizer", "ar", "diffusion_connector", "vae_connector", "transformer", "vae")


def count_parameters(model: nn.Module) -> dict[str, int]:
    """``{component: parameters}`` over the model's direct children, plus ``total``."""
    counts = {name: sum(p.numel() for p in child.parameters()) for name, child in model.named_children()}
    counts["total"] = sum(p.numel() for p in model.parameters())
    return counts


def extended_vocab_size(cfg: ModelConfig) -> int:
    """Text ids + ``<I0..I{K-1}>`` + ``<S0..>`` + ``<im_start>``, ``<im_end>``."""
    return cfg.ar.text_vocab_size + cfg.tokenizer.codebook_size + cfg.ar.num_scale_tokens + 2


def build_components(cfg: ModelConfig, device: str | torch.device = "meta") -> nn.ModuleDict:
    """Every component at ``cfg``'s shapes, random init (on ``meta``: shapes only, no memory)."""
    width = cfg.generator.caption_channels
    with torch.device(device):
        return nn.ModuleDict({
            "tokenizer": SemanticTokenizer(cfg.tokenizer),
            "ar": Qwen3ForCausalLM(qwen3_config(cfg.ar, extended_vocab_size(cfg))),
            "diffusion_connector": Connector(cfg.ar.hidden_size, width, cfg.connector_norm_init),
            "vae_connector": Connector(cfg.generator.inner_dim, width, cfg.connector_norm_init),
            "transformer": build_transformer(cfg.generator, cfg.vae.latent_channels, cfg.latent_size, cfg.extra_in_channels),
            "vae": build_vae(cfg.vae),
        })


def shapes(cfg: ModelConfig) -> dict[str, str]:
    """The key tensor shapes of a profile (per image)."""
    c, s = cfg.vae.latent_channels, cfg.latent_size
    return {
        "semantic tokens N": f"{cfg.num_image_tokens} ({cfg.tokenizer.grid}x{cfg.tokenizer.grid}) "
                             f"from {cfg.tokenizer.image_size}px",
        "codebook": f"{cfg.tokenizer.codebook_size} x {cfg.tokenizer.code_dim}",
        "extended vocabulary": str(extended_vocab_size(cfg)),
        "AR hidden [N+1, H]": f"[{cfg.num_image_tokens + 1}, {cfg.ar.hidden_size}]",
        "latent": f"[{c}, {s}, {s}] from {cfg.image_size}px (f{cfg.vae.compression})",
        "z_low tokens": f"[{cfg.num_zlow_tokens}, {cfg.generator.caption_channels}] ({cfg.lq_condition})",
        "cross-attn tokens": f"[{cfg.num_cond_tokens}, {cfg.generator.caption_channels}]",
    }


def model_info(profile: str) -> str:
    """A printable table of parameter counts and shapes for ``profile`` (built on meta)."""
    cfg = load(profile).section("model", ModelConfig)
    counts = count_parameters(build_components(cfg))
    lines = [f"Pref-Restore model, profile '{profile}' (meta device, nothing loaded)", "",
             f"{'component':<22}{'parameters':>16}{'millions':>12}"]
    for name in (*COMPONENTS, "total"):
        lines.append(f"{name:<22}{counts[name]:>16,}{counts[name] / 1e6:>12.2f}")
    lines += ["", *(f"{k:<22}{v}" for k, v in shapes(cfg).items())]
    return "\n".join(lines)
