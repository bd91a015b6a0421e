"""The public checkpoints the pretrained profiles start from (Qwen3, SANA + DC-AE, TA-Tok, BLIP3o-NEXT, SigLIP2).

Each part's manifest (every tensor name, shape and dtype) is built from the public class on ``meta``
with the config values recorded here, each with its source (:mod:`prefrestore.model.manifest`). The
captioner and reward backbones are in :mod:`prefrestore.model.aux_parts`; ``PARTS`` holds both.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from prefrestore.core.weights import WeightFile
from prefrestore.model.aux_parts import AUX_PARTS
from prefrestore.model.headers import TensorInfo
from prefrestore.model.manifest import SECONDARY, UNVERIFIED, Part, module_tensors, on_meta, value

# Public code the facts below were read from (commits of the snapshots read for issue 17).
TAR = {"repo": "csuhan/Tar", "commit": "47da8e15ee715b7efac7e97b4dc4da98145741eb"}
BLIP3O = {"repo": "JiuhaiChen/BLIP3o", "commit": "6ced364eeee8b2d53e9491ffae48b00a0271cda2"}
PREF_RESTORE = {"repo": "zjYao36/Pref_Restore", "commit": "966915e09dee64a1fb6d4936be1b7f4d8a3acfd4"}
SANA_CONVERT = {"repo": "huggingface/diffusers", "path": "scripts/convert_sana_to_diffusers.py",
                "commit": "065628f582a780fb3ff7985c34edcf427a045733"}
DCAE_CONVERT = {"repo": "huggingface/diffusers", "path": "scripts/convert_dcae_to_diffusers.py",
                "commit": "074817cfdcc1af232610673ec560ebe3b4bcbe07"}
OMNISERVE = {"repo": "NAVER-Cloud-HyperCLOVA-X/OmniServe", "path": "model_converter/converter.py",
             "commit": "ae0d33fe61773e099b5c221afed4bc23949181ed"}


# ------------------------------------------------------------------ Qwen3 (AR integrator)
def qwen3_tensors(c: Mapping[str, Any], dtype: str, prefix: str = "") -> dict[str, TensorInfo]:
    """Qwen3ForCausalLM's saved tensors; a tied ``lm_head.weight`` is not written by ``save_pretrained``."""
    from transformers import Qwen3Config, Qwen3ForCausalLM

    keys = ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
            "num_key_value_heads", "head_dim", "tie_word_embeddings")
    lm = on_meta(lambda: Qwen3ForCausalLM(Qwen3Config(**{k: c[k] for k in keys})))
    out = module_tensors(lm, dtype, prefix)
    if c["tie_word_embeddings"]:
        out.pop(prefix + "lm_head.weight")
    return out


def _qwen3_config(src: str, **values: Any) -> dict[str, dict[str, Any]]:
    return {k: value(v, src) for k, v in values.items()}


QWEN3_06B_SRC = ("Qwen/Qwen3-0.6B config.json as mirrored at huggingface.co/TensorStack/TextEncoder/"
                 "blob/main/Qwen-3-06B/config.json (transformers 4.51.0)")
QWEN3_06B = Part(
    name="qwen3-0.6b", title="Qwen3-0.6B causal LM (the paper's AR integrator, Sec. V-A)",
    weight=WeightFile("qwen3-0.6b", "store", "Qwen3-0.6B", None, "model (paper: Qwen3-0.6B AR integrator + tokenizer)",
                      "https://huggingface.co/Qwen/Qwen3-0.6B"),
    layout="safetensors_folder", subfolder="",
    code={"repo": "huggingface/transformers", "path": "src/transformers/models/qwen3/modeling_qwen3.py",
          "class": "Qwen3ForCausalLM"},
    config=_qwen3_config(QWEN3_06B_SRC, vocab_size=151936, hidden_size=1024, intermediate_size=3072,
                         num_hidden_layers=28, num_attention_heads=16, num_key_value_heads=8, head_dim=128,
                         tie_word_embeddings=True, rope_theta=1000000.0, max_position_embeddings=40960),
    dtype="BF16", build=lambda c: qwen3_tensors(c, "BF16"),
    notes=("tie_word_embeddings: lm_head.weight is the embedding; save_pretrained does not write it",
           "embed_tokens has 151936 rows; the tokenizer has 151669 tokens, rows 151669.. are padding"),
)

# ------------------------------------------------------------------ SANA 1.5 1.6B + DC-AE
SANA_CONFIG = {
    "in_channels": value(32, "convert_sana_to_diffusers.py transformer_kwargs"),
    "out_channels": value(32, "convert_sana_to_diffusers.py transformer_kwargs"),
    "num_attention_heads": value(70, "convert_sana_to_diffusers.py model_kwargs['SanaMS1.5_1600M_P1_D20']"),
    "attention_head_dim": value(32, "convert_sana_to_diffusers.py model_kwargs['SanaMS1.5_1600M_P1_D20']"),
    "num_layers": value(20, "convert_sana_to_diffusers.py model_kwargs['SanaMS1.5_1600M_P1_D20']"),
    "num_cross_attention_heads": value(20, "convert_sana_to_diffusers.py model_kwargs['SanaMS1.5_1600M_P1_D20']"),
    "cross_attention_head_dim": value(112, "convert_sana_to_diffusers.py model_kwargs['SanaMS1.5_1600M_P1_D20']"),
    "cross_attention_dim": value(2240, "convert_sana_to_diffusers.py model_kwargs['SanaMS1.5_1600M_P1_D20']"),
    "caption_channels": value(2304, "convert_sana_to_diffusers.py transformer_kwargs"),
    "mlp_ratio": value(2.5, "convert_sana_to_diffusers.py transformer_kwargs"),
    "attention_bias": value(False, "convert_sana_to_diffusers.py transformer_kwargs"),
    "sample_size": value(32, "convert_sana_to_diffusers.py: image_size // 32 at 1024 px"),
    "patch_size": value(1, "convert_sana_to_diffusers.py transformer_kwargs"),
    "norm_elementwise_affine": value(False, "convert_sana_to_diffusers.py transformer_kwargs"),
    "norm_eps": value(1e-6, "convert_sana_to_diffusers.py transformer_kwargs"),
    "interpolation_scale": value(None, "convert_sana_to_diffusers.py: interpolation_scale[1024] = None"),
    "qk_norm": value("rms_norm_across_heads", "convert_sana_to_diffusers.py: SanaMS1.5_* use rms_norm_across_heads"),
}


def sana_tensors(c: Mapping[str, Any], dtype: str, prefix: str = "") -> dict[str, TensorInfo]:
    from diffusers import SanaTransformer2DModel

    return module_tensors(on_meta(lambda: SanaTransformer2DModel(**c)), dtype, prefix)


SANA_WEIGHT = WeightFile("sana-1.5-1.6b", "store", "SANA1.5_1.6B_1024px_diffusers", None,
                         "model (SANA-1.5 1.6B transformer + DC-AE f32c32)",
                         "https://huggingface.co/Efficient-Large-Model/SANA1.5_1.6B_1024px_diffusers")
SANA = Part(
    name="sana-1.5-1.6b", title="SANA-1.5 1.6B 1024 px transformer (diffusers SanaTransformer2DModel)",
    weight=SANA_WEIGHT, layout="safetensors_folder", subfolder="transformer",
    code={**SANA_CONVERT, "class": "diffusers.SanaTransformer2DModel"}, config=SANA_CONFIG,
    dtype="unknown", build=lambda c: sana_tensors(c, "unknown"),
    notes=("no position-embedding tensor: interpolation_scale is None at 1024 px",),
)

DCAE_SRC = "convert_dcae_to_diffusers.py get_ae_config('dc-ae-f32c32-sana-1.0') / convert_ae"
DCAE_CONFIG = {
    "latent_channels": value(32, DCAE_SRC),
    "attention_head_dim": value(32, "diffusers AutoencoderDC default (convert_ae does not override it)"),
    "encoder_block_types": value(["ResBlock"] * 3 + ["EfficientViTBlock"] * 3, "convert_dcae_to_diffusers.py convert_ae"),
    "decoder_block_types": value(["ResBlock"] * 3 + ["EfficientViTBlock"] * 3, "convert_dcae_to_diffusers.py convert_ae"),
    "encoder_block_out_channels": value([128, 256, 512, 512, 1024, 1024], DCAE_SRC),
    "decoder_block_out_channels": value([128, 256, 512, 512, 1024, 1024], DCAE_SRC),
    "encoder_layers_per_block": value([2, 2, 2, 3, 3, 3], DCAE_SRC),
    "decoder_layers_per_block": value([3, 3, 3, 3, 3, 3], DCAE_SRC),
    "encoder_qkv_multiscales": value([[], [], [], [5], [5], [5]], DCAE_SRC),
    "decoder_qkv_multiscales": value([[], [], [], [5], [5], [5]], DCAE_SRC),
    "upsample_block_type": value("interpolate", DCAE_SRC),
    "downsample_block_type": value("Conv", DCAE_SRC + " ('conv'; diffusers compares case-sensitively to 'Conv' "
                                   "only for pixel_unshuffle, so both build a strided conv)"),
    "decoder_norm_types": value("rms_norm", "convert_dcae_to_diffusers.py convert_ae"),
    "decoder_act_fns": value("silu", "convert_dcae_to_diffusers.py convert_ae"),
    "scaling_factor": value(0.41407, DCAE_SRC + "; the SANA pipeline ships dc-ae-f32c32-sana-1.1-diffusers "
                            "(convert_sana_to_diffusers.py), whose config.json is read at load time"),
}


def dcae_tensors(c: Mapping[str, Any], dtype: str, prefix: str = "") -> dict[str, TensorInfo]:
    from diffusers import AutoencoderDC

    kw = {k: v for k, v in c.items() if k != "scaling_factor"}
    kw = {k: tuple(tuple(x) if isinstance(x, list) else x for x in v) if isinstance(v, list) else v for k, v in kw.items()}
    return module_tensors(on_meta(lambda: AutoencoderDC(**kw)), dtype, prefix)


DCAE = Part(
    name="dc-ae-f32c32", title="DC-AE f32c32 (SANA's autoencoder, diffusers AutoencoderDC)",
    weight=SANA_WEIGHT, layout="safetensors_folder", subfolder="vae",
    code={**DCAE_CONVERT, "class": "diffusers.AutoencoderDC"}, config=DCAE_CONFIG,
    dtype="unknown", build=lambda c: dcae_tensors(c, "unknown"),
    notes=("z = E(x) * scaling_factor: the factor is read from vae/config.json, never copied",),
)

# ------------------------------------------------------------------ TA-Tok (ta_tok.pth)
SIGLIP_SO400M_SRC = ("google/siglip-so400m-patch14-384 config.json as mirrored at huggingface.co/"
                     "HuggingFaceM4/siglip-so400m-14-384-flash-attn2 and bczhou/TinyLLaVA-3.1B-SigLIP; TA-Tok builds "
                     "its encoder from AutoConfig('google/siglip2-so400m-patch14-384') (tok/ta_tok.py)")
SIGLIP_VISION = {"hidden_size": 1152, "intermediate_size": 4304, "num_hidden_layers": 27, "num_attention_heads": 16,
                 "image_size": 384, "patch_size": 14}
TA_TOK_CONFIG = {
    **{f"encoder.{k}": value(v, SIGLIP_SO400M_SRC) for k, v in SIGLIP_VISION.items()},
    "decoder_depth": value(3, "tok/ta_tok.py TextAlignedTokenizer default decoder_depth=3 (csuhan/Tar)"),
    "decoder.intermediate_size": value(3072, "transformers Siglip2VisionConfig default; tok/ta_tok.py updates only "
                                       "patch_size, num_hidden_layers, num_channels, hidden_size"),
    "decoder.num_attention_heads": value(12, "transformers Siglip2VisionConfig default (see decoder.intermediate_size)"),
    "decoder.num_patches": value(256, "transformers Siglip2VisionConfig default (see decoder.intermediate_size)"),
    "bottleneck_dim": value(1536, "Tar's tok/ta_tok.py reads it from the checkpoint's args; Tar's "
                            "scripts/Tar_1.5B_pretrain_demo.sh loads the codebook into Qwen2.5-1.5B (H = 1536), which "
                            "llava_arch.py does only when the widths match; OmniServe converter.py (commit ae0d33f) "
                            "writes ta_tok.pth args with bottleneck_dim 1536; " + SECONDARY),
    "codebook_size": value(65536, "csuhan/Tar README.md model table (Codebook Size 65536)"),
    "l2_normalized": value(True, "BLIP3o-NEXT's ta_tok_encoder.py calls set_eval_deterministic, which acts only "
                           "when stochastic=True, and SimVectorQuantizer asserts l2_normalized for stochastic; OmniServe "
                           "converter.py (commit ae0d33f) writes l2_normalized True, stochastic True, "
                           "stochastic_temperature 0.03; " + SECONDARY),
    "select_layer_id": value(-2, "tok/ta_tok.py default; BLIP3o-NEXT --mm_vision_select_layer -2"),
    "input_size": value(384, "tok/ta_tok.py default input_size=384"),
}


def ta_tok_tensors(c: Mapping[str, Any], dtype: str) -> dict[str, TensorInfo]:
    """TA-Tok's ``sd`` as its public module defines it (tok/ta_tok.py, tok/ar_dtok/bottleneck.py)."""
    from transformers import Siglip2VisionConfig, Siglip2VisionModel, SiglipVisionConfig, SiglipVisionModel

    h, bd, k = c["encoder.hidden_size"], c["bottleneck_dim"], c["codebook_size"]
    enc_cfg = SiglipVisionConfig(**{key: c[f"encoder.{key}"] for key in SIGLIP_VISION}, vision_use_head=True)
    # transformers 5 SiglipVisionModel has the names of 4.x SiglipVisionTransformer (= AutoModel(...).vision_model)
    out = module_tensors(on_meta(lambda: SiglipVisionModel(enc_cfg)), dtype, "encoder.")
    dec_cfg = Siglip2VisionConfig(patch_size=1, num_hidden_layers=c["decoder_depth"], num_channels=bd, hidden_size=h,
                                  intermediate_size=c["decoder.intermediate_size"],
                                  num_attention_heads=c["decoder.num_attention_heads"], num_patches=c["decoder.num_patches"])
    # the file was written under transformers 4.x, whose Siglip2VisionModel wraps the tower in .vision_model
    out.update(module_tensors(on_meta(lambda: Siglip2VisionModel(dec_cfg)), dtype, "decoder.vision_model."))
    linears = {"encode_task_layer.0": (h, h), "decode_task_layer.0": (h, h), "decode_task_layer.2": (h, h),
               "bottleneck.in_linear": (bd, h), "bottleneck.out_linear": (h, bd),
               "bottleneck.regularizer.embedding_proj": (bd, bd)}
    for name, (o, i) in linears.items():
        out[f"{name}.weight"], out[f"{name}.bias"] = ((o, i), dtype), ((o,), dtype)
    out["bottleneck.regularizer.embedding.weight"] = ((k, bd), dtype)
    out["scale_layer.shift"] = out["scale_layer.scale"] = ((1, 3, 1, 1), "F32")
    return out


TA_TOK = Part(
    name="ta-tok", title="TA-Tok text-aligned tokenizer (ta_tok.pth: SigLIP2 encoder + SimVQ 65,536 codes)",
    weight=WeightFile("ta-tok", "store", "TA-Tok/ta_tok.pth", None,
                      "model (TA-Tok: fine-tuned SigLIP2 encoder, task layer, SimVQ codebook)",
                      "https://huggingface.co/csuhan/TA-Tok (file ta_tok.pth)"),
    layout="ta_tok_pth", subfolder="",
    code={**TAR, "path": "tok/ta_tok.py, tok/ar_dtok/bottleneck.py", "class": "TextAlignedTokenizer, SimVectorQuantizer"},
    config=TA_TOK_CONFIG, dtype="unknown", build=lambda c: ta_tok_tensors(c, "unknown"),
    notes=("file layout {'model': {'args': ..., 'sd': state_dict}} (from_checkpoint)",
           "encoder.* is TA-Tok's own SigLIP2 tower (loaded strict by from_checkpoint; teacher.* keys are dropped "
           "with load_teacher=False), not stock google/siglip2-so400m-patch14-384",
           "codebook = embedding_proj(embedding.weight) (SimVectorQuantizer.get_emb), L2-normalised when l2_normalized",
           "scale_layer.* buffers: (x - 0.5) / 0.5; BLIP3o-NEXT replaces them by identity and normalises in its "
           "SiglipImageProcessor (mean 0.5, std 0.5) instead",
           "a learnable bottleneck.regularizer.stochastic_temperature_inv exists only with stochastic_temperature < 0"),
)

# ------------------------------------------------------------------ BLIP3o-NEXT-SFT-3B
NEXT_SRC = ("Qwen3-1.7B shapes: BLIP3o-NEXT's Qwen3 has H = 2048 (zjYao36/Pref_Restore blip3o_arch.py:37 comment "
            "'config.hidden_size ... 2048'; blip3o_qwen.py subclasses Qwen3ForCausalLM), and among Qwen3 LMs only 1.7B "
            "has H = 2048; the 2048/6144/28/16/8/128/tied text shapes as quoted for Qwen3-VL-2B in "
            "xorbitsai/inference issue 4592; " + SECONDARY)
NEXT_VOCAB_SRC = ("151669 Qwen3 tokens + <im_start>, <im_end> + <S0..S2> + <I0..I65535>: blip3o_arch.py "
                  "initialize_vision_tokenizer resizes to len(tokenizer) + new tokens; zjYao36/Pref_Restore "
                  "blip3o/data/dataset.py:87 comments that '<image>', added on top of the SFT-3B tokenizer, gets id "
                  "217210 (and :139 <im_start> 151669, <im_end> 151670)")
BLIP3O_NEXT_CONFIG = {
    **_qwen3_config(NEXT_SRC, hidden_size=2048, intermediate_size=6144, num_hidden_layers=28, num_attention_heads=16,
                    num_key_value_heads=8, head_dim=128, tie_word_embeddings=True, rope_theta=1000000.0,
                    max_position_embeddings=40960),
    "vocab_size": value(217210, NEXT_VOCAB_SRC),
    "connector_width": value(2304, "blip3o_arch.py: nn.Linear(config.hidden_size, 2304) ... RMSNorm(2304)"),
    **{f"sana.{k}": v for k, v in SANA_CONFIG.items()},
    **{f"sana_vae.{k}": v for k, v in DCAE_CONFIG.items()},
}


def blip3o_next_tensors(c: Mapping[str, Any], dtype: str) -> dict[str, TensorInfo]:
    """blip3oQwenForCausalLM's state dict (blip3o_arch.py blip3oMetaModel + Qwen3ForCausalLM)."""
    out = qwen3_tensors(c, dtype)
    w = c["connector_width"]
    out.update({"model.diffusion_connector.0.weight": ((w, c["hidden_size"]), dtype),
                "model.diffusion_connector.0.bias": ((w,), dtype),
                "model.diffusion_connector.2.weight": ((w, w), dtype), "model.diffusion_connector.2.bias": ((w,), dtype),
                "model.diffusion_connector.3.weight": ((w,), dtype)})
    out.update(sana_tensors({k[5:]: v for k, v in c.items() if k.startswith("sana.")}, dtype, "model.sana."))
    out.update(dcae_tensors({k[9:]: v for k, v in c.items() if k.startswith("sana_vae.")}, dtype, "model.sana_vae."))
    return out


BLIP3O_NEXT = Part(
    name="blip3o-next-sft-3b", title="BLIP3o-NEXT-SFT-3B (Qwen3 H = 2048 + trained diffusion connector + SANA)",
    weight=WeightFile("blip3o-next-ar", "store", "BLIP3o-NEXT-SFT-3B", None,
                      "model (released: Qwen3 AR + diffusion connector + SANA caption layers + tokenizer)",
                      "https://huggingface.co/BLIP3o/BLIP3o-NEXT-SFT-3B"),
    layout="safetensors_folder", subfolder="",
    code={**BLIP3O, "path": "blip3o/model/blip3o_arch.py, blip3o/model/language_model/blip3o_qwen.py",
          "class": "blip3oQwenForCausalLM"},
    config=BLIP3O_NEXT_CONFIG, dtype="BF16", build=lambda c: blip3o_next_tensors(c, "BF16"),
    notes=("model.sana.* is SANA with the caption_projection / caption_norm BLIP3o-NEXT trained "
           "(blip3o/train/train.py unfreezes parameters named 'caption')",
           "model.diffusion_connector.3.weight is the RMSNorm, initialised to sqrt(5.5) before training",
           "model.sana_vae.* is a frozen copy of SANA's DC-AE",
           "model.vision_tower.* (a TA-Tok copy) may be present if the tower was loaded when the checkpoint was "
           "saved; the released code loads TA-Tok from ta_tok.pth (--vision_tower)",
           "dtype BF16: the training scripts run with --bf16 True; " + UNVERIFIED),
)

# ------------------------------------------------------------------ SigLIP2 (reference only)
SIGLIP2 = Part(
    name="siglip2-so400m-384", title="SigLIP2 so400m patch14 384 (stock; TA-Tok's encoder is fine-tuned from it)",
    weight=WeightFile("siglip2-so400m-384", "store", "siglip2-so400m-patch14-384", None,
                      "reference only (TA-Tok carries its own encoder.*)",
                      "https://huggingface.co/google/siglip2-so400m-patch14-384"),
    layout="safetensors_folder", subfolder="",
    code={"repo": "huggingface/transformers", "path": "src/transformers/models/siglip/modeling_siglip.py",
          "class": "SiglipModel"},
    config={**{f"vision.{k}": value(v, SIGLIP_SO400M_SRC) for k, v in SIGLIP_VISION.items()},
            **{f"text.{k}": value(v, SIGLIP_SO400M_SRC) for k, v in
               {"hidden_size": 1152, "intermediate_size": 4304, "num_hidden_layers": 27, "num_attention_heads": 16}.items()},
            "text.vocab_size": value(256000, "SigLIP2's Gemma tokenizer: google/siglip2-base-patch16-512 config.json "
                                     "(mirror in JackIsNotInTheBox/Generate_Audio_for_Video_Checkpoints)"),
            "text.max_position_embeddings": value(64, "transformers SiglipTextConfig default; the kvmm package's "
                                                 "SigLIP2So400mP14 config (max_sequence_length 64, vocabulary 256000; "
                                                 "pypi kvmm 0.1.8 kvmm/models/siglip2/config.py); " + SECONDARY)},
    dtype="F32", build=lambda c: siglip_tensors(c, "F32"),
    notes=("not loaded by any profile: TA-Tok's encoder.* replaces it (from_checkpoint loads it strict)",),
)


def siglip_tensors(c: Mapping[str, Any], dtype: str) -> dict[str, TensorInfo]:
    from transformers import SiglipConfig, SiglipModel

    vis = {k.split(".", 1)[1]: v for k, v in c.items() if k.startswith("vision.")}
    txt = {k.split(".", 1)[1]: v for k, v in c.items() if k.startswith("text.")}
    return module_tensors(on_meta(lambda: SiglipModel(SiglipConfig(text_config=txt, vision_config=vis))), dtype)


MODEL_PARTS: tuple[Part, ...] = (BLIP3O_NEXT, QWEN3_06B, TA_TOK, SANA, DCAE, SIGLIP2)
PARTS: dict[str, Part] = {p.name: p for p in (*MODEL_PARTS, *AUX_PARTS)}
