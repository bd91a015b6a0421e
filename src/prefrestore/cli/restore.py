"""``prefrestore restore``: restore face images with a registered or local Pref-Restore model.

    prefrestore restore INPUT... --variant fidelity|quality [--model models:/<name>@champion | DIR]
                       [--caption TEXT] [--seed N] [--steps N] --out DIR

INPUT is an image file or a folder (searched recursively for image files). ``--model`` defaults
to the variant's champion in the registry (``register.models`` and ``register.champion_alias`` in
params.yaml); it may also be any MLflow model URI, a downloaded MLflow model folder, or a local
HF-style model directory. Each input is decoded by :func:`prefrestore.core.images.load_rgb` (any size
or mode), fitted to the model's square by :func:`prefrestore.core.images.fit_square`, restored and
written as ``<out>/<relative path>.png`` (atomically).

No face detector is shipped: inputs must already be face crops. A whole photo whose long/short
side ratio exceeds ``register.max_aspect`` is refused with a clear error; a milder non-square
crop is centre-cropped. An image whose header claims more than ``image_limits.max_pixels`` pixels, or
a shorter side below ``image_limits.min_side``, is refused before decoding (the served model's limits).
Missing paths and bad files are reported and skipped; the others are still restored, the command
prints ``restored N of M`` with the reasons, and the exit status is 1 when any input failed.
Two inputs that would write the same name (``face.png`` and ``face.jpg``) are told apart
deterministically: the first, in input order, keeps ``face.png``; the next gets its full file name
(``face.jpg.png``), then an index (``face.jpg-2.png``).

Trusted loading: a registered model is downloaded into a temporary folder (nothing is written into
the registry's artifact store), its code must be this package's ``served_model.py``, and every file
of its model directory must match the sha256 recorded at registration. A model folder holding a
pickle is refused unless ``--allow-pickle`` is given.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from prefrestore.core import errors

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff", ".gif")


def add_parser(sub: Any) -> None:
    p = sub.add_parser(
        "restore",
        help="Restore face images (files or folders) with a registered or local model.",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("inputs", nargs="+", type=Path, metavar="INPUT", help="image files or folders")
    p.add_argument("--variant", choices=("fidelity", "quality"),
                   help="which registered variant (required unless --model is given)")
    p.add_argument("--model", help="models:/<name>@<alias>, another MLflow model URI, or a model directory "
                                   "(default: the variant's champion)")
    p.add_argument("--caption", help="optional caption ('a photography of a ...'), used for every input")
    p.add_argument("--seed", type=int, help="sampling seed (default: register.default_seed in params.yaml)")
    p.add_argument("--steps", type=int, help="sampler steps (default: the model's own setting)")
    p.add_argument("--out", required=True, type=Path, help="output folder")
    p.add_argument("--profile", help="params.yaml profile (default: the file's 'profile' key)")
    p.add_argument("--allow-pickle", action="store_true",
                   help="load a model folder that holds pickles (*.pkl, *.pt, ...): only if you trust its source")
    p.set_defaults(handler=run_cli)


def collect(paths: list[Path]) -> tuple[list[tuple[Path, Path]], list[str], list[str]]:
    """``(file, output name relative to --out)`` for every input image, in a stable order, one
    message per path that does not exist, and one per renamed output (clashes, module doc)."""
    found: list[tuple[Path, Path]] = []
    missing: list[str] = []
    for path in paths:
        if path.is_dir():
            files = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
            found += [(f, f.relative_to(path).with_suffix(".png")) for f in files]
        elif path.is_file():
            found.append((path, Path(path.name).with_suffix(".png")))
        else:
            missing.append(f"{path}: input not found")
    taken: set[Path] = set()
    named: list[tuple[Path, Path]] = []
    renamed: list[str] = []
    for src, name in found:
        if name in taken:
            wanted = name
            name = name.with_name(src.name + ".png")  # face.jpg -> face.jpg.png
            stem, i = name.name.removesuffix(".png"), 2
            while name in taken:
                name, i = name.with_name(f"{stem}-{i}.png"), i + 1
            renamed.append(f"{src} -> {name} ({wanted} is another input's)")
        taken.add(name)
        named.append((src, name))
    return named, missing, renamed


def load_model(model: str, allow_pickle: bool) -> Any:
    """A restorer from an MLflow model URI / folder, or from a local HF-style model directory,
    loaded only after the checks of the module docstring."""
    import tempfile

    from prefrestore.core import integrity, tracking
    from prefrestore.registry import pyfunc as pyfunc_model

    local = Path(model)
    if local.is_dir() and not (local / "MLmodel").is_file():
        integrity.refuse_pickles(local, allow_pickle)
        return pyfunc_model.load_restorer(local)
    import mlflow

    mlflow.set_tracking_uri(tracking.tracking_uri())
    with tempfile.TemporaryDirectory(prefix="prefrestore-restore-") as tmp:
        folder = local if local.is_dir() else Path(mlflow.artifacts.download_artifacts(artifact_uri=model, dst_path=tmp))
        integrity.refuse_pickles(folder, allow_pickle)
        code = integrity.pyfunc_flavor(folder).get("model_code_path")
        if code is None or (folder / Path(code).name).read_bytes() != pyfunc_model.SERVED_MODEL.read_bytes():
            raise errors.InputError(f"{folder}: its code is not this package's served_model.py (register the model "
                                    "with this version of prefrestore)")
        integrity.mlflow_model_dir(folder, allow_pickle)  # digests, before any weight is read
        wrapper = mlflow.pyfunc.load_model(str(folder)).unwrap_python_model()
        if not isinstance(wrapper, pyfunc_model.PrefRestorePyfunc) or wrapper.restorer is None:
            raise errors.InputError(f"{model} is not a Pref-Restore pyfunc model")
        return wrapper.restorer


def restore_files(
    restorer: Any,
    items: list[tuple[Path, Path]],
    out: Path,
    caption: str | None,
    seed: int,
    steps: int | None,
    max_aspect: float,
    max_pixels: int,
    min_side: int,
    batch_size: int,
) -> list[str]:
    """Restore ``items`` into ``out``; returns one message per input that failed (others are written)."""
    from tqdm import tqdm

    from prefrestore.core import images
    from prefrestore.registry import pyfunc as pyfunc_model

    failures: list[str] = []
    with tqdm(total=len(items), unit="img", desc="restore") as bar:
        for start in range(0, len(items), batch_size):
            good: list[tuple[Path, Any]] = []
            for src, name in items[start : start + batch_size]:
                try:
                    face = images.load_rgb(src, max_pixels=max_pixels, min_side=min_side)
                    images.fit_square(face, 8, max_aspect)  # geometry check before the batch runs
                    good.append((name, face))
                except images.BadImage as exc:
                    hint = " (no face detector is shipped: crop the photo to the face first)" \
                        if exc.reason == "aspect" else ""
                    failures.append(f"{src}: {exc}{hint}")
            if good:
                n = len(good)
                restored = pyfunc_model.restore_arrays(restorer, [f for _, f in good], [caption] * n, [seed] * n,
                                                       [steps] * n, max_aspect, batch_size)
                for (name, _), img in zip(good, restored, strict=True):
                    images.save_png(out / name, img)
            bar.update(len(items[start : start + batch_size]))
    return failures


def run_cli(args: argparse.Namespace) -> int:
    from prefrestore.core.config import load, read_params_file
    from prefrestore.core.images import ImageLimits
    from prefrestore.registry.register import RegisterConfig

    if args.model is None and args.variant is None:
        raise errors.UsageError("restore needs --variant (to pick the registered champion) or --model")
    if args.steps is not None and args.steps < 1:
        raise errors.UsageError("--steps must be >= 1")
    params = load(args.profile or read_params_file()["profile"])
    cfg = params.section("register", RegisterConfig)
    limits = params.section("image_limits", ImageLimits)
    items, missing, renamed = collect(list(args.inputs))
    if not items:
        raise errors.InputError(f"no image files found in {[str(p) for p in args.inputs]}")
    model = args.model or f"models:/{cfg.models[args.variant]}@{cfg.champion_alias}"
    restorer = load_model(model, args.allow_pickle)
    seed = cfg.default_seed if args.seed is None else args.seed
    failures = missing + restore_files(restorer, items, args.out, args.caption, seed, args.steps, cfg.max_aspect,
                                       limits.max_pixels, limits.min_side, cfg.batch_size)
    total = len(items) + len(missing)
    print(f"restored {total - len(failures)} of {total} images into {args.out} with {model} (seed {seed})")
    for line in renamed:
        print(f"renamed: {line}")
    for message in failures:
        print(f"failed: {message}", file=sys.stderr)
    return 1 if failures else 0
