"""Eq. 16 on batches of torch tensors (CPU or CUDA), and the datasets training stages read.

* :func:`degrade_batch` applies a list of :class:`~prefrestore.data.degrade.direct.DegradeParams` to a batch:
  blur + downsample as padded batched matrix products (the operators of
  :mod:`prefrestore.data.degrade.fast`), the same noise as the numpy path (drawn from ``noise_seed``),
  JPEG through ``torchvision.io.encode_jpeg``/``decode_jpeg`` (batched lists; on the CPU by default,
  with nvJPEG on CUDA tensors when ``gpu_jpeg=True``), and the upsampling as matrix products with OpenCV's weights. Before
  JPEG it matches :func:`prefrestore.data.degrade.direct.pre_jpeg` to float rounding; after JPEG the encoders
  differ (libjpeg/nvJPEG vs OpenCV's), so the outputs agree statistically, not bit for bit.
* :class:`OnTheFlyPairs` degrades faces as they are read, with fresh parameters every epoch
  (``epoch`` is part of each sample's seed); :class:`OfflinePairs` reads the pairs the ``degrade``
  step wrote. Both yield ``{id, hq, lq, params, self_rec}`` with ``hq``/``lq`` float ``[3, H, W]`` in
  [0, 1] and ``params`` the drawn :class:`DegradeParams` as a dict.
"""

from __future__ import annotations

import contextlib
from collections import defaultdict
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
import torchvision.io

from prefrestore.core import images
from prefrestore.data.degrade import fast as degrade_fast
from prefrestore.data.degrade.direct import (
    DegradeConfig,
    DegradeParams,
    degrade,
    kernel_factors,
    lq_size,
    noise_field,
    params_for,
)


@contextlib.contextmanager
def _full_fp32() -> Iterator[None]:
    """Plain fp32 matrix products on CUDA (no TF32), restored afterwards: the operators must be exact."""
    saved = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32 = saved


def _as_float_batch(hq: torch.Tensor) -> torch.Tensor:
    """uint8 ``[B, H, W, 3]`` or float ``[B, 3, H, W]`` in [0, 1] -> float32 ``[B, 3, H, W]``."""
    if hq.dtype == torch.uint8:
        if hq.ndim != 4 or hq.shape[-1] != 3:
            raise ValueError(f"uint8 input must be [B, H, W, 3], got {tuple(hq.shape)}")
        return hq.permute(0, 3, 1, 2).float().div(255.0)
    if hq.ndim != 4 or hq.shape[1] != 3 or not hq.is_floating_point():
        raise ValueError(f"float input must be [B, 3, H, W] in [0, 1], got {hq.dtype} {tuple(hq.shape)}")
    return hq.float()


def pre_jpeg_batch(hq: torch.Tensor, params: Sequence[DegradeParams], cfg: DegradeConfig) -> list[torch.Tensor]:
    """Blur, downsample, add noise and clip (Eq. 16 up to JPEG): one float ``[3, h_i, w_i]`` per sample.

    Self-reconstruction samples are returned unchanged (full size).
    """
    x = _as_float_batch(hq)
    batch, _, height, width = x.shape
    if len(params) != batch:
        raise ValueError(f"{len(params)} params for a batch of {batch}")
    sizes = [lq_size(height, width, p, cfg) for p in params]
    factors = [kernel_factors(p, cfg) for p in params]
    todo = [i for i, p in enumerate(params) if not p.self_rec]
    out: list[torch.Tensor] = [x[i] for i in range(batch)]
    if not todo:
        return out
    rank = max(len(factors[i][0]) for i in todo)
    h_max = max(sizes[i][0] for i in todo)
    w_max = max(sizes[i][1] for i in todo)
    # Zero-padded operators: rank terms and sizes beyond a sample's own contribute nothing.
    ops_v = np.zeros((len(todo), rank, h_max, height), dtype=np.float32)
    ops_h = np.zeros((len(todo), rank, w_max, width), dtype=np.float32)
    for k, i in enumerate(todo):
        (h, w), (v_k, h_k) = sizes[i], factors[i]
        for s in range(len(v_k)):
            ops_v[k, s, :h] = degrade_fast.blur_resize_operator(v_k[s], height, h, cfg.down_interp)
            ops_h[k, s, :w] = degrade_fast.blur_resize_operator(h_k[s], width, w, cfg.down_interp)
    a = torch.from_numpy(ops_v).to(x.device)[:, None]  # [K, 1, R, h, H]
    b = torch.from_numpy(ops_h).to(x.device)[:, None]  # [K, 1, R, w, W]
    xs = x[todo][:, :, None]  # [K, 3, 1, H, W]
    with _full_fp32():
        small = (a @ xs @ b.transpose(-1, -2)).sum(dim=2)  # [K, 3, h, w]
    for k, i in enumerate(todo):
        h, w = sizes[i]
        noise = torch.from_numpy(noise_field((h, w, 3), params[i], cfg)).permute(2, 0, 1).to(x.device)
        out[i] = (small[k, :, :h, :w] + noise).clamp_(0.0, 1.0)
    return out


def jpeg_batch(smalls: Sequence[torch.Tensor], qualities: Sequence[int]) -> list[torch.Tensor]:
    """JPEG round trip of float ``[3, h, w]`` images in [0, 1] -> uint8 ``[3, h, w]``, batched per quality.

    Uses torchvision's encoder/decoder; CUDA tensors are encoded and decoded on the GPU.
    """
    out: list[torch.Tensor | None] = [None] * len(smalls)
    by_q: dict[int, list[int]] = defaultdict(list)
    for i, q in enumerate(qualities):
        by_q[int(q)].append(i)
    for q, idx in by_q.items():
        u8 = [smalls[i].mul(255.0).round_().to(torch.uint8).contiguous() for i in idx]
        encoded = torchvision.io.encode_jpeg(u8, quality=q)
        device = smalls[idx[0]].device
        decoded = torchvision.io.decode_jpeg(
            [e.cpu() for e in encoded], mode=torchvision.io.ImageReadMode.RGB, device=device
        )
        for i, d in zip(idx, decoded, strict=True):
            out[i] = d
    return out  # type: ignore[return-value]


def upsample_batch(lqs: Sequence[torch.Tensor], height: int, width: int, cfg: DegradeConfig) -> torch.Tensor:
    """``upsample_r`` of uint8 ``[3, h_i, w_i]`` images to float ``[B, 3, H, W]`` with OpenCV's weights."""
    h_max = max(t.shape[1] for t in lqs)
    w_max = max(t.shape[2] for t in lqs)
    device = lqs[0].device
    pad = torch.zeros((len(lqs), 3, h_max, w_max), dtype=torch.float32, device=device)
    up_v = np.zeros((len(lqs), height, h_max), dtype=np.float32)
    up_h = np.zeros((len(lqs), width, w_max), dtype=np.float32)
    for k, t in enumerate(lqs):
        h, w = t.shape[1:]
        pad[k, :, :h, :w] = t.float()
        up_v[k, :, :h] = degrade_fast.resize_matrix(h, height, cfg.up_interp)
        up_h[k, :, :w] = degrade_fast.resize_matrix(w, width, cfg.up_interp)
    a = torch.from_numpy(up_v).to(device)[:, None]
    b = torch.from_numpy(up_h).to(device)[:, None]
    with _full_fp32():
        up = (a @ pad @ b.transpose(-1, -2)).clamp_(0.0, 255.0)
    return (up.round_() if cfg.quantize == "round" else up.floor_()).div_(255.0)


def degrade_batch(
    hq: torch.Tensor, params: Sequence[DegradeParams], cfg: DegradeConfig, gpu_jpeg: bool = False
) -> torch.Tensor:
    """Eq. 16 for a batch: HQ uint8 ``[B, H, W, 3]`` or float ``[B, 3, H, W]`` -> LQ float ``[B, 3, H, W]``.

    Runs on ``hq.device``. Self-reconstruction samples are passed through unchanged. JPEG runs on the
    CPU (libjpeg, like OpenCV) unless ``gpu_jpeg``: nvJPEG on an H200 degraded the small LQ images
    visibly less (mean error to HQ 17.8 vs 25.9 grey levels on q ~ 30-80), a different distribution.
    """
    x = _as_float_batch(hq)
    smalls = pre_jpeg_batch(x, params, cfg)
    todo = [i for i, p in enumerate(params) if not p.self_rec]
    out = x.clone()
    if todo:
        jpeg_in = [smalls[i] if gpu_jpeg else smalls[i].cpu() for i in todo]
        lqs = [t.to(x.device) for t in jpeg_batch(jpeg_in, [params[i].q for i in todo])]
        out[todo] = upsample_batch(lqs, x.shape[2], x.shape[3], cfg)
    return out


# --------------------------------------------------------------------------- datasets


def _chw(img: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.array(img, dtype=np.uint8, copy=True)).permute(2, 0, 1).float().div_(255.0)


class OnTheFlyPairs(torch.utils.data.Dataset):
    """Faces of one ``split`` of an ingested folder, degraded on read with per-epoch parameters.

    Sample ``id`` in epoch ``e`` gets ``params_for(id, seed, cfg, e)``: fresh every epoch, identical
    across runs and DataLoader worker counts. Call :meth:`set_epoch` between epochs (with
    ``persistent_workers=False``, so that workers receive the new epoch).
    """

    def __init__(self, faces_dir: Path, cfg: DegradeConfig, split: str, seed: int, epoch: int = 0) -> None:
        self.faces_dir = Path(faces_dir)
        manifest = self.faces_dir / "manifest.parquet"
        if not manifest.is_file():
            raise FileNotFoundError(f"no manifest.parquet in {self.faces_dir} (an ingested faces folder)")
        frame = pd.read_parquet(manifest)
        frame = frame[frame["split"] == split].reset_index(drop=True)
        if frame.empty:
            raise ValueError(f"{manifest}: no rows with split {split!r}")
        self.ids = [str(i) for i in frame["id"]]
        self.paths = [self.faces_dir / str(p) for p in frame["path"]]
        self.cfg, self.split, self.seed, self.epoch = cfg, split, seed, epoch

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, index: int) -> dict[str, Any]:
        sample_id = self.ids[index]
        hq = images.load_rgb(self.paths[index])
        p = params_for(sample_id, self.seed, self.cfg, self.epoch)
        return {"id": sample_id, "hq": _chw(hq), "lq": _chw(degrade(hq, p, self.cfg)), "params": p.as_row(),
                "self_rec": p.self_rec}


class OfflinePairs(torch.utils.data.Dataset):
    """The pairs the ``degrade`` step wrote (``pairs_dir/pairs.parquet``), HQ read from ``faces_dir``."""

    def __init__(self, pairs_dir: Path, faces_dir: Path) -> None:
        self.pairs_dir, self.faces_dir = Path(pairs_dir), Path(faces_dir)
        table = self.pairs_dir / "pairs.parquet"
        if not table.is_file():
            raise FileNotFoundError(f"no pairs.parquet in {self.pairs_dir} (run the degrade step)")
        self.rows = pd.read_parquet(table).to_dict("records")

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, index: int) -> dict[str, Any]:
        row = self.rows[index]
        p = DegradeParams.from_row(row)
        hq = images.load_rgb(self.faces_dir / row["hq_path"])
        lq = images.load_rgb(self.pairs_dir / row["lq_path"])
        if lq.shape != hq.shape:
            raise ValueError(f"pair {row['id']}: LQ {lq.shape} and HQ {hq.shape} differ")
        return {"id": str(row["id"]), "hq": _chw(hq), "lq": _chw(lq), "params": p.as_row(), "self_rec": p.self_rec}
