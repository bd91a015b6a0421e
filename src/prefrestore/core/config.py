"""The one home of every hyperparameter: ``params.yaml``, read into typed frozen dataclasses.

``params.yaml`` holds ``defaults`` (the paper's recipe, Table I) and ``profiles``. A profile is a
small set of overrides deep-merged onto its parent (``extends``, ``defaults`` when absent). Each
pipeline step owns a frozen dataclass for its section and reads it with :func:`section`; unknown,
missing or mistyped keys are errors at load time, never silent defaults.
"""

from __future__ import annotations

import dataclasses
import os
import types
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any, TypeVar

import yaml

T = TypeVar("T")

PROJECT_ROOT = Path(__file__).resolve().parents[3]
PARAMS_ENV = "PREFRESTORE_PARAMS"


class ConfigError(ValueError):
    """A problem in ``params.yaml``: the message names the profile, section and key."""


def params_path() -> Path:
    """The params file in use: ``$PREFRESTORE_PARAMS`` or the project's ``params.yaml``."""
    return Path(os.environ.get(PARAMS_ENV, PROJECT_ROOT / "params.yaml"))


def read_params_file(path: Path | None = None) -> dict[str, Any]:
    path = path or params_path()
    if not path.is_file():
        raise ConfigError(f"params file not found: {path}")
    try:
        with open(path, encoding="utf-8") as fh:
            data = yaml.safe_load(fh)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        raise ConfigError(f"{path}: not valid YAML{where}: {getattr(exc, 'problem', None) or exc}") from None
    if not isinstance(data, dict) or "defaults" not in data or "profiles" not in data:
        raise ConfigError(f"{path}: expected top-level keys 'defaults' and 'profiles'")
    return data


def _merge(base: Mapping[str, Any], override: Mapping[str, Any], where: str) -> dict[str, Any]:
    """Deep-merge ``override`` onto ``base``; an override key absent from ``base`` is a typo."""
    out = dict(base)
    for key, value in override.items():
        if key not in base:
            raise ConfigError(f"{where}: unknown key '{key}' (not in defaults)")
        if isinstance(value, Mapping) and isinstance(base[key], Mapping):
            out[key] = _merge(base[key], value, f"{where}.{key}")
        else:
            out[key] = value
    return out


def profile_names(path: Path | None = None) -> list[str]:
    return sorted(read_params_file(path)["profiles"])


def resolve_profile(profile: str, path: Path | None = None) -> dict[str, Any]:
    """The merged parameter tree of one profile (defaults <- parents <- profile)."""
    data = read_params_file(path)
    profiles = data["profiles"]
    chain: list[str] = []
    name: str | None = profile
    while name is not None:
        if name not in profiles:
            raise ConfigError(f"unknown profile '{name}'; known: {', '.join(sorted(profiles))}")
        if name in chain:
            raise ConfigError(f"profile inheritance loop: {' -> '.join([*chain, name])}")
        chain.append(name)
        name = (profiles[name] or {}).get("extends")
    tree = data["defaults"]
    for name in reversed(chain):
        overrides = {k: v for k, v in (profiles[name] or {}).items() if k != "extends"}
        tree = _merge(tree, overrides, f"profiles.{name}")
    return tree


@dataclasses.dataclass(frozen=True)
class Params:
    """A resolved profile: its name and merged tree. Steps take their sections from it."""

    profile: str
    tree: Mapping[str, Any]

    def section(self, name: str, cls: type[T]) -> T:
        if name not in self.tree:
            raise ConfigError(f"profile '{self.profile}': no section '{name}' in params.yaml")
        return build(cls, self.tree[name], f"{self.profile}.{name}")

    def with_overrides(self, overrides: Mapping[str, Any]) -> Params:
        """Command-line overrides (``section.key=value``); unknown keys are errors."""
        nested: dict[str, Any] = {}
        for dotted, value in overrides.items():
            node = nested
            *parents, leaf = dotted.split(".")
            for part in parents:
                node = node.setdefault(part, {})
            node[leaf] = value
        return Params(self.profile, _merge(self.tree, nested, f"{self.profile} (override)"))


def load(profile: str, path: Path | None = None) -> Params:
    return Params(profile, resolve_profile(profile, path))


def _coerce(tp: Any, value: Any, where: str) -> Any:
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if dataclasses.is_dataclass(tp):
        return build(tp, value, where)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in (a for a in args if a is not type(None)):
            try:
                return _coerce(arg, value, where)
            except ConfigError as exc:
                errors.append(str(exc))
        raise ConfigError(f"{where}: {value!r} matches none of {tp}: {'; '.join(errors)}")
    if origin is typing.Literal:
        if value not in args:
            raise ConfigError(f"{where}: {value!r} is not one of {list(args)}")
        return value
    if origin is tuple:
        if not isinstance(value, list | tuple):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_coerce(args[0], v, f"{where}[{i}]") for i, v in enumerate(value))
        if len(args) != len(value):
            raise ConfigError(f"{where}: expected {len(args)} items, got {len(value)}")
        return tuple(_coerce(a, v, f"{where}[{i}]") for i, (a, v) in enumerate(zip(args, value, strict=True)))
    if origin in (dict, Mapping):
        if not isinstance(value, Mapping):
            raise ConfigError(f"{where}: expected a mapping, got {value!r}")
        kt, vt = args or (str, Any)
        return types.MappingProxyType(
            {_coerce(kt, k, where): _coerce(vt, v, f"{where}.{k}") for k, v in value.items()}
        )
    if tp is Any:
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ConfigError(f"{where}: expected a number, got {value!r}")
        return float(value)
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where}: expected an integer, got {value!r}")
        return value
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: expected true/false, got {value!r}")
        return value
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{where}: expected a string, got {value!r}")
        return value
    raise ConfigError(f"{where}: unsupported field type {tp}")


def build(cls: type[T], data: Any, where: str) -> T:
    """Build dataclass ``cls`` from a mapping: every field required, no unknown keys, types checked.

    The dataclass's ``__post_init__`` may raise ``ValueError`` for out-of-range values; it is
    re-raised as a :class:`ConfigError` that names the section.
    """
    if not isinstance(data, Mapping):
        raise ConfigError(f"{where}: expected a mapping, got {data!r}")
    hints = typing.get_type_hints(cls)
    fields = {f.name for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(data) - fields)
    missing = sorted(fields - set(data))
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {unknown}; allowed: {sorted(fields)}")
    if missing:
        raise ConfigError(f"{where}: missing key(s) {missing}")
    kwargs = {name: _coerce(hints[name], data[name], f"{where}.{name}") for name in fields}
    try:
        return cls(**kwargs)
    except ConfigError:
        raise
    except (ValueError, TypeError) as exc:
        raise ConfigError(f"{where}: {exc}") from exc


def check_range(name: str, value: float, lo: float, hi: float) -> None:
    """Raise ``ValueError`` unless ``lo <= value <= hi`` (for ``__post_init__`` checks)."""
    if not lo <= value <= hi:
        raise ValueError(f"{name}={value} outside [{lo}, {hi}]")


def check_interval(name: str, pair: tuple[float, float], lo: float, hi: float) -> None:
    """Raise ``ValueError`` unless ``pair`` is an ordered interval inside ``[lo, hi]``."""
    a, b = pair
    if not (lo <= a <= b <= hi):
        raise ValueError(f"{name}={list(pair)} must satisfy {lo} <= low <= high <= {hi}")


def as_dict(obj: Any) -> Any:
    """A dataclass (or nested mapping proxy) as plain JSON-friendly data, for logging."""
    if dataclasses.is_dataclass(obj):
        return {f.name: as_dict(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, Mapping):
        return {k: as_dict(v) for k, v in obj.items()}
    if isinstance(obj, tuple | list):
        return [as_dict(v) for v in obj]
    return obj
