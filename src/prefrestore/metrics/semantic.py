"""Semantic fidelity metrics of Table VII: ClipScore-I, ClipScore-T and DreamSim.

- **ClipScore-I**: cosine of CLIP ViT-L/14 image features, restored vs HQ (paired only).
- **ClipScore-T**: cosine of CLIP ViT-L/14 features, restored image vs its caption (plain
  cosine, no 2.5 weight: the paper's values are about 0.26). The paper does not name the CLIP
  variant; we use the same ViT-L/14 as the CLIP reward, so one staged copy serves both.
- **DreamSim** (Fu et al. 2023): ``1 - dreamsim_distance`` (a similarity, higher is better, as the
  paper's 0.74 -> 0.80), from the ``dreamsim`` package and its ensemble checkpoint.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from prefrestore.metrics.base import BuildContext, MeanScorer, MetricSpec, no_downloads
from prefrestore.metrics.preference import CLIP_L14_W, _embeds, _hf_load, clip_pixels, hf_clip_scorer
from prefrestore.weights import WeightFile, require

DREAMSIM_W = WeightFile("dreamsim/ensemble", "store", "dreamsim", None, "dreamsim",
                        "pip dreamsim; checkpoints of https://github.com/ssundaram21/dreamsim releases "
                        "(ensemble_lora + DINO/CLIP/OpenCLIP backbones) in this folder")
WEIGHTS: tuple[WeightFile, ...] = (DREAMSIM_W,)  # CLIP ViT-L/14 is declared in preference.py


def image_image_cosine(encode_image, images: torch.Tensor, hq: torch.Tensor) -> torch.Tensor:
    """Cosine similarity of image features per pair (ClipScore-I)."""
    return F.cosine_similarity(encode_image(images).float(), encode_image(hq).float(), dim=-1)


def _build_clipscore_i(ctx: BuildContext) -> MeanScorer:
    model, _ = _hf_load(CLIP_L14_W, CLIP_L14_W)
    model = model.to(ctx.device).eval()
    size = model.config.vision_config.image_size

    def enc(x):
        return _embeds(model.get_image_features(pixel_values=clip_pixels(x.to(ctx.device), size)))

    return MeanScorer(lambda restored, hq, captions: image_image_cosine(enc, restored, hq))


def _build_clipscore_t(ctx: BuildContext) -> MeanScorer:
    model, tok = _hf_load(CLIP_L14_W, CLIP_L14_W)
    scorer = hf_clip_scorer(model, tok, False, ctx.device)
    return MeanScorer(lambda restored, hq, captions: scorer(restored, captions))


def _build_dreamsim(ctx: BuildContext) -> MeanScorer:
    from dreamsim import dreamsim

    folder = require(DREAMSIM_W)
    with no_downloads():
        model, _ = dreamsim(pretrained=True, device=str(ctx.device), cache_dir=str(folder))

    def score(restored, hq, captions):
        x = F.interpolate(restored.to(ctx.device), size=(224, 224), mode="bicubic", antialias=True).clamp(0, 1)
        y = F.interpolate(hq.to(ctx.device), size=(224, 224), mode="bicubic", antialias=True).clamp(0, 1)
        return 1.0 - model(x, y).reshape(-1)

    return MeanScorer(score)


SPECS: tuple[MetricSpec, ...] = (
    MetricSpec("clipscore_i", "ClipScore-I", True, False, False, (CLIP_L14_W,), _build_clipscore_i),
    MetricSpec("clipscore_t", "ClipScore-T", False, True, False, (CLIP_L14_W,), _build_clipscore_t),
    MetricSpec("dreamsim", "DreamSim", True, False, False, (DREAMSIM_W,), _build_dreamsim, ("dreamsim",)),
)
