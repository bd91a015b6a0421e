"""params.yaml: every profile loads, overrides merge, typos and bad values are errors."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import yaml

from prefrestore.core import config
from prefrestore.core.config import ConfigError, build, check_interval, load, profile_names


@dataclasses.dataclass(frozen=True)
class _Section:
    lr: float  # a learning rate
    steps: int  # a count
    name: str  # a label
    span: tuple[float, float]  # an interval
    mode: str | None  # optional

    def __post_init__(self) -> None:
        if self.lr <= 0:
            raise ValueError(f"lr must be > 0, got {self.lr}")
        check_interval("span", self.span, 0, 10)


def _write(tmp_path: Path, data: dict) -> Path:
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


GOOD = {"lr": 1e-4, "steps": 3, "name": "x", "span": [1, 2], "mode": None}


def test_every_profile_resolves_and_every_section_is_a_mapping():
    names = profile_names()
    assert {"tiny", "paper"} <= set(names)
    for name in names:
        tree = load(name).tree
        assert all(isinstance(v, dict) for v in tree.values()), name


def test_active_profile_exists():
    data = config.read_params_file()
    assert data["profile"] in data["profiles"]


def test_profile_overrides_merge_deeply(tmp_path):
    path = _write(tmp_path, {"profile": "a", "defaults": {"s": {"x": 1, "y": {"z": 2, "w": 3}}},
                             "profiles": {"a": {"s": {"y": {"z": 5}}}, "b": {"extends": "a", "s": {"x": 9}}}})
    assert config.resolve_profile("a", path) == {"s": {"x": 1, "y": {"z": 5, "w": 3}}}
    assert config.resolve_profile("b", path) == {"s": {"x": 9, "y": {"z": 5, "w": 3}}}


def test_override_of_unknown_key_is_an_error(tmp_path):
    path = _write(tmp_path, {"profile": "a", "defaults": {"s": {"x": 1}}, "profiles": {"a": {"s": {"xx": 2}}}})
    with pytest.raises(ConfigError, match="unknown key 'xx'"):
        config.resolve_profile("a", path)


def test_unknown_profile_and_inheritance_loop(tmp_path):
    path = _write(tmp_path, {"profile": "a", "defaults": {},
                             "profiles": {"a": {"extends": "b"}, "b": {"extends": "a"}}})
    with pytest.raises(ConfigError, match="loop"):
        config.resolve_profile("a", path)
    with pytest.raises(ConfigError, match="unknown profile 'zz'"):
        config.resolve_profile("zz", path)


def test_build_checks_keys_types_and_ranges():
    section = build(_Section, GOOD, "t")
    assert section.span == (1.0, 2.0) and isinstance(section.steps, int)
    with pytest.raises(ConfigError, match=r"unknown key\(s\) \['lrr'\]"):
        build(_Section, {**GOOD, "lrr": 1}, "t")
    with pytest.raises(ConfigError, match=r"missing key\(s\) \['steps'\]"):
        build(_Section, {k: v for k, v in GOOD.items() if k != "steps"}, "t")
    with pytest.raises(ConfigError, match="expected an integer"):
        build(_Section, {**GOOD, "steps": 1.5}, "t")
    with pytest.raises(ConfigError, match="expected an integer"):
        build(_Section, {**GOOD, "steps": True}, "t")
    with pytest.raises(ConfigError, match="lr must be > 0"):
        build(_Section, {**GOOD, "lr": 0.0}, "t")
    with pytest.raises(ConfigError, match="span"):
        build(_Section, {**GOOD, "span": [3, 2]}, "t")


def test_sections_are_frozen():
    section = build(_Section, GOOD, "t")
    with pytest.raises(dataclasses.FrozenInstanceError):
        section.lr = 1.0  # type: ignore[misc]


def test_cli_overrides_are_checked():
    params = load("tiny")
    assert params.with_overrides({"data.seed": 7}).tree["data"]["seed"] == 7
    with pytest.raises(ConfigError, match="unknown key 'sed'"):
        params.with_overrides({"data.sed": 7})
