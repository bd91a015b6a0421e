"""The runtime side of the KFP components: what runs inside a pipeline pod.

The KFP components (``components/``) are thin: each one calls a function of this module inside the
pod, which calls the step's ``run(params, inputs, out)`` exactly as ``prefrestore <step>`` does
(same input checks, same MLflow step run). This module never imports ``kfp``, ``components`` or
``pipelines``: compiling and submitting the pipelines is ``pipelines/cli.py``
(``prefrestore-pipeline compile|run --local|submit``), which imports the library, not the reverse.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from prefrestore.core import atomic, tracking
from prefrestore.core.config import Params, load
from prefrestore.pipeline import steps

# ---------------------------------------------------------------------------------------------
# runtime: called by the components inside their pods
# ---------------------------------------------------------------------------------------------


def _params(profile: str, overrides: Mapping[str, Any] | None) -> Params:
    params = load(profile)
    return params.with_overrides(overrides) if overrides else params


def run_component(step_name: str, profile: str, inputs: Mapping[str, str | None], out: str,
                  overrides: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Run one step as ``prefrestore <step>`` would: check inputs, open the MLflow step run, call run().

    ``inputs`` maps input names to artifact paths; ``None`` marks an optional input not connected.
    """
    step = steps.get(step_name)
    given = steps.check_inputs(step, {k: v for k, v in inputs.items() if v is not None})
    params = _params(profile, overrides)
    os.environ.setdefault(tracking.ORCHESTRATOR_ENV, "kfp")
    summary = steps.execute(step, params, given, Path(out))
    return summary


def log_summary(summary: Mapping[str, Any], metrics: Any) -> None:
    """Log a step summary's numbers to a KFP ``Metrics`` artifact (``log_metric(name, value)``)."""
    for key, value in summary.items():
        if isinstance(value, int | float) and not isinstance(value, bool):
            metrics.log_metric(key.replace("/", "."), float(value))


def _copy_in(src: Path, dst: Path) -> None:
    """Copy an input artifact onto the shared volume once (a retried launcher reuses the copy)."""
    done = dst.with_name(f".{dst.name}.copied")
    if done.exists():
        return
    shutil.rmtree(dst, ignore_errors=True)
    if src.is_dir():
        shutil.copytree(src, dst)
    else:
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(src, dst)
    done.touch()


def run_training(step_name: str, profile: str, launch: str, run_id: str,
                 inputs: Mapping[str, str | None], out: str) -> dict[str, Any]:
    """A training stage: inline in this pod, or as a TrainJob/PyTorchJob (``cluster.training``).

    A launched job cannot see KFP's artifact paths, so inputs are copied to the shared data PVC
    (``<data_mount>/runs/<job name>/in/``), the job writes ``.../out``, and that is copied back into
    the KFP output artifact.
    """
    if launch == "inline":
        return run_component(step_name, profile, inputs, out)
    from prefrestore.pipeline import launcher

    cluster = launcher.cluster_config(load(profile))
    work = Path(cluster.data_mount) / "runs" / launcher.job_name(run_id, step_name)
    shared: dict[str, str] = {}
    for name, path in inputs.items():
        if path is not None:
            _copy_in(Path(path), work / "in" / name)
            shared[name] = str(work / "in" / name)
    spec = launcher.JobSpec(step=step_name, profile=profile, run_id=run_id, inputs=shared,
                            out=str(work / "out"), kind=launch)  # type: ignore[arg-type]
    state = launcher.run_job(spec, cluster)
    with atomic.atomic_path(out) as tmp:
        shutil.copytree(work / "out", tmp)
    summary_file = Path(out) / "metrics.json"
    summary = json.loads(summary_file.read_text()) if summary_file.is_file() else {}
    return {"job_state": state, **{k: v for k, v in summary.items() if isinstance(v, int | float)}}


def benchmark_names(profile: str) -> list[str]:
    """The benchmarks the evaluation fans out over: ``evaluate.benchmarks`` of the profile."""
    return list(load(profile).tree["evaluate"]["benchmarks"])


def _merge_json(a: Any, b: Any, where: str) -> Any:
    if isinstance(a, dict) and isinstance(b, dict):
        out = dict(a)
        for k, v in b.items():
            out[k] = _merge_json(a[k], v, f"{where}.{k}") if k in a else v
        return out
    if a != b:
        raise ValueError(f"conflicting values at {where}: {a!r} vs {b!r}")
    return a


def merge_reports(parts: Sequence[tuple[str, str]], out: str) -> dict[str, int]:
    """Merge fanned-out evaluation reports into one ``reports/`` tree: ``eval_<variant>/...``.

    Each part is (variant, folder of one benchmark's evaluation, ``prefrestore evaluate`` output).
    Files are copied; a JSON file present in several parts (``metrics.json``: per-benchmark keys)
    is deep-merged, and conflicting values are an error; a Markdown file (``report.md``) is
    concatenated in part order; any other clash with different bytes is an error, never a silent
    overwrite. The layout is what ``register`` reads: ``<reports>/eval_<variant>/metrics.json``.
    """
    counts: dict[str, int] = {}
    with atomic.atomic_path(out) as tmp:
        for variant, folder in parts:
            dest_root = tmp / f"eval_{variant}"
            counts[variant] = counts.get(variant, 0) + 1
            for src in sorted(p for p in Path(folder).rglob("*") if p.is_file()):
                dest = dest_root / src.relative_to(folder)
                dest.parent.mkdir(parents=True, exist_ok=True)
                if not dest.exists():
                    shutil.copy2(src, dest)
                elif dest.read_bytes() == src.read_bytes():
                    continue
                elif src.suffix == ".json":
                    merged = _merge_json(json.loads(dest.read_text()), json.loads(src.read_text()), str(dest))
                    dest.write_text(json.dumps(merged, indent=2, sort_keys=True) + "\n")
                elif src.suffix == ".md":
                    dest.write_text(dest.read_text().rstrip("\n") + "\n\n" + src.read_text())
                else:
                    raise ValueError(f"two evaluation parts write different {src.relative_to(folder)} "
                                     f"for variant '{variant}'")
    return counts


def publish_release(run_id: str, models: Mapping[str, str], decision: str, release_root: str) -> dict[str, str]:
    """Promotion: copy the promoted variants to ``<release_root>/<run_id>/`` and point ``latest.json`` at it."""
    root = Path(release_root)
    target = root / run_id
    with atomic.atomic_path(target) as tmp:
        for variant, path in models.items():
            shutil.copytree(path, tmp / variant)
        src = Path(decision)
        if src.is_dir():
            shutil.copytree(src, tmp / "decision")
        else:
            (tmp / "decision").mkdir(parents=True)
            shutil.copy2(src, tmp / "decision" / src.name)
    pointer = {"run_id": run_id, "path": str(target), "variants": sorted(models)}
    atomic.write_json(root / "latest.json", pointer)
    return {k: str(v) for k, v in pointer.items()}
