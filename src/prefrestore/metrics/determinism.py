"""Determinism analysis of paper Fig. 8: the spread of reward scores over sampling seeds.

Each test image is restored with ``N`` seeds (the paper: N = 16); for every score (HPSv2,
PickScore, ClipScore, ...) and for their weighted sum ("Sum Score") the per-image standard deviation
over seeds is taken, and its median over images is the headline number (paper: the Sum Score's
median std drops from about 0.032 for the base model to about 0.016 after stage 2). Used by the
stage-2 held-out check and by evaluation; :func:`spread_boxplot` draws the figure.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import torch
from tqdm.auto import tqdm

from prefrestore.core.atomic import atomic_path

SUM = "sum"  # key of the weighted sum of all scores ("Sum Score" in Fig. 8)

RestoreFn = Callable[[torch.Tensor, int], torch.Tensor]  # (images [B,3,H,W], seed) -> restored
ScoreFn = Callable[[torch.Tensor, torch.Tensor], Mapping[str, torch.Tensor]]  # (restored, index [B]) -> {name: [B]}


@dataclasses.dataclass(frozen=True)
class SeedSpread:
    """Per-image std over seeds of each score (``std[name]``: ``[N_images]``) and their medians."""

    seeds: tuple[int, ...]
    std: Mapping[str, torch.Tensor]
    median: Mapping[str, float]
    mean_score: Mapping[str, float]  # mean over images and seeds (is the score itself moving?)

    def as_dict(self) -> dict[str, object]:
        return {
            "seeds": list(self.seeds),
            "median_std": dict(self.median),
            "mean_score": dict(self.mean_score),
            "per_image_std": {k: v.tolist() for k, v in self.std.items()},
        }


def seed_spread(
    score_fn: ScoreFn,
    restore_fn: RestoreFn,
    images: torch.Tensor,
    seeds: Sequence[int],
    weights: Mapping[str, float] | None = None,
    batch_size: int | None = None,
    progress: bool = False,
) -> SeedSpread:
    """Restore every image with every seed, score it, and summarise the spread over seeds.

    ``score_fn(restored, index)`` gets the restored batch and the dataset indices of its rows (so it
    can look up HQ images and captions) and returns ``{name: Tensor[B]}``. The ``sum`` score is
    ``sum_k weights[k] * score_k`` (all weights 1 when ``weights`` is None). Std is the population
    std over seeds (``ddof = 0``), as ``numpy.std``.
    """
    seeds = tuple(int(s) for s in seeds)
    if len(seeds) < 2:
        raise ValueError("seed_spread needs at least 2 seeds")
    if len(set(seeds)) != len(seeds):
        raise ValueError(f"seeds must be distinct, got {seeds}")
    n = images.shape[0]
    if n == 0:
        raise ValueError("seed_spread: no images")
    bs = batch_size or n
    table: dict[str, torch.Tensor] = {}  # name -> [seeds, N]
    for si, seed in enumerate(tqdm(seeds, desc="seeds", disable=not progress, leave=False)):
        for start in range(0, n, bs):
            idx = torch.arange(start, min(start + bs, n))
            restored = restore_fn(images[idx], seed)
            scores = score_fn(restored, idx)
            if not scores:
                raise ValueError("score_fn returned no scores")
            for name, val in scores.items():
                if name == SUM:
                    raise ValueError(f"'{SUM}' is reserved for the weighted sum")
                val = torch.as_tensor(val).detach().double().cpu().reshape(-1)
                if val.numel() != idx.numel():
                    raise ValueError(f"score '{name}' has {val.numel()} values for {idx.numel()} images")
                if not torch.isfinite(val).all():
                    raise ValueError(f"score '{name}' is not finite for seed {seed}")
                table.setdefault(name, torch.full((len(seeds), n), math.nan, dtype=torch.float64))
                table[name][si, idx] = val
    w = {k: 1.0 for k in table} if weights is None else {k: float(weights[k]) for k in table if k in weights}
    unknown = sorted(set(w) - set(table))
    if unknown or not w:
        raise ValueError(f"weights name unknown scores {unknown} (scores: {sorted(table)})")
    table[SUM] = sum(wk * table[k] for k, wk in w.items())
    if any(bool(torch.isnan(t).any()) for t in table.values()):
        raise ValueError("some score is missing for some (seed, image); score_fn must return every score")
    std = {k: t.std(dim=0, unbiased=False) for k, t in table.items()}
    return SeedSpread(
        seeds=seeds,
        std=std,
        median={k: float(v.median()) for k, v in std.items()},
        mean_score={k: float(t.mean()) for k, t in table.items()},
    )


def spread_boxplot(spreads: Mapping[str, SeedSpread], path: str | Path, names: Sequence[str] | None = None,
                   title: str = "Score std over sampling seeds (Fig. 8)") -> Path:
    """Box plots of per-image std, one panel per score, one box per model (e.g. base vs. stage 2).

    Writes a PNG atomically and returns its path.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if not spreads:
        raise ValueError("no spreads to plot")
    models = list(spreads)
    common = set.intersection(*(set(s.std) for s in spreads.values()))
    names = list(names) if names is not None else sorted(common - {SUM}) + ([SUM] if SUM in common else [])
    missing = [nm for nm in names if nm not in common]
    if missing:
        raise ValueError(f"scores {missing} are not in every spread")
    fig, axes = plt.subplots(1, len(names), figsize=(3.2 * len(names), 3.4), squeeze=False)
    for ax, name in zip(axes[0], names, strict=True):
        data = [spreads[m].std[name].numpy() for m in models]
        ax.boxplot(data, showfliers=False)
        ax.set_xticks(range(1, len(models) + 1), models, rotation=15)
        ax.set_title(f"{name}\n" + ", ".join(f"med {spreads[m].median[name]:.4f}" for m in models), fontsize=8)
        ax.set_ylabel("std over seeds")
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=120)
    plt.close(fig)
    return path
