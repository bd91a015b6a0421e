"""One KFP component per pipeline step (src/prefrestore/pipeline/steps.py), as plain Python functions.

KFP turns each function into a lightweight component running in the project's image
(``components.build``): the function body is shipped as source, so it imports what it needs inside
and hands over to ``prefrestore.pipeline.kfp_runtime`` (the same checks and MLflow run as
``prefrestore <step>``). Artifact names equal the step's input names, so the tests can check the
components against the step table. No ``from __future__ import annotations`` here: KFP reads the
annotations at definition time.
"""

from kfp.dsl import Artifact, Dataset, Input, Metrics, Model, Output


def ingest(profile: str, source: str, faces: Output[Dataset], summary: Output[Metrics]):
    """Ingest faces; ``source`` overrides ``ingest.source`` when not empty."""
    from prefrestore.pipeline.kfp_runtime import log_summary, run_component

    overrides = {"ingest.source": source} if source else None
    result = run_component("ingest", profile, {}, faces.path, overrides)
    log_summary(result, summary)


def validate(profile: str, faces: Input[Dataset], report: Output[Artifact], summary: Output[Metrics],
             captions: Input[Dataset] = None):
    """Validate the manifest (and captions when connected); a failed expectation fails the task."""
    from prefrestore.pipeline.kfp_runtime import log_summary, run_component

    inputs = {"faces": faces.path, "captions": captions.path if captions is not None else None}
    result = run_component("validate", profile, inputs, report.path)
    log_summary(result, summary)


def caption(profile: str, faces: Input[Dataset], captions: Output[Dataset], summary: Output[Metrics]):
    from prefrestore.pipeline.kfp_runtime import log_summary, run_component

    result = run_component("caption", profile, {"faces": faces.path}, captions.path)
    log_summary(result, summary)


def degrade(profile: str, faces: Input[Dataset], pairs: Output[Dataset], summary: Output[Metrics]):
    from prefrestore.pipeline.kfp_runtime import log_summary, run_component

    result = run_component("degrade", profile, {"faces": faces.path}, pairs.path)
    log_summary(result, summary)


def bootstrap(profile: str, faces: Input[Dataset], captions: Input[Dataset], model: Output[Model],
              summary: Output[Metrics]):
    from prefrestore.pipeline.kfp_runtime import log_summary, run_component

    result = run_component("bootstrap", profile, {"faces": faces.path, "captions": captions.path}, model.path)
    log_summary(result, summary)


def stage1_1(profile: str, launch: str, run_id: str, faces: Input[Dataset], captions: Input[Dataset],
             base: Input[Model], model: Output[Model], summary: Output[Metrics]):
    """Stage 1.1; ``launch`` is inline, trainjob or pytorchjob (params ``cluster.training``)."""
    from prefrestore.pipeline.kfp_runtime import log_summary, run_training

    inputs = {"faces": faces.path, "captions": captions.path, "base": base.path}
    result = run_training("stage1_1", profile, launch, run_id, inputs, model.path)
    log_summary(result, summary)


def stage1_2(profile: str, launch: str, run_id: str, faces: Input[Dataset], captions: Input[Dataset],
             base: Input[Model], model: Output[Model], summary: Output[Metrics]):
    """Stage 1.2; ``launch`` is inline, trainjob or pytorchjob (params ``cluster.training``)."""
    from prefrestore.pipeline.kfp_runtime import log_summary, run_training

    inputs = {"faces": faces.path, "captions": captions.path, "base": base.path}
    result = run_training("stage1_2", profile, launch, run_id, inputs, model.path)
    log_summary(result, summary)


def stage2(profile: str, launch: str, run_id: str, faces: Input[Dataset], captions: Input[Dataset],
           base: Input[Model], model: Output[Model], summary: Output[Metrics]):
    """Stage 2 (DiffusionNFT); ``launch`` is inline, trainjob or pytorchjob (params ``cluster.training``)."""
    from prefrestore.pipeline.kfp_runtime import log_summary, run_training

    inputs = {"faces": faces.path, "captions": captions.path, "base": base.path}
    result = run_training("stage2", profile, launch, run_id, inputs, model.path)
    log_summary(result, summary)


def evaluate(profile: str, benchmark: str, subdir: str, model: Input[Model], benchmarks: Input[Dataset],
             report: Output[Artifact], summary: Output[Metrics], baseline: Input[Model] = None):
    """Evaluate ``model`` on one benchmark: ``<benchmarks>/<subdir>/<benchmark>/`` (one fan-out branch)."""
    import os

    from prefrestore.pipeline.kfp_runtime import log_summary, run_component

    inputs = {
        "model": model.path,
        "benchmarks": os.path.join(benchmarks.path, subdir) if subdir else benchmarks.path,
        "baseline": baseline.path if baseline is not None else None,
    }
    result = run_component("evaluate", profile, inputs, report.path, {"evaluate.benchmarks": [benchmark]})
    log_summary(result, summary)


def register(profile: str, fidelity: Input[Model], quality: Input[Model], reports: Input[Artifact],
             decision: Output[Artifact], summary: Output[Metrics]) -> bool:
    """Register both variants and run the gates; the output parameter is ``promoted``.

    A single return value (KFP's ``Output``) rather than a named one: kfp.local 2.17 cannot resolve a
    named output parameter in a ``dsl.If`` condition, and the local run must exercise the gate.
    """
    from prefrestore.pipeline.kfp_runtime import log_summary, run_component

    inputs = {"fidelity": fidelity.path, "quality": quality.path, "reports": reports.path}
    result = run_component("register", profile, inputs, decision.path)
    if "promoted" not in result or result["promoted"] not in (0, 1):
        raise ValueError(f"register.run must return 'promoted' (0/1) in its summary, got {result!r}")
    log_summary(result, summary)
    return bool(result["promoted"])
