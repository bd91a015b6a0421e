"""``prefrestore-pipeline compile|run --local|submit``: the Kubeflow pipelines as a cluster sees them.

This is the one place that imports ``kfp`` to build, compile and submit; it imports the library
(``prefrestore``), never the reverse. Inside the pods the components call
``prefrestore.pipeline.kfp_runtime``.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from pipelines import evaluation, training
from prefrestore.core import atomic
from prefrestore.core.config import PROJECT_ROOT, ConfigError, load, read_params_file
from prefrestore.pipeline.launcher import cluster_config

PIPELINES = ("training", "evaluation")
COMPILED_DIR = PROJECT_ROOT / "pipelines" / "compiled"
COMPILED_PROFILES = ("paper", "tiny")  # the committed compiled YAML (a test fails when it is stale)
DIGEST = "@sha256:"


def pipeline_func(name: str, profile: str, image: str | None = None) -> Any:
    """The KFP pipeline function ``name`` for ``profile`` (its ``cluster`` section); ``image``
    replaces ``cluster.image`` (a digest-pinned build of this commit, for :func:`submit`)."""
    params = load(profile)
    cluster = cluster_config(params.with_overrides({"cluster.image": image}) if image else params)
    if name == "training":
        return training.build(cluster, profile)
    if name == "evaluation":
        return evaluation.build(cluster, profile)
    raise ValueError(f"unknown pipeline '{name}'; known: {', '.join(PIPELINES)}")


def compile_pipelines(profile: str, out_dir: Path, names: Sequence[str] = PIPELINES) -> list[Path]:
    """Compile each pipeline to ``<out_dir>/<name>-<profile>.yaml`` (written atomically)."""
    import tempfile

    from kfp import compiler

    written = []
    for name in names:
        path = Path(out_dir) / f"{name}-{profile}.yaml"
        with tempfile.TemporaryDirectory() as tmp:
            package = Path(tmp) / path.name  # KFP insists on a .yaml name
            compiler.Compiler().compile(pipeline_func(name, profile), str(package))
            atomic.write_bytes(path, package.read_bytes())
        written.append(path)
    return written


def run_local(profile: str, pipeline_root: Path, arguments: Mapping[str, Any] | None = None,
              name: str = "training") -> Any:
    """Run a pipeline with ``kfp.local`` (SubprocessRunner in this environment; no Docker, no cluster)."""
    from kfp import local

    local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=str(pipeline_root))
    return pipeline_func(name, profile)(**dict(arguments or {}))


def check_cacheable(image: str, caching: bool) -> None:
    """KFP reuses a cached task when its component spec and inputs are unchanged. The library code
    is not in the spec: it is in the image. So a cached run is only sound when the image reference
    changes with the code, i.e. is pinned by digest (``repo@sha256:...``, one per build); a tag can
    be re-pushed over new code and would serve stale results. Refuse that unless caching is off."""
    if caching and DIGEST not in image:
        raise SystemExit(f"prefrestore-pipeline: image '{image}' is a tag, so KFP's cache would reuse results "
                         f"across code changes; pass --image REPO{DIGEST}<digest> of this commit's build, or --no-cache")


def submit(host: str, profile: str, name: str, arguments: Mapping[str, Any], experiment: str,
           image: str | None = None, caching: bool = True) -> str:
    """Compile and submit a run to a Kubeflow Pipelines endpoint; returns the run id (:func:`check_cacheable`)."""
    import tempfile

    import kfp
    from kfp import compiler

    cluster = cluster_config(load(profile))
    check_cacheable(image or cluster.image, caching)
    with tempfile.TemporaryDirectory() as tmp:
        package = Path(tmp) / f"{name}-{profile}.yaml"
        compiler.Compiler().compile(pipeline_func(name, profile, image), str(package))
        client = kfp.Client(host=host, namespace=cluster.namespace)
        run = client.create_run_from_pipeline_package(str(package), arguments=dict(arguments),
                                                      experiment_name=experiment,
                                                      namespace=cluster.namespace,
                                                      service_account=cluster.service_account,
                                                      enable_caching=caching)
    return str(run.run_id)


def _args(items: Sequence[str]) -> dict[str, Any]:
    import yaml

    out = {}
    for item in items:
        if "=" not in item:
            raise SystemExit(f"prefrestore-pipeline: --arg expects NAME=VALUE, got {item!r}")
        key, value = item.split("=", 1)
        out[key] = yaml.safe_load(value)
    return out


def _command(args: argparse.Namespace) -> int:
    profile = args.profile or read_params_file()["profile"]
    if args.action == "compile":
        for path in compile_pipelines(profile, args.out, args.pipeline or PIPELINES):
            print(path)
    elif args.action == "run":
        if not args.local:
            raise SystemExit("prefrestore-pipeline: `run` needs --local (use `submit --host URL` for a cluster)")
        for name in args.pipeline or ["training"]:
            run_local(profile, args.pipeline_root, _args(args.arg), name)
    else:
        if not args.host:
            raise SystemExit("prefrestore-pipeline: `submit` needs --host URL")
        for name in args.pipeline or ["training"]:
            print(submit(args.host, profile, name, _args(args.arg), args.experiment, args.image, not args.no_cache))
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="prefrestore-pipeline",
        description="Compile, run locally (kfp.local) or submit the Kubeflow pipelines. "
                    "The same steps as `prefrestore <step>` and `dvc repro`, as KFP components.")
    p.add_argument("action", choices=["compile", "run", "submit"])
    p.add_argument("--profile", help="params.yaml profile (default: the file's 'profile' key)")
    p.add_argument("--pipeline", action="append", choices=PIPELINES, help="which pipeline (repeatable)")
    p.add_argument("--out", type=Path, default=COMPILED_DIR, help="compile: output folder")
    p.add_argument("--local", action="store_true", help="run: execute with kfp.local in this environment")
    p.add_argument("--pipeline-root", type=Path, default=Path("reports/kfp_local"),
                   help="run --local: where task outputs go")
    p.add_argument("--host", help="submit: the Kubeflow Pipelines API endpoint")
    p.add_argument("--experiment", default="prefrestore", help="submit: KFP experiment name")
    p.add_argument("--image", help="submit: this commit's image, pinned by digest (REPO@sha256:...); "
                                   "replaces cluster.image so that KFP's cache key follows the code")
    p.add_argument("--no-cache", action="store_true", help="submit: run every task afresh (allows a tag image)")
    p.add_argument("--arg", action="append", default=[], metavar="NAME=VALUE",
                   help="a pipeline parameter (YAML value), e.g. model_uri=s3://...")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """``prefrestore-pipeline`` / ``python -m pipelines``."""
    args = build_parser().parse_args(argv)
    try:
        return _command(args)
    except ConfigError as exc:
        print(f"config error: {exc}", file=sys.stderr)
        return 2
