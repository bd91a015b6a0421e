"""A stand-in restorer and candidate builders for the registry tests (plus a check of the stand-in).

The stand-in model directory holds a ``config.json`` naming its resolution and a small
safetensors file (so the directory has weight bytes that change between candidates), plus a
``checkpoints/`` folder that registration must leave out. Its "restoration" is a deterministic
bicubic down/up resize: enough to test the registry machinery without the real model.
"""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import torch
from safetensors.torch import save_file

from prefrestore.registry.pyfunc import restorer_loader

STANDIN_RESOLUTION = 32


class BicubicRestorer:
    """Restorer-like: ``resolution`` + ``restore_uint8`` (bicubic half-size down, then back up)."""

    def __init__(self, resolution: int) -> None:
        self.resolution = resolution
        self.calls: list[tuple[int, tuple[str, ...] | None, int, int | None]] = []

    @classmethod
    def from_pretrained(cls, model_dir: Path) -> BicubicRestorer:
        config = json.loads((Path(model_dir) / "config.json").read_text())
        return cls(int(config["resolution"]))

    def restore_uint8(self, images, captions, seed, steps):  # noqa: ANN001, ANN201
        self.calls.append((len(images), tuple(captions) if captions else None, seed, steps))
        return [bicubic(img) for img in images]


def bicubic(img: np.ndarray) -> np.ndarray:
    h, w = img.shape[:2]
    small = cv2.resize(img, (w // 2, h // 2), interpolation=cv2.INTER_CUBIC)
    return cv2.resize(small, (w, h), interpolation=cv2.INTER_CUBIC)


@restorer_loader
def load_standin(model_dir: Path) -> BicubicRestorer:
    return BicubicRestorer.from_pretrained(model_dir)


def make_model_dir(path: Path, seed: int) -> Path:
    """A stand-in HF-style model directory; ``seed`` changes its weight bytes."""
    path.mkdir(parents=True, exist_ok=True)
    (path / "config.json").write_text(json.dumps({"resolution": STANDIN_RESOLUTION, "seed": seed}))
    gen = torch.Generator().manual_seed(seed)
    save_file({"w": torch.randn(4, 4, generator=gen)}, str(path / "model.safetensors"))
    (path / "checkpoints").mkdir(exist_ok=True)
    (path / "checkpoints" / "optimizer.bin").write_bytes(b"training state, never shipped")
    return path


def make_reports(path: Path, fidelity: dict, quality: dict) -> Path:
    for variant, metrics in (("fidelity", fidelity), ("quality", quality)):
        (path / f"eval_{variant}").mkdir(parents=True, exist_ok=True)
        (path / f"eval_{variant}" / "metrics.json").write_text(json.dumps(metrics))
    return path


def metrics(psnr: float | str, ssim: float | str) -> dict:
    return {"celeba_test/psnr": psnr, "celeba_test/ssim": ssim, "celeba_test/lmd": "unavailable"}
