"""Preference scorers of Table VIII and the stage-2 rewards: HPSv2.1, CLIP score, PickScore.

The same real scorers serve evaluation (Table VIII) and ``prefrestore.train.rewards`` (Eq. 12 inputs).
Each factory loads its weights offline (``local_files_only``; missing -> ``MissingWeights``) and
returns a callable ``(images [B, 3, H, W] in [0, 1], captions) -> Tensor[B]`` of raw scores:

- :func:`pickscore`: PickScore_v1, ``logit_scale * cos`` (about 20; the released reward divides by 26).
- :func:`hpsv21`: HPSv2.1 (open_clip ViT-H-14), the cosine (about 0.25; Table VIII shows x100).
- :func:`clip_score`: CLIP ViT-L/14, ``logit_scale * cos`` = 100 cos (the released reward divides by 100).

Images are preprocessed in torch (bicubic resize of the short side, centre crop, CLIP mean/std),
so a batch never leaves the device.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F

from prefrestore.core.weights import WeightFile, require, root_dir
from prefrestore.metrics.base import BuildContext, MeanScorer, MetricSpec

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


def _hf(repo: str, used_by: str) -> WeightFile:
    return WeightFile(f"hf/{repo}", "hf", f"hub/models--{repo.replace('/', '--')}", None, used_by, f"hf:{repo}")


CLIP_L14_W = _hf("openai/clip-vit-large-patch14", "clip_score, clipscore_i, clipscore_t")
PICKSCORE_W = _hf("yuvalkirstain/PickScore_v1", "pickscore")
PICKSCORE_TOKENIZER_W = _hf("laion/CLIP-ViT-H-14-laion2B-s32B-b79K", "pickscore (tokenizer)")
HPSV21_W = WeightFile("hpsv2/HPS_v2.1_compressed", "store", "hpsv2/HPS_v2.1_compressed.pt", None, "hpsv2",
                      "hf:xswu/HPSv2 (file HPS_v2.1_compressed.pt)")
WEIGHTS: tuple[WeightFile, ...] = (CLIP_L14_W, PICKSCORE_W, PICKSCORE_TOKENIZER_W, HPSV21_W)


def clip_pixels(images: torch.Tensor, size: int, mean: Sequence[float] = CLIP_MEAN,
                std: Sequence[float] = CLIP_STD) -> torch.Tensor:
    """CLIP preprocessing in torch: short side -> ``size`` (bicubic, antialiased), centre crop, normalise."""
    h, w = images.shape[-2:]
    scale = size / min(h, w)
    nh, nw = max(size, round(h * scale)), max(size, round(w * scale))
    x = F.interpolate(images.float(), size=(nh, nw), mode="bicubic", align_corners=False, antialias=True)
    top, left = (nh - size) // 2, (nw - size) // 2
    x = x[..., top : top + size, left : left + size].clamp(0, 1)
    m = torch.tensor(mean, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    s = torch.tensor(std, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    return (x - m) / s


def _embeds(out) -> torch.Tensor:
    return out if isinstance(out, torch.Tensor) else out.pooler_output


class ClipPairScorer:
    """Image-text score of a CLIP-style model: ``cos(f_img, f_txt)``, times ``logit_scale`` if asked.

    ``encode_image(pixels)`` and ``encode_text(captions)`` hide the library (transformers or
    open_clip); tests build them from tiny random-init CLIP models.
    """

    def __init__(self, encode_image: Callable[[torch.Tensor], torch.Tensor],
                 encode_text: Callable[[Sequence[str]], torch.Tensor], image_size: int,
                 scale: float, device: torch.device):
        self.encode_image, self.encode_text = encode_image, encode_text
        self.image_size, self.scale, self.device = image_size, scale, device

    @torch.no_grad()
    def __call__(self, images: torch.Tensor, captions: Sequence[str]) -> torch.Tensor:
        if len(captions) != images.shape[0]:
            raise ValueError(f"{images.shape[0]} images but {len(captions)} captions")
        fi = F.normalize(self.encode_image(clip_pixels(images.to(self.device), self.image_size)).float(), dim=-1)
        ft = F.normalize(self.encode_text(list(captions)).float(), dim=-1)
        return (fi * ft).sum(-1) * self.scale


def hf_clip_scorer(model, tokenizer, scale_by_logit: bool, device: torch.device) -> ClipPairScorer:
    """A :class:`ClipPairScorer` over a transformers ``CLIPModel`` and its tokenizer."""
    model = model.to(device).eval()
    max_len = model.config.text_config.max_position_embeddings

    def enc_img(px):
        return _embeds(model.get_image_features(pixel_values=px))

    def enc_txt(captions):
        tok = tokenizer(captions, padding="max_length", truncation=True, max_length=max_len, return_tensors="pt")
        return _embeds(model.get_text_features(**{k: v.to(device) for k, v in tok.items()}))

    scale = float(model.logit_scale.exp()) if scale_by_logit else 1.0
    return ClipPairScorer(enc_img, enc_txt, model.config.vision_config.image_size, scale, device)


def _hf_load(model_w: WeightFile, tok_w: WeightFile):
    from transformers import AutoTokenizer, CLIPModel

    require(model_w)
    require(tok_w)
    cache = root_dir("hf") / "hub"
    model = CLIPModel.from_pretrained(model_w.source.removeprefix("hf:"), cache_dir=cache, local_files_only=True)
    tok = AutoTokenizer.from_pretrained(tok_w.source.removeprefix("hf:"), cache_dir=cache, local_files_only=True)
    return model, tok


def _device(device: str | torch.device | None) -> torch.device:
    return torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))


def pickscore(device: str | torch.device | None = None) -> ClipPairScorer:
    """PickScore_v1 (Kirstain et al. 2023): ``logit_scale * cos``, tokenizer of CLIP-ViT-H-14-laion2B."""
    model, tok = _hf_load(PICKSCORE_W, PICKSCORE_TOKENIZER_W)
    return hf_clip_scorer(model, tok, True, _device(device))


def clip_score(device: str | torch.device | None = None) -> ClipPairScorer:
    """CLIP ViT-L/14 (openai) image-text score: ``logit_scale * cos`` = 100 cos."""
    model, tok = _hf_load(CLIP_L14_W, CLIP_L14_W)
    return hf_clip_scorer(model, tok, True, _device(device))


def open_clip_scorer(model, tokenizer, device: torch.device) -> ClipPairScorer:
    """A cosine :class:`ClipPairScorer` over an open_clip model (HPSv2 scores with the plain cosine)."""
    model = model.to(device).eval()
    size = model.visual.image_size
    size = size[0] if isinstance(size, tuple | list) else size
    return ClipPairScorer(model.encode_image, lambda caps: model.encode_text(tokenizer(caps).to(device)),
                          int(size), 1.0, device)


def hpsv21(device: str | torch.device | None = None) -> ClipPairScorer:
    """HPSv2.1 (Wu et al. 2023): open_clip ViT-H-14 with the HPS_v2.1 checkpoint, cosine score."""
    import open_clip

    path = require(HPSV21_W)
    model = open_clip.create_model("ViT-H-14", pretrained=None)
    state = torch.load(path, map_location="cpu", weights_only=True)
    model.load_state_dict(state.get("state_dict", state) if isinstance(state, dict) else state, strict=True)
    return open_clip_scorer(model, open_clip.get_tokenizer("ViT-H-14"), _device(device))


def _caption_spec(name: str, label: str, factory: Callable[..., ClipPairScorer],
                  weights: tuple[WeightFile, ...], packages: tuple[str, ...] = (), unit: float = 1.0) -> MetricSpec:
    def build(ctx: BuildContext) -> MeanScorer:
        scorer = factory(ctx.device)
        return MeanScorer(lambda restored, hq, captions: scorer(restored, captions) * unit)

    return MetricSpec(name, label, False, True, False, weights, build, packages)


SPECS: tuple[MetricSpec, ...] = (
    _caption_spec("hpsv2", "HPSv2", hpsv21, (HPSV21_W,), ("open_clip",), unit=100.0),  # Table VIII: x100
    _caption_spec("clip_score", "Clip Score", clip_score, (CLIP_L14_W,)),
    _caption_spec("pickscore", "Pick Score", pickscore, (PICKSCORE_W, PICKSCORE_TOKENIZER_W)),
)
