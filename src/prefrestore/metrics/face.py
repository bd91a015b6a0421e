"""Face fidelity metrics of Tables II and IX, as in VQFR's ``metric_paper`` scripts.

- **LMD**: mean L2 distance of the 98 WFLW landmarks (facexlib AWing FAN, ``awing_fan``)
  between restored and GT, both at ``lmd_resolution`` px (512 in the paper).
- **Deg**: identity angle ``arccos(cos(f_r, f_gt)) / pi * 180`` with the resnet18 ArcFace
  (``resnet_face18``, IR blocks, no SE) on 128x128 grey input scaled to [-1, 1].
  VQFR's script leaves "identical" pairs (< 1 degree) out of its mean; we keep every image, so
  that the per-image values and the mean agree.
"""

from __future__ import annotations

import math

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from prefrestore.core.weights import WeightFile, require
from prefrestore.metrics.base import BuildContext, MeanScorer, MetricSpec

AWING_W = WeightFile("facexlib/alignment_WFLW_4HG", "torch", "hub/facexlib/alignment_WFLW_4HG.pth", None, "lmd",
                     "https://github.com/xinntao/facexlib/releases/download/v0.1.0/alignment_WFLW_4HG.pth")
ARCFACE_W = WeightFile("vqfr/arcface_resnet18_110", "store", "vqfr/metric_weights/resnet18_110.pth", None, "deg",
                       "VQFR metric weights (experiments/pretrained_models/metric_weights/resnet18_110.pth), "
                       "https://github.com/TencentARC/VQFR#metrics")
WEIGHTS: tuple[WeightFile, ...] = (AWING_W, ARCFACE_W)


def to_uint8(x: torch.Tensor) -> np.ndarray:
    """``[B, 3, H, W]`` in [0, 1] -> ``uint8 [B, H, W, 3]`` RGB (exact for images decoded from 8 bit)."""
    return (x.detach().float().cpu().clamp(0, 1) * 255.0).round().byte().permute(0, 2, 3, 1).numpy()


# ---------------------------------------------------------------- LMD (AWing FAN, 98 landmarks)
def landmarks_98(fan: nn.Module, images: np.ndarray, resolution: int, device: torch.device) -> np.ndarray:
    """98 (x, y) landmarks per image, in the coordinates of the image resized to ``resolution``.

    As facexlib ``FAN.get_landmarks``: the image goes to 256x256 (cv2 bilinear), the last
    hourglass's heatmaps (minus the boundary channel) give points on a 64x64 grid, scaled back.
    """
    batch = []
    for img in images:
        img = cv2.resize(img, (resolution, resolution), interpolation=cv2.INTER_LINEAR)
        batch.append(cv2.resize(img, (256, 256)))
    inp = torch.from_numpy(np.stack(batch)).permute(0, 3, 1, 2).float().div(255.0).to(device)
    with torch.no_grad():
        outputs, _ = fan(inp)
    heat = outputs[-1][:, :-1].cpu().numpy()
    pts = np.stack([calculate_points(heat[i : i + 1])[0] for i in range(len(images))])
    return pts * (resolution / 64.0)


def calculate_points(heatmaps: np.ndarray) -> np.ndarray:
    """Heatmaps ``[B, N, H, W]`` -> points ``[B, N, 2]`` (x, y) on the heatmap grid.

    The same rule as facexlib ``awing_arch.calculate_points`` (argmax, a quarter-pixel step
    toward the larger neighbour, +0.5; its edge handling kept), which no longer runs on
    NumPy >= 1.24 (it uses the removed ``np.float``).
    """
    b, n, h, w = heatmaps.shape
    hw = h * w
    flat = heatmaps.reshape(b * n, hw)
    idx = np.argmax(flat, axis=1)
    preds = np.stack((idx % w, idx // w), axis=1).astype(np.float64)
    rows = np.arange(b * n)
    x_up = flat[rows, np.minimum(idx + 1, hw - 1)]
    x_down = flat[rows, idx - 1]
    y_up = flat[rows, hw - 1] if ((idx + w) >= hw).any() else flat[rows, idx + w]
    y_down = flat[rows, 0] if ((idx - w) <= 0).any() else flat[rows, idx - w]
    preds += 0.25 * np.sign(np.stack((x_up - x_down, y_up - y_down), axis=1))
    preds += 0.5
    return preds.reshape(b, n, 2)


def landmark_distance(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Mean over landmarks of the L2 distance, per image (VQFR ``get_landmark_distance``)."""
    return np.sqrt(((a - b) ** 2).sum(-1)).mean(-1)


def load_awing_fan(device: torch.device) -> nn.Module:
    from facexlib.alignment.awing_arch import FAN

    path = require(AWING_W)
    fan = FAN(num_modules=4, num_landmarks=98, device=str(device))
    fan.load_state_dict(torch.load(path, map_location="cpu", weights_only=True)["state_dict"], strict=True)
    return fan.to(device).eval()


def lmd_scorer(fan: nn.Module, resolution: int, device: torch.device) -> MeanScorer:
    def score(restored, hq, captions):
        lr = landmarks_98(fan, to_uint8(restored), resolution, device)
        lg = landmarks_98(fan, to_uint8(hq), resolution, device)
        return torch.from_numpy(landmark_distance(lr, lg))

    return MeanScorer(score)


# ---------------------------------------------------------------- Deg (ArcFace resnet_face18)
class IRBlock(nn.Module):
    """ArcFace improved residual block: BN-conv-BN-PReLU-conv-BN (+ downsample), PReLU after add."""

    def __init__(self, inplanes: int, planes: int, stride: int = 1, downsample: nn.Module | None = None):
        super().__init__()
        self.bn0 = nn.BatchNorm2d(inplanes)
        self.conv1 = nn.Conv2d(inplanes, inplanes, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(inplanes)
        self.prelu = nn.PReLU()
        self.conv2 = nn.Conv2d(inplanes, planes, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.bn2(self.conv2(self.prelu(self.bn1(self.conv1(self.bn0(x))))))
        residual = x if self.downsample is None else self.downsample(x)
        return self.prelu(out + residual)


class ResNetFace(nn.Module):
    """``resnet_face18`` of the arcface-pytorch code used by VQFR: 1-channel input, 512-d feature.

    ``width`` and ``input_size`` exist so tests can build a tiny one; the real one is 64 / 128.
    """

    def __init__(self, layers: tuple[int, ...] = (2, 2, 2, 2), width: int = 64, input_size: int = 128):
        super().__init__()
        self.conv1 = nn.Conv2d(1, width, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.prelu = nn.PReLU()
        self.maxpool = nn.MaxPool2d(2, 2)
        planes, inplanes, stages = width, width, []
        for i, n in enumerate(layers):
            stride = 1 if i == 0 else 2
            down = None
            if stride != 1 or inplanes != planes:
                down = nn.Sequential(nn.Conv2d(inplanes, planes, 1, stride, bias=False), nn.BatchNorm2d(planes))
            blocks = [IRBlock(inplanes, planes, stride, down)] + [IRBlock(planes, planes) for _ in range(n - 1)]
            stages.append(nn.Sequential(*blocks))
            inplanes, planes = planes, planes * 2
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.bn4 = nn.BatchNorm2d(inplanes)
        self.dropout = nn.Dropout()
        side = input_size // 2 // 2 ** (len(layers) - 1)
        self.fc5 = nn.Linear(inplanes * side * side, 512)
        self.bn5 = nn.BatchNorm1d(512)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.prelu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        x = self.dropout(self.bn4(x)).flatten(1)
        return self.bn5(self.fc5(x))


def arcface_input(images: np.ndarray, size: int) -> torch.Tensor:
    """VQFR ``load_image``: grey (cv2 BGR->GRAY formula), resize to ``size`` bilinear, (x-127.5)/127.5."""
    grey = [cv2.resize(cv2.cvtColor(img, cv2.COLOR_RGB2GRAY), (size, size), interpolation=cv2.INTER_LINEAR)
            for img in images]
    return (torch.from_numpy(np.stack(grey)).float()[:, None] - 127.5) / 127.5


def identity_angle(f1: torch.Tensor, f2: torch.Tensor) -> torch.Tensor:
    """Degrees between two feature vectors per row: ``arccos(cos) / pi * 180`` (Table II 'Deg')."""
    cos = F.cosine_similarity(f1.double(), f2.double(), dim=1).clamp(-1.0, 1.0)
    return torch.arccos(cos) / math.pi * 180.0


def load_arcface(device: torch.device) -> nn.Module:
    path = require(ARCFACE_W)
    state = torch.load(path, map_location="cpu", weights_only=True)
    state = {k.removeprefix("module."): v for k, v in state.items()}  # saved from DataParallel
    net = ResNetFace()
    net.load_state_dict(state, strict=True)
    return net.to(device).eval()


def deg_scorer(net: nn.Module, size: int, device: torch.device) -> MeanScorer:
    def score(restored, hq, captions):
        with torch.no_grad():
            fr = net(arcface_input(to_uint8(restored), size).to(device))
            fg = net(arcface_input(to_uint8(hq), size).to(device))
        return identity_angle(fr, fg)

    return MeanScorer(score)


def _build_lmd(ctx: BuildContext) -> MeanScorer:
    return lmd_scorer(load_awing_fan(ctx.device), ctx.lmd_resolution, ctx.device)


def _build_deg(ctx: BuildContext) -> MeanScorer:
    return deg_scorer(load_arcface(ctx.device), ctx.arcface_size, ctx.device)


SPECS: tuple[MetricSpec, ...] = (
    MetricSpec("lmd", "LMD", True, False, True, (AWING_W,), _build_lmd, ("facexlib",)),
    MetricSpec("deg", "Deg", True, False, True, (ARCFACE_W,), _build_deg),
)
