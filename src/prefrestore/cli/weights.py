"""``prefrestore weights plan|verify``: every pretrained file the pipeline needs, and whether it is staged.

The list is gathered from the ``WEIGHTS`` tuples of the metrics (``prefrestore.metrics``), the
rewards, the model and the captioner (explicit imports; a module not written yet is reported,
not skipped silently). ``plan`` says where each file goes (root + relative path), its checksum
(the published sha256 where one exists, else "unpublished — recorded at staging") and its source.
``verify`` reports present / missing / bad-checksum; ``--require`` makes anything missing an
error (exit 1). ``--record`` writes the sha256 of each present file without a published checksum
to ``<store>/weights.lock.json``; later ``verify`` runs check those files against it.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import json
import re
import sys
from pathlib import Path
from typing import Any

from prefrestore.core import atomic
from prefrestore.core.weights import WeightFile, root_dir, sha256_file, status

CONSUMERS = ("prefrestore.metrics", "prefrestore.train.rewards", "prefrestore.model", "prefrestore.data.captioner_qwen")
UNPUBLISHED = "unpublished — recorded at staging"
_HASH_SUFFIX = re.compile(r"-([0-9a-f]{8,64})\.(pth|pt|npz)$")  # torch.hub names carry a sha256 prefix


@dataclasses.dataclass
class Entry:
    root: str
    relpath: str
    sha256: str | None
    source: str
    names: list[str]
    used_by: list[str]

    @property
    def path(self) -> Path:
        return root_dir(self.root) / self.relpath  # type: ignore[arg-type]


def gather() -> tuple[list[Entry], dict[str, str]]:
    """All weight files, one entry per location (consumers merged), and modules that could not say."""
    entries: dict[tuple[str, str], Entry] = {}
    problems: dict[str, str] = {}
    for mod_name in CONSUMERS:
        try:
            mod = importlib.import_module(mod_name)
        except ModuleNotFoundError as exc:
            if exc.name and mod_name.startswith(exc.name):
                problems[mod_name] = "module not present yet"
                continue
            raise
        weights: tuple[WeightFile, ...] | None = getattr(mod, "WEIGHTS", None)
        if weights is None:
            problems[mod_name] = "declares no WEIGHTS"
            continue
        for w in weights:
            e = entries.setdefault((w.root, w.relpath), Entry(w.root, w.relpath, w.sha256, w.source, [], []))
            e.sha256 = e.sha256 or w.sha256
            if w.name not in e.names:
                e.names.append(w.name)
            if w.used_by not in e.used_by:
                e.used_by.append(w.used_by)
    return sorted(entries.values(), key=lambda e: (e.root, e.relpath)), problems


def lock_path() -> Path:
    return root_dir("store") / "weights.lock.json"


def _lock() -> dict[str, str]:
    f = lock_path()
    return json.loads(f.read_text()) if f.is_file() else {}


def check(e: Entry, lock: dict[str, str]) -> str:
    """'present', 'missing' or 'bad-checksum' (published sha256, hash-prefixed name, or staging record)."""
    w = WeightFile(e.names[0], e.root, e.relpath, e.sha256, e.used_by[0], e.source)  # type: ignore[arg-type]
    state = status(w, check_sha=True)
    if state != "present" or not e.path.is_file():
        return state
    m = _HASH_SUFFIX.search(e.relpath)
    recorded = lock.get(f"{e.root}:{e.relpath}")
    if (m and not e.sha256) or recorded:
        digest = sha256_file(e.path)
        if (m and not digest.startswith(m.group(1))) or (recorded and digest != recorded):
            return "bad-checksum"
    return "present"


def _checksum_text(e: Entry, lock: dict[str, str]) -> str:
    if e.sha256:
        return e.sha256
    m = _HASH_SUFFIX.search(e.relpath)
    recorded = lock.get(f"{e.root}:{e.relpath}")
    if recorded:
        return f"{recorded} (recorded at staging)"
    if m:
        return f"sha256 prefix {m.group(1)} (from the file name); full: {UNPUBLISHED}"
    return UNPUBLISHED


def plan_rows() -> tuple[list[dict[str, Any]], dict[str, str]]:
    entries, problems = gather()
    lock = _lock()
    rows = [{"file": ", ".join(e.names), "used_by": ", ".join(e.used_by), "root": e.root,
             "root_dir": str(root_dir(e.root)), "relpath": e.relpath,  # type: ignore[arg-type]
             "sha256": _checksum_text(e, lock), "source": e.source} for e in entries]
    return rows, problems


def cmd_plan(args: argparse.Namespace) -> int:
    rows, problems = plan_rows()
    if args.json:
        print(json.dumps({"files": rows, "modules": problems}, indent=2))
        return 0
    print(f"{len(rows)} weight files. Roots: hf={root_dir('hf')}  torch={root_dir('torch')}  "
          f"store={root_dir('store')}\n")
    for r in rows:
        print(f"- {r['root']}:{r['relpath']}\n    used by: {r['used_by']}\n    sha256: {r['sha256']}\n"
              f"    source: {r['source']}")
    for mod, why in problems.items():
        print(f"! {mod}: {why}")
    return 0


def cmd_verify(args: argparse.Namespace) -> int:
    entries, problems = gather()
    lock = _lock()
    states = {f"{e.root}:{e.relpath}": check(e, lock) for e in entries}
    if args.record:
        new = dict(lock)
        for e in entries:
            key = f"{e.root}:{e.relpath}"
            if states[key] == "present" and e.path.is_file() and not e.sha256 and key not in lock:
                new[key] = sha256_file(e.path)
        if new != lock:
            atomic.write_json(lock_path(), new)
            print(f"recorded {len(new) - len(lock)} checksum(s) in {lock_path()}")
    counts = {s: sum(1 for v in states.values() if v == s) for s in ("present", "missing", "bad-checksum")}
    if args.json:
        print(json.dumps({"files": states, "counts": counts, "modules": problems}, indent=2))
    else:
        for e in entries:
            key = f"{e.root}:{e.relpath}"
            print(f"{states[key]:<13} {key}  ({', '.join(e.used_by)})  -> {e.path}")
        for mod, why in problems.items():
            print(f"! {mod}: {why}")
        print(f"\n{counts['present']} present, {counts['missing']} missing, {counts['bad-checksum']} bad checksum")
    if counts["bad-checksum"]:
        return 1
    if args.require and counts["missing"]:
        print("error: --require: some weight files are missing", file=sys.stderr)
        return 1
    return 0


def cmd_verify_profile(args: argparse.Namespace) -> int:
    """``verify --profile P``: every part the profile starts from, key for key, headers only."""
    import time

    from prefrestore.core.config import load
    from prefrestore.model.config import ModelConfig
    from prefrestore.model.verify import Result, table, verify_aux, verify_model

    t0 = time.perf_counter()
    params = load(args.profile)
    cfg = params.section("model", ModelConfig)
    parts = all_parts()
    unknown = sorted(set(args.aux) - set(parts))
    if unknown:
        print(f"error: --aux: unknown part(s) {unknown}; known: {', '.join(parts)}", file=sys.stderr)
        return 2
    if cfg.init == "random":
        print(f"profile '{args.profile}' starts from random weights (model.init: random): no model part to verify")
        if not args.aux:
            return 0
    result = verify_model(cfg) if cfg.init != "random" else Result({}, {}, {}, None)
    aux = {name: verify_aux(parts[name]) for name in args.aux}
    print(f"profile '{args.profile}': model.init = {cfg.init}; store = {root_dir('store')}")
    print("\n".join(table(result, aux)))
    ok = result.ok and all(rep is not None and rep.ok for rep, _ in aux.values())
    print(f"\n{'OK' if ok else 'GAPS FOUND'} ({time.perf_counter() - t0:.1f} s, headers only)")
    return 0 if ok else 1


def all_parts() -> dict[str, Any]:
    """Every public part with a manifest: the model's and captioner/rewards' (``model.parts``), the metrics' weights."""
    from prefrestore.evaluation.metric_weights import PARTS as METRIC_PARTS
    from prefrestore.model.parts import PARTS

    return {**PARTS, **METRIC_PARTS}


def cmd_manifests(args: argparse.Namespace) -> int:
    """Regenerate ``model/manifests`` and ``evaluation/manifests`` from the public classes on meta (``--check``: compare)."""
    from prefrestore.model.manifest import stale_manifests, write_manifests

    parts = all_parts()
    names = args.parts or list(parts)
    unknown = sorted(set(names) - set(parts))
    if unknown:
        print(f"error: unknown part(s) {unknown}; known: {', '.join(parts)}", file=sys.stderr)
        return 2
    if args.check:
        stale = stale_manifests(parts, names)
        for name in stale:
            print(f"stale: {name} (run `prefrestore weights manifests {name}`)")
        return 1 if stale else 0
    for path in write_manifests(parts, names):
        print(f"wrote {path}")
    return 0


def _verify(args: argparse.Namespace) -> int:
    return cmd_verify_profile(args) if args.profile else cmd_verify(args)


def add_parser(sub: Any) -> None:
    """The ``weights`` subcommand block (called from ``cli.build_parser``)."""
    p = sub.add_parser("weights", help="List (plan) or check (verify) every pretrained file the pipeline needs.")
    wsub = p.add_subparsers(dest="weights_command", metavar="ACTION", required=True)
    pp = wsub.add_parser("plan", help="every file: where it goes, checksum, source")
    pp.add_argument("--json", action="store_true", help="machine-readable output")
    pp.set_defaults(handler=cmd_plan)
    pv = wsub.add_parser("verify", help="present / missing / bad-checksum for every file")
    pv.add_argument("--require", action="store_true", help="exit 1 when any file is missing (production)")
    pv.add_argument("--record", action="store_true",
                    help="record the sha256 of present files that have no published checksum (staging)")
    pv.add_argument("--json", action="store_true", help="machine-readable output")
    pv.add_argument("--profile", help="instead: check the staged files a profile starts from, key for key "
                                      "(safetensors headers, ta_tok.pth memory-mapped); exit 1 on any gap")
    pv.add_argument("--aux", nargs="*", default=[], metavar="PART",
                    help="with --profile: also check these parts against their manifests (e.g. qwen2.5-vl-32b-instruct "
                         "clip-vit-large-patch14 pickscore-v1 hpsv2.1, and the metric files pyiqa-musiq-koniq ...; "
                         "`weights manifests --check` lists every name)")
    pv.set_defaults(handler=_verify)
    pm = wsub.add_parser("manifests", help="regenerate the public-checkpoint manifests (model/manifests, evaluation/manifests)")
    pm.add_argument("parts", nargs="*", help="part names (default: all)")
    pm.add_argument("--check", action="store_true", help="exit 1 if a committed manifest differs from a fresh build")
    pm.set_defaults(handler=cmd_manifests)
