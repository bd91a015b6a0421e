"""The evaluation-only pipeline: one registered model on the profile's benchmarks.

The model and the benchmark folder are imported by URI (``dsl.importer``: an ``s3://`` MLflow
artifact location of a registered model version, or any URI the KFP launcher can read); the
evaluation fans out over ``evaluate.benchmarks`` and the per-benchmark reports are merged into
``eval_<variant>/``.
"""

# no `from __future__ import annotations`: KFP reads the pipeline signature's real types
from typing import Any

import components
from pipelines import placement
from prefrestore.pipeline.launcher import ClusterConfig

NAME = "prefrestore-evaluation"


def build(cluster: ClusterConfig, profile: str, comps: components.Components | None = None) -> Any:
    from kfp import dsl

    c = comps or components.build(cluster.image)

    @dsl.pipeline(name=NAME, description=f"Pref-Restore: evaluate a registered model on the benchmarks "
                                         f"(compiled for profile '{profile}').")
    def evaluation(model_uri: str, benchmarks_uri: str, variant: str = "quality", profile: str = profile,
                   benchmarks_subdir: str = ""):
        model = dsl.importer(artifact_uri=model_uri, artifact_class=dsl.Model, reimport=False)
        model.set_display_name("import-model")
        bench = dsl.importer(artifact_uri=benchmarks_uri, artifact_class=dsl.Dataset, reimport=False)
        bench.set_display_name("import-benchmarks")
        names = placement.on_cpu(c.list_benchmarks(profile=profile), cluster, caching=False)
        names.set_display_name("list-benchmarks")
        with dsl.ParallelFor(names.output) as benchmark:
            ev = c.evaluate(profile=profile, benchmark=benchmark, subdir=benchmarks_subdir,
                            model=model.output, benchmarks=bench.output)
            placement.step_task(ev, "evaluate", True, cluster, caching=True)
        merged = c.merge_variant_reports(variant=variant, parts=dsl.Collected(ev.outputs["report"]))
        placement.on_cpu(merged, cluster, caching=False).set_display_name("merge-reports")

    return evaluation
