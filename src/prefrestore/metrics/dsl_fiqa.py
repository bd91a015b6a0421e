"""DSL-FIQA (Chen et al., CVPR 2024): face image quality, the last column of Tables II-VI.

This metric is **always unavailable** in this project: the network is not implemented, and no
staging of weights changes that (so ``prefrestore weights plan`` lists nothing for it). Every
table shows the cell as "unavailable" with the reason below; under ``evaluate.require`` it is an
error. It never reports a number it did not compute.

Why it is not built here: DSL-FIQA is not in pyiqa nor on PyPI. The authors' release
(github.com/DSL-FIQA/DSL-FIQA, checkpoints on Google Drive) is three networks, each with its own
checkpoint, whose parameter names a faithful rebuild would have to match exactly:

- the GFIQA network ``IQA.pt``: a MANIQA-style head (transposed-attention and Swin blocks over the
  tokens of ViT-B/8 blocks 6-9), then transformer decoder blocks whose queries are degradation
  features, and score/weight heads that also see an embedding of the face landmarks;
- the degradation encoder ``DE.pt``, trained by the paper's Dual-Set Degradation Learning;
- a FaceXFormer landmark network (the "landmark-guided" part of the title).

One ``IQA.pt``/``DE.pt`` pair exists per training set (GFIQA, CGFIQA-40k), and the Pref-Restore
paper does not say which one its Tables II-VI used; a face's score is the mean over 224-px crops.
Implementing it means rebuilding all three networks and that cropping, then checking the rebuild
against the released checkpoints and published scores, which needs those files here.
"""

from __future__ import annotations

from prefrestore.metrics.base import BuildContext, MetricSpec
from prefrestore.weights import WeightFile

NOT_IMPLEMENTED = ("DSL-FIQA is not implemented in this project (its three released networks are not "
                   "rebuilt here; see prefrestore/metrics/dsl_fiqa.py); staging weights does not enable it")
WEIGHTS: tuple[WeightFile, ...] = ()


def _build(ctx: BuildContext):
    raise NotImplementedError(NOT_IMPLEMENTED)  # unreachable: MetricSpec.missing() is never empty


SPECS: tuple[MetricSpec, ...] = (
    MetricSpec("dsl_fiqa", "DSL-FIQA", False, False, False, (), _build, not_implemented=NOT_IMPLEMENTED),
)
