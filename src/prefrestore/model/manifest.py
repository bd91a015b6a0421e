"""Public-checkpoint manifests: the :class:`Part` record, how its tensors are built on ``meta``, the JSON files.

A :class:`Part` records where a public release lives in the local store, where its facts come from
(repository, path, commit) and the config values that fix its tensor shapes. Its manifest (every
tensor name, shape and published dtype) is derived from the public class, built on the ``meta``
device with those config values. ``prefrestore weights manifests`` writes the manifests of every
part (``model.parts``, ``model.aux_parts``, ``evaluation.metric_weights``) into each part's
``manifest_dir``; ``--check`` compares the committed files with a fresh build.

Config values carry their provenance: ``source`` says where the number was read. A value marked
``unverified`` was not found in any public file this project could read, and ``secondary`` was read
in a public copy or a sibling model's config rather than the publisher's own file. ``prefrestore weights
verify`` compares both with the user's real file, which is the authority.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn

from prefrestore.core.weights import WeightFile
from prefrestore.model.headers import TensorInfo, dtype_name

MANIFEST_DIR = Path(__file__).resolve().parent / "manifests"
MANIFEST_FORMAT = "prefrestore-manifest/1"
Layout = Literal["safetensors_folder", "ta_tok_pth", "torch_state_dict", "torch_tensor", "npz"]
UNVERIFIED = "unverified: not found in a public file read for this project; `weights verify` checks the real file"
SECONDARY = "secondary (a public copy or a sibling model's config, not the publisher's file); `weights verify` checks the real file"


def value(v: Any, source: str) -> dict[str, Any]:
    return {"value": v, "source": source}


@dataclasses.dataclass(frozen=True)
class Part:
    name: str  # manifest id
    title: str  # what it is
    weight: WeightFile  # where it lives (root + relpath of the folder or file)
    layout: Layout  # how its tensors are stored
    subfolder: str  # folder inside ``weight`` holding config.json + safetensors ("" = the folder itself)
    code: Mapping[str, str]  # public code that defines the module (repo, path, commit)
    config: Mapping[str, Mapping[str, Any]]  # {key: {"value", "source"}}: values that fix the shapes
    dtype: str  # published dtype of the weights ("unknown" where no public file says)
    build: Callable[[Mapping[str, Any]], dict[str, TensorInfo]]  # config values -> {name: (shape, dtype)}
    notes: tuple[str, ...] = ()  # layout facts a reader needs (ignored keys, renames)
    state_key: str | None = None  # torch_state_dict: the file's state dict sits under this key (pyiqa weight_keys)
    manifest_dir: Path = MANIFEST_DIR  # where its committed manifest lives

    def values(self) -> dict[str, Any]:
        return {k: v["value"] for k, v in self.config.items()}

    def manifest(self) -> dict[str, Any]:
        tensors = self.build(self.values())
        return {"format": MANIFEST_FORMAT, "part": self.name, "title": self.title,
                "store": {"root": self.weight.root, "relpath": self.weight.relpath, "subfolder": self.subfolder,
                          "layout": self.layout, "source": self.weight.source,
                          **({"state_key": self.state_key} if self.state_key else {})},
                "code": dict(self.code), "config": {k: dict(v) for k, v in self.config.items()},
                "dtype": self.dtype, "notes": list(self.notes), "num_tensors": len(tensors),
                "num_parameters": sum(_numel(s) for s, _ in tensors.values()),
                "tensors": {k: [list(s), d] for k, (s, d) in sorted(tensors.items())}}


def _numel(shape: tuple[int, ...]) -> int:
    n = 1
    for d in shape:
        n *= d
    return n


def module_tensors(module: nn.Module, dtype: str, prefix: str = "") -> dict[str, TensorInfo]:
    """Every entry of ``module.state_dict()`` (parameters and persistent buffers), shapes only."""
    return {prefix + k: (tuple(v.shape), dtype if v.is_floating_point() else dtype_name(v.dtype))
            for k, v in module.state_dict().items()}


def on_meta(factory: Callable[[], nn.Module]) -> nn.Module:
    with torch.device("meta"):
        return factory()


# ------------------------------------------------------------------ manifest files
def manifest_path(name: str, folder: Path = MANIFEST_DIR) -> Path:
    return folder / f"{name}.json"


def write_manifests(parts: Mapping[str, Part], names: list[str] | None = None) -> list[Path]:
    """Write each named part's manifest into its ``manifest_dir`` (default: all of ``parts``)."""
    out = []
    for name in names or list(parts):
        part = parts[name]
        part.manifest_dir.mkdir(parents=True, exist_ok=True)
        path = manifest_path(name, part.manifest_dir)
        path.write_text(dump_manifest(part.manifest()), encoding="utf-8")
        out.append(path)
    return out


def dump_manifest(data: Mapping[str, Any]) -> str:
    """JSON with one line per tensor (diff-friendly, a few hundred KB for a 32B model)."""
    head = {k: v for k, v in data.items() if k != "tensors"}
    text = json.dumps(head, indent=1)[:-2]
    rows = ",\n".join(f"  {json.dumps(k)}: {json.dumps(v)}" for k, v in data["tensors"].items())
    return f"{text},\n \"tensors\": {{\n{rows}\n }}\n}}\n"


def read_manifest(name: str, folder: Path = MANIFEST_DIR) -> dict[str, Any]:
    path = manifest_path(name, folder)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no manifest; run `prefrestore weights manifests`")
    data = json.loads(path.read_text(encoding="utf-8"))
    if data.get("format") != MANIFEST_FORMAT:
        raise ValueError(f"{path}: format {data.get('format')!r}, expected {MANIFEST_FORMAT}")
    return data


def manifest_tensors(data: Mapping[str, Any]) -> dict[str, TensorInfo]:
    return {k: (tuple(s), d) for k, (s, d) in data["tensors"].items()}


def stale_manifests(parts: Mapping[str, Part], names: list[str] | None = None) -> list[str]:
    """Parts whose committed manifest differs from a fresh build (empty: all up to date)."""
    stale = []
    for name in names or list(parts):
        part = parts[name]
        path = manifest_path(name, part.manifest_dir)
        if not path.is_file() or json.loads(path.read_text(encoding="utf-8")) != json.loads(
                json.dumps(part.manifest())):
            stale.append(name)
    return stale
