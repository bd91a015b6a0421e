"""Shrunken stand-ins of the public checkpoints, with the real key names and file layouts.

Each part is written the way its publisher wrote it: Qwen3 and SANA/DC-AE by their own classes'
``save_pretrained`` (config.json + safetensors), BLIP3o-NEXT as one sharded safetensors folder with
``model.*`` / ``model.diffusion_connector.*`` / ``model.sana.*`` / ``model.sana_vae.*`` and a tokenizer
that already has the image tokens (BLIP3o's order), TA-Tok as ``{"model": {"args", "sd"}}`` with every key
its module defines. Widths and depths are tiny; the values are random. :func:`stage` writes them under a
store root and returns the ModelConfig that matches them.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch
from diffusers import AutoencoderDC, SanaTransformer2DModel
from safetensors.torch import save_file
from transformers import Qwen3Config, Qwen3ForCausalLM

from prefrestore.core.config import Params, load
from prefrestore.model.ar import IM_END, IM_START, build_tiny_text_tokenizer, image_token, scale_token
from prefrestore.model.config import ModelConfig
from prefrestore.model.parts import DCAE_CONFIG, SANA_CONFIG, TA_TOK_CONFIG, ta_tok_tensors

PADDING_ROWS = 8  # Qwen3 pads its embedding past len(tokenizer); the stand-in does too


def params_for(init: str) -> Params:
    """The tiny profile's shapes with the pretrained recipe's choices (cross_attn, cosine VQ, sqrt(5.5), DC-AE scale)."""
    return load("tiny").with_overrides({
        "model.init": init, "model.lq_condition": "cross_attn", "model.connector_norm_init": math.sqrt(5.5),
        "model.tokenizer.codebook_l2_norm": True, "model.tokenizer.codebook_size": 64,
        "model.ar.text_tokenizer": "qwen3", "model.vae.scaling_factor": None})


def model_config(init: str) -> ModelConfig:
    return params_for(init).section("model", ModelConfig)


def _random(shapes: dict[str, tuple[tuple[int, ...], str]], seed: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {k: (torch.randn(s, generator=g) * 0.2).to(torch.bfloat16 if d == "BF16" else torch.float32)
            for k, (s, d) in shapes.items()}


def _qwen3(cfg: ModelConfig, vocab: int, seed: int) -> Qwen3ForCausalLM:
    a = cfg.ar
    torch.manual_seed(seed)
    return Qwen3ForCausalLM(Qwen3Config(vocab_size=vocab, hidden_size=a.hidden_size, intermediate_size=a.intermediate_size,
                                        num_hidden_layers=a.num_layers, num_attention_heads=a.num_heads,
                                        num_key_value_heads=a.num_kv_heads, head_dim=a.head_dim, rope_theta=a.rope_theta,
                                        max_position_embeddings=a.max_position_embeddings,
                                        tie_word_embeddings=a.tie_word_embeddings, torch_dtype="bfloat16"))


def _sana(cfg: ModelConfig, seed: int) -> SanaTransformer2DModel:
    g, c = cfg.generator, {k: v["value"] for k, v in SANA_CONFIG.items()}
    c.update(in_channels=cfg.vae.latent_channels, out_channels=cfg.vae.latent_channels, num_attention_heads=g.num_heads,
             attention_head_dim=g.head_dim, num_layers=g.num_layers, num_cross_attention_heads=g.cross_heads,
             cross_attention_head_dim=g.cross_head_dim, cross_attention_dim=g.inner_dim,
             caption_channels=g.caption_channels, sample_size=cfg.latent_size)
    torch.manual_seed(seed)
    return SanaTransformer2DModel(**c)


def _dcae(cfg: ModelConfig, scaling_factor: float, seed: int) -> AutoencoderDC:
    v, c = cfg.vae, {k: v["value"] for k, v in DCAE_CONFIG.items()}
    n = len(v.block_out_channels)
    c.update(latent_channels=v.latent_channels, attention_head_dim=v.attention_head_dim,
             encoder_block_types=tuple(v.block_types), decoder_block_types=tuple(v.block_types),
             encoder_block_out_channels=tuple(v.block_out_channels), decoder_block_out_channels=tuple(v.block_out_channels),
             encoder_layers_per_block=tuple(v.encoder_layers_per_block),
             decoder_layers_per_block=tuple(v.decoder_layers_per_block),
             encoder_qkv_multiscales=tuple(tuple(m) for m in v.qkv_multiscales),
             decoder_qkv_multiscales=tuple(tuple(m) for m in v.qkv_multiscales), scaling_factor=scaling_factor)
    assert n == len(c["encoder_block_types"])
    torch.manual_seed(seed)
    return AutoencoderDC(**c)


def ta_tok_checkpoint(cfg: ModelConfig, seed: int) -> dict:
    t = cfg.tokenizer
    c = {k: v["value"] for k, v in TA_TOK_CONFIG.items()}
    c.update({"encoder.hidden_size": t.hidden_size, "encoder.intermediate_size": t.intermediate_size,
              "encoder.num_hidden_layers": t.num_layers, "encoder.num_attention_heads": t.num_heads,
              "encoder.image_size": t.image_size, "encoder.patch_size": t.patch_size, "bottleneck_dim": t.code_dim,
              "codebook_size": t.codebook_size, "decoder.intermediate_size": 48, "decoder.num_attention_heads": 2,
              "decoder.num_patches": t.grid**2})
    sd = _random(ta_tok_tensors(c, "F32"), seed)
    sd["scale_layer.shift"] = torch.full((1, 3, 1, 1), 0.5)
    sd["scale_layer.scale"] = torch.full((1, 3, 1, 1), 0.5)
    args = {"bottleneck": {"name": "bottleneck", "args": {"bottleneck_dim": t.code_dim, "regularizer": {
        "name": "simvq", "args": {"codebook_size": t.codebook_size, "l2_normalized": True, "stochastic": True,
                                  "stochastic_temperature": 0.03}}}},
            "bottleneck_token_num": t.grid**2, "input_size": t.image_size, "teacher": "google/siglip2-so400m-patch14-384",
            "select_layer_id": -2, "pool_scale": 1}
    return {"model": {"args": args, "sd": sd}}


def _tokenizer(cfg: ModelConfig, with_image_tokens: bool):  # noqa: ANN202
    tok = build_tiny_text_tokenizer(cfg.ar)
    if with_image_tokens:  # BLIP3o initialize_vision_tokenizer order: <im_start>/<im_end>, <S*>, <I*>
        tok.add_tokens([IM_START, IM_END], special_tokens=True)
        tok.add_tokens([scale_token(i) for i in range(cfg.ar.num_scale_tokens)])
        tok.add_tokens([image_token(i) for i in range(cfg.tokenizer.codebook_size)])
    return tok


def stage(root: Path, init: str, seed: int = 0) -> ModelConfig:
    """Write every part ``init`` reads under ``root`` (a PREFRESTORE_MODEL_STORE) and return the matching config."""
    cfg = model_config(init)
    torch.save(ta_tok_checkpoint(cfg, seed), _mk(root / "TA-Tok") / "ta_tok.pth")
    sana_dir = root / "SANA1.5_1.6B_1024px_diffusers"
    sana = _sana(cfg, seed + 1)
    sana.save_pretrained(sana_dir / "transformer")
    _dcae(cfg, 0.5, seed + 2).save_pretrained(sana_dir / "vae")
    if init == "qwen3_parts":
        lm = _qwen3(cfg, cfg.ar.text_vocab_size + PADDING_ROWS, seed + 3).to(torch.bfloat16)
        lm.save_pretrained(root / "Qwen3-0.6B")
        _tokenizer(cfg, False).save_pretrained(root / "Qwen3-0.6B")
        return cfg
    tok = _tokenizer(cfg, True)
    lm = _qwen3(cfg, len(tok), seed + 3)
    state = {k: v.to(torch.bfloat16) for k, v in lm.state_dict().items() if k != "lm_head.weight"}
    w = cfg.generator.caption_channels
    state.update(_random({"model.diffusion_connector.0.weight": ((w, cfg.ar.hidden_size), "BF16"),
                          "model.diffusion_connector.0.bias": ((w,), "BF16"),
                          "model.diffusion_connector.2.weight": ((w, w), "BF16"),
                          "model.diffusion_connector.2.bias": ((w,), "BF16"),
                          "model.diffusion_connector.3.weight": ((w,), "BF16")}, seed + 4))
    torch.manual_seed(seed + 5)
    state.update({f"model.sana.{k}": (v + 0.01 * torch.randn_like(v)).to(torch.bfloat16)  # "trained" caption layers etc.
                  for k, v in sana.state_dict().items()})
    state.update({f"model.sana_vae.{k}": v.to(torch.bfloat16)
                  for k, v in _dcae(cfg, 0.5, seed + 2).state_dict().items()})
    next_dir = _mk(root / "BLIP3o-NEXT-SFT-3B")
    keys = sorted(state)
    shards = {"model-00001-of-00002.safetensors": keys[: len(keys) // 2],
              "model-00002-of-00002.safetensors": keys[len(keys) // 2:]}
    for name, ks in shards.items():
        save_file({k: state[k].contiguous() for k in ks}, str(next_dir / name))
    (next_dir / "model.safetensors.index.json").write_text(json.dumps(
        {"metadata": {}, "weight_map": {k: name for name, ks in shards.items() for k in ks}}))
    config = lm.config.to_dict() | {"architectures": ["blip3oQwenForCausalLM"], "model_type": "blip3o_qwen"}
    (next_dir / "config.json").write_text(json.dumps(config))
    tok.save_pretrained(next_dir)
    return cfg


def _mk(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    return path
