"""The registry tests' stand-in restorer (tests/helpers/standin.py) restores deterministically."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from helpers.standin import STANDIN_RESOLUTION, bicubic, load_standin, make_model_dir  # noqa: F401


def test_standin_restores_at_its_resolution_deterministically(tmp_path: Path) -> None:
    restorer = load_standin(make_model_dir(tmp_path / "m", seed=0))
    img = np.random.default_rng(0).integers(0, 256, (32, 32, 3), dtype=np.uint8)
    out = restorer.restore_uint8([img], None, 0, None)
    assert restorer.resolution == STANDIN_RESOLUTION
    assert out[0].shape == img.shape and out[0].dtype == np.uint8
    np.testing.assert_array_equal(out[0], bicubic(img))
    assert not np.array_equal(out[0], img)  # it does change the image
