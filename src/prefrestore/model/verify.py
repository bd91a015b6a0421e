"""``prefrestore weights verify --profile P``: the user's staged files against the profile, headers only.

For each part the profile starts from (:mod:`prefrestore.model.weight_map`) it reads the safetensors
headers (or TA-Tok's ``.pth`` memory-mapped, weights-only) and ``config.json``, and reports tensors
mapped / ignored / missing / unexpected / with the wrong shape, and config values that disagree
with the profile. Auxiliary parts (captioner, reward backbones) are checked against their manifests.
No tensor data is read, so it takes seconds on the real multi-GB files.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

from prefrestore.core.weights import local_path
from prefrestore.model.config import ModelConfig
from prefrestore.model.headers import (
    CheckpointError,
    TensorInfo,
    dtype_name,
    load_ta_tok,
    read_folder,
)
from prefrestore.model.manifest import Part, manifest_tensors, read_manifest
from prefrestore.model.parts import PARTS
from prefrestore.model.weight_map import (
    TA_TOK,
    PartReport,
    config_disagreements,
    coverage,
    fresh_targets,
    start_for,
)


def part_dir(part: Part) -> Path:
    """Where ``part`` lives: the store path (+ subfolder); an HF-cache repo resolves to its snapshot."""
    base = local_path(part.weight)
    if part.weight.root == "hf" and (base / "snapshots").is_dir():
        ref = base / "refs" / "main"
        snaps = sorted((base / "snapshots").iterdir())
        base = base / "snapshots" / ref.read_text().strip() if ref.is_file() else (snaps[-1] if snaps else base)
    return base / part.subfolder if part.subfolder else base


def read_config(path: Path) -> dict[str, Any]:
    f = path / "config.json"
    if not f.is_file():
        raise CheckpointError(f"{f}: file not found")
    try:
        return json.loads(f.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise CheckpointError(f"{f}: not valid JSON ({exc.msg}, line {exc.lineno})") from None


def read_part(part: Part, weights: bool) -> tuple[dict[str, TensorInfo], dict[str, Any]]:
    """``(tensors, config)`` of a staged part; ``weights=False`` reads only its config."""
    path = part_dir(part)
    if part.layout == "ta_tok_pth":
        args, sd = load_ta_tok(path)
        config = dict(args) if isinstance(args, dict) else {}
        shift, scale = sd.get("scale_layer.shift"), sd.get("scale_layer.scale")
        if shift is not None and scale is not None:
            config["scale_layer"] = [round(float(shift.float().mean()), 6), round(float(scale.float().mean()), 6)]
        return {k: (tuple(v.shape), str(v.dtype).removeprefix("torch.")) for k, v in sd.items()}, config
    if part.layout in ("torch_state_dict", "torch_tensor"):
        return _torch_file_tensors(part, path), {}
    if part.layout == "npz":
        return _npz_tensors(path), {}
    config = read_config(path)
    return (read_folder(path) if weights else {}), config


def _torch_file_tensors(part: Part, path: Path) -> dict[str, TensorInfo]:
    """A torch file's tensors as its loader sees them: ``[state_key]``, else ``["state_dict"]``, ``module.`` stripped.

    A ``torch_tensor`` file is one tensor; it is reported under the name ``ctx`` its manifest uses.
    """
    import torch

    if not path.is_file():
        raise CheckpointError(f"{path}: file not found")
    try:
        try:
            state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except RuntimeError as exc:  # files of the pre-1.6 format cannot be mapped; they are small, read them
            if "mmap" not in str(exc):
                raise
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any read failure is a bad file
        raise CheckpointError(f"{path}: cannot read as a weights-only torch file ({type(exc).__name__})") from None
    if part.layout == "torch_tensor":
        if not isinstance(state, torch.Tensor):
            raise CheckpointError(f"{path}: expected one tensor, got a {type(state).__name__}")
        state = {"ctx": state}
    elif part.state_key is not None:
        if not isinstance(state, dict) or part.state_key not in state:
            raise CheckpointError(f"{path}: no '{part.state_key}' key (the loader reads the state dict from it)")
        state = state[part.state_key]
    elif isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise CheckpointError(f"{path}: expected a state dict, got a {type(state).__name__}")
    out: dict[str, TensorInfo] = {}
    for key, v in state.items():
        if not isinstance(v, torch.Tensor):
            raise CheckpointError(f"{path}: key '{key}' is a {type(v).__name__}, not a tensor")
        out[key.removeprefix("module.")] = (tuple(v.shape), dtype_name(v.dtype))
    return out


def _npz_tensors(path: Path) -> dict[str, TensorInfo]:
    """Array names and shapes of an ``.npz`` (object arrays refused: ``allow_pickle=False``)."""
    import zipfile

    import numpy as np

    if not path.is_file():
        raise CheckpointError(f"{path}: file not found")
    out: dict[str, TensorInfo] = {}
    try:
        with np.load(path, allow_pickle=False) as data:
            for key in data.files:
                arr = data[key]
                out[key] = (tuple(arr.shape), {"float64": "F64", "float32": "F32"}.get(str(arr.dtype), str(arr.dtype)))
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as exc:
        raise CheckpointError(f"{path}: cannot read as .npz ({type(exc).__name__}: {str(exc).splitlines()[0][:120]})") from None
    return out


@dataclasses.dataclass
class Result:
    reports: dict[str, PartReport]
    errors: dict[str, str]  # part -> one-line read error
    fresh: dict[str, list[str]]
    scaling_factor: float | None

    @property
    def ok(self) -> bool:
        return not self.errors and all(r.ok for r in self.reports.values())


def verify_model(cfg: ModelConfig) -> Result:
    """Check every part ``cfg.init`` starts from (headers and configs only)."""
    start = start_for(cfg)
    files: dict[str, dict[str, TensorInfo]] = {}
    configs: dict[str, dict[str, Any]] = {}
    errors: dict[str, str] = {}
    for name, use in start.parts.items():
        try:
            files[name], configs[name] = read_part(PARTS[name], use == "weights")
        except CheckpointError as exc:
            errors[name] = str(exc)
    reports = coverage(cfg, files)
    for name, config in configs.items():
        reports[name].config = config_disagreements(cfg, name, config)
        if name == TA_TOK and config.get("scale_layer", [0.5, 0.5]) != [0.5, 0.5]:
            reports[name].config.append(f"scale_layer: tokenizer normalises (x - 0.5) / 0.5, file has {config['scale_layer']}")
    for name in errors:
        reports.pop(name, None)
    dcae = configs.get("dc-ae-f32c32", {})
    return Result(reports, errors, fresh_targets(cfg), dcae.get("scaling_factor", cfg.vae.scaling_factor))


def verify_aux(part: Part) -> tuple[PartReport | None, str | None]:
    """A captioner / reward / metric part against its committed manifest, and its config.json against the part's values.

    A missing ``*.num_batches_tracked`` is not a gap: files written before PyTorch 0.4.1 lack it and
    ``BatchNorm`` fills it in at load.
    """
    try:
        have, config = read_part(part, True)
    except CheckpointError as exc:
        return None, str(exc)
    want = manifest_tensors(read_manifest(part.name, part.manifest_dir))
    rep = PartReport(part.name, "weights")
    for key, (shape, _) in want.items():
        if key not in have:
            if not key.endswith(".num_batches_tracked"):
                rep.missing.append(key)
        elif tuple(have[key][0]) != tuple(shape):
            rep.mismatched.append(f"{key}: manifest {list(shape)}, file has {list(have[key][0])}")
        else:
            rep.mapped += 1
    rep.unexpected = sorted(set(have) - set(want))
    rep.config = aux_config_disagreements(part, config)
    return rep, None


def aux_config_disagreements(part: Part, config: dict[str, Any]) -> list[str]:
    """``key: part X, file Y`` for each part value the file's config.json states differently.

    ``text.K`` / ``vision.K`` are read from ``text_config`` / ``vision_config``; a ``text.K`` also from the
    top level, where older multimodal configs (Qwen2.5-VL) keep the language model's keys. Keys the
    file does not state are not compared (the class default applies).
    """
    out = []
    for key, want in part.values().items():
        head, _, leaf = key.partition(".")
        if leaf and head in ("text", "vision"):
            sub = config.get(f"{head}_config") or {}
            found = sub.get(leaf, config.get(leaf)) if head == "text" else sub.get(leaf)
        else:
            found = config.get(key)
        if found is not None and found != want:
            out.append(f"{key}: part {want!r}, file {found!r}")
    return out


def table(result: Result, aux: dict[str, tuple[PartReport | None, str | None]], detail: int = 5) -> list[str]:
    """The coverage table and, under it, up to ``detail`` names per gap."""
    lines = [f"{'part':<30}{'use':<9}{'mapped':>8}{'ignored':>9}{'missing':>9}{'unexpected':>12}{'shape':>7}{'config':>8}"]
    gaps: list[str] = []
    rows = {**result.reports, **{n: r for n, (r, _) in aux.items() if r is not None}}
    for name, rep in rows.items():
        lines.append(f"{name:<30}{rep.use:<9}{rep.mapped:>8}{rep.ignored:>9}{len(rep.missing):>9}{len(rep.unexpected):>12}"
                     f"{len(rep.mismatched):>7}{len(rep.config):>8}")
        for label, items in (("missing", rep.missing), ("unexpected", rep.unexpected), ("shape", rep.mismatched),
                             ("config", rep.config)):
            gaps += [f"  {name}: {label}: {x}" for x in items[:detail]]
            if len(items) > detail:
                gaps.append(f"  {name}: {label}: ... {len(items) - detail} more")
        gaps += [f"  {name}: partial: {x}" for x in rep.fresh]
    errors = {**result.errors, **{n: e for n, (_, e) in aux.items() if e is not None}}
    lines += [f"{name:<30}error: {err}" for name, err in errors.items()]
    lines += gaps
    for reason, targets in result.fresh.items():
        lines.append(f"  fresh: {len(targets)} tensors ({targets[0].split('.')[0]}.*): {reason}")
    if result.scaling_factor is not None:
        lines.append(f"  DC-AE scaling_factor: {result.scaling_factor} (from vae/config.json)")
    return lines
