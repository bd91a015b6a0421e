"""Kubeflow Pipelines components of Pref-Restore: one per step, plus fan-out/merge/promotion plumbing.

:func:`build` wraps the plain functions of ``components.steps`` and ``components.plumbing`` into
lightweight KFP components that all run in the one project image (``cluster.image``) with nothing
installed at pod start (``packages_to_install=[]``, no kfp install: the image has the pipeline
extra). The step library is imported only inside the component bodies, at run time.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from components import plumbing
from components import steps as step_fns

STEP_COMPONENTS = ("ingest", "validate", "caption", "degrade", "bootstrap", "stage1_1", "stage1_2",
                   "stage2", "evaluate", "register")


@dataclasses.dataclass(frozen=True)
class Components:
    ingest: Any
    validate: Any
    caption: Any
    degrade: Any
    bootstrap: Any
    stage1_1: Any
    stage1_2: Any
    stage2: Any
    evaluate: Any
    register: Any
    list_benchmarks: Any
    merge_variant_reports: Any
    merge_reports: Any
    promote: Any

    def step(self, name: str) -> Any:
        if name not in STEP_COMPONENTS:
            raise KeyError(f"no step component '{name}'")
        return getattr(self, name)


def build(image: str) -> Components:
    """All components, running in ``image``."""
    from kfp import dsl

    def wrap(fn: Any) -> Any:
        return dsl.component(fn, base_image=image, packages_to_install=[], install_kfp_package=False)

    made = {name: wrap(getattr(step_fns, name)) for name in STEP_COMPONENTS}
    for name in ("list_benchmarks", "merge_variant_reports", "merge_reports", "promote"):
        made[name] = wrap(getattr(plumbing, name))
    return Components(**made)
