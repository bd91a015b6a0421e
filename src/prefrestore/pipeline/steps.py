"""The step registry: every pipeline step, its inputs, the params sections it reads, its needs.

This table is the single source that the CLI, ``dvc.yaml`` and the Kubeflow pipeline are checked
against (``tests/pipeline/test_step_registry.py``). Each step is a module with
``run(params, inputs, out) -> dict`` (a summary); the loaders below are explicit imports.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from prefrestore.core.config import Params

RunFn = Callable[[Params, Mapping[str, Path], Path], dict[str, Any]]


@dataclasses.dataclass(frozen=True)
class Step:
    name: str  # CLI subcommand, DVC stage and KFP task name (with '_' -> '-')
    help: str  # one line for --help
    inputs: tuple[str, ...]  # named inputs, passed as --in NAME=PATH
    optional_inputs: tuple[str, ...]  # named inputs that may be absent
    sections: tuple[str, ...]  # params.yaml sections the step reads
    gpu: bool  # needs an accelerator on the cluster
    load: Callable[[], RunFn]  # explicit, lazy import of the step's run()


def _ingest() -> RunFn:
    from prefrestore.data import ingest

    return ingest.run


def _validate() -> RunFn:
    from prefrestore.data import validate

    return validate.run


def _caption() -> RunFn:
    from prefrestore.data import caption

    return caption.run


def _degrade() -> RunFn:
    from prefrestore.data.degrade import step as degrade_step

    return degrade_step.run


def _bootstrap() -> RunFn:
    from prefrestore.train import stage0 as train_stage0

    return train_stage0.run


def _stage1_1() -> RunFn:
    from prefrestore.train import stage1 as train_stage1

    return train_stage1.run_stage1_1


def _stage1_2() -> RunFn:
    from prefrestore.train import stage1 as train_stage1

    return train_stage1.run_stage1_2


def _stage2() -> RunFn:
    from prefrestore.train import stage2 as train_stage2

    return train_stage2.run


def _evaluate() -> RunFn:
    from prefrestore.evaluation import evaluate

    return evaluate.run


def _register() -> RunFn:
    from prefrestore.registry import register

    return register.run


STEPS: tuple[Step, ...] = (
    Step("ingest", "Ingest faces (folder:, hf: or synthetic) into a checked, resized set + manifest.",
         (), (), ("data", "ingest"), False, _ingest),
    Step("validate", "Validate the image manifest (and captions, if given) with great-expectations.",
         ("faces",), ("captions",), ("data", "validate"), False, _validate),
    Step("caption", "Caption every face (Qwen2.5-VL, or the synthetic attributes), resumably.",
         ("faces",), (), ("data", "caption", "validate"), True, _caption),
    Step("degrade", "Synthesise (LQ, HQ) training pairs and the CelebA-Test-style benchmark (Eq. 16).",
         ("faces",), (), ("data", "degrade"), False, _degrade),
    Step("bootstrap", "Base model: stage 0 training (init: random, tiny) or assembly from the model store (paper).",
         ("faces", "captions"), (), ("data", "model", "instructions", "flow", "restore", "bootstrap"), True,
         _bootstrap),
    Step("stage1_1", "Stage 1.1: semantic-to-diffusion alignment (CE + alpha * L_diff, Eq. 10).",
         ("faces", "captions", "base"), (), ("data", "model", "degrade", "instructions", "flow", "restore", "stage1_1"), True,
         _stage1_1),
    Step("stage1_2", "Stage 1.2: texture-to-diffusion alignment (L_diff + beta * latent MSE, Eq. 11).",
         ("faces", "captions", "base"), (), ("data", "model", "degrade", "instructions", "flow", "restore", "stage1_2"), True,
         _stage1_2),
    Step("stage2", "Stage 2: DiffusionNFT preference fine-tuning with LoRA (Eqs. 12-15).",
         ("faces", "captions", "base"), (), ("data", "model", "degrade", "flow", "restore", "rewards", "stage2"), True,
         _stage2),
    Step("evaluate", "Evaluate a model on the registered benchmarks with the paper's metrics.",
         ("model", "benchmarks"), ("baseline",), ("data", "evaluate", "image_limits"), True, _evaluate),
    Step("register", "Register the fidelity/quality variants in MLflow and promote them through gates.",
         ("fidelity", "quality", "reports"), (), ("register", "image_limits"), False, _register),
)

BY_NAME: dict[str, Step] = {s.name: s for s in STEPS}


def check_inputs(step: Step, inputs: Mapping[str, Path]) -> dict[str, Path]:
    """The step's named inputs as paths: unknown or missing names are a ``ValueError``, an absent
    path a ``FileNotFoundError`` (the CLI and the KFP components report both the same way)."""
    given = {k: Path(v) for k, v in inputs.items()}
    unknown = sorted(set(given) - set(step.inputs) - set(step.optional_inputs))
    missing = sorted(set(step.inputs) - set(given))
    if unknown or missing:
        raise ValueError(f"{step.name}: unknown inputs {unknown}, missing inputs {missing}")
    for name, path in given.items():
        if not path.exists():
            raise FileNotFoundError(f"{step.name}: input '{name}' does not exist: {path}")
    return given


def execute(step: Step, params: Params, inputs: Mapping[str, Path], out: Path) -> dict[str, Any]:
    """Run ``step`` inside its MLflow step run, logging the numbers of its summary as metrics.

    Under ``torchrun`` every rank runs the step, but only rank 0 opens the MLflow run (the others
    log nothing).
    """
    from prefrestore.core import tracking
    from prefrestore.train import distributed

    run = step.load()
    if not distributed.is_main():
        return run(params, inputs, Path(out))
    sections = {s: params.tree[s] for s in step.sections if s in params.tree}
    with tracking.step_run(step.name, params, inputs, sections):
        summary = run(params, inputs, Path(out))
        tracking.log_metrics({k: v for k, v in summary.items() if isinstance(v, int | float)})
    return summary


def get(name: str) -> Step:
    try:
        return BY_NAME[name]
    except KeyError:
        raise KeyError(f"unknown step '{name}'; known: {', '.join(BY_NAME)}") from None
