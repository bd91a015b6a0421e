"""The ``paper`` and ``released`` starting weights, read offline from the local model store (SPEC §5).

Which public file fills which parameter is :mod:`prefrestore.model.weight_map` (``model.init``:
``qwen3_parts`` or ``blip3o_next``); what each file holds is its manifest (:mod:`prefrestore.model.parts`).
:func:`build_pretrained` first runs the same header check as ``prefrestore weights verify``, so a wrong,
truncated or mismatched file fails before any tensor is read, with a line naming the file and the key.
Then it builds the model with empty (meta) parameters, reads each source tensor once, applies the
mapping (copy, the SimVQ codebook product, the extended embedding rows) and assigns it. Fresh tensors
(the connectors the recipe trains from scratch) keep their normal initialisation; a fresh connector's
RMSNorm starts at ``model.connector_norm_init`` (sqrt(5.5), as BLIP3o-NEXT's ``blip3o_arch.py``).
The DC-AE's ``scaling_factor`` comes from its ``vae/config.json`` and is written into the model config.
"""

from __future__ import annotations

import dataclasses

import torch
import torch.nn.functional as F
from accelerate import init_empty_weights
from transformers import AutoTokenizer, Qwen3ForCausalLM

from prefrestore.core.weights import require
from prefrestore.model.ar import ArIntegrator, extend_vocabulary, qwen3_config
from prefrestore.model.config import ModelConfig
from prefrestore.model.connectors import Connector
from prefrestore.model.generator import build_transformer, build_vae
from prefrestore.model.headers import CheckpointError, load_ta_tok, load_tensors, weight_files
from prefrestore.model.model import PrefRestoreModel
from prefrestore.model.params_count import extended_vocab_size
from prefrestore.model.parts import BLIP3O_NEXT, PARTS, QWEN3_06B, SANA, TA_TOK
from prefrestore.model.tokenizer import SemanticTokenizer
from prefrestore.model.verify import part_dir, verify_model
from prefrestore.model.weight_map import NEXT, QWEN3, Assignment, assignments, start_for

# the files `prefrestore weights plan` lists for the model (SANA's folder holds the transformer and the DC-AE)
WEIGHTS = (BLIP3O_NEXT.weight, QWEN3_06B.weight, TA_TOK.weight, SANA.weight)


def check_staged(cfg: ModelConfig) -> ModelConfig:
    """Headers + configs of every part ``cfg.init`` needs; returns ``cfg`` with the DC-AE scaling factor filled in."""
    for name in start_for(cfg).parts:
        require(PARTS[name].weight)  # MissingWeights names the absent file and where it belongs
    result = verify_model(cfg)
    if result.errors:
        name, err = next(iter(result.errors.items()))
        raise CheckpointError(f"{name}: {err}")
    for name, rep in result.reports.items():
        for label, items in (("missing key", rep.missing), ("unexpected key", rep.unexpected),
                             ("shape mismatch", rep.mismatched), ("config disagreement", rep.config)):
            if items:
                raise CheckpointError(f"{part_dir(PARTS[name])}: {label} {items[0]} ({len(items)} in all; "
                                      f"`prefrestore weights verify --profile ...` lists them)")
    return dataclasses.replace(cfg, vae=dataclasses.replace(cfg.vae, scaling_factor=result.scaling_factor))


def _source_tensors(needed: dict[str, set[str]]) -> dict[tuple[str, str], torch.Tensor]:
    out: dict[tuple[str, str], torch.Tensor] = {}
    for part, keys in needed.items():
        path = part_dir(PARTS[part])
        if PARTS[part].layout == "ta_tok_pth":
            _, sd = load_ta_tok(path)
            out.update({(part, k): sd[k] for k in keys})
        else:
            out.update({(part, k): v for k, v in load_tensors(weight_files(path), keys).items()})
    return out


def _value(a: Assignment, src: dict[tuple[str, str], torch.Tensor], fresh: dict[str, torch.Tensor]) -> torch.Tensor:
    """The project tensor for one assignment (fp32), from the source tensors it names."""
    if a.kind == "fresh":
        return fresh[a.target]
    tensors = [src[(s.part, s.key)].float() for s in a.sources]
    if a.kind == "copy":
        return tensors[0]
    if a.kind == "codebook":  # SimVQ get_emb: embedding_proj(embedding.weight)
        emb, w, b = tensors
        return F.linear(emb, w, b)
    rows = tensors[0][: a.rows]  # "rows": the text rows copied; the added tokens start at their mean
    new = rows.mean(0, keepdim=True).expand(fresh[a.target].shape[0] - a.rows, -1)
    return torch.cat([rows, new], 0)


def build_pretrained(cfg: ModelConfig, system_message: str) -> PrefRestoreModel:
    """The ``qwen3_parts`` / ``blip3o_next`` model, each part from the local store (offline, no pickle)."""
    cfg = check_staged(cfg)
    ar_part = QWEN3 if cfg.init == "qwen3_parts" else NEXT
    ar_dir = part_dir(PARTS[ar_part])
    text_tok = AutoTokenizer.from_pretrained(ar_dir, local_files_only=True, trust_remote_code=False)
    extend_vocabulary(text_tok, cfg.tokenizer.codebook_size, cfg.ar.num_scale_tokens)
    vocab = extended_vocab_size(cfg)
    if len(text_tok) != vocab:
        raise CheckpointError(f"{ar_dir}: the tokenizer has {len(text_tok)} ids with the image/scale tokens, the profile "
                              f"expects {vocab} (model.ar.text_vocab_size = len(base tokenizer))")
    width = cfg.generator.caption_channels
    fresh_model = {"diffusion_connector": Connector(cfg.ar.hidden_size, width, cfg.connector_norm_init),
                   "vae_connector": Connector(cfg.generator.inner_dim, width, cfg.connector_norm_init)}
    with init_empty_weights(include_buffers=False):  # parameters on meta; buffers (rotary, ...) real
        tok = SemanticTokenizer(cfg.tokenizer)
        lm = Qwen3ForCausalLM(qwen3_config(cfg.ar, vocab))
        transformer = build_transformer(cfg.generator, cfg.vae.latent_channels, cfg.latent_size, cfg.extra_in_channels)
        vae = build_vae(cfg.vae)
    ar = ArIntegrator(cfg.ar, lm, text_tok, cfg.tokenizer.codebook_size, cfg.num_image_tokens)
    model = PrefRestoreModel(cfg, tok, ar, fresh_model["diffusion_connector"], fresh_model["vae_connector"],
                             transformer, vae, system_message)
    plan = assignments(cfg)
    needed: dict[str, set[str]] = {}
    for a in plan:
        for s in a.sources:
            needed.setdefault(s.part, set()).add(s.key)
    src = _source_tensors(needed)
    current = model.state_dict()
    state = {a.target: _value(a, src, current) for a in plan}
    for key, t in state.items():
        if tuple(t.shape) != tuple(current[key].shape):
            raise CheckpointError(f"{key}: built {list(t.shape)}, the model needs {list(current[key].shape)}")
    missing, unexpected = model.load_state_dict(state, strict=False, assign=True)
    allowed = {"ar.lm.lm_head.weight"} if cfg.ar.tie_word_embeddings else set()
    if set(missing) - allowed or unexpected:
        raise RuntimeError(f"pretrained load left {sorted(set(missing) - allowed)[:3]} unset, {unexpected[:3]} unused")
    if cfg.ar.tie_word_embeddings:
        lm.tie_weights()
    still_meta = [n for n, p in model.named_parameters() if p.is_meta]
    if still_meta:
        raise RuntimeError(f"pretrained load left meta tensors: {still_meta[:3]}")
    return model

