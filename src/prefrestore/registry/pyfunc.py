"""Pref-Restore as an MLflow pyfunc model: the registry's unit of deployment.

The model's one artifact is the HF-style model directory (``config.json`` + ``*.safetensors`` per
component, no training checkpoints). Loading it calls ``Restorer.from_pretrained(dir)`` from
``prefrestore.model.restore``; ``predict`` takes and returns pandas DataFrames, so the model works
with ``mlflow models serve`` (``env_manager=local`` in the project's container image, where the
``prefrestore`` package is installed):

input columns                                  | output columns
---------------------------------------------- | ------------------------------
``image``: base64 PNG/JPEG bytes (any size/mode) | ``image``: base64 PNG of the restored face
``caption``: optional text (Appendix D caption)  |
``seed``: optional int (default from params)     |
``steps``: optional int (default: the model's)   |

Inputs go through the project's one decoder (:func:`prefrestore.core.images.load_rgb`) and geometry
policy (:func:`prefrestore.core.images.fit_square`): any mode is accepted, non-square faces are
centre-cropped, and photos wider than ``max_aspect`` are refused (no face detector is shipped, so
whole unaligned photos must be cropped to the face first). Sizes are checked from the image header
before any pixel is decoded: more than ``image_limits.max_pixels`` pixels, or a shorter side below
``image_limits.min_side``, is refused. A refused input raises :class:`InvalidInput`, an
``MlflowException`` with ``INVALID_PARAMETER_VALUE``: ``mlflow models serve`` answers it with HTTP 400
and the message, and keeps serving.
"""

from __future__ import annotations

import base64
import binascii
import math
import shutil
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Protocol

import mlflow.pyfunc
import numpy as np
import pandas as pd
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE

from prefrestore.core import images, integrity
from prefrestore.core.errors import InputError

IMAGE_COL, CAPTION_COL, SEED_COL, STEPS_COL = "image", "caption", "seed", "steps"
OPTIONAL_COLS = (CAPTION_COL, SEED_COL, STEPS_COL)
MODEL_DIR_ARTIFACT = integrity.MODEL_DIR_ARTIFACT
EXCLUDED_FROM_ARTIFACT = integrity.EXCLUDED  # training state never ships with the model


class RestorerLike(Protocol):
    """What the pyfunc needs from a loaded model (``prefrestore.model.restore.Restorer``)."""

    resolution: int

    def restore_uint8(
        self, images: list[np.ndarray], captions: list[str] | None, seed: int, steps: int | None
    ) -> list[np.ndarray]: ...


Loader = Callable[[Path], RestorerLike]


class InvalidInput(MlflowException):
    """A request the model refuses (bad base64, not an image, too small or large, too wide): HTTP 400."""

    def __init__(self, message: str) -> None:
        super().__init__(message, error_code=INVALID_PARAMETER_VALUE)


LOADER_MARK = "__prefrestore_loader__"


def restorer_loader(fn: Loader) -> Loader:
    """Mark ``fn`` as a loader a registered model may name in its ``model_config``: only marked
    functions are ever called, so an edited ``MLmodel`` cannot name an arbitrary callable."""
    setattr(fn, LOADER_MARK, True)
    return fn


@restorer_loader
def load_restorer(model_dir: Path) -> RestorerLike:
    """The real loader: ``Restorer.from_pretrained`` on a local HF-style directory (offline)."""
    from prefrestore.model.restore import Restorer

    return Restorer.from_pretrained(model_dir)


def model_resolution(restorer: RestorerLike) -> int:
    """The square side the model restores at (taken from the model's own config)."""
    res = restorer.resolution
    if not isinstance(res, int) or res <= 0:
        raise ValueError(f"restorer reports an invalid resolution {res!r}")
    return res


def encode_b64_png(img: np.ndarray) -> str:
    return base64.b64encode(images.encode_png(img)).decode("ascii")


def decode_b64_image(text: str, row: int, max_pixels: int, min_side: int) -> np.ndarray:
    """base64 image bytes -> uint8 HWC, sizes checked from the header first; :class:`InvalidInput` names the row."""
    if not isinstance(text, str) or not text:
        raise InvalidInput(f"row {row}: column '{IMAGE_COL}' must be a non-empty base64 string")
    try:
        data = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise InvalidInput(f"row {row}: column '{IMAGE_COL}' is not valid base64 ({exc})") from None
    try:
        return images.load_rgb(data, max_pixels=max_pixels, min_side=min_side)
    except images.BadImage as exc:
        raise InvalidInput(f"row {row}: bad image ({exc})") from None


def _optional(frame: pd.DataFrame, col: str, row: int) -> Any:
    if col not in frame.columns:
        return None
    value = frame[col].iloc[row]
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    return value


def restore_arrays(
    restorer: RestorerLike,
    faces: Sequence[np.ndarray],
    captions: Sequence[str | None],
    seeds: Sequence[int],
    steps: Sequence[int | None],
    max_aspect: float,
    batch_size: int,
) -> list[np.ndarray]:
    """Restore decoded faces of any size: fit each to the model's square, batch rows that share
    (seed, steps, captioned or not), and return the outputs in input order.

    Raises ``images.BadImage("aspect")`` for a photo wider than ``max_aspect`` (no face detector).
    """
    resolution = model_resolution(restorer)
    squares = [images.fit_square(f, resolution, max_aspect) for f in faces]
    groups: dict[tuple[int, int | None, bool], list[int]] = {}
    for i in range(len(squares)):
        groups.setdefault((int(seeds[i]), steps[i], captions[i] is not None), []).append(i)
    out: list[np.ndarray | None] = [None] * len(squares)
    for (seed, n_steps, captioned), rows in groups.items():
        for start in range(0, len(rows), batch_size):
            chunk = rows[start : start + batch_size]
            caps = [str(captions[i]) for i in chunk] if captioned else None
            restored = restorer.restore_uint8([squares[i] for i in chunk], caps, seed, n_steps)
            if len(restored) != len(chunk):
                raise RuntimeError(f"restorer returned {len(restored)} images for {len(chunk)} inputs")
            for i, img in zip(chunk, restored, strict=True):
                out[i] = np.asarray(img, dtype=np.uint8)
    return [o for o in out if o is not None]


SERVED_MODEL = Path(__file__).with_name("served_model.py")  # the model's code (MLflow "models from code")


def loader_name(fn: Loader) -> str:
    if not getattr(fn, LOADER_MARK, False):
        raise ValueError(f"{fn!r} is not marked with @restorer_loader")
    return f"{fn.__module__}:{fn.__qualname__}"


def resolve_loader(name: str) -> Loader:
    import importlib

    module, _, attr = str(name).partition(":")
    try:
        fn = getattr(importlib.import_module(module), attr)
    except (ImportError, AttributeError, ValueError) as exc:
        raise InputError(f"model_config names loader {name!r}, which cannot be imported ({exc})") from None
    if not getattr(fn, LOADER_MARK, False):
        raise InputError(f"model_config names {name!r}, which is not a Pref-Restore loader")
    return fn


def model_config(variant: str, default_seed: int, max_aspect: float, max_pixels: int, min_side: int,
                 batch_size: int, model_dir: Path, loader: Loader) -> dict[str, Any]:
    """What the registered model is configured with (stored in ``MLmodel``; no pickle): the serving
    settings, the loader and the sha256 of every file of the model directory."""
    return {"variant": variant, "default_seed": int(default_seed), "max_aspect": float(max_aspect),
            "max_pixels": int(max_pixels), "min_side": int(min_side), "batch_size": int(batch_size),
            "loader": loader_name(loader), integrity.DIGESTS_KEY: integrity.file_digests(model_dir)}


class PrefRestorePyfunc(mlflow.pyfunc.PythonModel):
    """The pyfunc wrapper, logged as a model from code (``served_model.py``): nothing is pickled.
    Its settings come from ``context.model_config``; :meth:`load_context` checks every file of the
    model directory against the digests recorded at registration before the loader reads it."""

    def __init__(self) -> None:
        self.restorer: RestorerLike | None = None

    def load_context(self, context: Any) -> None:
        cfg = dict(context.model_config or {})
        missing = sorted({"variant", "default_seed", "max_aspect", "max_pixels", "min_side", "batch_size",
                          "loader", integrity.DIGESTS_KEY} - set(cfg))
        if missing:
            raise InputError(f"model_config lacks {missing}: not registered by this version of prefrestore")
        model_dir = Path(context.artifacts[MODEL_DIR_ARTIFACT])
        integrity.verify(model_dir, cfg[integrity.DIGESTS_KEY])
        self.variant, self.default_seed = cfg["variant"], int(cfg["default_seed"])
        self.max_aspect, self.batch_size = float(cfg["max_aspect"]), int(cfg["batch_size"])
        self.max_pixels, self.min_side = int(cfg["max_pixels"]), int(cfg["min_side"])
        self.restorer = resolve_loader(cfg["loader"])(model_dir)

    def predict(self, context: Any, model_input: pd.DataFrame, params: dict[str, Any] | None = None) -> pd.DataFrame:
        if self.restorer is None:
            raise RuntimeError("model not loaded: load it with mlflow.pyfunc.load_model")
        frame = pd.DataFrame(model_input)
        if IMAGE_COL not in frame.columns:
            raise InvalidInput(f"input needs a '{IMAGE_COL}' column of base64-encoded PNG/JPEG bytes")
        n = len(frame)
        faces = [decode_b64_image(frame[IMAGE_COL].iloc[i], i, self.max_pixels, self.min_side) for i in range(n)]
        captions = [_optional(frame, CAPTION_COL, i) for i in range(n)]
        seeds = [int(s) if (s := _optional(frame, SEED_COL, i)) is not None else self.default_seed for i in range(n)]
        steps = [int(s) if (s := _optional(frame, STEPS_COL, i)) is not None else None for i in range(n)]
        try:
            restored = restore_arrays(self.restorer, faces, captions, seeds, steps, self.max_aspect, self.batch_size)
        except images.BadImage as exc:
            raise InvalidInput(f"{exc}: crop the photo to the face first (no face detector is shipped)") from None
        return pd.DataFrame({IMAGE_COL: [encode_b64_png(r) for r in restored]})


def example_frame(side: int = 16) -> pd.DataFrame:
    """A small input example (a grey gradient face stand-in) with every column filled."""
    ramp = np.linspace(0, 255, side * side, dtype=np.float64).reshape(side, side)
    img = np.repeat(ramp[..., None], 3, axis=2).astype(np.uint8)
    # seed/steps are doubles in the schema: an integer column cannot hold a missing value (NaN).
    return pd.DataFrame({IMAGE_COL: [encode_b64_png(img)], CAPTION_COL: ["a photography of a person"],
                         SEED_COL: [0.0], STEPS_COL: [1.0]})


def signature() -> Any:
    """The model signature: inferred from the example, then caption/seed/steps marked optional."""
    from mlflow.models import infer_signature
    from mlflow.types.schema import ColSpec, Schema

    example = example_frame()
    inferred = infer_signature(example, example[[IMAGE_COL]])
    cols = [ColSpec(c.type, c.name, required=c.name not in OPTIONAL_COLS) for c in inferred.inputs.inputs]
    inferred.inputs = Schema(cols)
    return inferred


def stage_model_dir(model_dir: Path, staging: Path) -> Path:
    """The model directory without training checkpoints (hard links where possible, else copies)."""
    model_dir = Path(model_dir)
    if not model_dir.is_dir():
        raise FileNotFoundError(f"model directory not found: {model_dir}")
    if not any((model_dir / e).exists() for e in EXCLUDED_FROM_ARTIFACT):
        return model_dir

    def link_or_copy(src: str, dst: str) -> None:
        try:
            Path(dst).hardlink_to(src)
        except OSError:
            shutil.copy2(src, dst)

    target = staging / model_dir.name
    shutil.copytree(model_dir, target, ignore=shutil.ignore_patterns(*EXCLUDED_FROM_ARTIFACT),
                    copy_function=link_or_copy)
    return target


def log_pyfunc(
    name: str,
    model_dir: Path,
    config: dict[str, Any],
    pip_requirements: Sequence[str],
) -> Any:
    """Log the pyfunc as a model from code (``served_model.py``, settings in ``model_config``; no
    pickle) with the model directory as its artifact, in the active MLflow run; returns ModelInfo.

    MLflow checks the input example at log time by loading the model and predicting on it (a
    warning, not an error, when that fails); the example is one 16 px image at ``steps=1`` so the
    check stays cheap. Requirements are given explicitly: inferring them would load the model in a
    subprocess.
    """
    return mlflow.pyfunc.log_model(
        name=name,
        python_model=str(SERVED_MODEL),
        model_config=config,
        artifacts={MODEL_DIR_ARTIFACT: str(model_dir)},
        signature=signature(),
        input_example=example_frame(),
        pip_requirements=list(pip_requirements),
    )
