"""MODEL_CARD.md for one registered version: data, recipe, metrics, gate decision, limits, licence."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml

# params.yaml sections quoted in the card's recipe, when the profile has them.
RECIPE_SECTIONS = ("data", "degrade", "instructions", "model", "stage1_1", "stage1_2", "stage2", "rewards")

VARIANT_PURPOSE = {
    "fidelity": "the output of stage 1 (semantic- and texture-to-diffusion alignment, Eqs. 10-11): "
                "best identity and structure (LMD, Deg; paper Table II)",
    "quality": "the output of stage 2 (DiffusionNFT preference fine-tuning, Eqs. 12-15): best "
               "perceptual and preference scores (MUSIQ, CLIPIQA+, HPSv2, PickScore; Tables II, VIII), "
               "at some cost in LMD/Deg",
}

KNOWN_LIMITS = (
    "Input must be an aligned face crop (FFHQ-style, roughly square). No face detector or aligner is "
    "shipped: whole photos wider than `register.max_aspect` are refused, and a non-square crop is "
    "centre-cropped before restoration. Images over `image_limits.max_pixels` pixels (checked from the header, "
    "before decoding) or with a shorter side below `image_limits.min_side` are refused.",
    "Trained on synthetic degradations (Eq. 16: blur, downsampling, noise, JPEG); real-world degradations "
    "outside that family (heavy compression artefacts of other codecs, occlusions, extreme poses) may fail.",
    "Generative restoration can hallucinate details; the `quality` variant trades identity fidelity (higher "
    "LMD and Deg) for perceptual quality. Do not use restored faces for identification.",
    "Outputs depend on the sampling seed; report the seed with any result (Fig. 8 measures the spread).",
    "Metrics shown as `unavailable` were not measured (their weights were absent); they are not zero. "
    "A gate on an unavailable metric fails.",
    "Stage-2 rewards (PickScore, HPSv2.1, CLIP) can be over-optimised (reward hacking); the held-out "
    "metrics in the table are the check.",
)


@dataclasses.dataclass(frozen=True)
class CardInputs:
    variant: str
    registered_model: str
    version: int
    outcome: str  # "champion", "rejected" or "superseded"
    champion: int | None
    metrics: Mapping[str, float | str]
    decisions: Sequence[Mapping[str, Any]]
    provenance: Mapping[str, str]
    model_config: Mapping[str, Any] | None
    recipe: Mapping[str, Any]
    starting_weights: str
    restore_hint: str


def read_model_config(model_dir: Path) -> dict[str, Any] | None:
    """The model directory's top-level ``config.json`` (architecture hyperparameters), if any."""
    path = Path(model_dir) / "config.json"
    if not path.is_file():
        return None
    return json.loads(path.read_text(encoding="utf-8"))


def metrics_table(metrics: Mapping[str, float | str]) -> str:
    """A benchmark x metric Markdown table; unavailable values are written as such."""
    benches = sorted({k.split("/")[0] for k in metrics})
    names = sorted({k.split("/")[1] for k in metrics})
    rows = ["| benchmark | " + " | ".join(names) + " |", "|---|" + "---|" * len(names)]
    for b in benches:
        cells = []
        for n in names:
            v = metrics.get(f"{b}/{n}")
            cells.append("" if v is None else (v if isinstance(v, str) else f"{v:.4f}"))
        rows.append(f"| {b} | " + " | ".join(cells) + " |")
    return "\n".join(rows)


def _decision_lines(decisions: Sequence[Mapping[str, Any]]) -> list[str]:
    if not decisions:
        return ["- no new gate decision (this version already was the champion)"]
    lines = []
    for d in decisions:
        against = f"champion v{d['compared_to']}" if d["compared_to"] else "the absolute floors (no champion)"
        lines.append(f"- against {against}: **{'pass' if d['passed'] else 'fail'}**")
        lines += [f"  - {'ok' if c['passed'] else 'FAIL'}: {c['reason']}" for c in d["checks"]]
    return lines


def render(c: CardInputs) -> str:
    recipe = yaml.safe_dump(json.loads(json.dumps(c.recipe, default=list)), sort_keys=False).rstrip()
    config = json.dumps(c.model_config, indent=2, sort_keys=True) if c.model_config else "(no config.json found)"
    champion = f"v{c.champion}" if c.champion is not None else "none"
    lines = [
        f"# Model card: {c.registered_model} v{c.version} ({c.variant})",
        "",
        f"Pref-Restore, blind face restoration; this variant is {VARIANT_PURPOSE[c.variant]}.",
        "",
        f"- Promotion outcome: **{c.outcome}** (champion after promotion: {champion})",
        *[f"- {k}: `{v}`" for k, v in sorted(c.provenance.items())],
        "",
        "## Use",
        "",
        "```",
        c.restore_hint,
        "```",
        "",
        "## Data",
        "",
        "Trained on aligned faces (FFHQ for the paper recipe; synthetic faces for the tiny profile) with "
        "synthetic degradations (paper Eq. 16) and Qwen2.5-VL captions (Appendix D). The exact data version "
        "is the `data_hash` / `dvc_lock_sha256` above.",
        "",
        "## Recipe (resolved params.yaml sections)",
        "",
        "```yaml",
        recipe or "(none)",
        "```",
        "",
        "## Architecture (model config.json)",
        "",
        "```json",
        config,
        "```",
        "",
        "## Evaluation",
        "",
        metrics_table(c.metrics),
        "",
        "## Gate decisions",
        "",
        *_decision_lines(c.decisions),
        "",
        "## Known limits",
        "",
        *[f"- {limit}" for limit in KNOWN_LIMITS],
        "",
        "## Starting weights and licences",
        "",
        c.starting_weights,
        "",
    ]
    return "\n".join(lines)
