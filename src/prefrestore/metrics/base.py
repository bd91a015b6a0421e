"""What every evaluation metric is: a spec (name, table label, pairing rule, weights) and a scorer.

A :class:`MetricSpec` says what a metric needs (HQ reference, caption, weight files) and how to
build its :class:`Scorer`. A scorer sees each batch once (``update``) and returns one value per
image (per-image metrics) or nothing (set-level metrics such as FID); ``finish`` gives the
benchmark-level number. A metric that cannot run here (weights missing, package absent) is
reported as :class:`Unavailable` with its reason, never as 0 and never silently dropped.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Callable, Iterator, Sequence
from typing import Protocol

import torch

from prefrestore.core.weights import MissingWeights, WeightFile, local_path, status


class Scorer(Protocol):
    def update(self, restored: torch.Tensor, hq: torch.Tensor | None, captions: Sequence[str] | None
               ) -> torch.Tensor | None:
        """Score one batch (``[B, 3, H, W]`` in [0, 1]); per-image values ``[B]`` or None (set-level)."""

    def finish(self) -> float:
        """The benchmark-level value (mean of per-image values, or the set statistic)."""

    def fresh(self) -> Scorer:
        """An empty accumulator sharing the loaded model (one per benchmark and per row)."""


@dataclasses.dataclass(frozen=True)
class Unavailable:
    """A metric that did not run, and why (shown as 'unavailable' in tables and logs)."""

    reason: str

    def __str__(self) -> str:
        return f"unavailable ({self.reason})"


@dataclasses.dataclass(frozen=True)
class BuildContext:
    """What a scorer factory may use: the device and the evaluate params it reads."""

    device: torch.device
    fid_dataset_res: int
    fid_dataset_split: str
    lmd_resolution: int
    arcface_size: int


@dataclasses.dataclass(frozen=True)
class MetricSpec:
    name: str  # id used in params.yaml, metrics.json and MLflow ('<benchmark>/<name>')
    label: str  # column header as in the paper's tables
    needs_hq: bool  # full-reference: only on paired benchmarks
    needs_caption: bool  # text-conditioned: only where the manifest has captions
    lower_better: bool
    weights: tuple[WeightFile, ...]  # every file the metric loads (staged offline)
    build: Callable[[BuildContext], Scorer]  # explicit factory; imports heavy libraries lazily
    packages: tuple[str, ...] = ()  # importable modules it needs beyond the core dependencies

    def missing(self) -> list[str]:
        """Why this metric cannot run here: missing packages or weight files (empty: it can)."""
        import importlib.util

        out = [f"missing package '{p}'" for p in self.packages if importlib.util.find_spec(p) is None]
        out += [f"{w.name} {status(w)} at {local_path(w)}" for w in self.weights if status(w) != "present"]
        return out


class MeanScorer:
    """A per-image scorer from a batch function ``fn(restored, hq, captions) -> Tensor[B]``."""

    def __init__(self, fn: Callable[[torch.Tensor, torch.Tensor | None, Sequence[str] | None], torch.Tensor]):
        self.fn = fn
        self.values: list[torch.Tensor] = []

    def update(self, restored, hq, captions):
        with torch.no_grad():
            v = self.fn(restored, hq, captions).detach().float().cpu().reshape(-1)
        if v.numel() != restored.shape[0]:
            raise ValueError(f"metric returned {v.numel()} values for a batch of {restored.shape[0]}")
        self.values.append(v)
        return v

    def fresh(self) -> MeanScorer:
        return MeanScorer(self.fn)

    def finish(self) -> float:
        if not self.values:
            raise ValueError("no images were scored")
        return float(torch.cat(self.values).double().mean())


@contextlib.contextmanager
def no_downloads() -> Iterator[None]:
    """Make every download path used by pyiqa, facexlib, torch.hub and CLIP an error.

    The weights were checked for presence before; this guard turns any remaining attempt (a file
    we did not know about) into :class:`MissingWeights` instead of a silent network fetch.
    """
    import sys
    import urllib.request

    def refuse(url, *args, **kwargs):
        raise MissingWeights(f"refused to download {url}: stage it offline (`prefrestore weights plan`)")

    targets = [(urllib.request, "urlopen"), (torch.hub, "download_url_to_file")]
    for mod_name in ("pyiqa.utils.download_util", "facexlib.utils.misc", "pyiqa.archs.arch_util"):
        mod = sys.modules.get(mod_name)
        if mod is not None and hasattr(mod, "download_url_to_file"):
            targets.append((mod, "download_url_to_file"))
    saved = [(m, a, getattr(m, a)) for m, a in targets]
    try:
        for m, a in targets:
            setattr(m, a, refuse)
        yield
    finally:
        for m, a, f in saved:
            setattr(m, a, f)
