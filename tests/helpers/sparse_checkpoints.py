"""Full-size checkpoint stand-ins that cost no disk: real headers, sparse tensor bytes.

A safetensors file is an 8-byte header length, a JSON header of names, dtypes, shapes and byte
offsets, then the tensor bytes. :func:`sparse_safetensors_folder` writes the header exactly as
``safetensors`` would and extends the file to its full length with ``truncate``, so the data region
is a hole: ``weights verify`` (headers only) sees a real-size, real-layout checkpoint, sharded with a
``model.safetensors.index.json`` as the hub publishes large models.
"""

from __future__ import annotations

import json
import math
import struct
from collections.abc import Mapping
from pathlib import Path
from typing import Any

ITEMSIZE = {"F32": 4, "BF16": 2, "F16": 2, "I64": 8}


def sparse_safetensors(path: Path, tensors: Mapping[str, tuple[tuple[int, ...], str]]) -> int:
    """One sparse safetensors file; returns its logical size in bytes."""
    header: dict[str, Any] = {}
    offset = 0
    for key, (shape, dtype) in tensors.items():
        n = math.prod(shape) * ITEMSIZE[dtype]
        header[key] = {"dtype": dtype, "shape": list(shape), "data_offsets": [offset, offset + n]}
        offset += n
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)
    with open(path, "wb") as fh:
        fh.write(struct.pack("<Q", len(raw)) + raw)
        fh.truncate(8 + len(raw) + offset)
    return 8 + len(raw) + offset


def sparse_safetensors_folder(folder: Path, tensors: Mapping[str, tuple[tuple[int, ...], str]],
                              config: Mapping[str, Any], shards: int = 1) -> Path:
    """config.json plus ``shards`` sparse files (and the index when ``shards > 1``) holding ``tensors``."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps(config))
    keys = sorted(tensors)
    if shards == 1:
        sparse_safetensors(folder / "model.safetensors", {k: tensors[k] for k in keys})
        return folder
    per = math.ceil(len(keys) / shards)
    weight_map = {}
    for i in range(shards):
        name = f"model-{i + 1:05d}-of-{shards:05d}.safetensors"
        chunk = keys[i * per:(i + 1) * per]
        sparse_safetensors(folder / name, {k: tensors[k] for k in chunk})
        weight_map.update(dict.fromkeys(chunk, name))
    (folder / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    return folder
