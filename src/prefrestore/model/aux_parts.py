"""The captioner and reward / metric backbones' public checkpoints (Qwen2.5-VL-32B, CLIP, PickScore, HPSv2.1).

``prefrestore weights verify --aux NAME`` checks a user's files against these manifests
(:mod:`prefrestore.model.manifest`); no profile loads them into the restorer.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from prefrestore.core.weights import WeightFile
from prefrestore.model.headers import TensorInfo
from prefrestore.model.manifest import SECONDARY, UNVERIFIED, Part, module_tensors, on_meta, value

QWEN25_32B_SRC = ("Qwen2.5-32B-Instruct text config (huggingface.co/GAIR/LIMO config.json, built on it) and a public "
                  "copy of huggingface.co/Qwen/Qwen2.5-VL-32B-Instruct/raw/main/config.json; " + SECONDARY)


def _hf_weight(name: str, repo: str, used_by: str) -> WeightFile:
    return WeightFile(name, "hf", f"hub/models--{repo.replace('/', '--')}", None, used_by, f"hf:{repo}")


def qwen25vl_tensors(c: Mapping[str, Any], dtype: str) -> dict[str, TensorInfo]:
    """Qwen2_5_VLForConditionalGeneration, named as the published checkpoint: ``visual.*``, ``model.*``, ``lm_head``."""
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

    vis = {k.split(".", 1)[1]: v for k, v in c.items() if k.startswith("vision.")}
    txt = {k.split(".", 1)[1]: v for k, v in c.items() if k.startswith("text.")}
    cfg = Qwen2_5_VLConfig(text_config=txt, vision_config=vis, tie_word_embeddings=txt["tie_word_embeddings"])
    raw = module_tensors(on_meta(lambda: Qwen2_5_VLForConditionalGeneration(cfg)), dtype)
    return {_qwen25vl_checkpoint_name(k): v for k, v in raw.items()}


def _qwen25vl_checkpoint_name(key: str) -> str:
    """transformers 5 nests ``model.language_model.`` / ``model.visual.``; the hub files use ``model.`` / ``visual.``."""
    if key.startswith("model.visual."):
        return key.removeprefix("model.")
    return key.replace("model.language_model.", "model.", 1)


QWEN25VL_32B = Part(
    name="qwen2.5-vl-32b-instruct", title="Qwen2.5-VL-32B-Instruct (the captioner, Appendix D)",
    weight=_hf_weight("qwen2.5-vl-32b", "Qwen/Qwen2.5-VL-32B-Instruct", "caption (qwen2_5_vl backend)"),
    layout="safetensors_folder", subfolder="",
    code={"repo": "huggingface/transformers", "path": "src/transformers/models/qwen2_5_vl/modeling_qwen2_5_vl.py",
          "class": "Qwen2_5_VLForConditionalGeneration"},
    config={"text.vocab_size": value(152064, QWEN25_32B_SRC), "text.hidden_size": value(5120, QWEN25_32B_SRC),
            "text.intermediate_size": value(27648, QWEN25_32B_SRC),
            "text.num_hidden_layers": value(64, "Qwen2.5-32B model card: 64 layers (ZHUI/paddlenlp_model_readme)"),
            "text.num_attention_heads": value(40, "Qwen2.5-32B model card: 40 query heads (GQA)"),
            "text.num_key_value_heads": value(8, "Qwen2.5-32B model card: 8 KV heads (GQA)"),
            "text.tie_word_embeddings": value(False, "Qwen2.5-32B-Instruct text configs (GAIR/LIMO config.json: "
                                              "tie_word_embeddings false); for the VL-32B itself " + UNVERIFIED),
            "vision.depth": value(32, "Qwen2.5-VL vision config (acproject/duorou docs/qwen2.5vl_graph.md: 32 blocks)"),
            "vision.hidden_size": value(1280, "Qwen2.5-VL vision config (duorou graph: width 1280)"),
            "vision.intermediate_size": value(3456, "a public copy of the VL-32B config.json; " + SECONDARY
                                              + " (the 7B model's tower uses 3420)"),
            "vision.num_heads": value(16, "Qwen2.5-VL vision config (sgl-jax QwenVLModelVitConfig num_heads 16)"),
            "vision.out_hidden_size": value(5120, "equals text.hidden_size (the merger projects into the LM)"),
            "vision.fullatt_block_indexes": value([7, 15, 23, 31], "sgl-jax QwenVLModelVitConfig")},
    dtype="BF16", build=lambda c: qwen25vl_tensors(c, "BF16"),
    notes=("checkpoint names: visual.* and model.* (transformers 5 renames them to model.visual.* / "
           "model.language_model.* at load)",),
)


def clip_tensors(c: Mapping[str, Any], dtype: str) -> dict[str, TensorInfo]:
    from transformers import CLIPConfig, CLIPModel

    vis = {k.split(".", 1)[1]: v for k, v in c.items() if k.startswith("vision.")}
    txt = {k.split(".", 1)[1]: v for k, v in c.items() if k.startswith("text.")}
    cfg = CLIPConfig(text_config=txt, vision_config=vis, projection_dim=c["projection_dim"])
    return module_tensors(on_meta(lambda: CLIPModel(cfg)), dtype)


def _clip_config(src: str, proj: int, text: tuple[int, int, int, int], vision: tuple[int, int, int, int]) -> dict:
    tk = ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads")
    out = {"projection_dim": value(proj, src)}
    out.update({f"text.{k}": value(v, src) for k, v in zip(tk, text, strict=True)})
    out.update({f"vision.{k}": value(v, src) for k, v in zip(tk, vision, strict=True)})
    out.update({"text.vocab_size": value(49408, src), "text.max_position_embeddings": value(77, src),
                "vision.image_size": value(224, src), "vision.patch_size": value(14, src)})
    return out


CLIP_L14 = Part(
    name="clip-vit-large-patch14", title="CLIP ViT-L/14 (openai; CLIP reward and ClipScore)",
    weight=_hf_weight("clip-vit-large-patch14", "openai/clip-vit-large-patch14", "clip_score, clipscore_i/t, reward clip"),
    layout="safetensors_folder", subfolder="",
    code={"repo": "huggingface/transformers", "path": "src/transformers/models/clip/modeling_clip.py", "class": "CLIPModel"},
    config=_clip_config("openai/clip-vit-large-patch14 config.json as copied in kohya-ss/musubi-tuner "
                        "hunyuan_model/text_encoder.py CLIP_CONFIG (commit 7906419; text, projection 768, float32) and "
                        "kakaobrain/karlo-v1-alpha-image-variations image_encoder/config.json (vision 1024/4096/24/16, "
                        "224 px, patch 14); ViT-L/14 of the CLIP paper (Radford et al. 2021, Table 20)",
                        768, (768, 3072, 12, 12), (1024, 4096, 24, 16)),
    dtype="F32", build=lambda c: clip_tensors(c, "F32"),
)
PICKSCORE = Part(
    name="pickscore-v1", title="PickScore_v1 (CLIP ViT-H/14 fine-tuned on Pick-a-Pic; reward and Table VIII)",
    weight=_hf_weight("pickscore-v1", "yuvalkirstain/PickScore_v1", "pickscore, reward pickscore"),
    layout="safetensors_folder", subfolder="",
    code={"repo": "huggingface/transformers", "path": "src/transformers/models/clip/modeling_clip.py", "class": "CLIPModel"},
    config=_clip_config("ViT-H/14 of open_clip (model_configs/ViT-H-14.json: width 1280, 32 layers, text width 1024, "
                        "24 layers, embed_dim 1024) in HF CLIP form; PickScore_v1 is fine-tuned from "
                        "laion/CLIP-ViT-H-14-laion2B-s32B-b79K, whose config.json (commit 7198030) gives projection "
                        "1024, text 1024/4096/24/16, vision 5120/32/16, float32; PickScore's own file " + UNVERIFIED,
                        1024, (1024, 4096, 24, 16), (1280, 5120, 32, 16)),
    dtype="F32", build=lambda c: clip_tensors(c, "F32"),
)


def open_clip_tensors(c: Mapping[str, Any], dtype: str) -> dict[str, TensorInfo]:
    import open_clip

    return module_tensors(on_meta(lambda: open_clip.create_model(c["model_name"], pretrained=None, device="meta")), dtype)


HPSV21 = Part(
    name="hpsv2.1", title="HPSv2.1 (open_clip ViT-H-14 fine-tuned; reward and Table VIII)",
    weight=WeightFile("hpsv2.1", "store", "hpsv2/HPS_v2.1_compressed.pt", None, "hpsv2, reward hpsv21",
                      "hf:xswu/HPSv2 (file HPS_v2.1_compressed.pt)"),
    layout="torch_state_dict", subfolder="",
    code={"repo": "mlfoundations/open_clip", "path": "src/open_clip/model_configs/ViT-H-14.json",
          "class": "open_clip.CLIP"},
    config={"model_name": value("ViT-H-14", "HPSv2 loads open_clip 'ViT-H-14' (installed open_clip 3.3.0 config: "
                                "embed_dim 1024, vision 32 x 1280, text 24 x 1024, context 77, vocab 49408)")},
    dtype="unknown", build=lambda c: open_clip_tensors(c, "unknown"),
    notes=("the file is a torch pickle: read with weights_only=True; a top-level 'state_dict' key is unwrapped",),
)


AUX_PARTS: tuple[Part, ...] = (QWEN25VL_32B, CLIP_L14, PICKSCORE, HPSV21)
