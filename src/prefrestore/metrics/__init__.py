"""The paper's evaluation metrics (Tables II-IX): one module per family, gathered explicitly here.

``SPECS`` maps metric id -> :class:`~prefrestore.metrics.base.MetricSpec`; ``WEIGHTS`` is every
weight file any metric loads (for ``prefrestore weights plan``). Heavy libraries (pyiqa,
transformers, open_clip, facexlib) are imported only when a metric is built.
"""

from __future__ import annotations

from prefrestore.metrics import dsl_fiqa, face, iqa, pixel, preference, semantic
from prefrestore.metrics.base import BuildContext, MetricSpec, Unavailable

_MODULES = (pixel, iqa, face, semantic, preference, dsl_fiqa)
SPECS: dict[str, MetricSpec] = {s.name: s for m in _MODULES for s in m.SPECS}
WEIGHTS = tuple(dict.fromkeys(w for m in _MODULES for w in m.WEIGHTS))


def get(names: tuple[str, ...] | list[str]) -> list[MetricSpec]:
    """The specs of ``names`` in order; an unknown id is an error that lists the known ones."""
    unknown = [n for n in names if n not in SPECS]
    if unknown:
        raise ValueError(f"unknown metric(s) {unknown}; known: {sorted(SPECS)}")
    return [SPECS[n] for n in names]


__all__ = ["SPECS", "WEIGHTS", "BuildContext", "MetricSpec", "Unavailable", "get"]
