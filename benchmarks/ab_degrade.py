"""Same-process A/B of the degradation fast path (Eq. 16): this checkout against another version of it.

    python benchmarks/ab_degrade.py --rev HEAD~1 --profile released --draws 1000 --images ../shared/data/faces/hq
    python benchmarks/ab_degrade.py --base-dir /tmp/variant --profile released --draws 1000   # fast.py, dft.py, direct.py there

The box's speed drifts by 10-20% within minutes (RESULTS.md, issue 20, follow-up 6), so two bench runs at
two commits cannot tell a 5% change from noise. Here both versions run in one process, on one thread
(BLAS, OpenCV, torch), on the same images and the same drawn params (self-reconstruction off):

* the baseline is ``src/prefrestore/data/degrade/{fast,dft,direct}.py`` read at ``--rev`` (``git show``)
  or from ``--base-dir`` (a file missing there is this checkout's); both it and this checkout's files are
  imported the same way, as private copies wired to each other (each ``direct`` uses its own ``fast`` and
  ``dft``), so each version has its own geometry caches and work buffers and neither is favoured. (Until
  2026-12-07 this checkout ran as the package itself and the reference draws used its work buffers,
  warming them for it alone: the same code then measured 1.021-1.045x over itself; now 0.973-1.010x,
  RESULTS.md, issue 20, follow-up 10);
* each version first runs ``--warmup`` untimed draws on other params (its caches then miss as often as
  in a long run);
* the timed draws go in chunks of ``--chunk``; before each version's chunk one reference draw
  (that version's ``degrade_reference``) evicts the caches as ``bench_degrade.py``'s interleaving does,
  and the versions' order rotates per chunk;
* CPU time of this thread, per version; the speed-up is pooled and given per quarter of the draws.

Afterwards both versions degrade the first ``--compare`` timed draws again and the LQ images are compared:
how many are byte-identical, and the largest difference. Exit codes: 0 done, 2 bad arguments or a
revision/file that cannot be read, 3 a version failed on the drawn params.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import subprocess
import sys
import tempfile
import time
import types
from pathlib import Path

import cv2
import numpy as np
import torch
from threadpoolctl import threadpool_limits

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))  # degrade_common.py, beside this script
from degrade_common import machine, test_images  # noqa: E402  (also puts src/ first)

from prefrestore.core.config import load  # noqa: E402
from prefrestore.data.degrade import direct  # noqa: E402

MODULES = ("fast", "dft", "direct")  # import order: dft uses fast; direct uses both
PACKAGE_DIR = "src/prefrestore/data/degrade"


class ABError(Exception):
    """A bad argument or an unreadable baseline: one line for the user, exit code ``code``."""

    def __init__(self, message: str, code: int = 2) -> None:
        super().__init__(message)
        self.code = code


def baseline_sources(rev: str | None, base_dir: Path | None) -> dict[str, str]:
    """The baseline's source text of each module in :data:`MODULES`, from ``git show REV:path`` or ``base_dir``."""
    sources = {}
    for name in MODULES:
        path = f"{PACKAGE_DIR}/{name}.py"
        if base_dir is not None:
            file = base_dir / f"{name}.py"
            sources[name] = file.read_text() if file.is_file() else (ROOT / path).read_text()
            continue
        shown = subprocess.run(["git", "-C", str(ROOT), "show", f"{rev}:{path}"], capture_output=True, text=True)
        if shown.returncode != 0:
            reason = (shown.stderr.strip().splitlines() or ["git show failed"])[-1]
            raise ABError(f"cannot read {path} at revision {rev!r}: {reason}")
        sources[name] = shown.stdout
    return sources


def load_version(sources: dict[str, str], folder: Path, prefix: str) -> types.ModuleType:
    """Import one version's modules under private names (``ab_<prefix>_fast``, ...), wired to each other; returns its ``direct``."""
    loaded: dict[str, types.ModuleType] = {}
    for name in MODULES:
        file = folder / f"ab_{prefix}_{name}.py"
        file.write_text(sources[name])
        spec = importlib.util.spec_from_file_location(f"ab_{prefix}_{name}", file)
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = module  # dataclasses look their module up there
        try:
            spec.loader.exec_module(module)
        except Exception as exc:  # noqa: BLE001 - any import failure of the baseline is the user's to fix
            raise ABError(f"the {prefix}'s {name}.py does not import: {type(exc).__name__}: {exc}") from exc
        for attr, other in (("fast", "fast"), ("degrade_fast", "fast"), ("degrade_dft", "dft")):
            if other in loaded and isinstance(getattr(module, attr, None), types.ModuleType):
                setattr(module, attr, loaded[other])
        loaded[name] = module
    return loaded["direct"]


def run(args: argparse.Namespace) -> dict:
    """The A/B itself (see the module docstring); returns ms/img per version, speed-ups and the output comparison."""
    for flag in ("draws", "warmup", "chunk", "size", "compare"):
        if getattr(args, flag) < (0 if flag in ("warmup", "compare") else 1):
            raise ABError(f"--{flag} must be {'non-negative' if flag in ('warmup', 'compare') else 'positive'}, "
                          f"got {getattr(args, flag)}")
    if args.base_dir is not None and not args.base_dir.is_dir():
        raise ABError(f"--base-dir {args.base_dir} is not a folder")
    try:
        cfg = load(args.profile).section("degrade", direct.DegradeConfig)
    except (KeyError, ValueError) as exc:
        raise ABError(f"profile {args.profile!r}: {exc}") from exc
    try:
        faces = test_images(10, args.size, args.images)
    except (OSError, ValueError) as exc:
        raise ABError(str(exc)) from exc
    rng = np.random.default_rng(args.seed)

    def draws(n: int) -> list[direct.DegradeParams]:
        return [dataclasses.replace(direct.draw_params(rng, cfg), self_rec=False) for _ in range(n)]

    with tempfile.TemporaryDirectory() as tmp:
        this_sources = {name: (ROOT / PACKAGE_DIR / f"{name}.py").read_text() for name in MODULES}
        versions = {"baseline": load_version(baseline_sources(args.rev, args.base_dir), Path(tmp), "baseline"),
                    "this": load_version(this_sources, Path(tmp), "checkout")}
        names = list(versions)
        modules = {name: (version.__name__, version.degrade_fast.__name__) for name, version in versions.items()}
        cv2.setNumThreads(1)
        torch.set_num_threads(1)
        with threadpool_limits(1):
            for name in names:
                for k, p in enumerate(draws(args.warmup)):
                    call(versions[name], name, faces[k % len(faces)], p, cfg)
            timed = draws(args.draws)
            seconds = {name: np.zeros(4) for name in names}
            ref_seconds, ref_draws = 0.0, 0
            for c, start in enumerate(range(0, args.draws, args.chunk)):
                chunk = timed[start:start + args.chunk]
                quarter = min(3, 4 * start // args.draws)
                for name in names[c % 2:] + names[:c % 2]:
                    t = time.thread_time()
                    reference(versions[name], name, faces[start % len(faces)], chunk[0], cfg)
                    ref_seconds += time.thread_time() - t
                    ref_draws += 1
                    t = time.thread_time()
                    for j, p in enumerate(chunk):
                        call(versions[name], name, faces[(start + j) % len(faces)], p, cfg)
                    seconds[name][quarter] += time.thread_time() - t
            identical, worst = 0, 0
            for k, p in enumerate(timed[:args.compare]):
                a, b = (call(versions[name], name, faces[k % len(faces)], p, cfg) for name in names)
                identical += int(np.array_equal(a, b))
                worst = max(worst, int(np.abs(a.astype(np.int16) - b.astype(np.int16)).max()))
    ref_ms = ref_seconds / ref_draws * 1e3
    ms = {name: float(seconds[name].sum() / args.draws * 1e3) for name in names}
    quarters = seconds["baseline"] / np.maximum(seconds["this"], 1e-12)
    return {"ms": ms, "ref_ms": ref_ms, "speedup": ms["baseline"] / ms["this"], "modules": modules,
            "speedup_range": (float(quarters.min()), float(quarters.max())),
            "identical": identical, "compared": min(args.compare, args.draws), "max_abs_diff": worst}


def reference(version: types.ModuleType, name: str, image: np.ndarray, p: direct.DegradeParams, cfg) -> None:
    """``version.degrade_reference(image, p, cfg)`` (evicts the caches before that version's chunk); a failure is the version's, exit code 3."""
    try:
        version.degrade_reference(image, p, cfg)
    except Exception as exc:  # noqa: BLE001 - an older baseline may lack it or not accept today's params
        raise ABError(f"the {name} version's reference failed on {p}: {type(exc).__name__}: {exc}", code=3) from exc


def call(version: types.ModuleType, name: str, image: np.ndarray, p: direct.DegradeParams, cfg) -> np.ndarray:
    """``version.degrade(image, p, cfg)``; a failure is reported as the version's, with exit code 3."""
    try:
        return version.degrade(image, p, cfg)
    except Exception as exc:  # noqa: BLE001 - an older baseline may not accept today's params
        raise ABError(f"the {name} version failed on {p}: {type(exc).__name__}: {exc}", code=3) from exc


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    base = parser.add_mutually_exclusive_group()
    base.add_argument("--rev", default="HEAD", help="git revision of the baseline (default HEAD)")
    base.add_argument("--base-dir", type=Path, help="folder with the baseline's fast.py / dft.py / direct.py")
    parser.add_argument("--profile", default="released", help="params.yaml profile whose degrade ranges are drawn")
    parser.add_argument("--draws", type=int, default=1000, help="timed draws per version")
    parser.add_argument("--warmup", type=int, default=600, help="untimed draws per version first")
    parser.add_argument("--chunk", type=int, default=5, help="draws per chunk (one reference draw before each)")
    parser.add_argument("--compare", type=int, default=100, help="timed draws whose LQ outputs are compared")
    parser.add_argument("--images", type=Path, help="folder of real face PNGs, the first 10 (else synthetic images)")
    parser.add_argument("--size", type=int, default=512, help="image side, pixels (faces are resized to it)")
    parser.add_argument("--seed", type=int, default=7, help="seed of the drawn params")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        result = run(args)
    except ABError as exc:
        print(f"ab_degrade: {exc}", file=sys.stderr)
        return exc.code
    lo, hi = result["speedup_range"]
    print(f"# {machine()}")
    for name, ms in result["ms"].items():
        print(f"{name:8s} {ms:.3f} ms/img  ratio vs reference {result['ref_ms'] / ms:.2f}x")
    print(f"reference {result['ref_ms']:.2f} ms/img")
    print(f"speed-up of this checkout over the baseline: {result['speedup']:.3f}x (quarters {lo:.3f}-{hi:.3f})")
    print(f"LQ outputs byte-identical: {result['identical']} / {result['compared']}; "
          f"largest difference {result['max_abs_diff']} levels")
    return 0


if __name__ == "__main__":
    sys.exit(main())
