"""``prefrestore``: a thin command line over the library's step functions.

Each step subcommand only parses arguments, loads its profile from ``params.yaml`` and calls the
step's ``run(params, inputs, out)`` inside an MLflow run. Other subcommands (weights, restore,
pipeline, params) are equally thin.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

from prefrestore.core import errors
from prefrestore.core.config import load, profile_names, read_params_file
from prefrestore.pipeline import steps

EPILOG = """Every hyperparameter lives in params.yaml; --profile picks a profile (default: the file's
'profile' key). Tracking goes to $MLFLOW_TRACKING_URI, or to the embedded SQLite store mlflow.db.
A failure prints one line and exits 1 (bad input or data), 2 (usage or config), 3 (missing
weights) or 4 (data validation failed); --debug shows the traceback."""


def _parse_kv(items: Sequence[str], what: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for item in items:
        if "=" not in item:
            raise errors.UsageError(f"{what} expects NAME=VALUE, got {item!r}")
        key, value = item.split("=", 1)
        out[key.strip()] = value
    return out


def _add_step_parser(sub: Any, step: steps.Step) -> None:
    ins = ", ".join(step.inputs) or "none"
    opt = f" (optional: {', '.join(step.optional_inputs)})" if step.optional_inputs else ""
    p = sub.add_parser(
        step.name,
        help=step.help,
        description=f"{step.help}\n\nInputs: {ins}{opt}. Reads params sections: {', '.join(step.sections)}.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--profile", help="params.yaml profile (default: the file's 'profile' key)")
    p.add_argument("--in", dest="inputs", action="append", default=[], metavar="NAME=PATH",
                   help=f"a named input; this step takes: {ins}{opt}")
    p.add_argument("--out", required=True, type=Path, help="output directory (written atomically)")
    p.add_argument("--summary", type=Path, help="also write the step's JSON summary here (DVC metrics)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE",
                   help="override one params value for this run (YAML syntax); unknown keys are errors")
    if step.name == "ingest":
        p.add_argument("--source", help="folder:<path>, hf:<dataset> or synthetic (overrides ingest.source)")
    if step.name in RESUMABLE:
        p.add_argument("--resume", action="store_true",
                       help="require a run to continue: a sound checkpoint (or the finished model) in --out; "
                            "without the flag a run still resumes from one when it is there")
    p.set_defaults(handler=_run_step, step=step)


RESUMABLE = ("stage1_1", "stage1_2", "stage2")  # the steps that checkpoint into <out>/checkpoints


def _check_resume(out: Path) -> None:
    """``--resume``: fail before any work when ``out`` holds nothing to continue from."""
    from prefrestore.train import checkpoint
    from prefrestore.train.common import CHECKPOINTS, METRICS_FILE

    if (out / METRICS_FILE).is_file() and (out / "config.json").is_file():
        return  # a finished run: the step checks its fingerprint and returns its summary
    found, report = checkpoint.latest(out / CHECKPOINTS)  # what the step itself will resume from
    for line in report:
        print(f"warning: {line}", file=sys.stderr)
    if found is not None:
        return
    n = len(checkpoint.list_checkpoints(out / CHECKPOINTS))
    what = f"{n} checkpoint(s), none sound" if n else "no checkpoint"
    raise errors.InputError(f"--resume: {out / CHECKPOINTS} holds {what}; drop --resume to start a new run")


def _run_step(args: argparse.Namespace) -> int:
    step: steps.Step = args.step
    profile = args.profile or read_params_file()["profile"]
    overrides = {k: yaml.safe_load(v) for k, v in _parse_kv(args.overrides, "--set").items()}
    if getattr(args, "source", None):
        overrides["ingest.source"] = args.source
    params = load(profile)
    if overrides:
        params = params.with_overrides(overrides)
    try:
        inputs = steps.check_inputs(step, {k: Path(v) for k, v in _parse_kv(args.inputs, "--in").items()})
    except ValueError as exc:  # unknown or missing input names; an absent path stays a FileNotFoundError (1)
        raise errors.UsageError(str(exc)) from None
    if getattr(args, "resume", False):
        _check_resume(args.out)
    summary = steps.execute(step, params, inputs, args.out)
    from prefrestore.train import distributed

    if not distributed.is_main():  # under torchrun: rank 0 reports
        return 0
    if args.summary:
        from prefrestore.core.atomic import write_json

        write_json(args.summary, summary)
    print(json.dumps(summary, indent=2, sort_keys=True, default=str))
    return 0


def _demo(profile: str | None) -> int:
    from prefrestore.pipeline import demo

    return demo.run(profile)


def _params_cmd(args: argparse.Namespace) -> int:
    if args.list:
        print("\n".join(profile_names()))
        return 0
    profile = args.profile or read_params_file()["profile"]
    tree = load(profile).tree
    if args.section:
        tree = {args.section: tree[args.section]}
    print(yaml.safe_dump(json.loads(json.dumps(tree, default=list)), sort_keys=False))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="prefrestore",
        description="Pref-Restore pipeline: train, evaluate and ship a blind face restoration model.",
        epilog=EPILOG,
    )
    parser.add_argument("--debug", action="store_true",
                        help=f"show the traceback of a failure (also {errors.DEBUG_ENV}=1); exit codes: 1 bad input "
                             "or data, 2 usage or config, 3 missing weights, 4 data validation failed")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for step in steps.STEPS:
        _add_step_parser(sub, step)
    p = sub.add_parser("demo", help="Run the whole pipeline (dvc repro) under one MLflow parent run.")
    p.add_argument("--profile", help="must equal params.yaml's active profile (DVC tracks that key)")
    p.set_defaults(handler=lambda a: _demo(a.profile))
    p = sub.add_parser("params", help="Print a profile's resolved parameters.")
    p.add_argument("--profile")
    p.add_argument("--section", help="only this section")
    p.add_argument("--list", action="store_true", help="list the profiles")
    p.set_defaults(handler=_params_cmd)
    from prefrestore.cli import restore, weights  # `prefrestore weights ...`, `prefrestore restore ...`

    weights.add_parser(sub)
    restore.add_parser(sub)
    p = sub.add_parser("model-info", help="Parameter counts and shapes of a profile's model (meta device).")
    p.add_argument("--profile", help="params.yaml profile (default: the file's 'profile' key)")
    p.add_argument("--plan", action="store_true",
                   help="also the memory per GPU of each training stage under ZeRO-0/1/2/3 (train/memory_plan.py)")
    p.add_argument("--gpus", type=int, metavar="N", help="with --plan: data-parallel GPUs (required with --plan)")
    p.set_defaults(handler=_model_info_cmd)
    return parser


def _model_info_cmd(args: argparse.Namespace) -> int:
    from prefrestore.model.params_count import model_info

    profile = args.profile or read_params_file()["profile"]
    if args.plan and (args.gpus is None or args.gpus < 1):
        print("error: --plan needs --gpus N (N >= 1)", file=sys.stderr)
        return 2
    print(model_info(profile))
    if args.plan:
        from prefrestore.train.memory_plan import plan_table

        print("\n" + plan_table(load(profile), args.gpus))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command; an expected failure is one line on stderr and an exit code (:mod:`prefrestore.core.errors`)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    errors.quiet_offline_runtime()
    try:
        return int(args.handler(args) or 0)
    except (Exception, KeyboardInterrupt) as exc:
        known = errors.classify(exc)
        if known is None or args.debug or errors.debug_enabled():
            raise
        print(f"prefrestore {args.command}: {known[1]}", file=sys.stderr)
        return known[0]


if __name__ == "__main__":
    sys.exit(main())
