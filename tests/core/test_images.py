"""The decoder's bad-input policy (images.py docstring table), geometry and tensor helpers."""

from __future__ import annotations

import io
import struct
import zlib

import cv2
import numpy as np
import pytest
import torch
from PIL import Image, ImageFile

from prefrestore.core import images


def _png(arr: np.ndarray, mode: str | None = None) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr, mode=mode).save(buf, format="PNG")
    return buf.getvalue()


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def bomb_png(width: int, height: int) -> bytes:
    """A valid PNG header claiming ``width x height`` with almost no data (a decompression-bomb header)."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", zlib.compress(b"\0" * 16))
            + _chunk(b"IEND", b""))


RNG = np.random.default_rng(0)
GOOD = RNG.integers(0, 256, (80, 80, 3), dtype=np.uint8)


def test_rgb_png_round_trips_exactly(tmp_path):
    path = tmp_path / "a.png"
    data = images.save_png(path, GOOD)
    assert path.read_bytes() == data
    out = images.load_rgb(path)
    assert out.dtype == np.uint8 and out.shape == (80, 80, 3)
    np.testing.assert_array_equal(out, GOOD)
    assert images.encode_png(GOOD) == data  # deterministic bytes -> stable sha256


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"", "empty"),
        (b"hello, I am a text file\n" * 10, "not_an_image"),
        (_png(GOOD)[: len(_png(GOOD)) // 2], "truncated"),
        (_png(GOOD)[:60] + bytes(200) + _png(GOOD)[260:], "corrupt"),
        (bomb_png(100_000, 100_000), "too_large"),  # Pillow's own DecompressionBombError
        (bomb_png(10_000, 5_000), "too_large"),  # over max_pixels, read from the header only
        (_png(GOOD[:32, :32]), "too_small"),
    ],
    ids=["empty", "text", "truncated", "corrupt", "bomb-pil", "bomb-max-pixels", "tiny"],
)
def test_bad_inputs_raise_badimage_with_reason(data, reason):
    with pytest.raises(images.BadImage) as info:
        images.load_rgb(data, max_pixels=40_000_000, min_side=64)
    assert info.value.reason == reason


def test_missing_file_is_not_a_bad_image(tmp_path):
    with pytest.raises(FileNotFoundError):
        images.load_rgb(tmp_path / "nope.png")


def test_refuses_when_truncated_images_are_globally_allowed(monkeypatch):
    monkeypatch.setattr(ImageFile, "LOAD_TRUNCATED_IMAGES", True)
    with pytest.raises(RuntimeError, match="LOAD_TRUNCATED_IMAGES"):
        images.load_rgb(_png(GOOD))


def test_rgba_is_composited_on_white():
    rgba = np.zeros((64, 64, 4), np.uint8)
    rgba[..., 0] = 255  # red everywhere ...
    rgba[:32, :, 3] = 0  # ... transparent in the top half
    rgba[32:, :, 3] = 255
    rgba[32:, :32, 3] = 128  # half-transparent quarter
    out = images.load_rgb(_png(rgba, "RGBA"))
    np.testing.assert_array_equal(out[0, 0], [255, 255, 255])  # not red: alpha was not dropped
    np.testing.assert_array_equal(out[63, 63], [255, 0, 0])
    assert abs(int(out[63, 0, 1]) - 127) <= 1  # 50% red over white


def test_palette_with_transparency_is_composited_on_white():
    img = Image.new("P", (64, 64), 0)
    img.putpalette([0, 0, 0, 0, 255, 0] + [0] * 762)
    img.paste(1, (0, 32, 64, 64))
    buf = io.BytesIO()
    img.save(buf, format="PNG", transparency=0)
    out = images.load_rgb(buf.getvalue())
    np.testing.assert_array_equal(out[0, 0], [255, 255, 255])
    np.testing.assert_array_equal(out[63, 0], [0, 255, 0])


def test_greyscale_is_repeated_in_three_channels():
    grey = GOOD[..., 0]
    out = images.load_rgb(_png(grey, "L"))
    for c in range(3):
        np.testing.assert_array_equal(out[..., c], grey)


def test_16bit_grey_and_rgb_are_scaled_not_clipped():
    ok, grey16 = cv2.imencode(".png", GOOD[..., 0].astype(np.uint16) * 257)
    assert ok and Image.open(io.BytesIO(grey16.tobytes())).mode.startswith("I")
    np.testing.assert_array_equal(images.load_rgb(grey16.tobytes())[..., 1], GOOD[..., 0])
    ok, rgb16 = cv2.imencode(".png", GOOD[..., ::-1].astype(np.uint16) * 257)  # cv2 writes BGR
    np.testing.assert_array_equal(images.load_rgb(rgb16.tobytes()), GOOD)


def test_cmyk_jpeg_becomes_rgb():
    buf = io.BytesIO()
    Image.new("CMYK", (64, 64), (0, 255, 255, 0)).save(buf, format="JPEG", quality=95)  # pure red in CMYK
    out = images.load_rgb(buf.getvalue())
    assert out.shape == (64, 64, 3)
    r, g, b = out[32, 32].astype(int)
    assert r > 230 and g < 30 and b < 30


def test_exif_orientation_is_applied():
    upright = np.zeros((80, 80, 3), np.uint8)
    upright[:40] = (255, 0, 0)  # red top, blue bottom
    upright[40:] = (0, 0, 255)
    stored = Image.fromarray(upright).transpose(Image.Transpose.ROTATE_90)  # what a camera in portrait writes
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to display"
    buf = io.BytesIO()
    stored.save(buf, format="JPEG", exif=exif, quality=95)
    raw = np.asarray(Image.open(io.BytesIO(buf.getvalue())).convert("RGB"))
    assert raw[5, 40, 0] < 128  # stored sideways: the top row is not red
    out = images.load_rgb(buf.getvalue())
    assert out[5, 40, 0] > 230 and out[5, 40, 2] < 30
    assert out[75, 40, 2] > 230 and out[75, 40, 0] < 30


def test_fit_square_centre_crops_and_resizes():
    wide = np.zeros((64, 96, 3), np.uint8)
    wide[:, 16:80] = 200  # the centre square is bright, the side bands dark
    out = images.fit_square(wide, 32, max_aspect=2.0)
    assert out.shape == (32, 32, 3)
    assert out.min() == 200  # only the centre square survives
    with pytest.raises(images.BadImage) as info:
        images.fit_square(np.zeros((64, 200, 3), np.uint8), 32, max_aspect=2.0)
    assert info.value.reason == "aspect"


def test_fit_square_downscale_is_antialiased():
    stripes = np.zeros((256, 256, 3), np.uint8)
    stripes[:, ::2] = 255  # one-pixel stripes alias to garbage without a low-pass filter
    out = images.fit_square(stripes, 64, max_aspect=1.0).astype(float)
    assert abs(out.mean() - 127.5) < 3 and out.std() < 10


def test_fit_square_rejects_non_rgb_arrays():
    with pytest.raises(ValueError, match="uint8"):
        images.fit_square(np.zeros((64, 64), np.uint8), 32, 2.0)


def test_tensor_round_trip():
    batch = np.stack([GOOD, GOOD[::-1]])
    t = images.to_tensor(batch)
    assert t.shape == (2, 3, 80, 80) and t.dtype == torch.float32
    assert float(t.min()) >= 0.0 and float(t.max()) <= 1.0
    np.testing.assert_array_equal(images.from_tensor(t), batch)
    assert images.to_tensor(GOOD).shape == (1, 3, 80, 80)
    clipped = images.from_tensor(torch.full((3, 4, 4), 2.0))
    assert clipped.shape == (1, 4, 4, 3) and clipped.max() == 255
