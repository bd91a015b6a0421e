"""Training checkpoints: atomic, self-checking, resumable (every N steps and at the end).

One checkpoint is one folder ``<ckpt_dir>/step-00000120/``, written under a temporary name and
renamed into place, so a killed job leaves either a complete checkpoint or a ``.step-*.tmp`` folder
that is reported and removed. Contents:

- ``trainable.safetensors``: the trainable parameters only (frozen weights live in the base model
  directory; the stage-1.2 frozen encoder copy is never saved, SPEC §3).
- ``optimizer.pt``, ``scheduler.pt``: ``state_dict()`` of each (tensors, numbers and lists only, read back
  with ``torch.load(weights_only=True)``).
- ``rng-rank<r>.json``: python, numpy and torch (CPU and CUDA) RNG states of each process.
- ``checkpoint.json``: step, data position, the run's fingerprint, and the SHA-256 of every file above.
  It is written last; :func:`verify` recomputes the checksums, so a truncated or edited file is caught.

Under DeepSpeed the optimizer state is sharded, so ``accelerate``'s ``save_state`` writes it to
``accelerate/`` (checksummed like the rest) and ``load_state`` restores it.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import random
import re
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from prefrestore.core.atomic import write_json
from prefrestore.core.weights import sha256_file

log = logging.getLogger(__name__)

MANIFEST = "checkpoint.json"
TRAINABLE = "trainable.safetensors"
OPTIMIZER = "optimizer.pt"
SCHEDULER = "scheduler.pt"
ACCELERATE_DIR = "accelerate"
FORMAT = "prefrestore-checkpoint"
_NAME = re.compile(r"^step-(\d{8})$")


class CorruptCheckpoint(RuntimeError):
    """A checkpoint folder that cannot be trusted; the message says which file and why."""


@dataclasses.dataclass
class Checkpoint:
    """What :func:`load` returns: everything needed to continue a run exactly."""

    path: Path
    step: int  # optimizer steps done
    data: dict[str, Any]  # data position (epoch, batch index within the epoch)
    fingerprint: str  # hash of the run's config and inputs; a mismatch refuses to resume
    trainable: dict[str, torch.Tensor]
    optimizer: dict[str, Any] | None  # None under DeepSpeed (restored by accelerate)
    scheduler: dict[str, Any]
    extra: dict[str, Any]


def step_dir(ckpt_dir: Path, step: int) -> Path:
    return Path(ckpt_dir) / f"step-{step:08d}"


# --------------------------------------------------------------------------- RNG states
def rng_state() -> dict[str, Any]:
    """Python, numpy and torch RNG states of this process, as JSON-able data."""
    np_state = np.random.get_state(legacy=False)
    state = {
        "python": _jsonable(random.getstate()),
        "numpy": {"bit_generator": np_state["bit_generator"], "key": np_state["state"]["key"].tolist(),
                  "pos": int(np_state["state"]["pos"]), "has_gauss": int(np_state["has_gauss"]),
                  "gauss": float(np_state["gauss"])},
        "torch": torch.get_rng_state().tolist(),
        "cuda": [s.tolist() for s in torch.cuda.get_rng_state_all()] if torch.cuda.is_available() else [],
    }
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    n = state["numpy"]
    np.random.set_state({"bit_generator": n["bit_generator"],
                         "state": {"key": np.asarray(n["key"], dtype=np.uint32), "pos": n["pos"]},
                         "has_gauss": n["has_gauss"], "gauss": n["gauss"]})
    torch.set_rng_state(torch.tensor(state["torch"], dtype=torch.uint8))
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([torch.tensor(s, dtype=torch.uint8) for s in state["cuda"]])


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, tuple | list):
        return [_jsonable(v) for v in obj]
    return obj


# --------------------------------------------------------------------------- save
def save(ckpt_dir: Path, step: int, *, trainable: dict[str, torch.Tensor], optimizer: dict[str, Any] | None,
         scheduler: dict[str, Any], data: dict[str, Any], fingerprint: str, extra: dict[str, Any] | None = None,
         rng_states: list[dict[str, Any]] | None = None, accelerate_state: Any = None, keep: int = 2) -> Path:
    """Write checkpoint ``step`` atomically and keep only the newest ``keep``; returns its folder.

    ``rng_states``: one per process (rank order); default: this process's. ``accelerate_state``: a
    callable ``fn(folder)`` that writes sharded state (DeepSpeed) into ``folder``.
    """
    ckpt_dir = Path(ckpt_dir)
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    final = step_dir(ckpt_dir, step)
    tmp = ckpt_dir / f".{final.name}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        save_file({k: v.detach().to("cpu").contiguous() for k, v in trainable.items()}, str(tmp / TRAINABLE))
        if optimizer is not None:
            torch.save(optimizer, tmp / OPTIMIZER)
        torch.save(scheduler, tmp / SCHEDULER)
        for rank, state in enumerate(rng_states or [rng_state()]):
            (tmp / f"rng-rank{rank}.json").write_text(json.dumps(state), encoding="utf-8")
        if accelerate_state is not None:
            accelerate_state(tmp / ACCELERATE_DIR)
        files = {p.relative_to(tmp).as_posix(): sha256_file(p) for p in sorted(tmp.rglob("*")) if p.is_file()}
        write_json(tmp / MANIFEST, {"format": FORMAT, "step": step, "data": data, "fingerprint": fingerprint,
                                    "extra": extra or {}, "files": files})
        if final.exists():  # a re-save of the same step (e.g. the end-of-run save after a periodic one)
            shutil.rmtree(final)
        tmp.rename(final)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    for old in list_checkpoints(ckpt_dir)[:-keep] if keep > 0 else []:
        shutil.rmtree(old, ignore_errors=True)
    return final


# --------------------------------------------------------------------------- find, verify, load
def list_checkpoints(ckpt_dir: Path) -> list[Path]:
    """Complete-looking checkpoint folders, oldest first (partial ``.tmp`` folders are not listed)."""
    ckpt_dir = Path(ckpt_dir)
    if not ckpt_dir.is_dir():
        return []
    found = [p for p in ckpt_dir.iterdir() if p.is_dir() and _NAME.match(p.name)]
    return sorted(found, key=lambda p: int(_NAME.match(p.name).group(1)))  # type: ignore[union-attr]


def verify(path: Path) -> dict[str, Any]:
    """The manifest of a sound checkpoint, or :class:`CorruptCheckpoint` naming what is wrong."""
    path = Path(path)
    manifest = path / MANIFEST
    if not manifest.is_file():
        raise CorruptCheckpoint(f"{path}: no {MANIFEST} (partial write: the job died while saving)")
    try:
        meta = json.loads(manifest.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise CorruptCheckpoint(f"{manifest}: unreadable ({exc})") from exc
    if meta.get("format") != FORMAT or not isinstance(meta.get("files"), dict):
        raise CorruptCheckpoint(f"{manifest}: not a {FORMAT} manifest")
    if TRAINABLE not in meta["files"]:
        raise CorruptCheckpoint(f"{manifest}: lists no {TRAINABLE}")
    for name, digest in meta["files"].items():
        f = path / name
        if not f.is_file():
            raise CorruptCheckpoint(f"{path}: file {name} is missing")
        actual = sha256_file(f)
        if actual != digest:
            raise CorruptCheckpoint(f"{path}: file {name} fails its checksum (sha256 {actual[:12]}..., "
                                    f"manifest {digest[:12]}...): truncated or modified")
    return meta


def latest(ckpt_dir: Path) -> tuple[Path | None, list[str]]:
    """The newest sound checkpoint (or None) and a report line per partial/corrupt one skipped.

    Leftover ``.step-*.tmp`` folders (a save interrupted by a kill) are removed and reported.
    """
    ckpt_dir = Path(ckpt_dir)
    report: list[str] = []
    if ckpt_dir.is_dir():
        for tmp in sorted(ckpt_dir.glob(".step-*.tmp")):
            report.append(f"removed partial checkpoint {tmp.name} (interrupted save)")
            shutil.rmtree(tmp, ignore_errors=True)
    for path in reversed(list_checkpoints(ckpt_dir)):
        try:
            verify(path)
        except CorruptCheckpoint as exc:
            report.append(f"skipped corrupt checkpoint: {exc}")
            continue
        return path, report
    return None, report


def load(path: Path) -> Checkpoint:
    """Read a verified checkpoint (raises :class:`CorruptCheckpoint` first if it is not sound)."""
    path = Path(path)
    meta = verify(path)
    try:
        trainable = load_file(str(path / TRAINABLE))
        optimizer = torch.load(path / OPTIMIZER, weights_only=True) if (path / OPTIMIZER).is_file() else None
        scheduler = torch.load(path / SCHEDULER, weights_only=True)
    except Exception as exc:  # a checksum-valid but unreadable file: report it as corrupt, with the cause
        raise CorruptCheckpoint(f"{path}: cannot read ({type(exc).__name__}: {exc})") from exc
    return Checkpoint(path, int(meta["step"]), dict(meta["data"]), str(meta["fingerprint"]), trainable,
                      optimizer, scheduler, dict(meta.get("extra", {})))


def load_rng(path: Path, rank: int) -> dict[str, Any]:
    f = Path(path) / f"rng-rank{rank}.json"
    if not f.is_file():
        raise CorruptCheckpoint(f"{path}: no RNG state for rank {rank} (saved with a different world size?)")
    return json.loads(f.read_text(encoding="utf-8"))
