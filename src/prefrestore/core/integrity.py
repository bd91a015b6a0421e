"""Trusted loading: a model is what was registered, byte for byte, and carries no pickle.

- :func:`file_digests` is the sha256 of every file of a model directory (training checkpoints
  excluded); ``register`` records it in the pyfunc's ``model_config`` (``MLmodel``), and every
  loader (the pyfunc, ``prefrestore restore``, ``evaluate`` of a registered model) checks it with
  :func:`verify` before a weight is read: a flipped byte is a one-line error naming the file.
- :func:`find_pickles` lists files that unpickle on load (``*.pkl``, ``*.pickle``, torch's
  ``*.pt``/``*.pth``/``*.bin``/``*.ckpt``); a model folder holding one is refused unless the user
  passes ``--allow-pickle``.
- :func:`mlflow_model_dir` opens a downloaded MLflow model folder of ours: it checks the digests and
  returns the HF-style model directory inside it.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from pathlib import Path

from prefrestore.core.errors import InputError
from prefrestore.core.weights import sha256_file

EXCLUDED = ("checkpoints",)  # training state never ships with a model
PICKLE_SUFFIXES = (".pkl", ".pickle", ".pt", ".pth", ".bin", ".ckpt")
MODEL_DIR_ARTIFACT = "model_dir"  # the pyfunc's one artifact: the HF-style model directory
DIGESTS_KEY = "files"  # model_config key: relative path -> sha256


def _files(root: Path) -> list[Path]:
    return sorted(p for p in Path(root).rglob("*")
                  if p.is_file() and not set(p.relative_to(root).parts) & set(EXCLUDED))


def file_digests(root: Path) -> dict[str, str]:
    """``relative path -> sha256`` of every file of a model directory (training checkpoints excluded)."""
    files = _files(root)
    if not files:
        raise FileNotFoundError(f"model directory is empty or missing: {root}")
    return {str(f.relative_to(root)): sha256_file(f) for f in files}


def dir_digest(root: Path) -> str:
    """One content hash of a model directory (relative names + bytes), training checkpoints excluded."""
    h = hashlib.sha256()
    files = _files(root)
    if not files:
        raise FileNotFoundError(f"model directory is empty or missing: {root}")
    for f in files:
        h.update(str(f.relative_to(root)).encode() + b"\0")
        with open(f, "rb") as fh:
            for chunk in iter(lambda fh=fh: fh.read(1 << 20), b""):
                h.update(chunk)
    return h.hexdigest()[:16]


def verify(root: Path, expected: Mapping[str, str]) -> None:
    """Every recorded file present with its recorded sha256, and no other file: else :class:`InputError`."""
    root = Path(root)
    actual = {str(f.relative_to(root)): f for f in _files(root)}
    for name, digest in sorted(expected.items()):
        if name not in actual:
            raise InputError(f"{root / name}: missing from the model (it was registered with it)")
        if sha256_file(actual[name]) != digest:
            raise InputError(f"{root / name}: sha256 differs from the registered one (the model was modified "
                             "after registration)")
    extra = sorted(set(actual) - set(expected))
    if extra:
        raise InputError(f"{root / extra[0]}: not part of the registered model")


def find_pickles(root: Path) -> list[Path]:
    """Files under ``root`` whose format unpickles when loaded (training checkpoints, which no
    loader of a model reads, aside)."""
    return [p for p in _files(root) if p.suffix.lower() in PICKLE_SUFFIXES]


def refuse_pickles(root: Path, allow: bool) -> None:
    found = find_pickles(root)
    if found and not allow:
        raise InputError(f"{found[0]}: a pickle ({len(found)} in {root}); loading it could run code. "
                         "Re-register the model (models from code, no pickle) or pass --allow-pickle if you trust it")


def pyfunc_flavor(folder: Path) -> dict:
    """The ``python_function`` flavor of an MLflow model folder's ``MLmodel``."""
    import yaml

    path = Path(folder) / "MLmodel"
    try:
        return dict(yaml.safe_load(path.read_text(encoding="utf-8"))["flavors"]["python_function"])
    except (OSError, yaml.YAMLError, KeyError, TypeError) as exc:
        raise InputError(f"{path}: not an MLflow pyfunc model ({exc})") from None


def mlflow_model_dir(folder: Path, allow_pickle: bool = False) -> Path:
    """The verified HF-style model directory inside a Pref-Restore MLflow model folder."""
    folder = Path(folder)
    refuse_pickles(folder, allow_pickle)
    flavor = pyfunc_flavor(folder)
    digests = (flavor.get("config") or {}).get(DIGESTS_KEY)  # MLflow stores model_config as `config`
    inner = (flavor.get("artifacts") or {}).get(MODEL_DIR_ARTIFACT, {}).get("path")
    if not digests or not inner or not (folder / inner).is_dir():
        raise InputError(f"{folder}: not a Pref-Restore model registered with file digests (its MLmodel has "
                         f"no config.{DIGESTS_KEY} or no '{MODEL_DIR_ARTIFACT}' artifact)")
    verify(folder / inner, digests)
    return folder / inner
