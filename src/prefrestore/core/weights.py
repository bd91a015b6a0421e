"""Offline weights: where every pretrained file must be placed, its checksum, and who needs it.

No weights are downloaded at run time. Each consumer module (captioner, model, rewards, metrics)
declares a ``WEIGHTS`` tuple of :class:`WeightFile`; :func:`plan` gathers them all (explicit
imports, no registry). :func:`require` is what loading code calls: it returns the local path or
raises :class:`MissingWeights` naming the file, where it belongs and how to stage it.

Roots:
- ``hf``: ``$HF_HOME`` (Hugging Face hub cache layout; load with ``local_files_only=True``)
- ``torch``: ``$TORCH_HOME`` (pyiqa looks in ``$TORCH_HOME/hub/pyiqa``; facexlib weights too)
- ``store``: ``$PREFRESTORE_MODEL_STORE`` (plain folders: BLIP3o-NEXT, TA-Tok, reward heads, ...)
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
from pathlib import Path
from typing import Literal

Root = Literal["hf", "torch", "store"]


class MissingWeights(FileNotFoundError):
    """A required weight file is absent (or fails its checksum). Never caught to fake a result."""


@dataclasses.dataclass(frozen=True)
class WeightFile:
    name: str  # short id, e.g. "pyiqa/musiq"
    root: Root  # which root folder it lives under
    relpath: str  # path under that root (a file, or a folder for HF snapshots)
    sha256: str | None  # checksum of the file; None for folders (each file checked by HF)
    used_by: str  # the metric, reward or model that needs it
    source: str  # where a person can get it (URL or hub id), for the staging step


def root_dir(root: Root) -> Path:
    home = Path.home()
    if root == "hf":
        return Path(os.environ.get("HF_HOME", home / ".cache" / "huggingface"))
    if root == "torch":
        return Path(os.environ.get("TORCH_HOME", home / ".cache" / "torch"))
    return Path(os.environ.get("PREFRESTORE_MODEL_STORE", home / ".cache" / "prefrestore" / "models"))


def local_path(w: WeightFile) -> Path:
    return root_dir(w.root) / w.relpath


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def status(w: WeightFile, check_sha: bool = False) -> str:
    """'present', 'missing' or 'bad-checksum'."""
    path = local_path(w)
    if not path.exists() or (path.is_dir() and not any(path.iterdir())):
        return "missing"
    if check_sha and w.sha256 and path.is_file() and sha256_file(path) != w.sha256:
        return "bad-checksum"
    return "present"


def require(w: WeightFile, check_sha: bool = False) -> Path:
    """The local path of ``w``, or :class:`MissingWeights` with a message that says what to do."""
    state = status(w, check_sha)
    if state != "present":
        raise MissingWeights(
            f"{w.used_by}: weight file '{w.name}' is {state} at {local_path(w)} "
            f"(root '{w.root}' = {root_dir(w.root)}). Stage it from {w.source}; "
            f"`prefrestore weights plan` lists every file and its checksum."
        )
    return local_path(w)
