"""DSL-FIQA (Chen et al., CVPR 2024): face image quality, the last column of Tables II-VI.

DSL-FIQA is not in pyiqa and not on PyPI: it is a separate model (a Swin backbone with
landmark-guided dual-set degradation representation) released as code + a checkpoint. Its weight
file is declared here so that ``prefrestore weights plan`` lists it, but this project does not
vendor the network yet, so the metric always reports itself as unavailable (the spec's
``packages`` names the missing implementation). It never returns a number it did not compute.
"""

from __future__ import annotations

from prefrestore.metrics.base import BuildContext, MetricSpec
from prefrestore.weights import WeightFile

DSL_FIQA_W = WeightFile("dsl_fiqa/checkpoint", "store", "dsl_fiqa/DSL_FIQA.pth", None, "dsl_fiqa",
                        "https://github.com/DSL-FIQA/DSL-FIQA (released checkpoint)")
WEIGHTS: tuple[WeightFile, ...] = (DSL_FIQA_W,)


def _build(ctx: BuildContext):
    raise NotImplementedError("DSL-FIQA's network is not vendored in this project (see dsl_fiqa.py)")


SPECS: tuple[MetricSpec, ...] = (
    # "dsl_fiqa_arch" is the module the vendored network would live in; absent -> unavailable
    MetricSpec("dsl_fiqa", "DSL-FIQA", False, False, False, (DSL_FIQA_W,), _build,
               ("prefrestore.metrics.dsl_fiqa_arch",)),
)
