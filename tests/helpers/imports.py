"""The static import closure of a prefrestore module (every ``import``/``from ... import`` of
``prefrestore.*``, lazy ones inside functions included), as source files."""

from __future__ import annotations

import ast
from pathlib import Path

from prefrestore.core.config import PROJECT_ROOT

SRC = PROJECT_ROOT / "src"


def module_file(name: str) -> Path | None:
    """The source file of module or package ``name`` under src/, or None (a name imported from a module)."""
    path = SRC / Path(*name.split("."))
    if (path / "__init__.py").is_file():
        return path / "__init__.py"
    return path.with_suffix(".py") if path.with_suffix(".py").is_file() else None


def _imported(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text("utf-8"))):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names if a.name.startswith("prefrestore"))
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("prefrestore"):
            names.add(node.module)
            names.update(f"{node.module}.{a.name}" for a in node.names)  # `from pkg import module`
    return names


def closure(module: str) -> set[Path]:
    """Every source file ``module`` can import, with the ``__init__.py`` of each package on the way."""
    seen: set[Path] = set()
    todo = [module]
    while todo:
        name = todo.pop()
        path = module_file(name)
        if path is None or path in seen:
            continue
        seen.add(path)
        parts = name.split(".")
        todo.extend(".".join(parts[:i]) for i in range(1, len(parts)))  # parent packages run first
        todo.extend(_imported(path))
    return seen


def docstring_only(path: Path) -> bool:
    """A file with nothing but a docstring (a package's ``__init__.py`` that says what lives there)."""
    body = ast.parse(path.read_text("utf-8")).body
    return all(isinstance(n, ast.Expr) and isinstance(n.value, ast.Constant) for n in body)
