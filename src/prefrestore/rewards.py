"""Stage-2 rewards: a plain mapping name -> scorer factory, weighted by ``params.yaml`` (SPEC §3 "Rewards").

Every scorer has one signature::

    scorer(images [B, 3, H, W] in [0, 1], hq [B, 3, H, W] | None, captions: list[str]) -> Tensor[B]

higher is better. The summed reward ``R = sum_k w_k s_k`` (:func:`total_reward`) is what the
advantages of paper Eq. 12 centre per group; its per-image spread over seeds is Fig. 8's "Sum Score".

- Preference rewards (the paper's default, weight 1 each, text = the sample's caption):
  PickScore (CLIP ViT-H/14 + PickScore_v1, ``logit / 26``), HPSv2.1 (open_clip ViT-H-14 + the
  HPS v2.1 checkpoint, image-text cosine), CLIP score (ViT-L/14, ``logit / 100``).
- GT-aware rewards (released variant, 0.5 each): ``-LPIPS`` (pyiqa), LMD as ``1 / (1 + d / 20)``,
  ArcFace cosine. LMD/ArcFace use the face-metric module when it provides them.
- Offline rewards that need no weights (tiny profile): PSNR / scale, SSIM, ``-MSE`` to HQ and a
  no-reference sharpness ``v / (v + ref)`` of the Laplacian variance ``v``.

Real scorers load only from local files (``local_files_only=True``, ``weights_only=True``) and raise
:class:`prefrestore.weights.MissingWeights` naming the file when it is absent; none ever returns a
placeholder number.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence

import torch
import torch.nn.functional as F

from prefrestore.config import check_range
from prefrestore.metrics.iqa import LPIPS_W
from prefrestore.metrics.preference import CLIP_MEAN, CLIP_STD, clip_pixels
from prefrestore.weights import MissingWeights, WeightFile, require

Scorer = Callable[[torch.Tensor, torch.Tensor | None, Sequence[str]], torch.Tensor]


@dataclasses.dataclass(frozen=True)
class RewardsConfig:
    """Params section ``rewards`` (each key is commented in ``params.yaml``)."""

    weights: Mapping[str, float]
    pickscore_divisor: float
    clip_divisor: float
    lmd_scale_px: float
    psnr_scale_db: float
    sharpness_ref: float

    def __post_init__(self) -> None:
        unknown = sorted(set(self.weights) - set(SPECS))
        if unknown:
            raise ValueError(f"unknown reward(s) {unknown}; known: {sorted(SPECS)}")
        for name, w in self.weights.items():
            check_range(f"weights.{name}", w, 0.0, 1e3)
        if not any(w > 0 for w in self.weights.values()):
            raise ValueError("every reward weight is 0: stage 2 would have nothing to optimise")
        for name in ("pickscore_divisor", "clip_divisor", "lmd_scale_px", "psnr_scale_db", "sharpness_ref"):
            check_range(name, getattr(self, name), 1e-9, 1e9)

    def active(self) -> dict[str, float]:
        """The rewards with a positive weight, in a fixed (sorted) order."""
        return {k: float(self.weights[k]) for k in sorted(self.weights) if self.weights[k] > 0}


# --------------------------------------------------------------------------------------------------
# Offline scorers (no weights)
# --------------------------------------------------------------------------------------------------


def _check(images: torch.Tensor, hq: torch.Tensor | None, name: str, needs_hq: bool) -> None:
    if images.ndim != 4 or images.shape[1] != 3:
        raise ValueError(f"{name}: images must be [B, 3, H, W], got {tuple(images.shape)}")
    if needs_hq:
        if hq is None:
            raise ValueError(f"{name}: this reward compares with the HQ image; pass hq")
        if hq.shape != images.shape:
            raise ValueError(f"{name}: hq {tuple(hq.shape)} differs from images {tuple(images.shape)}")


def psnr_reward(scale_db: float) -> Scorer:
    """``PSNR(images, hq) / scale_db``; MSE floored at 1e-10 (100 dB) so identical images stay finite."""

    def score(images, hq, captions):
        _check(images, hq, "psnr", True)
        mse = (images.double() - hq.double()).pow(2).flatten(1).mean(1).clamp_min(1e-10)
        return (10.0 * torch.log10(1.0 / mse) / scale_db).float()

    return score


def ssim_reward() -> Scorer:
    """SSIM to HQ (Gaussian window 11, sigma 1.5), via the evaluation metric's implementation."""
    from prefrestore.metrics.pixel import ssim

    def score(images, hq, captions):
        _check(images, hq, "ssim", True)
        return ssim(images, hq).float().reshape(-1)

    return score


def neg_mse_reward() -> Scorer:
    """``-MSE(images, hq)`` on [0, 1] pixels."""

    def score(images, hq, captions):
        _check(images, hq, "neg_mse", True)
        return -(images.float() - hq.float()).pow(2).flatten(1).mean(1)

    return score


_LAPLACIAN = torch.tensor([[0.0, 1.0, 0.0], [1.0, -4.0, 1.0], [0.0, 1.0, 0.0]])


def laplacian_variance(images: torch.Tensor) -> torch.Tensor:
    """Per-image variance of the 3x3 Laplacian of the luma (BT.601) of ``[B, 3, H, W]`` images."""
    w = torch.tensor([0.299, 0.587, 0.114], dtype=images.dtype, device=images.device)
    grey = (images * w.reshape(1, 3, 1, 1)).sum(1, keepdim=True)
    k = _LAPLACIAN.to(images.device, images.dtype).reshape(1, 1, 3, 3)
    lap = F.conv2d(F.pad(grey, (1, 1, 1, 1), mode="replicate"), k)
    return lap.flatten(1).var(1, unbiased=False)


def sharpness_reward(ref: float) -> Scorer:
    """No-reference sharpness ``v / (v + ref)`` in [0, 1) with ``v`` the Laplacian variance."""

    def score(images, hq, captions):
        _check(images, None, "sharpness", False)
        v = laplacian_variance(images.float())
        return v / (v + ref)

    return score


# --------------------------------------------------------------------------------------------------
# CLIP-family preference scorers (PickScore, CLIP score, HPSv2.1)
# --------------------------------------------------------------------------------------------------

Tokenize = Callable[[Sequence[str]], dict[str, torch.Tensor]]


class HFClipScorer:
    """``logit_scale.exp() * cos(image, text) / divisor`` with a transformers ``CLIPModel``.

    PickScore (divisor 26) and the CLIP score (divisor 100) are this formula with different weights.
    """

    def __init__(self, model, tokenize: Tokenize, image_size: int, mean: Sequence[float],
                 std: Sequence[float], divisor: float, device: torch.device | str):
        self.model = model.eval().requires_grad_(False).to(device)
        self.tokenize, self.image_size, self.mean, self.std = tokenize, image_size, mean, std
        self.divisor, self.device = divisor, torch.device(device)

    @torch.no_grad()
    def __call__(self, images: torch.Tensor, hq: torch.Tensor | None, captions: Sequence[str]) -> torch.Tensor:
        _check(images, None, "clip-family", False)
        if len(captions) != images.shape[0]:
            raise ValueError(f"{len(captions)} captions for {images.shape[0]} images")
        pixels = clip_pixels(images.to(self.device), self.image_size, self.mean, self.std)
        text = {k: v.to(self.device) for k, v in self.tokenize(list(captions)).items()}
        img = self.model.get_image_features(pixel_values=pixels)
        txt = self.model.get_text_features(**text)
        img = getattr(img, "pooler_output", img)  # transformers 5 may wrap features in an output object
        txt = getattr(txt, "pooler_output", txt)
        img = img / img.norm(dim=-1, keepdim=True)
        txt = txt / txt.norm(dim=-1, keepdim=True)
        return (self.model.logit_scale.exp() * (img * txt).sum(-1) / self.divisor).float().cpu()


def _hf_snapshot(repo: str, used_by: str) -> WeightFile:
    folder = "models--" + repo.replace("/", "--")
    return WeightFile(f"hf/{repo}", "hf", f"hub/{folder}", None, used_by, f"hf:{repo}")


PICKSCORE_WEIGHTS = (
    _hf_snapshot("yuvalkirstain/PickScore_v1", "reward pickscore"),
    _hf_snapshot("laion/CLIP-ViT-H-14-laion2B-s32B-b79K", "reward pickscore (processor)"),
)
CLIP_WEIGHTS = (_hf_snapshot("openai/clip-vit-large-patch14", "reward clip"),)
HPS_WEIGHTS = (
    WeightFile("hpsv2/HPS_v2.1_compressed.pt", "store", "hpsv2/HPS_v2.1_compressed.pt", None,
               "reward hpsv21", "hf:xswu/HPSv2 (HPS_v2.1_compressed.pt)"),
)


def _hf_clip_scorer(model_repo: str, processor_repo: str, weights: tuple[WeightFile, ...],
                    divisor: float, device: torch.device | str) -> HFClipScorer:
    for w in weights:
        require(w)
    from transformers import AutoProcessor, CLIPModel

    processor = AutoProcessor.from_pretrained(processor_repo, local_files_only=True)
    model = CLIPModel.from_pretrained(model_repo, local_files_only=True)

    def tokenize(texts: Sequence[str]) -> dict[str, torch.Tensor]:
        return dict(processor.tokenizer(list(texts), padding=True, truncation=True, max_length=77,
                                        return_tensors="pt"))

    ip = processor.image_processor
    size = ip.crop_size["height"] if isinstance(ip.crop_size, Mapping) else int(ip.crop_size)
    return HFClipScorer(model, tokenize, size, ip.image_mean, ip.image_std, divisor, device)


def pickscore_reward(cfg: RewardsConfig, device: torch.device | str) -> Scorer:
    """PickScore_v1 (Kirstain et al. 2023): ``logit / pickscore_divisor`` (released: /26)."""
    return _hf_clip_scorer("yuvalkirstain/PickScore_v1", "laion/CLIP-ViT-H-14-laion2B-s32B-b79K",
                           PICKSCORE_WEIGHTS, cfg.pickscore_divisor, device)


def clip_reward(cfg: RewardsConfig, device: torch.device | str) -> Scorer:
    """CLIP score with OpenAI ViT-L/14: ``logit / clip_divisor`` (released: /100)."""
    return _hf_clip_scorer("openai/clip-vit-large-patch14", "openai/clip-vit-large-patch14",
                           CLIP_WEIGHTS, cfg.clip_divisor, device)


OPENAI_MEAN, OPENAI_STD = CLIP_MEAN, CLIP_STD


class OpenClipCosineScorer:
    """HPSv2-style score: cosine of the normalised open_clip image and text features."""

    def __init__(self, model, tokenizer: Callable[[list[str]], torch.Tensor], image_size: int,
                 device: torch.device | str):
        self.model = model.eval().requires_grad_(False).to(device)
        self.tokenizer, self.image_size, self.device = tokenizer, image_size, torch.device(device)

    @torch.no_grad()
    def __call__(self, images: torch.Tensor, hq: torch.Tensor | None, captions: Sequence[str]) -> torch.Tensor:
        _check(images, None, "hpsv21", False)
        if len(captions) != images.shape[0]:
            raise ValueError(f"{len(captions)} captions for {images.shape[0]} images")
        pixels = clip_pixels(images.to(self.device), self.image_size, OPENAI_MEAN, OPENAI_STD)
        img = self.model.encode_image(pixels, normalize=True)
        txt = self.model.encode_text(self.tokenizer(list(captions)).to(self.device), normalize=True)
        return (img * txt).sum(-1).float().cpu()


def hpsv21_reward(cfg: RewardsConfig, device: torch.device | str) -> Scorer:
    """HPSv2.1 (Wu et al. 2023): open_clip ViT-H-14 architecture with the HPS v2.1 state dict."""
    path = require(HPS_WEIGHTS[0])
    import open_clip

    model = open_clip.create_model("ViT-H-14", pretrained=None)
    state = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(state, dict) or "state_dict" not in state:
        raise MissingWeights(f"{path}: not an HPS v2.1 checkpoint (no 'state_dict' entry)")
    model.load_state_dict(state["state_dict"])  # strict: every ViT-H-14 tensor must be there
    return OpenClipCosineScorer(model, open_clip.get_tokenizer("ViT-H-14"), 224, device)


# --------------------------------------------------------------------------------------------------
# GT-aware scorers (LPIPS, LMD, ArcFace)
# --------------------------------------------------------------------------------------------------


def lpips_reward(cfg: RewardsConfig, device: torch.device | str) -> Scorer:
    """``-LPIPS(images, hq)`` (pyiqa ``lpips``, AlexNet); lower LPIPS is better, so it is negated."""
    from prefrestore.metrics.base import no_downloads
    from prefrestore.metrics.iqa import assert_tensor_only, check_pyiqa_cache

    for w in LPIPS_W:
        require(w)
    check_pyiqa_cache()
    assert_tensor_only(LPIPS_W)
    import pyiqa

    with no_downloads():
        metric = pyiqa.create_metric("lpips", device=torch.device(device), as_loss=False)

    @torch.no_grad()
    def score(images, hq, captions):
        _check(images, hq, "lpips", True)
        return -metric(images.to(device), hq.to(device)).reshape(-1).float().cpu()

    return score


LMD_WEIGHTS = (
    WeightFile("facexlib/alignment_WFLW_4HG.pth", "torch", "hub/facexlib/alignment_WFLW_4HG.pth", None,
               "reward lmd (AWing FAN)",
               "https://github.com/xinntao/facexlib/releases/download/v0.1.0/alignment_WFLW_4HG.pth"),
)
ARCFACE_WEIGHTS = (
    WeightFile("vqfr/resnet18_110.pth", "store", "vqfr/metric_weights/resnet18_110.pth", None,
               "reward arcface (resnet18 ArcFace, VQFR metric_paper)",
               "VQFR release: experiments/pretrained_models/metric_weights/resnet18_110.pth"),
)


def _face_metric(fn_name: str):
    """The face-metric function ``fn_name`` from ``prefrestore.metrics.face`` (another module's API)."""
    try:
        from prefrestore.metrics import face
    except ImportError as exc:
        raise NotImplementedError(
            f"reward needs prefrestore.metrics.face.{fn_name}, which is not available: {exc}") from exc
    if not hasattr(face, fn_name):
        raise NotImplementedError(f"prefrestore.metrics.face has no '{fn_name}' for the reward to call")
    return getattr(face, fn_name)


def lmd_reward(cfg: RewardsConfig, device: torch.device | str) -> Scorer:
    """``1 / (1 + LMD / lmd_scale_px)`` in (0, 1] (released lmd_scorer); LMD from the face metrics."""
    for w in LMD_WEIGHTS:
        require(w)
    distance = _face_metric("landmark_distance")  # (restored, hq, device) -> Tensor[B] pixels

    def score(images, hq, captions):
        _check(images, hq, "lmd", True)
        d = distance(images, hq, device).reshape(-1).float().cpu()
        return 1.0 / (1.0 + d / cfg.lmd_scale_px)

    return score


def arcface_reward(cfg: RewardsConfig, device: torch.device | str) -> Scorer:
    """ArcFace cosine similarity of restored and HQ identity features (higher: same identity)."""
    for w in ARCFACE_WEIGHTS:
        require(w)
    cosine = _face_metric("arcface_cosine")  # (restored, hq, device) -> Tensor[B] in [-1, 1]

    def score(images, hq, captions):
        _check(images, hq, "arcface", True)
        return cosine(images, hq, device).reshape(-1).float().cpu()

    return score


# --------------------------------------------------------------------------------------------------
# The mapping and the combined reward
# --------------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class RewardSpec:
    needs_hq: bool  # compares with the HQ image
    needs_text: bool  # reads the caption
    weights: tuple[WeightFile, ...]  # files it loads (staged offline)
    build: Callable[[RewardsConfig, torch.device | str], Scorer]


SPECS: dict[str, RewardSpec] = {
    "pickscore": RewardSpec(False, True, PICKSCORE_WEIGHTS, pickscore_reward),
    "hpsv21": RewardSpec(False, True, HPS_WEIGHTS, hpsv21_reward),
    "clip": RewardSpec(False, True, CLIP_WEIGHTS, clip_reward),
    "lpips": RewardSpec(True, False, LPIPS_W, lpips_reward),  # the evaluation metric's own files
    "lmd": RewardSpec(True, False, LMD_WEIGHTS, lmd_reward),
    "arcface": RewardSpec(True, False, ARCFACE_WEIGHTS, arcface_reward),
    "psnr": RewardSpec(True, False, (), lambda cfg, dev: psnr_reward(cfg.psnr_scale_db)),
    "ssim": RewardSpec(True, False, (), lambda cfg, dev: ssim_reward()),
    "neg_mse": RewardSpec(True, False, (), lambda cfg, dev: neg_mse_reward()),
    "sharpness": RewardSpec(False, False, (), lambda cfg, dev: sharpness_reward(cfg.sharpness_ref)),
}

# every file a reward loads (LPIPS_W is declared, and listed, by prefrestore.metrics.iqa)
WEIGHTS: tuple[WeightFile, ...] = (*PICKSCORE_WEIGHTS, *HPS_WEIGHTS, *CLIP_WEIGHTS, *LMD_WEIGHTS,
                                   *ARCFACE_WEIGHTS)


def build_scorers(cfg: RewardsConfig, device: torch.device | str = "cpu") -> dict[str, Scorer]:
    """Build every reward with a positive weight; a missing weight file raises :class:`MissingWeights`."""
    scorers = {}
    for name in cfg.active():
        try:
            scorers[name] = SPECS[name].build(cfg, device)
        except MissingWeights as exc:
            raise MissingWeights(f"reward '{name}' (weight {cfg.weights[name]}) cannot be built: {exc}") from exc
    return scorers


def needs_hq(cfg: RewardsConfig) -> bool:
    """Whether any active reward compares with the HQ image."""
    return any(SPECS[n].needs_hq for n in cfg.active())


def score_all(scorers: Mapping[str, Scorer], images: torch.Tensor, hq: torch.Tensor | None,
              captions: Sequence[str]) -> dict[str, torch.Tensor]:
    """Each scorer's ``[B]`` scores (float32, CPU); a wrong shape or a non-finite score is an error."""
    out = {}
    for name, scorer in scorers.items():
        s = torch.as_tensor(scorer(images, hq, captions)).detach().float().cpu().reshape(-1)
        if s.numel() != images.shape[0]:
            raise ValueError(f"reward '{name}' returned {s.numel()} scores for {images.shape[0]} images")
        if not torch.isfinite(s).all():
            raise ValueError(f"reward '{name}' returned a non-finite score: {s.tolist()}")
        out[name] = s
    return out


def total_reward(scores: Mapping[str, torch.Tensor], weights: Mapping[str, float]) -> torch.Tensor:
    """``R = sum_k w_k s_k`` over the rewards with a positive weight (every one must be scored)."""
    active = {k: float(w) for k, w in weights.items() if w > 0}
    missing = sorted(set(active) - set(scores))
    if missing:
        raise KeyError(f"no scores for weighted reward(s) {missing}")
    if not active:
        raise ValueError("no reward has a positive weight")
    return sum(w * scores[k].float() for k, w in sorted(active.items()))
