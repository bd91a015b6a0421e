"""The Pref-Restore model (SPEC §2): build, save/load, condition, velocity, restore.

Public API::

    from prefrestore.model import PrefRestoreModel, ModelConfig, Condition, restore, Restorer, from_params
"""

from __future__ import annotations

from prefrestore.core.config import Params
from prefrestore.model.config import ModelConfig
from prefrestore.model.generator import Condition
from prefrestore.model.instructions import load_config as _instructions_config
from prefrestore.model.model import PrefRestoreModel
from prefrestore.model.pretrained import WEIGHTS, build_pretrained
from prefrestore.model.restore import RestoreConfig, Restorer, restore

__all__ = ["WEIGHTS", "Condition", "ModelConfig", "PrefRestoreModel", "RestoreConfig", "Restorer", "from_params", "restore"]


def from_params(params: Params) -> PrefRestoreModel:
    """A fresh model for ``params``: random init (``model.init: random``) or the store's
    pretrained parts (``init: pretrained``, :mod:`prefrestore.model.pretrained`)."""
    cfg = params.section("model", ModelConfig)
    system_message = _instructions_config(params).system_message
    if cfg.init == "random":
        return PrefRestoreModel.build(cfg, system_message)
    return build_pretrained(cfg, system_message)
