"""The training pipeline: every step of ``prefrestore.pipeline.steps.STEPS``, wired as in ``dvc.yaml``.

ingest -> caption -> validate (manifest + captions) -> degrade, bootstrap -> stage 1.1 -> stage 1.2
(the ``fidelity`` model) -> stage 2 (the ``quality`` model) -> evaluation of both, fanned out over
the profile's benchmarks (``dsl.ParallelFor``) -> merged reports -> register (gates) -> promotion
only when the gates pass (``dsl.If`` on register's ``promoted`` output).
"""

# no `from __future__ import annotations`: KFP reads the pipeline signature's real types
from typing import Any

import components
from pipelines import placement
from prefrestore.pipeline import steps
from prefrestore.pipeline.launcher import ClusterConfig

NAME = "prefrestore-training"


def build(cluster: ClusterConfig, profile: str, comps: components.Components | None = None) -> Any:
    """The pipeline function for ``profile``'s cluster section (``comps`` replaces components in tests)."""
    from kfp import dsl, kubernetes

    c = comps or components.build(cluster.image)
    gpu = {s.name: s.gpu for s in steps.STEPS}

    def step(name: str, caching: bool = True, **kwargs: Any) -> Any:
        return placement.step_task(c.step(name)(**kwargs), name, gpu[name], cluster, caching)

    def train(name: str, profile: Any, base: Any, faces: Any, captions: Any) -> Any:
        task = c.step(name)(profile=profile, launch=cluster.training[name].launch,
                            run_id=dsl.PIPELINE_JOB_ID_PLACEHOLDER, faces=faces, captions=captions, base=base)
        task.set_display_name(name)
        return placement.training(task, name, cluster)

    def plumbing(task: Any, name: str) -> Any:
        task.set_display_name(name)
        return placement.on_cpu(task, cluster, caching=False)

    @dsl.pipeline(name=NAME, description=f"Pref-Restore: data, 3 training stages, evaluation, gated promotion "
                                         f"(compiled for profile '{profile}').")
    def training(profile: str = profile, source: str = "", benchmarks_subdir: str = "benchmarks",
                 release_root: str = f"{cluster.data_mount}/releases"):
        ingest = step("ingest", caching=False, profile=profile, source=source)  # the source may change
        faces = ingest.outputs["faces"]
        captions = step("caption", profile=profile, faces=faces).outputs["captions"]
        validate = step("validate", profile=profile, faces=faces, captions=captions)
        pairs = step("degrade", profile=profile, faces=faces).after(validate).outputs["pairs"]
        bootstrap = step("bootstrap", caching=False, profile=profile, faces=faces, captions=captions)
        bootstrap.after(validate)
        s11 = train("stage1_1", profile, bootstrap.outputs["model"], faces, captions)
        s12 = train("stage1_2", profile, s11.outputs["model"], faces, captions)
        s2 = train("stage2", profile, s12.outputs["model"], faces, captions)
        fidelity, quality = s12.outputs["model"], s2.outputs["model"]

        names = plumbing(c.list_benchmarks(profile=profile), "list-benchmarks")
        with dsl.ParallelFor(names.output) as benchmark:
            ev_fid = step("evaluate", profile=profile, benchmark=benchmark, subdir=benchmarks_subdir,
                          model=fidelity, benchmarks=pairs).set_display_name("evaluate-fidelity")
            ev_q = step("evaluate", profile=profile, benchmark=benchmark, subdir=benchmarks_subdir,
                        model=quality, benchmarks=pairs).set_display_name("evaluate-quality")
        reports = plumbing(c.merge_reports(fidelity=dsl.Collected(ev_fid.outputs["report"]),
                                           quality=dsl.Collected(ev_q.outputs["report"])), "merge-reports")
        register = step("register", caching=False, profile=profile, fidelity=fidelity, quality=quality,
                        reports=reports.outputs["reports"])
        promoted = register.outputs["Output"]  # register's one output parameter: did the gates pass?
        with dsl.If(promoted == True, name="gates-passed"):  # noqa: E712
            promote = plumbing(c.promote(run_id=dsl.PIPELINE_JOB_ID_PLACEHOLDER, release_root=release_root,
                                         fidelity=fidelity, quality=quality,
                                         decision=register.outputs["decision"]), "promote")
            kubernetes.mount_pvc(promote, pvc_name=cluster.data_pvc, mount_path=cluster.data_mount)

    return training
