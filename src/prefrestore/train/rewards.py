"""Stage-2 rewards: a plain mapping name -> scorer factory, weighted by ``params.yaml`` (SPEC §3 "Rewards").

Every scorer has one signature::

    scorer(images [B, 3, H, W] in [0, 1], hq [B, 3, H, W] | None, captions: list[str]) -> Tensor[B]

higher is better. The summed reward ``R = sum_k w_k s_k`` (:func:`total_reward`) is what the
advantages of paper Eq. 12 centre per group; its per-image spread over seeds is Fig. 8's "Sum Score".

- Preference rewards (the paper's default, weight 1 each, text = the sample's caption):
  PickScore (CLIP ViT-H/14 + PickScore_v1, ``logit / 26``), HPSv2.1 (open_clip ViT-H-14 + the
  HPS v2.1 checkpoint, image-text cosine), CLIP score (ViT-L/14, ``logit / 100``). These are the
  Table VIII scorers of :mod:`prefrestore.metrics.preference`, divided as the released rewards are.
- GT-aware rewards (released variant, 0.5 each): ``-LPIPS`` (pyiqa), LMD as ``1 / (1 + d / 20)``,
  ArcFace cosine. LMD and ArcFace use the networks and functions of the evaluation's LMD and Deg
  (:mod:`prefrestore.metrics.face`).
- Offline rewards that need no weights (tiny profile): PSNR / scale, SSIM, ``-MSE`` to HQ and a
  no-reference sharpness ``v / (v + ref)`` of the Laplacian variance ``v``.

Real scorers load only from local files (``local_files_only=True``, ``weights_only=True``) and raise
:class:`prefrestore.core.weights.MissingWeights` naming the file when it is absent; none ever returns a
placeholder number.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence

import torch
import torch.nn.functional as F

from prefrestore.core.config import check_range
from prefrestore.core.weights import MissingWeights, WeightFile, require
from prefrestore.metrics import face, preference
from prefrestore.metrics.iqa import LPIPS_W
from prefrestore.metrics.preference import ClipPairScorer

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
# Preference scorers (PickScore, CLIP score, HPSv2.1): the evaluation's own (Table VIII)
# --------------------------------------------------------------------------------------------------


def _for_reward(name: str, *files: WeightFile) -> tuple[WeightFile, ...]:
    """The evaluation metrics' weight files, declared again as this reward's (same place, ``used_by`` says who)."""
    return tuple(dataclasses.replace(w, used_by=f"reward {name}") for w in files)


PICKSCORE_WEIGHTS = _for_reward("pickscore", preference.PICKSCORE_W, preference.PICKSCORE_TOKENIZER_W)
CLIP_WEIGHTS = _for_reward("clip", preference.CLIP_L14_W)
HPS_WEIGHTS = _for_reward("hpsv21", preference.HPSV21_W)


def text_reward(scorer: ClipPairScorer, divisor: float) -> Scorer:
    """A :class:`~prefrestore.metrics.preference.ClipPairScorer` as a reward: ``score(images, captions) / divisor``."""

    def score(images, hq, captions):
        _check(images, None, "clip-family", False)
        return (scorer(images, captions) / divisor).float().cpu()

    return score


def pickscore_reward(cfg: RewardsConfig, device: torch.device | str) -> Scorer:
    """PickScore_v1 (Kirstain et al. 2023): ``logit_scale cos / pickscore_divisor`` (released: /26)."""
    return text_reward(preference.pickscore(device), cfg.pickscore_divisor)


def clip_reward(cfg: RewardsConfig, device: torch.device | str) -> Scorer:
    """CLIP score with OpenAI ViT-L/14: ``logit_scale cos / clip_divisor`` (released: /100)."""
    return text_reward(preference.clip_score(device), cfg.clip_divisor)


def hpsv21_reward(cfg: RewardsConfig, device: torch.device | str) -> Scorer:
    """HPSv2.1 (Wu et al. 2023): the cosine of open_clip ViT-H-14 features with the HPS v2.1 weights."""
    return text_reward(preference.hpsv21(device), 1.0)


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


LMD_WEIGHTS = _for_reward("lmd", face.AWING_W)
ARCFACE_WEIGHTS = _for_reward("arcface", face.ARCFACE_W)
LMD_RESOLUTION = 512  # side at which landmarks are compared: lmd_scale_px is "px at 512" (params.yaml, SPEC §4)
ARCFACE_SIZE = 128  # the resnet18 ArcFace's grey input side (its fc layer is sized for it)


def lmd_reward(cfg: RewardsConfig, device: torch.device | str) -> Scorer:
    """``1 / (1 + LMD / lmd_scale_px)`` in (0, 1] (released lmd_scorer), with the evaluation's LMD.

    LMD (:mod:`prefrestore.metrics.face`): the mean L2 distance of the 98 AWing landmarks of the
    restored and the HQ face, both at ``LMD_RESOLUTION`` px.
    """
    require(face.AWING_W)  # before importing facexlib: a clear MissingWeights
    dev = torch.device(device)
    fan = face.load_awing_fan(dev)

    def score(images, hq, captions):
        _check(images, hq, "lmd", True)
        restored = face.landmarks_98(fan, face.to_uint8(images), LMD_RESOLUTION, dev)
        target = face.landmarks_98(fan, face.to_uint8(hq), LMD_RESOLUTION, dev)
        d = torch.from_numpy(face.landmark_distance(restored, target)).float()
        return 1.0 / (1.0 + d / cfg.lmd_scale_px)

    return score


def arcface_reward(cfg: RewardsConfig, device: torch.device | str) -> Scorer:
    """ArcFace cosine of restored and HQ identity features (higher: same identity).

    The network and input of the evaluation's Deg (:mod:`prefrestore.metrics.face`: resnet18
    ArcFace, grey ``ARCFACE_SIZE`` px); Deg is this cosine's angle in degrees.
    """
    dev = torch.device(device)
    net = face.load_arcface(dev)  # MissingWeights first when resnet18_110.pth is not staged

    @torch.no_grad()
    def score(images, hq, captions):
        _check(images, hq, "arcface", True)
        f_restored = net(face.arcface_input(face.to_uint8(images), ARCFACE_SIZE).to(dev))
        f_hq = net(face.arcface_input(face.to_uint8(hq), ARCFACE_SIZE).to(dev))
        return F.cosine_similarity(f_restored.double(), f_hq.double(), dim=1).float().cpu()

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
