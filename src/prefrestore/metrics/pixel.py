"""Weight-free full-reference metrics, batched in torch: PSNR, SSIM, MS-SSIM.

All take ``[B, 3, H, W]`` in [0, 1] and return one value per image, computed on the RGB channels
(data range 1). The paper leaves these out of its tables (footnote 1 of Sec. IV-B) but they need
no weights, so they always run on paired benchmarks as a sanity check.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from prefrestore.metrics.base import MeanScorer, MetricSpec

_C1 = 0.01**2
_C2 = 0.03**2
MS_SSIM_WEIGHTS = (0.0448, 0.2856, 0.3001, 0.2363, 0.1333)  # Wang et al. 2003, five scales


def psnr(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """10 log10(1 / MSE) per image; identical images give +inf."""
    mse = (x.double() - y.double()).pow(2).flatten(1).mean(1)
    return 10.0 * torch.log10(1.0 / mse)


def _gaussian_window(size: int, sigma: float, channels: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The normalised 2-D Gaussian as two separable depthwise kernels (rows, columns), float32.

    float32 depthwise convolution is several times faster on CPU than float64 (no fast path);
    SSIM stays within 1e-5 of a float64 reference.
    """
    r = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
    g = torch.exp(-(r**2) / (2 * sigma**2))
    g = (g / g.sum()).float()
    return (g.view(1, 1, size, 1).repeat(channels, 1, 1, 1).contiguous(),
            g.view(1, 1, 1, size).repeat(channels, 1, 1, 1).contiguous())


def _filter(x: torch.Tensor, win: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
    """'Valid' separable Gaussian filtering."""
    c = x.shape[1]
    return F.conv2d(F.conv2d(x, win[0], groups=c), win[1], groups=c)


def _ssim_maps(x: torch.Tensor, y: torch.Tensor, win) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-image mean SSIM and mean contrast-structure term, 'valid' Gaussian filtering."""
    mu_x, mu_y = _filter(x, win), _filter(y, win)
    sxx = _filter(x * x, win) - mu_x**2
    syy = _filter(y * y, win) - mu_y**2
    sxy = _filter(x * y, win) - mu_x * mu_y
    cs = (2 * sxy + _C2) / (sxx + syy + _C2)
    ssim = (2 * mu_x * mu_y + _C1) / (mu_x**2 + mu_y**2 + _C1) * cs
    return ssim.flatten(1).mean(1), cs.flatten(1).mean(1)


def ssim(x: torch.Tensor, y: torch.Tensor, win_size: int = 11, sigma: float = 1.5) -> torch.Tensor:
    """Gaussian-window SSIM (Wang et al. 2004), averaged over RGB and the valid area."""
    if min(x.shape[-2:]) < win_size:
        raise ValueError(f"SSIM needs images of at least {win_size} px, got {tuple(x.shape[-2:])}")
    win = _gaussian_window(win_size, sigma, x.shape[1])
    return _ssim_maps(x.float(), y.float(), win)[0].double()


def ms_ssim(x: torch.Tensor, y: torch.Tensor, win_size: int = 11, sigma: float = 1.5) -> torch.Tensor:
    """Multi-scale SSIM (Wang et al. 2003): prod_j cs_j^w_j * ssim_M^w_M.

    Five scales need a side of at least 161 px; smaller images use as many scales as fit
    (at least one) with the weights renormalised, so tiny test images still get a value.
    """
    side = min(x.shape[-2:])
    if side < win_size:
        raise ValueError(f"MS-SSIM needs images of at least {win_size} px, got {tuple(x.shape[-2:])}")
    scales = min(len(MS_SSIM_WEIGHTS), int(math.floor(math.log2(side / win_size))) + 1)
    w = torch.tensor(MS_SSIM_WEIGHTS[:scales], dtype=torch.float64)
    w = w / w.sum()
    win = _gaussian_window(win_size, sigma, x.shape[1])
    x, y = x.float(), y.float()
    terms = []
    for j in range(scales):
        s, cs = _ssim_maps(x, y, win)
        terms.append(cs.clamp_min(1e-12) if j < scales - 1 else s.clamp_min(1e-12))
        if j < scales - 1:
            x, y = F.avg_pool2d(x, 2), F.avg_pool2d(y, 2)
    return torch.prod(torch.stack(terms, 1).double() ** w, dim=1)


def _pair(fn):
    def score(restored, hq, captions):
        return fn(restored, hq)

    return lambda ctx: MeanScorer(score)


def _specs() -> tuple[MetricSpec, ...]:
    return (
        MetricSpec("psnr", "PSNR", True, False, False, (), _pair(psnr)),
        MetricSpec("ssim", "SSIM", True, False, False, (), _pair(ssim)),
        MetricSpec("ms_ssim", "MS-SSIM", True, False, False, (), _pair(ms_ssim)),
    )


SPECS: tuple[MetricSpec, ...] = _specs()
WEIGHTS = ()
