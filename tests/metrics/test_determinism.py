"""Fig. 8 seed-spread analysis: per-image std over seeds, the weighted Sum Score, medians, the plot."""

from __future__ import annotations

import pytest
import torch

from prefrestore.metrics.determinism import SUM, seed_spread, spread_boxplot


def _restore(noise_level: float):
    """A fake restorer: image + seed-dependent noise of a known size."""

    def restore(images: torch.Tensor, seed: int) -> torch.Tensor:
        g = torch.Generator().manual_seed(seed)
        return images + noise_level * torch.randn(images.shape, generator=g)

    return restore


def _scores(restored: torch.Tensor, index: torch.Tensor) -> dict[str, torch.Tensor]:
    return {"a": restored.flatten(1).mean(1), "b": 2.0 * restored.flatten(1)[:, 0]}


def test_spread_hand_computed() -> None:
    images = torch.zeros(3, 1, 1, 1)
    seeds = [0, 1, 2, 3]
    sp = seed_spread(_scores, _restore(1.0), images, seeds, weights={"a": 1.0, "b": 0.5})
    draws = torch.stack([torch.randn((3, 1, 1, 1), generator=torch.Generator().manual_seed(s)).reshape(3)
                         for s in seeds]).double()  # [seeds, images]
    assert torch.allclose(sp.std["a"], draws.std(0, unbiased=False))
    assert torch.allclose(sp.std["b"], 2 * draws.std(0, unbiased=False))
    assert torch.allclose(sp.std[SUM], 2 * draws.std(0, unbiased=False))  # a + 0.5 * b = 2 * draw
    assert sp.median["a"] == pytest.approx(float(draws.std(0, unbiased=False).median()))
    assert set(sp.as_dict()) == {"seeds", "median_std", "mean_score", "per_image_std"}


def test_less_stochastic_model_has_smaller_spread_and_batches_agree() -> None:
    images = torch.rand(6, 3, 4, 4, generator=torch.Generator().manual_seed(0))
    seeds = range(8)

    def wobble(level: float):  # per-image, seed-dependent and independent of the batching
        return lambda x, seed: x + level * torch.sin(seed + 10 * x)

    noisy = seed_spread(_scores, wobble(0.2), images, seeds)
    calm = seed_spread(_scores, wobble(0.05), images, seeds)
    assert calm.median[SUM] == pytest.approx(noisy.median[SUM] / 4, rel=1e-6)  # spread is linear in noise
    batched = seed_spread(_scores, wobble(0.05), images, seeds, batch_size=4)
    assert torch.allclose(batched.std[SUM], calm.std[SUM])
    deterministic = seed_spread(_scores, lambda x, s: x, images, seeds)
    assert deterministic.median[SUM] == 0.0


def test_bad_calls() -> None:
    images = torch.zeros(2, 1, 1, 1)
    with pytest.raises(ValueError, match="at least 2"):
        seed_spread(_scores, _restore(1.0), images, [0])
    with pytest.raises(ValueError, match="distinct"):
        seed_spread(_scores, _restore(1.0), images, [1, 1])
    with pytest.raises(ValueError, match="weights"):
        seed_spread(_scores, _restore(1.0), images, [0, 1], weights={"zzz": 1.0})
    with pytest.raises(ValueError, match="values for"):
        seed_spread(lambda r, i: {"a": torch.zeros(5)}, _restore(1.0), images, [0, 1])


def test_boxplot_writes_png(tmp_path) -> None:
    images = torch.rand(5, 3, 4, 4)
    spreads = {"base": seed_spread(_scores, _restore(0.2), images, range(4)),
               "stage2": seed_spread(_scores, _restore(0.1), images, range(4))}
    out = spread_boxplot(spreads, tmp_path / "fig8" / "spread.png")
    data = out.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 2000
    assert not list((tmp_path / "fig8").glob(".*tmp"))  # atomic: no temporary left behind
    with pytest.raises(ValueError, match="not in every spread"):
        spread_boxplot(spreads, tmp_path / "x.png", names=["zzz"])
