"""DSL-FIQA (Chen et al., CVPR 2024): face image quality, the last column of Tables II-VI.

Chen, Krishnan, Gao, Kuo, Ma, Wang, "DSL-FIQA: Assessing Facial Image Quality via Dual-Set
Degradation Learning and Landmark-Guided Transformer", CVPR 2024. The network is rebuilt in
:mod:`prefrestore.metrics.dsl_fiqa_arch` and loads the authors' released checkpoints strictly
(``IQA.pt`` and ``DE.pt`` of one training set, from the store; a checkpoint whose keys or shapes do
not match is :class:`MissingWeights`, never random weights). Higher is better (a predicted MOS).

Inference as the release's ``test_custom.py``: the RGB face in [0, 1] is normalised to
``(x - 0.5) / 0.5``; ``num_crops`` (20) random ``img_size`` (384) crops are scored, each with the
code of the landmarks inside it (:func:`landmark_code`); the face's score is the mean over crops.

Where this deviates from the release (on purpose, and the only places):

- **Landmarks**: the release detects 68 landmarks with FaceXFormer (not available here). We use
  facexlib's AWing FAN (98 WFLW points, the same network and weight file as LMD) and keep the 68
  that match the iBUG-300W layout (:data:`WFLW98_TO_IBUG68`), so the landmark indices in a crop's
  code mean what they mean in the release. The points themselves differ somewhat between detectors.
- **Crop positions**: the release draws them from the global NumPy RNG, seeded once (20) for a
  whole run, so a face's crops depend on the faces scored before it. Here each face has its own
  generator, seeded with :data:`CROP_SEED` and the SHA-256 of its 8-bit pixels (:func:`crop_rng`):
  the same face always gets the same crops, whatever the batch or order.
- **Small faces**: the release needs sides of at least ``img_size + 1``. A smaller face is first
  upscaled (bicubic, aspect kept) until its short side is ``img_size + 1`` (:func:`fit_for_crops`).
- **Landmark failures**: the release stops when FaceXFormer finds no face; the FAN always returns
  points (aligned faces are assumed, as for LMD).
- The checkpoints load strictly (the release uses ``strict=False``).

Checkpoint choice: the release has one ``IQA.pt``/``DE.pt`` pair per training set (GFIQA,
CGFIQA-40k) and the Pref-Restore paper does not say which its tables used. We use the GFIQA pair
(:data:`TRAINING_SET`); it is a module constant, not an ``evaluate`` param, because the files a
metric needs are declared statically for ``prefrestore weights plan``.

Cost: the released-size network has 252.7 M parameters, and one 384-px crop took 3.0 s on one CPU
thread here (random init, 2026-11-27). A face's 20 crops are about a minute on CPU, so run it on a
GPU.

Not yet checked against the released checkpoints' published scores: those files are not available
offline here. The tests check the state-dict layout at the released sizes and the whole path on a
tiny network saved in the release's layout.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from prefrestore.core.weights import MissingWeights, WeightFile, require
from prefrestore.metrics import face
from prefrestore.metrics.base import BuildContext, MeanScorer, MetricSpec
from prefrestore.metrics.dsl_fiqa_arch import DslFiqa, DslFiqaConfig

TRAINING_SET = "GFIQA"  # which released pair (GFIQA or CGFIQA); see the module docstring
CONFIG = DslFiqaConfig()  # the released config.conf
CROP_SEED = 20  # the release's setup_seed(20), here mixed with each face's content hash
_DRIVE = "https://drive.google.com/drive/folders/1SQ40NDDGQB4g-sk-uBcRcGnEKrUhQSDt"


def checkpoint_files(training_set: str) -> tuple[WeightFile, WeightFile]:
    """The released ``IQA.pt`` and ``DE.pt`` of one training set, as staged in the store."""
    return tuple(  # type: ignore[return-value]
        WeightFile(f"dsl_fiqa/{training_set}/{name}", "store", f"dsl_fiqa/{training_set}/{name}", None,
                   "evaluate (DSL-FIQA)",
                   f"{_DRIVE} (DSL-FIQA README, 'Checkpoints': {name} of the {training_set} pair)")
        for name in ("IQA.pt", "DE.pt"))


IQA_W, DE_W = checkpoint_files(TRAINING_SET)
WEIGHTS: tuple[WeightFile, ...] = (IQA_W, DE_W)  # the AWing FAN is face.AWING_W (declared there)


def _wflw_to_ibug68() -> tuple[int, ...]:
    """Index into the 98 WFLW points of each of the 68 iBUG-300W points, in 300W order.

    WFLW: 0-32 jaw (33 points, ear to ear), 33-37 / 42-46 upper edges of the two brows (38-41 /
    47-50 their lower edges), 51-54 nose bridge, 55-59 nostril line, 60-67 and 68-75 the eyes
    (8 each, clockwise from the outer / inner corner), 76-87 outer lips, 88-95 inner lips,
    96-97 pupils. 300W: 0-16 jaw (17), 17-21 / 22-26 brows (upper edge, 5 each), 27-30 bridge,
    31-35 nostrils, 36-41 / 42-47 eyes (6 each, no lid midpoints), 48-59 outer and 60-67 inner lips.
    """
    jaw = range(0, 33, 2)  # every other jaw point
    brows = [*range(33, 38), *range(42, 47)]
    nose = range(51, 60)
    eyes = [60, 61, 63, 64, 65, 67, 68, 69, 71, 72, 73, 75]  # corners and lid points, not the lid midpoints
    mouth = range(76, 96)
    return (*jaw, *brows, *nose, *eyes, *mouth)


WFLW98_TO_IBUG68: tuple[int, ...] = _wflw_to_ibug68()


# ---------------------------------------------------------------- checkpoints
def load_checkpoint(module: nn.Module, w: WeightFile) -> None:
    """Load ``w`` into ``module`` (which may be on the meta device) strictly, tensors only.

    A leading ``module.`` (DataParallel) is stripped. An unreadable file, or missing, unexpected or
    mis-shaped keys, are a :class:`MissingWeights` that says which (the first few keys of each kind).
    """
    path = require(w)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # corrupt, truncated, or holding more than tensors and plain data
        raise MissingWeights(f"{w.used_by}: {path} is not a plain tensor checkpoint: {exc}") from exc
    if not isinstance(state, dict):
        raise MissingWeights(f"{w.used_by}: {path} is not a state dict ({type(state).__name__})")
    state = {k.removeprefix("module."): v for k, v in state.items()}
    expected = module.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    shapes = [f"{k} {tuple(state[k].shape)} != {tuple(v.shape)}" for k, v in expected.items()
              if k in state and tuple(state[k].shape) != tuple(v.shape)]
    if missing or unexpected or shapes:
        parts = [f"{label} ({len(keys)}): {keys[:5]}" for label, keys in
                 (("missing keys", missing), ("unexpected keys", unexpected), ("wrong shapes", shapes)) if keys]
        raise MissingWeights(f"{w.used_by}: {path} does not match the DSL-FIQA {type(module).__name__} "
                             f"architecture; {'; '.join(parts)}")
    module.load_state_dict(state, strict=True, assign=True)


def load_dsl_fiqa(device: torch.device, cfg: DslFiqaConfig = CONFIG,
                  files: tuple[WeightFile, WeightFile] = (IQA_W, DE_W)) -> DslFiqa:
    """Both networks, built on the meta device and filled from the staged checkpoints (no random init)."""
    iqa_w, de_w = files
    for w in files:  # every missing file is named before anything is built
        require(w)
    with torch.device("meta"):
        model = DslFiqa(cfg)
    load_checkpoint(model.iqa, iqa_w)
    load_checkpoint(model.de, de_w)
    left = [n for n, t in [*model.named_parameters(), *model.named_buffers()] if t.is_meta]
    if left:
        raise MissingWeights(f"DSL-FIQA: tensors not filled by the checkpoints: {left[:5]}")
    return model.float().to(device).eval()


# ---------------------------------------------------------------- crops and landmark codes
def crop_rng(image_u8: np.ndarray, seed: int = CROP_SEED) -> np.random.Generator:
    """The crop generator of one face: ``seed`` and the SHA-256 of its shape and 8-bit pixels."""
    digest = hashlib.sha256(repr(image_u8.shape).encode() + np.ascontiguousarray(image_u8).tobytes()).digest()
    return np.random.default_rng([seed, *np.frombuffer(digest, dtype=np.uint32).tolist()])


def landmark_code(points: np.ndarray, top: int, left: int, size: int, num_landmark: int,
                  rng: np.random.Generator) -> np.ndarray:
    """The release's landmark code of one crop, ``float32 [num_landmark]`` in [-1, 1].

    The indices of the points inside the crop (edges included) are padded to ``num_landmark`` with
    ``len(points) + 1`` (or, if there are at least ``num_landmark``, that many drawn without
    replacement), then min-max scaled: ``(i - min) / (max - min + 1e-6) * 2 - 1``.
    """
    x, y = points[:, 0], points[:, 1]
    inside = np.flatnonzero((top <= y) & (y <= top + size) & (left <= x) & (x <= left + size))
    if len(inside) < num_landmark:
        idx = np.concatenate([inside, np.full(num_landmark - len(inside), len(points) + 1)]).astype(np.float64)
    else:
        idx = inside[rng.choice(len(inside), size=num_landmark, replace=False)].astype(np.float64)
    lo, hi = idx.min(), idx.max()
    return ((idx - lo) / (hi - lo + 1e-6) * 2 - 1).astype(np.float32)


def plan_crops(height: int, width: int, points: np.ndarray, cfg: DslFiqaConfig,
               rng: np.random.Generator) -> tuple[list[tuple[int, int]], np.ndarray]:
    """``num_crops`` (top, left) corners and their landmark codes ``[num_crops, num_landmark]``.

    Draws in the release's order: per crop the top, the left, then (rarely) the landmark subset;
    ``top`` is in ``[0, height - size)`` as ``np.random.randint``.
    """
    size = cfg.img_size
    if min(height, width) <= size:
        raise ValueError(f"a {height}x{width} face cannot give {size}-px crops; fit_for_crops first")
    corners, codes = [], []
    for _ in range(cfg.num_crops):
        top, left = int(rng.integers(0, height - size)), int(rng.integers(0, width - size))
        corners.append((top, left))
        codes.append(landmark_code(points, top, left, size, cfg.num_landmark, rng))
    return corners, np.stack(codes)


def fit_for_crops(image: torch.Tensor, size: int) -> tuple[torch.Tensor, float, float]:
    """``[3, H, W]`` -> (image, y scale, x scale): unchanged if both sides exceed ``size``, else
    upscaled (bicubic, aspect kept, clamped to [0, 1]) so that the short side is ``size + 1``."""
    h, w = image.shape[-2:]
    if min(h, w) > size:
        return image, 1.0, 1.0
    s = (size + 1) / min(h, w)
    nh, nw = max(size + 1, round(h * s)), max(size + 1, round(w * s))
    big = F.interpolate(image[None], size=(nh, nw), mode="bicubic", align_corners=False)[0].clamp(0, 1)
    return big, nh / h, nw / w


def landmarks_68(fan: nn.Module, images_u8: np.ndarray, device: torch.device) -> np.ndarray:
    """iBUG-68 points ``[B, 68, 2]`` (x, y) in pixels of each image, from the AWing FAN at 256 px."""
    h, w = images_u8.shape[1:3]
    pts = face.landmarks_98(fan, images_u8, 256, device)[:, list(WFLW98_TO_IBUG68)]
    return pts * np.array([w / 256.0, h / 256.0])


def face_crops(image: torch.Tensor, points: np.ndarray, cfg: DslFiqaConfig, rng: np.random.Generator
               ) -> tuple[torch.Tensor, torch.Tensor]:
    """One face ``[3, H, W]`` in [0, 1] and its 68 points -> normalised crops ``[n, 3, S, S]`` and codes."""
    big, sy, sx = fit_for_crops(image.float().clamp(0, 1), cfg.img_size)
    corners, codes = plan_crops(big.shape[1], big.shape[2], points * np.array([sx, sy]), cfg, rng)
    s = cfg.img_size
    crops = torch.stack([big[:, t : t + s, lf : lf + s] for t, lf in corners])
    return (crops - 0.5) / 0.5, torch.from_numpy(codes)


def score_faces(model: DslFiqa, fan: nn.Module, images: torch.Tensor, device: torch.device) -> torch.Tensor:
    """DSL-FIQA of each face of ``[B, 3, H, W]`` in [0, 1]: the mean of its crops' scores, ``[B]``."""
    u8 = face.to_uint8(images)
    points = landmarks_68(fan, u8, device)
    out = []
    for i in range(images.shape[0]):
        crops, codes = face_crops(images[i].detach().cpu(), points[i], model.cfg, crop_rng(u8[i]))
        with torch.no_grad():
            out.append(model(crops.to(device), codes.to(device)).float().mean().cpu())
    return torch.stack(out)


def dsl_fiqa_scorer(model: DslFiqa, fan: nn.Module, device: torch.device) -> MeanScorer:
    def score(restored: torch.Tensor, hq: torch.Tensor | None, captions: Sequence[str] | None) -> torch.Tensor:
        return score_faces(model, fan, restored, device)

    return MeanScorer(score)


def _build(ctx: BuildContext) -> MeanScorer:
    return dsl_fiqa_scorer(load_dsl_fiqa(ctx.device, CONFIG), face.load_awing_fan(ctx.device), ctx.device)


SPECS: tuple[MetricSpec, ...] = (
    MetricSpec("dsl_fiqa", "DSL-FIQA", False, False, False, (face.AWING_W, IQA_W, DE_W), _build,
               ("facexlib", "timm")),
)
