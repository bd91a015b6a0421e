"""Every section of every profile builds its typed dataclass: no typo survives loading."""

from __future__ import annotations

import pytest

from prefrestore.core.config import ConfigError, load, profile_names, read_params_file
from prefrestore.core.images import ImageLimits
from prefrestore.data.caption import CaptionConfig
from prefrestore.data.degrade.direct import DegradeConfig
from prefrestore.data.ingest import DataConfig, IngestConfig
from prefrestore.data.validate import ValidateConfig
from prefrestore.evaluation.evaluate import EvaluateConfig
from prefrestore.model.config import ModelConfig
from prefrestore.model.flow import FlowSchedule
from prefrestore.model.instructions import InstructionsConfig
from prefrestore.model.restore import RestoreConfig
from prefrestore.pipeline.launcher import ClusterConfig
from prefrestore.registry.register import RegisterConfig
from prefrestore.train.nft import Stage2Config
from prefrestore.train.rewards import RewardsConfig
from prefrestore.train.stage0 import BootstrapConfig
from prefrestore.train.stage1 import Stage11Config, Stage12Config

SECTIONS = {
    "data": DataConfig,
    "ingest": IngestConfig,
    "validate": ValidateConfig,
    "caption": CaptionConfig,
    "instructions": InstructionsConfig,
    "degrade": DegradeConfig,
    "flow": FlowSchedule,
    "rewards": RewardsConfig,
    "bootstrap": BootstrapConfig,
    "stage1_1": Stage11Config,
    "stage1_2": Stage12Config,
    "stage2": Stage2Config,
    "model": ModelConfig,
    "restore": RestoreConfig,
    "evaluate": EvaluateConfig,
    "cluster": ClusterConfig,
    "register": RegisterConfig,
    "image_limits": ImageLimits,
}


def test_every_section_has_a_typed_home():
    assert set(read_params_file()["defaults"]) == set(SECTIONS)


@pytest.mark.parametrize("profile", profile_names())
def test_every_profile_builds_every_section(profile):
    params = load(profile)
    for name, cls in SECTIONS.items():
        params.section(name, cls)


def test_unknown_key_fails_at_load():
    with pytest.raises(ConfigError, match="unknown key 'lrr'"):
        load("tiny").with_overrides({"stage1_1.lrr": 1e-4})


@pytest.mark.parametrize(
    ("section", "key", "value", "message"),
    [
        ("degrade", "p_rec", 1.5, "p_rec"),
        ("data", "resolution", "big", "expected an integer"),
    ],
)
def test_bad_values_fail_at_load(section, key, value, message):
    params = load("tiny").with_overrides({f"{section}.{key}": value})
    with pytest.raises(ConfigError, match=message):
        params.section(section, SECTIONS[section])
