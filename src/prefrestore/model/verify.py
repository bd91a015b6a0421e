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
    load_ta_tok,
    read_folder,
)
from prefrestore.model.parts import PARTS, Part, manifest_tensors, read_manifest
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
    if part.layout == "torch_state_dict":
        import torch

        try:
            state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except Exception as exc:  # noqa: BLE001 - any read failure is a bad file
            raise CheckpointError(f"{path}: cannot read as a weights-only torch file ({type(exc).__name__})") from None
        state = state.get("state_dict", state) if isinstance(state, dict) else state
        return {k: (tuple(v.shape), str(v.dtype)) for k, v in state.items()}, {}
    config = read_config(path)
    return (read_folder(path) if weights else {}), config


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
    """A captioner / reward part against its committed manifest."""
    try:
        have, _ = read_part(part, True)
    except CheckpointError as exc:
        return None, str(exc)
    want = manifest_tensors(read_manifest(part.name))
    rep = PartReport(part.name, "weights")
    for key, (shape, _) in want.items():
        if key not in have:
            rep.missing.append(key)
        elif tuple(have[key][0]) != tuple(shape):
            rep.mismatched.append(f"{key}: manifest {list(shape)}, file has {list(have[key][0])}")
        else:
            rep.mapped += 1
    rep.unexpected = sorted(set(have) - set(want))
    return rep, None


def table(result: Result, aux: dict[str, tuple[PartReport | None, str | None]], detail: int = 5) -> list[str]:
    """The coverage table and, under it, up to ``detail`` names per gap."""
    lines = [f"{'part':<26}{'use':<9}{'mapped':>8}{'ignored':>9}{'missing':>9}{'unexpected':>12}{'shape':>7}{'config':>8}"]
    gaps: list[str] = []
    rows = {**result.reports, **{n: r for n, (r, _) in aux.items() if r is not None}}
    for name, rep in rows.items():
        lines.append(f"{name:<26}{rep.use:<9}{rep.mapped:>8}{rep.ignored:>9}{len(rep.missing):>9}{len(rep.unexpected):>12}"
                     f"{len(rep.mismatched):>7}{len(rep.config):>8}")
        for label, items in (("missing", rep.missing), ("unexpected", rep.unexpected), ("shape", rep.mismatched),
                             ("config", rep.config)):
            gaps += [f"  {name}: {label}: {x}" for x in items[:detail]]
            if len(items) > detail:
                gaps.append(f"  {name}: {label}: ... {len(items) - detail} more")
        gaps += [f"  {name}: partial: {x}" for x in rep.fresh]
    errors = {**result.errors, **{n: e for n, (_, e) in aux.items() if e is not None}}
    lines += [f"{name:<26}error: {err}" for name, err in errors.items()]
    lines += gaps
    for reason, targets in result.fresh.items():
        lines.append(f"  fresh: {len(targets)} tensors ({targets[0].split('.')[0]}.*): {reason}")
    if result.scaling_factor is not None:
        lines.append(f"  DC-AE scaling_factor: {result.scaling_factor} (from vae/config.json)")
    return lines
