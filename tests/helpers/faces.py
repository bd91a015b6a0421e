"""Synthetic test images."""

from __future__ import annotations

import numpy as np


def face_like(size: int, seed: int = 0) -> np.ndarray:
    """A smooth image with edges (blobs on a gradient): blur and JPEG visibly change it."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size] / size
    img = np.stack([xx, yy, 1 - xx * yy], axis=2) * 160
    for _ in range(6):
        cy, cx, r = rng.uniform(0.2, 0.8, 2).tolist() + [rng.uniform(0.05, 0.2)]
        img[(yy - cy) ** 2 + (xx - cx) ** 2 < r**2] = rng.uniform(0, 255, 3)
    return np.clip(img + rng.normal(0, 3, img.shape), 0, 255).astype(np.uint8)
