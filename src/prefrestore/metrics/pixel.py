"""Weight-free full-reference metrics, batched in torch: PSNR, SSIM, MS-SSIM.

All take ``[B, 3, H, W]`` in [0, 1] and return one value per image, computed on the RGB channels
(data range 1). The paper leaves these out of its tables (footnote 1 of Sec. IV-B) but they need
no weights, so they always run on paired benchmarks as a sanity check.

Speed (``benchmarks/bench_evaluate.py``, the one-pass harness of issue 8): SSIM's cost is the
Gaussian filtering of its local moments. Four planes per channel are filtered (not five, see
:func:`_ssim_terms`); on CPU in OpenCV's separable filter one plane at a time (about 3x faster than
torch's depthwise ``conv2d``), on other devices in ``conv2d``; both agree to float32 rounding.
Called on the same batch objects, SSIM and MS-SSIM share the first scale's terms.
"""

from __future__ import annotations

import math

import cv2
import numpy as np
import torch
import torch.nn.functional as F

from prefrestore.metrics.base import MeanScorer, MetricSpec

_C1 = 0.01**2  # (K1 L)^2 with K1 = 0.01 and data range L = 1 (Wang et al. 2004)
_C2 = 0.03**2  # (K2 L)^2 with K2 = 0.03
MS_SSIM_WEIGHTS = (0.0448, 0.2856, 0.3001, 0.2363, 0.1333)  # Wang et al. 2003, five scales


def psnr(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """10 log10(1 / MSE) per image; identical images give +inf.

    Squared differences in float32, summed in float64, one image at a time (stays in cache).
    """
    mse = torch.stack([(xi.float() - yi.float()).pow_(2).sum(dtype=torch.float64) / xi.numel()
                       for xi, yi in zip(x, y, strict=True)])
    return 10.0 * torch.log10(1.0 / mse)


def _gaussian_1d(size: int, sigma: float) -> torch.Tensor:
    """The normalised 1-D Gaussian (float64 maths, float32 taps); the 2-D window is its outer product."""
    r = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
    g = torch.exp(-(r**2) / (2 * sigma**2))
    return (g / g.sum()).float()


def blur_valid_conv(planes: torch.Tensor, win_size: int, sigma: float) -> torch.Tensor:
    """Gaussian filtering of each plane of ``[N, H, W]``, 'valid' area only: ``[N, H-w+1, W-w+1]``.

    Two depthwise ``conv2d`` passes (rows, then columns) without padding; any device.
    """
    g = _gaussian_1d(win_size, sigma).to(planes)
    n = planes.shape[0]
    rows, cols = g.view(1, 1, win_size, 1).repeat(n, 1, 1, 1), g.view(1, 1, 1, win_size).repeat(n, 1, 1, 1)
    return F.conv2d(F.conv2d(planes[None], rows, groups=n), cols, groups=n)[0]


def blur_valid_cv2(planes: torch.Tensor, win_size: int, sigma: float) -> torch.Tensor:
    """The same filtering on CPU with OpenCV's separable filter, one plane at a time.

    OpenCV pads a border and filters the whole plane; cutting ``win_size // 2`` pixels from each
    side leaves exactly the window positions inside the image, as :func:`blur_valid_conv`.
    """
    src = planes.detach().float().contiguous().numpy()
    full = np.empty_like(src)
    g = _gaussian_1d(win_size, sigma).numpy()
    for plane, out in zip(src, full, strict=True):
        cv2.sepFilter2D(plane, cv2.CV_32F, g, g, dst=out, borderType=cv2.BORDER_REFLECT)
    r, (h, w) = win_size // 2, src.shape[1:]
    return torch.from_numpy(full)[:, r : h - r, r : w - r]


def _blur_valid(planes: torch.Tensor, win_size: int, sigma: float) -> torch.Tensor:
    return (blur_valid_cv2 if planes.device.type == "cpu" else blur_valid_conv)(planes, win_size, sigma)


def _ssim_terms(x: torch.Tensor, y: torch.Tensor, win_size: int, sigma: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean SSIM and mean contrast-structure term cs of one pair ``[C, H, W]`` (Wang et al. 2004, Eq. 13).

    mu, sigma^2 and sigma_xy are Gaussian-weighted local moments. SSIM needs sigma_x^2 and
    sigma_y^2 only as their sum, so four planes per channel are filtered (x, y, x^2 + y^2, xy),
    not five: sigma_x^2 + sigma_y^2 = E[x^2 + y^2] - mu_x^2 - mu_y^2, sigma_xy = E[xy] - mu_x mu_y.
    """
    x, y = x.float(), y.float()
    c = x.shape[0]
    planes = torch.empty((4 * c, *x.shape[1:]), dtype=torch.float32, device=x.device)
    planes[:c].copy_(x)
    planes[c : 2 * c].copy_(y)
    torch.addcmul(x * x, y, y, out=planes[2 * c : 3 * c])
    torch.mul(x, y, out=planes[3 * c :])
    mu_x, mu_y, e_sq, e_xy = _blur_valid(planes, win_size, sigma).split(c)
    mu_xy = mu_x * mu_y
    mu_sq = torch.addcmul(mu_x * mu_x, mu_y, mu_y)
    # cs = (2 sigma_xy + C2) / (sigma_x^2 + sigma_y^2 + C2)
    cs = e_xy.sub_(mu_xy).mul_(2).add_(_C2).div_(e_sq.sub_(mu_sq).add_(_C2))
    # ssim = (2 mu_x mu_y + C1) / (mu_x^2 + mu_y^2 + C1) * cs
    ssim = mu_xy.mul_(2).add_(_C1).div_(mu_sq.add_(_C1)).mul_(cs)
    return ssim.mean(dtype=torch.float64), cs.mean(dtype=torch.float64)


class _LastBatch:
    """The first-scale SSIM terms of the last batch seen. The one-pass harness feeds every metric
    the same tensor objects, so ``ssim`` and ``ms_ssim`` of one batch compute them once; other
    tensors, or the same ones changed in place (their ``_version`` moved), are computed afresh."""

    key: tuple = ()
    x: torch.Tensor | None = None
    y: torch.Tensor | None = None
    terms: list[tuple[torch.Tensor, torch.Tensor]] = []


def _first_scale(x: torch.Tensor, y: torch.Tensor, win_size: int, sigma: float
                 ) -> list[tuple[torch.Tensor, torch.Tensor]]:
    # inference-mode tensors keep no version counter: never reuse terms for them
    key = () if x.is_inference() or y.is_inference() else (x._version, y._version, win_size, sigma)
    if not key or _LastBatch.x is not x or _LastBatch.y is not y or _LastBatch.key != key:
        # one image at a time: on CPU an image's planes stay in cache, a whole batch's do not
        _LastBatch.terms = [_ssim_terms(x[i], y[i], win_size, sigma) for i in range(x.shape[0])]
        _LastBatch.x, _LastBatch.y, _LastBatch.key = x, y, key
    return _LastBatch.terms


def _halve(x: torch.Tensor) -> torch.Tensor:
    """2x2 average pooling of ``[C, H, W]`` (an odd last row/column dropped, as ``avg_pool2d``).

    Rows, then columns, as strided adds: several times faster on CPU than ``avg_pool2d``.
    """
    h, w = x.shape[-2] // 2 * 2, x.shape[-1] // 2 * 2
    rows = x[:, 0:h:2, :w] + x[:, 1:h:2, :w]
    return (rows[..., 0::2] + rows[..., 1::2]).mul_(0.25)


def _check_window(name: str, x: torch.Tensor, win_size: int) -> None:
    if win_size % 2 == 0:
        raise ValueError(f"{name} needs an odd window size, got {win_size}")
    if min(x.shape[-2:]) < win_size:
        raise ValueError(f"{name} needs images of at least {win_size} px, got {tuple(x.shape[-2:])}")


def ssim(x: torch.Tensor, y: torch.Tensor, win_size: int = 11, sigma: float = 1.5) -> torch.Tensor:
    """Gaussian-window SSIM (Wang et al. 2004, Eq. 13; 11x11 window, sigma 1.5), averaged over RGB and
    the valid area. A metric, not a loss: on CPU no gradient flows (the filter runs in OpenCV)."""
    _check_window("SSIM", x, win_size)
    return torch.stack([s for s, _ in _first_scale(x, y, win_size, sigma)])


def ms_ssim(x: torch.Tensor, y: torch.Tensor, win_size: int = 11, sigma: float = 1.5) -> torch.Tensor:
    """Multi-scale SSIM (Wang et al. 2003, Eq. 7): prod_j cs_j^w_j * ssim_M^w_M.

    Five scales need a side of at least 161 px; smaller images use as many scales as fit
    (at least one) with the weights renormalised, so tiny test images still get a value.
    """
    _check_window("MS-SSIM", x, win_size)
    scales = min(len(MS_SSIM_WEIGHTS), int(math.floor(math.log2(min(x.shape[-2:]) / win_size))) + 1)
    w = torch.tensor(MS_SSIM_WEIGHTS[:scales], dtype=torch.float64)
    w = w / w.sum()
    first = _first_scale(x, y, win_size, sigma)
    out = []
    for i in range(x.shape[0]):
        xi, yi = x[i].float(), y[i].float()
        terms = []
        for j in range(scales):
            s, cs = first[i] if j == 0 else _ssim_terms(xi, yi, win_size, sigma)
            terms.append(cs.clamp_min(1e-12) if j < scales - 1 else s.clamp_min(1e-12))
            if j < scales - 1:  # 2x2 average, then the next scale
                xi, yi = _halve(xi), _halve(yi)
        out.append(torch.prod(torch.stack(terms) ** w))
    return torch.stack(out)


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
