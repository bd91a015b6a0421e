"""The one image decoder, with one documented policy for bad and unusual inputs.

:func:`load_rgb` turns a file (or its bytes) into ``uint8 [H, W, 3]`` RGB, or raises
:class:`BadImage` whose ``reason`` is one of the short codes below. Ingest quarantines by that
code; every other step reads only ingested PNGs, which always pass.

| input | outcome | ``reason`` |
|---|---|---|
| zero-byte file | rejected | ``empty`` |
| not an image (text, unknown format) | rejected | ``not_an_image`` |
| header claims more than ``max_pixels`` (checked from the header, before decoding), or PIL's own ``DecompressionBombError`` | rejected | ``too_large`` |
| shorter side < ``min_side`` (from the header) | rejected | ``too_small`` |
| truncated file (decoder runs out of data) | rejected | ``truncated`` |
| any other decode failure (bad CRC, garbage after a valid header) | rejected | ``corrupt`` |
| EXIF ``Orientation`` tag | applied (pixels rotated/flipped upright), tag dropped | - |
| RGBA, LA, PA, palette with transparency | alpha-composited onto **white** (never dropped: dropped alpha exposes arbitrary colours under transparent pixels) | - |
| palette (P), 1-bit, greyscale (L) | expanded to RGB (grey repeated in 3 channels) | - |
| CMYK (incl. Adobe inverted JPEGs), YCbCr, LAB, HSV | converted to RGB by Pillow | - |
| 16-bit (``I;16*``, 16-bit PNG read as ``I``) | scaled to 8 bits by ``round(v / 257)`` (not clipped) | - |
| 32-bit float (``F``) | values in [0, 1] scaled by 255, else clipped to [0, 255] | - |
| animated / multi-frame (GIF, TIFF) | first frame only | - |
| embedded ICC profile | ignored (pixel values taken as sRGB) | - |

:func:`fit_square` applies the geometry policy: a non-square image is centre-cropped to a square
when its aspect ratio is at most ``max_aspect`` (else ``BadImage("aspect")``), then resized to
``resolution`` with Pillow's Lanczos filter (antialiased when shrinking).

Pillow's global ``ImageFile.LOAD_TRUNCATED_IMAGES`` must stay ``False``; :func:`load_rgb` refuses
to run when someone has switched it on, because truncated files would then decode silently.
"""

from __future__ import annotations

import dataclasses
import io
import os
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError

from prefrestore.core import atomic
from prefrestore.core.config import check_range

REASONS = ("empty", "not_an_image", "too_large", "too_small", "truncated", "corrupt", "aspect")

# The PNG encoder's zlib level: fixed so that the bytes (and their sha256) are reproducible.
PNG_COMPRESS_LEVEL = 6


class BadImage(ValueError):
    """An input the policy rejects; ``reason`` is one of :data:`REASONS`, ``detail`` says why."""

    def __init__(self, reason: str, detail: str = "") -> None:
        if reason not in REASONS:
            raise ValueError(f"unknown BadImage reason {reason!r}")
        self.reason = reason
        self.detail = detail
        super().__init__(f"{reason}: {detail}" if detail else reason)


def _open(src: str | os.PathLike[str] | bytes) -> Image.Image:
    if isinstance(src, bytes | bytearray):
        data = bytes(src)
        if not data:
            raise BadImage("empty", "zero bytes")
        fh: Any = io.BytesIO(data)
    else:
        path = Path(src)
        if not path.is_file():
            raise FileNotFoundError(f"no such image file: {path}")
        if path.stat().st_size == 0:
            raise BadImage("empty", f"zero-byte file {path.name}")
        fh = path
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            return Image.open(fh)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise BadImage("too_large", str(exc)) from exc
    except UnidentifiedImageError as exc:
        raise BadImage("not_an_image", "format not recognised") from exc
    except (OSError, SyntaxError, ValueError) as exc:  # a recognised header that is malformed
        raise BadImage("corrupt", f"{type(exc).__name__}: {exc}") from exc


def _to_rgb(img: Image.Image) -> np.ndarray:
    """Any Pillow mode -> uint8 [H, W, 3], following the policy table."""
    mode = img.mode
    if mode.startswith("I;16") or mode == "I":
        arr = np.asarray(img).astype(np.float64)
        if mode == "I" and arr.max(initial=0) <= 255:  # an 8-bit image stored as 32-bit ints
            grey = np.clip(arr, 0, 255)
        else:
            grey = np.clip(arr, 0, 65535) / 257.0
        grey = np.rint(grey).astype(np.uint8)
        return np.repeat(grey[..., None], 3, axis=2)
    if mode == "F":
        arr = np.asarray(img).astype(np.float64)
        arr = arr * 255.0 if arr.max(initial=0) <= 1.0 else arr
        grey = np.rint(np.clip(arr, 0, 255)).astype(np.uint8)
        return np.repeat(grey[..., None], 3, axis=2)
    if mode == "P" and "transparency" in img.info:
        img = img.convert("RGBA")
    elif mode in ("P", "PA"):
        img = img.convert("RGBA") if mode == "PA" else img.convert("RGB")
    if img.mode in ("RGBA", "LA", "RGBa", "La"):
        rgba = img.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        img = Image.alpha_composite(white, rgba)
    if img.mode != "RGB":
        img = img.convert("RGB")
    return np.ascontiguousarray(np.asarray(img, dtype=np.uint8))


@dataclasses.dataclass(frozen=True)
class ImageLimits:
    """Params section ``image_limits``: the one input limit of every image a model is asked to
    restore (``prefrestore restore``, the served model, ``evaluate``), read from the header before a
    pixel is decoded. (Ingest's stricter thresholds are training-data policy: ``ingest``.)"""

    max_pixels: int  # refuse an image whose header claims more pixels
    min_side: int  # refuse an image whose shorter side is below this

    def __post_init__(self) -> None:
        check_range("image_limits.max_pixels", self.max_pixels, 1, 1 << 31)
        check_range("image_limits.min_side", self.min_side, 1, 4096)


def load_rgb(
    src: str | os.PathLike[str] | bytes,
    *,
    max_pixels: int | None = None,
    min_side: int = 1,
) -> np.ndarray:
    """Decode an image to ``uint8 [H, W, 3]`` RGB under the module's policy, or raise :class:`BadImage`.

    ``max_pixels`` (None: Pillow's own bomb limit only) and ``min_side`` are checked from the
    header, before any pixel is decoded; ingest passes ``ingest.max_pixels``/``ingest.min_side``.
    A missing file raises ``FileNotFoundError`` (a caller's mistake, not a bad image).
    """
    if ImageFile.LOAD_TRUNCATED_IMAGES:
        raise RuntimeError("PIL.ImageFile.LOAD_TRUNCATED_IMAGES is True: truncated files would pass silently")
    img = _open(src)
    with img:
        width, height = img.size
        if max_pixels is not None and width * height > max_pixels:
            raise BadImage("too_large", f"{width}x{height} = {width * height} pixels > max_pixels={max_pixels}")
        if min(width, height) < min_side:
            raise BadImage("too_small", f"{width}x{height}: shorter side < min_side={min_side}")
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("error", Image.DecompressionBombWarning)
                img.load()
                upright = ImageOps.exif_transpose(img)
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
            raise BadImage("too_large", str(exc)) from exc
        except (OSError, SyntaxError, ValueError, EOFError) as exc:
            message = str(exc)
            reason = "truncated" if ("truncated" in message or isinstance(exc, EOFError)) else "corrupt"
            raise BadImage(reason, f"{type(exc).__name__}: {message}") from exc
        return _to_rgb(upright)


def fit_square(img: np.ndarray, resolution: int, max_aspect: float) -> np.ndarray:
    """Centre-crop to a square (if aspect <= ``max_aspect``, else ``BadImage("aspect")``), resize to ``resolution``.

    Resizing uses Pillow's Lanczos filter, which widens its support when shrinking (antialiased).
    """
    _check_hwc(img)
    height, width = img.shape[:2]
    aspect = max(height, width) / min(height, width)
    if aspect > max_aspect:
        raise BadImage("aspect", f"{width}x{height}: aspect {aspect:.2f} > max_aspect={max_aspect}")
    side = min(height, width)
    top, left = (height - side) // 2, (width - side) // 2
    square = img[top : top + side, left : left + side]
    if side == resolution:
        return np.ascontiguousarray(square)
    resized = Image.fromarray(square).resize((resolution, resolution), Image.Resampling.LANCZOS)
    return np.asarray(resized, dtype=np.uint8)


def encode_png(img: np.ndarray) -> bytes:
    """PNG bytes of an RGB image; deterministic (fixed compression level, no metadata)."""
    _check_hwc(img)
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="PNG", compress_level=PNG_COMPRESS_LEVEL)
    return buf.getvalue()


def save_png(path: str | os.PathLike[str], img: np.ndarray) -> bytes:
    """Write ``img`` as PNG atomically; returns the bytes written (e.g. for a checksum)."""
    data = encode_png(img)
    atomic.write_bytes(path, data)
    return data


def _check_hwc(img: np.ndarray) -> None:
    if not isinstance(img, np.ndarray) or img.dtype != np.uint8 or img.ndim != 3 or img.shape[2] != 3:
        got = f"{img.dtype} {img.shape}" if isinstance(img, np.ndarray) else type(img).__name__
        raise ValueError(f"expected a uint8 [H, W, 3] RGB array, got {got}")


def to_tensor(images: np.ndarray | Sequence[np.ndarray]) -> Any:
    """uint8 ``[H, W, 3]`` (one image), ``[B, H, W, 3]`` or a list of them -> float32 ``[B, 3, H, W]`` in [0, 1]."""
    import torch

    if isinstance(images, np.ndarray) and images.ndim == 3:
        images = [images]
    batch = np.stack([np.asarray(i) for i in images]) if not isinstance(images, np.ndarray) else images
    if batch.dtype != np.uint8 or batch.ndim != 4 or batch.shape[-1] != 3:
        raise ValueError(f"expected uint8 [B, H, W, 3] RGB, got {batch.dtype} {batch.shape}")
    return torch.from_numpy(np.ascontiguousarray(batch)).permute(0, 3, 1, 2).float().div_(255.0)


def from_tensor(tensor: Any) -> np.ndarray:
    """float ``[B, 3, H, W]`` (or ``[3, H, W]``) in [0, 1] -> uint8 ``[B, H, W, 3]`` (clamped, rounded)."""
    if tensor.ndim == 3:
        tensor = tensor.unsqueeze(0)
    if tensor.ndim != 4 or tensor.shape[1] != 3:
        raise ValueError(f"expected [B, 3, H, W], got {tuple(tensor.shape)}")
    out = tensor.detach().float().clamp(0, 1).mul(255.0).round().to("cpu").permute(0, 2, 3, 1)
    return np.ascontiguousarray(out.numpy().astype(np.uint8))
