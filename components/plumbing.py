"""KFP-only plumbing around the steps: the benchmark fan-out list, the report merge, promotion.

Like ``components/steps.py`` these are plain functions turned into lightweight components by
``components.build``; each hands over to ``prefrestore.pipeline.kfp_runtime``.
"""

from typing import List  # noqa: UP035  (KFP reads typing.List annotations)

from kfp.dsl import Artifact, Input, Model, Output


def list_benchmarks(profile: str) -> List[str]:  # noqa: UP006
    """The benchmarks the evaluation fans out over (``evaluate.benchmarks`` of the profile)."""
    from prefrestore.pipeline.kfp_runtime import benchmark_names

    return benchmark_names(profile)


def merge_reports(fidelity: Input[List[Artifact]], quality: Input[List[Artifact]],  # noqa: UP006
                  reports: Output[Artifact]):
    """Gather the fanned-out evaluations into one ``reports/eval_{fidelity,quality}/`` tree."""
    from prefrestore.pipeline.kfp_runtime import merge_reports as merge

    parts = [("fidelity", a.path) for a in fidelity] + [("quality", a.path) for a in quality]
    merge(parts, reports.path)


def merge_variant_reports(variant: str, parts: Input[List[Artifact]], reports: Output[Artifact]):  # noqa: UP006
    """Gather the fanned-out evaluations of one model into ``reports/eval_<variant>/``."""
    from prefrestore.pipeline.kfp_runtime import merge_reports as merge

    merge([(variant, a.path) for a in parts], reports.path)


def promote(run_id: str, release_root: str, fidelity: Input[Model], quality: Input[Model],
            decision: Input[Artifact], release: Output[Artifact]):
    """Publish the promoted variants (runs only under the register gate's dsl.If)."""
    import json

    from prefrestore.pipeline.kfp_runtime import publish_release

    pointer = publish_release(run_id, {"fidelity": fidelity.path, "quality": quality.path},
                              decision.path, release_root)
    with open(release.path, "w", encoding="utf-8") as fh:
        json.dump(pointer, fh, indent=2, sort_keys=True)
