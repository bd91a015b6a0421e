"""Shared test helpers (``pythonpath = ["tests"]`` in pyproject.toml): test files import these, never each other."""
