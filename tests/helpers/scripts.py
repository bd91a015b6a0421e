"""A script of ``benchmarks/`` loaded as a module (they are scripts, not a package), for the tests of their functions."""

from __future__ import annotations

import importlib.util
import types

from prefrestore.core.config import PROJECT_ROOT


def benchmark_script(name: str) -> types.ModuleType:
    """``benchmarks/<name>.py`` executed as module ``name`` (its own imports, e.g. ``degrade_common``, land in sys.modules)."""
    spec = importlib.util.spec_from_file_location(name, PROJECT_ROOT / "benchmarks" / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
