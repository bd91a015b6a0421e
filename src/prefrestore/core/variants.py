"""The two registered model variants (SPEC §4): ``fidelity`` (stage 1.2) and ``quality`` (stage 2).

One home for how a model directory or an evaluate run is recognised as one of them; json and
pathlib only, so the reviewer notebook (:mod:`prefrestore.registry.review`) can use it without torch.
"""

from __future__ import annotations

import json
from pathlib import Path

VARIANT_LABELS = {"fidelity": "Pref-Restore Fidelity", "quality": "Pref-Restore Quality"}
# A model folder's name says which one it is: dvc.yaml evaluates models/stage1_2 (fidelity) and
# models/stage2 (quality); a release holds <run>/<variant>.
MODEL_DIR_VARIANTS = {"stage1_2": "fidelity", "fidelity": "fidelity", "stage2": "quality", "quality": "quality"}
STAGE_VARIANTS = {"1.2": "fidelity", "2": "quality"}  # the training summary's "stage" (metrics.json)


def variant_of(model_dir: Path) -> str | None:
    """``fidelity`` or ``quality``: from the model folder's name or, for any other name (a KFP
    artifact path), from the ``stage`` its training wrote into ``metrics.json``; None for other models."""
    model_dir = Path(model_dir)
    if model_dir.name in MODEL_DIR_VARIANTS:
        return MODEL_DIR_VARIANTS[model_dir.name]
    summary = model_dir / "metrics.json"
    if not summary.is_file():
        return None
    try:
        stage = json.loads(summary.read_text(encoding="utf-8")).get("stage")
    except (json.JSONDecodeError, AttributeError):
        return None
    return STAGE_VARIANTS.get(str(stage))
