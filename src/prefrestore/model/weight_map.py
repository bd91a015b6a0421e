"""Which public tensor fills which project parameter, for each pretrained ``model.init`` (SPEC §2, §5).

Two starting points (docs/PAPER_PROFILE.md says why):

- ``qwen3_parts`` (``paper``): the paper's Sec. V-A parts, each from its own release: Qwen3-0.6B, TA-Tok's
  ``ta_tok.pth``, SANA-1.5 1.6B and its DC-AE. The diffusion and VAE connectors, and the embedding rows of
  the added ``<I*>/<S*>/<im_*>`` tokens, start fresh: stage 1.1 trains them (Table I).
- ``blip3o_next`` (``released``): BLIP3o-NEXT-SFT-3B as ``scripts/sft_step1.sh`` of the released code starts:
  its Qwen3 (H = 2048), its trained ``model.diffusion_connector.*`` and its ``model.sana.*`` (SANA with the
  caption layers BLIP3o-NEXT trained); TA-Tok from ``ta_tok.pth``; the DC-AE from SANA's ``vae/``.

TA-Tok (``csuhan/Tar`` ``tok/ta_tok.py``, ``tok/ar_dtok/bottleneck.py``): the vision tower is the file's own
``encoder.*``, the task layer is ``encode_task_layer.0`` (Linear + Tanh) followed by ``bottleneck.in_linear``,
and the codebook is ``embedding_proj(regularizer.embedding.weight)`` (SimVQ), computed at load.

Every project tensor gets exactly one :class:`Assignment`; every source tensor is used or matches an
:class:`Ignore` with its reason. :func:`coverage` checks both against real or manifest headers.
"""

from __future__ import annotations

import dataclasses
import inspect
from collections.abc import Mapping
from typing import Any, Literal

import torch

from prefrestore.model.config import ModelConfig
from prefrestore.model.headers import TensorInfo
from prefrestore.model.params_count import build_components

Kind = Literal["copy", "rows", "codebook", "fresh"]
Use = Literal["weights", "config"]
QWEN3, NEXT, TA_TOK, SANA, DCAE = "qwen3-0.6b", "blip3o-next-sft-3b", "ta-tok", "sana-1.5-1.6b", "dc-ae-f32c32"
CODEBOOK_KEYS = ("bottleneck.regularizer.embedding.weight", "bottleneck.regularizer.embedding_proj.weight",
                 "bottleneck.regularizer.embedding_proj.bias")
EMBED = "ar.lm.model.embed_tokens.weight"


@dataclasses.dataclass(frozen=True)
class Source:
    part: str
    key: str


@dataclasses.dataclass(frozen=True)
class Assignment:
    target: str  # project tensor name (PrefRestoreModel.state_dict key)
    kind: Kind  # copy | rows (first ``rows`` rows copied, the rest fresh) | codebook (SimVQ) | fresh
    sources: tuple[Source, ...]
    reason: str  # why a tensor (or part of it) starts fresh, or what the transform is
    rows: int = 0


@dataclasses.dataclass(frozen=True)
class Ignore:
    part: str
    prefix: str  # source keys starting with this are not loaded
    reason: str


@dataclasses.dataclass(frozen=True)
class Start:
    """One pretrained starting point: the parts it reads and how their keys map."""

    parts: Mapping[str, Use]  # part -> read its weights, or only its config.json
    rules: tuple[tuple[str, str, str], ...]  # (target prefix, part, source prefix); the longest target prefix wins
    fresh: tuple[tuple[str, str], ...]  # (target prefix, reason)
    ignores: tuple[Ignore, ...]


TA_TOK_IGNORES = (
    Ignore(TA_TOK, "encoder.head.", "SigLIP's attention-pooling head: the tokenizer reads hidden layer -2"),
    Ignore(TA_TOK, "decoder.", "TA-Tok's feature decoder (input_type 'rec'): not on the token path"),
    Ignore(TA_TOK, "decode_task_layer.", "feature decoder head: not on the token path"),
    Ignore(TA_TOK, "bottleneck.out_linear.", "maps codes back to SigLIP width for the decoder: not on the token path"),
    Ignore(TA_TOK, "scale_layer.", "input normalisation constants (checked: (x - 0.5) / 0.5, as the tokenizer does)"),
    Ignore(TA_TOK, "teacher.", "distillation teacher; from_checkpoint drops it (load_teacher=False)"),
    Ignore(TA_TOK, "bottleneck.regularizer.stochastic_temperature_inv", "sampling temperature: eval quantisation is argmax"),
)
TA_TOK_RULES = (("tokenizer.vision.", TA_TOK, "encoder."),
                ("tokenizer.encode_task_layer.0.", TA_TOK, "encode_task_layer.0."),
                ("tokenizer.encode_task_layer.2.", TA_TOK, "bottleneck.in_linear."))
FRESH_VAE_CONNECTOR = ("vae_connector.", "z_low connector: no public checkpoint has one; stage 1.2 trains it (Table I)")

STARTS: dict[str, Start] = {
    "qwen3_parts": Start(
        parts={QWEN3: "weights", TA_TOK: "weights", SANA: "weights", DCAE: "weights"},
        rules=(*TA_TOK_RULES, ("ar.lm.", QWEN3, ""), ("transformer.", SANA, ""), ("vae.", DCAE, "")),
        fresh=(("diffusion_connector.", "no public Qwen3-0.6B connector exists; stage 1.1 trains it (Table I)"),
               FRESH_VAE_CONNECTOR),
        ignores=(*TA_TOK_IGNORES, Ignore(QWEN3, "lm_head.weight", "tied to model.embed_tokens.weight"))),
    "blip3o_next": Start(
        parts={NEXT: "weights", TA_TOK: "weights", SANA: "config", DCAE: "weights"},
        rules=(*TA_TOK_RULES, ("ar.lm.model.", NEXT, "model."), ("ar.lm.lm_head.", NEXT, "lm_head."),
               ("diffusion_connector.", NEXT, "model.diffusion_connector."), ("transformer.", NEXT, "model.sana."),
               ("vae.", DCAE, "")),
        fresh=(FRESH_VAE_CONNECTOR,),
        ignores=(*TA_TOK_IGNORES,
                 Ignore(NEXT, "model.sana_vae.", "frozen copy of SANA's DC-AE: loaded from the SANA folder's vae/ "
                                                 "with its config.json"),
                 Ignore(NEXT, "model.vision_tower.", "TA-Tok copy: ta_tok.pth is loaded, as sft_step1.sh's --vision_tower"),
                 Ignore(NEXT, "lm_head.weight", "tied to model.embed_tokens.weight"))),
}


def start_for(cfg: ModelConfig) -> Start:
    if cfg.init not in STARTS:
        raise ValueError(f"model.init={cfg.init!r} starts from no pretrained parts")
    return STARTS[cfg.init]


def project_tensors(cfg: ModelConfig) -> dict[str, torch.Size]:
    """The project's tensors at ``cfg``'s shapes (meta): parameters (a tied lm_head once) + persistent buffers."""
    out: dict[str, torch.Size] = {}
    for name, child in build_components(cfg).items():
        prefix = "ar.lm." if name == "ar" else f"{name}."
        every_param = {k for k, _ in child.named_parameters(remove_duplicate=False)}
        out.update({prefix + k: p.shape for k, p in child.named_parameters()})
        out.update({prefix + k: t.shape for k, t in child.state_dict().items() if k not in every_param})
    return out


def assignments(cfg: ModelConfig) -> list[Assignment]:
    """One assignment per project tensor (see the module docstring)."""
    start = start_for(cfg)
    out = []
    for target in project_tensors(cfg):
        fresh = [reason for prefix, reason in start.fresh if target.startswith(prefix)]
        if fresh:
            out.append(Assignment(target, "fresh", (), fresh[0]))
            continue
        if target == "tokenizer.codebook":
            out.append(Assignment(target, "codebook", tuple(Source(TA_TOK, k) for k in CODEBOOK_KEYS),
                                  "embedding_proj(embedding.weight) (SimVQ get_emb)"))
            continue
        rules = [r for r in start.rules if target.startswith(r[0])]
        if not rules:
            raise ValueError(f"model.init={cfg.init}: no rule for project tensor '{target}'")
        prefix, part, src = max(rules, key=lambda r: len(r[0]))
        source = Source(part, src + target[len(prefix):])
        if target == EMBED and part == QWEN3:
            out.append(Assignment(target, "rows", (source,), "rows of the added <im_*>/<S*>/<I*> tokens start at the "
                                  "mean of the text rows (BLIP3o initialize_vision_tokenizer)", cfg.ar.text_vocab_size))
        else:
            out.append(Assignment(target, "copy", (source,), ""))
    return out


# ------------------------------------------------------------------ coverage
@dataclasses.dataclass
class PartReport:
    part: str
    use: Use
    mapped: int = 0  # source tensors used
    ignored: int = 0  # source tensors on the ignore list
    missing: list[str] = dataclasses.field(default_factory=list)  # needed, absent from the file
    unexpected: list[str] = dataclasses.field(default_factory=list)  # in the file, neither used nor ignored
    mismatched: list[str] = dataclasses.field(default_factory=list)  # "key: want X, file has Y"
    config: list[str] = dataclasses.field(default_factory=list)  # "key: profile X, file Y"
    fresh: list[str] = dataclasses.field(default_factory=list)  # tensors this part fills only in part (rows)

    @property
    def ok(self) -> bool:
        return not (self.missing or self.unexpected or self.mismatched or self.config)


def _want_source_shape(a: Assignment, i: int, target_shape: torch.Size) -> tuple[int, ...] | None:
    """The source shape ``a.sources[i]`` must have (None: any row count >= a.rows)."""
    if a.kind == "copy":
        return tuple(target_shape)
    if a.kind == "codebook":
        k, d = target_shape
        return ((k, d), (d, d), (d,))[i]
    return None


def coverage(cfg: ModelConfig, files: Mapping[str, Mapping[str, TensorInfo]]) -> dict[str, PartReport]:
    """Check the plan for ``cfg`` against the tensors of each part (``files[part]``: from headers or manifests)."""
    start = start_for(cfg)
    shapes = project_tensors(cfg)
    reports = {part: PartReport(part, use) for part, use in start.parts.items()}
    used: dict[str, set[str]] = {part: set() for part in start.parts}
    for a in assignments(cfg):
        if a.kind == "fresh":
            continue
        for i, src in enumerate(a.sources):
            rep, have = reports[src.part], files.get(src.part, {})
            used[src.part].add(src.key)
            if src.key not in have:
                rep.missing.append(src.key)
                continue
            got = have[src.key][0]
            want = _want_source_shape(a, i, shapes[a.target])
            if want is None:  # rows: same width, at least ``rows`` rows
                ok = len(got) == 2 and got[1] == shapes[a.target][1] and got[0] >= a.rows
                want_text = f"[>= {a.rows}, {shapes[a.target][1]}]"
            else:
                ok, want_text = tuple(got) == tuple(want), str(list(want))
            if not ok:
                rep.mismatched.append(f"{src.key}: want {want_text} for {a.target}, file has {list(got)}")
            else:
                rep.mapped += 1
        if a.kind == "rows":
            reports[a.sources[0].part].fresh.append(
                f"{a.target}: rows {a.rows}..{shapes[a.target][0] - 1} fresh ({a.reason})")
    for part, rep in reports.items():
        if rep.use != "weights":
            continue
        ignores = [ig for ig in start.ignores if ig.part == part]
        for key in files.get(part, {}):
            if key in used[part]:
                continue
            if any(key.startswith(ig.prefix) for ig in ignores):
                rep.ignored += 1
            else:
                rep.unexpected.append(key)
    return reports


def fresh_targets(cfg: ModelConfig) -> dict[str, list[str]]:
    """``{reason: [project tensors]}`` that no public file fills (trained from scratch, Table I)."""
    out: dict[str, list[str]] = {}
    for a in assignments(cfg):
        if a.kind == "fresh":
            out.setdefault(a.reason, []).append(a.target)
    return out


# ------------------------------------------------------------------ config agreement
def _defaults(cls: type) -> dict[str, Any]:
    return {k: p.default for k, p in inspect.signature(cls.__init__).parameters.items()
            if p.default is not inspect.Parameter.empty}


def _listify(v: Any) -> Any:
    if isinstance(v, tuple | list):
        return [_listify(x) for x in v]
    return v


def expected_config(cfg: ModelConfig, part: str) -> dict[str, Any]:
    """The config.json (or TA-Tok ``args``) values ``cfg`` needs from ``part``."""
    a, g, v, t = cfg.ar, cfg.generator, cfg.vae, cfg.tokenizer
    if part in (QWEN3, NEXT):
        out = {"hidden_size": a.hidden_size, "intermediate_size": a.intermediate_size,
               "num_hidden_layers": a.num_layers, "num_attention_heads": a.num_heads,
               "num_key_value_heads": a.num_kv_heads, "head_dim": a.head_dim, "rope_theta": a.rope_theta,
               "tie_word_embeddings": a.tie_word_embeddings}
        if part == NEXT:
            from prefrestore.model.params_count import extended_vocab_size

            out["vocab_size"] = extended_vocab_size(cfg)
        return out
    if part == SANA:
        return {"num_layers": g.num_layers, "num_attention_heads": g.num_heads, "attention_head_dim": g.head_dim,
                "num_cross_attention_heads": g.cross_heads, "cross_attention_head_dim": g.cross_head_dim,
                "cross_attention_dim": g.inner_dim, "caption_channels": g.caption_channels, "mlp_ratio": g.mlp_ratio,
                "qk_norm": None if g.qk_norm == "none" else g.qk_norm,
                "in_channels": v.latent_channels + cfg.extra_in_channels, "out_channels": v.latent_channels,
                "patch_size": 1, "timestep_scale": g.timestep_scale}
    if part == DCAE:
        out = {"latent_channels": v.latent_channels, "attention_head_dim": v.attention_head_dim,
               "encoder_block_out_channels": list(v.block_out_channels),
               "decoder_block_out_channels": list(v.block_out_channels),
               "encoder_block_types": list(v.block_types), "decoder_block_types": list(v.block_types),
               "encoder_layers_per_block": list(v.encoder_layers_per_block),
               "decoder_layers_per_block": list(v.decoder_layers_per_block),
               "encoder_qkv_multiscales": _listify(v.qkv_multiscales),
               "decoder_qkv_multiscales": _listify(v.qkv_multiscales),
               "upsample_block_type": v.upsample_block_type, "downsample_block_type": v.downsample_block_type.lower()}
        if v.scaling_factor is not None:
            out["scaling_factor"] = v.scaling_factor
        return out
    if part == TA_TOK:
        return {"bottleneck.args.bottleneck_dim": t.code_dim,
                "bottleneck.args.regularizer.args.codebook_size": t.codebook_size,
                "bottleneck.args.regularizer.args.l2_normalized": t.codebook_l2_norm,
                "select_layer_id": t.feature_layer, "input_size": t.image_size, "pool_scale": 1}
    return {}


# defaults the public classes apply when a key is absent from a file's config
TA_TOK_DEFAULTS = {"select_layer_id": -2, "input_size": 384, "pool_scale": 1,
                   "bottleneck.args.regularizer.args.l2_normalized": False}


def file_config_value(part: str, config: Mapping[str, Any], key: str) -> tuple[bool, Any]:
    """``(found, value)`` of ``key`` in a part's config (nested TA-Tok args keys use dots; class defaults apply)."""
    if part == TA_TOK:
        node: Any = config
        for k in key.split("."):
            if not isinstance(node, Mapping) or k not in node:
                return (key in TA_TOK_DEFAULTS, TA_TOK_DEFAULTS.get(key))
            node = node[k]
        return True, node
    if key == "rope_theta" and key not in config and isinstance(config.get("rope_parameters"), Mapping):
        config = config["rope_parameters"]  # transformers 5 writes rope_theta under rope_parameters
    if key in config:
        val = config[key]
        return True, val.lower() if key == "downsample_block_type" and isinstance(val, str) else _listify(val)
    defaults: dict[str, Any] = {}
    if part == SANA:
        from diffusers import SanaTransformer2DModel

        defaults = _defaults(SanaTransformer2DModel)
    elif part == DCAE:
        from diffusers import AutoencoderDC

        defaults = {k: _listify(x) for k, x in _defaults(AutoencoderDC).items()}
    elif part in (QWEN3, NEXT):
        from transformers import Qwen3Config

        defaults = {"tie_word_embeddings": Qwen3Config().tie_word_embeddings}
    return (key in defaults, defaults.get(key))


def config_disagreements(cfg: ModelConfig, part: str, config: Mapping[str, Any]) -> list[str]:
    out = []
    for key, want in expected_config(cfg, part).items():
        found, got = file_config_value(part, config, key)
        if not found:
            out.append(f"{key}: profile needs {want!r}, absent from the file's config")
        elif isinstance(want, float) and isinstance(got, int | float) and not isinstance(got, bool):
            if abs(want - got) > 1e-9 * max(1.0, abs(want)):
                out.append(f"{key}: profile {want!r}, file {got!r}")
        elif got != want:
            out.append(f"{key}: profile {want!r}, file {got!r}")
    return out
