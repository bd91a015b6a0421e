"""Tensor names, shapes and dtypes of checkpoint files, read without loading the weights.

- ``*.safetensors``: only the 8-byte length and the JSON header are read. The header is checked
  against the file size, so a truncated download fails here with the file and the first key
  whose bytes are missing.
- Sharded folders: ``*.safetensors.index.json`` names the shards; every key it lists must be in
  the shard it names.
- ``ta_tok.pth`` (TA-Tok's ``{"model": {"args": ..., "sd": state_dict}}``, ``tok/ta_tok.py``
  ``from_checkpoint`` in ``csuhan/Tar``): ``torch.load(weights_only=True, mmap=True)``, so tensor
  storage is mapped, not read.

Every problem is a :class:`CheckpointError` whose message is one line naming the file (and key).
"""

from __future__ import annotations

import json
import math
import struct
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open

Shape = tuple[int, ...]
TensorInfo = tuple[Shape, str]  # (shape, safetensors dtype name, e.g. "BF16")

_ITEMSIZE = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U8": 1,
             "BOOL": 1, "F8_E4M3": 1, "F8_E5M2": 1, "U16": 2, "U32": 4, "U64": 8}
_TORCH_NAMES = {torch.float64: "F64", torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16",
                torch.int64: "I64", torch.int32: "I32", torch.int16: "I16", torch.int8: "I8", torch.uint8: "U8",
                torch.bool: "BOOL"}
MAX_HEADER = 100 << 20  # a real header is a few MB at most; more means a corrupt length field
WEIGHT_INDEXES = ("model.safetensors.index.json", "diffusion_pytorch_model.safetensors.index.json")
WEIGHT_FILES = ("model.safetensors", "diffusion_pytorch_model.safetensors")


class CheckpointError(ValueError):
    """A checkpoint file is missing, truncated, malformed or has an unexpected layout."""


def dtype_name(dtype: torch.dtype) -> str:
    return _TORCH_NAMES.get(dtype, str(dtype).removeprefix("torch."))


def read_safetensors_header(path: Path) -> dict[str, TensorInfo]:
    """``{key: (shape, dtype)}`` from one safetensors file's header (the tensor bytes are not read)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: file not found")
    size = path.stat().st_size
    with open(path, "rb") as fh:
        head = fh.read(8)
        if len(head) < 8:
            raise CheckpointError(f"{path}: truncated ({size} bytes; not a safetensors file)")
        (n,) = struct.unpack("<Q", head)
        if n > MAX_HEADER or 8 + n > size:
            raise CheckpointError(f"{path}: header length {n} exceeds the file ({size} bytes): truncated or not safetensors")
        raw = fh.read(n)
    try:
        header = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"{path}: header is not valid JSON ({exc.msg if hasattr(exc, 'msg') else exc})") from None
    if not isinstance(header, dict):
        raise CheckpointError(f"{path}: header is not a JSON object")
    out: dict[str, TensorInfo] = {}
    data_bytes = size - 8 - n
    for key, info in header.items():
        if key == "__metadata__":
            continue
        try:
            dtype, shape, (begin, end) = info["dtype"], tuple(int(d) for d in info["shape"]), info["data_offsets"]
        except (KeyError, TypeError, ValueError):
            raise CheckpointError(f"{path}: key '{key}': malformed header entry {info!r}") from None
        want = math.prod(shape) * _ITEMSIZE.get(dtype, 0)
        if dtype not in _ITEMSIZE or end - begin != want:
            raise CheckpointError(f"{path}: key '{key}': {dtype} {list(shape)} needs {want} bytes, header gives {end - begin}")
        if end > data_bytes:
            raise CheckpointError(f"{path}: truncated: key '{key}' ends at data byte {end}, the file has {data_bytes}")
        out[key] = (shape, dtype)
    return out


def weight_files(folder: Path) -> list[Path]:
    """The safetensors files of an HF/diffusers folder: the index's shards, or the single file."""
    folder = Path(folder)
    for name in WEIGHT_INDEXES:
        index = folder / name
        if index.is_file():
            try:
                weight_map = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
            except (json.JSONDecodeError, KeyError, TypeError):
                raise CheckpointError(f"{index}: not a safetensors index (no 'weight_map')") from None
            return [folder / s for s in dict.fromkeys(weight_map.values())]
    for name in WEIGHT_FILES:
        if (folder / name).is_file():
            return [folder / name]
    raise CheckpointError(f"{folder}: no {' / '.join(WEIGHT_FILES)} and no safetensors index")


def read_folder(folder: Path) -> dict[str, TensorInfo]:
    """All tensors of a (possibly sharded) safetensors folder; the index must match the shards."""
    folder = Path(folder)
    files = weight_files(folder)
    out: dict[str, TensorInfo] = {}
    owner: dict[str, Path] = {}
    for f in files:
        for key, info in read_safetensors_header(f).items():
            if key in out:
                raise CheckpointError(f"{f}: key '{key}' is also in {owner[key]}")
            out[key], owner[key] = info, f
    for name in WEIGHT_INDEXES:
        index = folder / name
        if index.is_file():
            for key, shard in json.loads(index.read_text(encoding="utf-8"))["weight_map"].items():
                if owner.get(key) != folder / shard:
                    raise CheckpointError(f"{index}: key '{key}' is listed in {shard} but not found there")
    return out


def load_ta_tok(path: Path) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """``(args, state_dict)`` of a TA-Tok checkpoint, memory-mapped and pickle-free."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: file not found")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception as exc:  # torch raises RuntimeError/UnpicklingError/EOFError/zipfile errors
        raise CheckpointError(f"{path}: cannot read as a weights-only torch file ({type(exc).__name__}: "
                              f"{str(exc).splitlines()[0] if str(exc) else ''})") from None
    model = ckpt.get("model") if isinstance(ckpt, dict) else None
    if not isinstance(model, dict) or not isinstance(model.get("sd"), dict) or "args" not in model:
        keys = sorted(ckpt)[:8] if isinstance(ckpt, dict) else type(ckpt).__name__
        raise CheckpointError(f"{path}: expected TA-Tok's {{'model': {{'args', 'sd'}}}} layout, got {keys}")
    sd = model["sd"]
    for key, value in sd.items():
        if not isinstance(value, torch.Tensor):
            raise CheckpointError(f"{path}: key '{key}' is a {type(value).__name__}, not a tensor")
    return model["args"], sd


def read_ta_tok(path: Path) -> tuple[dict[str, Any], dict[str, TensorInfo]]:
    args, sd = load_ta_tok(path)
    return args, {k: (tuple(v.shape), dtype_name(v.dtype)) for k, v in sd.items()}


def load_tensors(files: Iterable[Path], keys: Iterable[str]) -> dict[str, torch.Tensor]:
    """The named tensors from safetensors ``files`` (each key read from the file that holds it)."""
    wanted = set(keys)
    out: dict[str, torch.Tensor] = {}
    for f in files:
        with safe_open(str(f), framework="pt") as fh:
            for key in wanted.intersection(fh.keys()):
                out[key] = fh.get_tensor(key)
    missing = wanted - set(out)
    if missing:
        raise CheckpointError(f"{', '.join(map(str, files))}: missing key '{sorted(missing)[0]}'")
    return out
