"""Semantic fidelity metrics of Table VII: ClipScore-I, ClipScore-T and DreamSim.

- **ClipScore-I**: cosine of CLIP ViT-L/14 image features, restored vs HQ (paired only).
- **ClipScore-T**: cosine of CLIP ViT-L/14 features, restored image vs its caption (plain
  cosine, no 2.5 weight: the paper's values are about 0.26). The paper does not name the CLIP
  variant; we use the same ViT-L/14 as the CLIP reward, so one staged copy serves both.
- **DreamSim** (Fu et al. 2023): ``1 - dreamsim_distance`` (a similarity, higher is better, as the
  paper's 0.74 -> 0.80), from the ``dreamsim`` package (extra ``[dreamsim]``) and its ensemble
  checkpoint: DINO ViT-B/16 + CLIP ViT-B/16 + OpenCLIP ViT-B/16 features with the released LoRA.
  The package fetches its checkpoint zip and DINO (code and weights, through ``torch.hub``) on
  first use; here every file is staged under ``$PREFRESTORE_MODEL_STORE/dreamsim`` and the build
  refuses the network (see :func:`load_dreamsim`).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

import torch
import torch.nn.functional as F

from prefrestore.core.weights import MissingWeights, WeightFile, require
from prefrestore.metrics.base import BuildContext, MeanScorer, MetricSpec, no_downloads
from prefrestore.metrics.preference import CLIP_L14_W, _embeds, _hf_load, clip_pixels, hf_clip_scorer

_DREAMSIM_ZIP = ("https://github.com/ssundaram21/dreamsim/releases/download/v0.2.0-checkpoints/"
                 "dreamsim_ensemble_checkpoint.zip (unzipped into this folder)")


def _dreamsim_file(relpath: str, source: str = _DREAMSIM_ZIP) -> WeightFile:
    return WeightFile(f"dreamsim/{relpath}", "store", f"dreamsim/{relpath}", None, "dreamsim", source)


DREAMSIM_W: tuple[WeightFile, ...] = (  # dreamsim 0.2.1, dreamsim_type="ensemble"
    _dreamsim_file("ensemble_lora"),  # adapter_config.json + adapter_model.{safetensors,bin}
    _dreamsim_file("dino_vitb16_pretrain.pth"),  # DINO training checkpoint (projection head)
    _dreamsim_file("clip_vitb16_pretrain.pth.tar"),  # CLIP ViT-B/16 visual tower as a DINO ViT
    _dreamsim_file("open_clip_vitb16_pretrain.pth.tar"),  # OpenCLIP ViT-B/16 (LAION-400M) likewise
    _dreamsim_file("checkpoints/dino_vitbase16_pretrain.pth",  # the DINO backbone torch.hub would fetch
                   "https://dl.fbaipublicfiles.com/dino/dino_vitbase16_pretrain/dino_vitbase16_pretrain.pth"),
)
WEIGHTS: tuple[WeightFile, ...] = DREAMSIM_W  # CLIP ViT-L/14 is declared in preference.py


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


@contextlib.contextmanager
def _dino_from_store(folder: Path) -> Iterator[None]:
    """Serve dreamsim's ``torch.hub.load('facebookresearch/dino:main', 'dino_vitb16')`` from the store.

    The hub call would fetch DINO's repository and run its ``hubconf.py``; instead the same network
    (ViT-B/16, the ``vit_base`` that dreamsim ships, no classifier head) is built here and the
    staged backbone loaded strictly, tensors only. dreamsim's ``torch.hub.set_dir`` is ignored, so
    the process's hub folder (pyiqa, torchvision) is unchanged afterwards. Any other hub model is
    refused.
    """
    from dreamsim.feature_extraction import vision_transformer

    def load(repo: str, model: str, *args, **kwargs) -> torch.nn.Module:
        if (repo, model) != ("facebookresearch/dino:main", "dino_vitb16"):
            raise MissingWeights(f"dreamsim asked torch.hub for {repo} {model}; "
                                 "only the staged DINO ViT-B/16 is served")
        net = vision_transformer.vit_base(patch_size=16, num_classes=0)
        state = torch.load(folder / "checkpoints" / "dino_vitbase16_pretrain.pth", map_location="cpu",
                           weights_only=True)
        net.load_state_dict(state, strict=True)
        return net

    saved = torch.hub.load, torch.hub.set_dir
    torch.hub.load, torch.hub.set_dir = load, lambda d: None
    try:
        yield
    finally:
        torch.hub.load, torch.hub.set_dir = saved


def load_dreamsim(device: torch.device) -> torch.nn.Module:
    """The DreamSim ensemble (Fu et al. 2023, "ensemble" in dreamsim 0.2.1) from the store, offline.

    Every file of :data:`DREAMSIM_W` must be present (else :class:`MissingWeights`); checkpoints load
    with ``weights_only=True``; downloads are refused while it builds.
    """
    from dreamsim import dreamsim

    folder = require(DREAMSIM_W[0]).parent
    for w in DREAMSIM_W[1:]:
        require(w)
    lora = folder / "ensemble_lora"
    if not (lora / "adapter_config.json").is_file() or not any(
            (lora / f).is_file() for f in ("adapter_model.safetensors", "adapter_model.bin")):
        raise MissingWeights(f"dreamsim: {lora} lacks adapter_config.json or adapter_model.(safetensors|bin); "
                             f"stage it from {_DREAMSIM_ZIP}")
    with no_downloads(), _dino_from_store(folder):
        model, _ = dreamsim(pretrained=True, device=str(device), cache_dir=str(folder), dreamsim_type="ensemble")
    return model.eval()


def dreamsim_similarity(model: torch.nn.Module, restored: torch.Tensor, hq: torch.Tensor,
                        device: torch.device) -> torch.Tensor:
    """``1 - DreamSim distance`` (the cosine of the ensemble embeddings) per pair, Table VII. Images
    in [0, 1] are resized to 224x224, bicubic with antialiasing, as dreamsim's PIL preprocessing."""

    def prep(x: torch.Tensor) -> torch.Tensor:
        return F.interpolate(x.to(device), size=(224, 224), mode="bicubic", antialias=True).clamp(0, 1)

    return 1.0 - model(prep(restored), prep(hq)).reshape(-1)


def _build_dreamsim(ctx: BuildContext) -> MeanScorer:
    model = load_dreamsim(ctx.device)
    return MeanScorer(lambda restored, hq, captions: dreamsim_similarity(model, restored, hq, ctx.device))


SPECS: tuple[MetricSpec, ...] = (
    MetricSpec("clipscore_i", "ClipScore-I", True, False, False, (CLIP_L14_W,), _build_clipscore_i),
    MetricSpec("clipscore_t", "ClipScore-T", False, True, False, (CLIP_L14_W,), _build_clipscore_t),
    MetricSpec("dreamsim", "DreamSim", True, False, False, DREAMSIM_W, _build_dreamsim, ("dreamsim",)),
)
