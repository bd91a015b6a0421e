"""One error path for every command line: expected failures become one line and an exit code.

| exit | meaning | raised as |
|---|---|---|
| 0 | success | |
| 1 | bad input or data: a missing or unreadable file, an image or model that is not one, a checkpoint of the wrong layout, a registered model that does not exist | :class:`InputError`, ``OSError`` with a file name, ``ValueError``, ``KeyError``, MLflow's ``MlflowException``, safetensors' ``SafetensorError`` |
| 2 | usage or config: a bad argument, a bad or broken ``params.yaml`` value | ``argparse``, :class:`UsageError`, :class:`~prefrestore.core.config.ConfigError` |
| 3 | missing weights: a file the local store lacks (``prefrestore weights plan`` says where it goes) | :class:`~prefrestore.core.weights.MissingWeights` |
| 4 | data validation failed (great-expectations) | ``ValidationFailed`` |
| 130 | interrupted | ``KeyboardInterrupt`` |

Anything else is a bug and keeps its traceback. ``--debug`` or ``PREFRESTORE_DEBUG=1`` shows the
traceback of every failure.
"""

from __future__ import annotations

import logging
import os

from prefrestore.core.config import ConfigError
from prefrestore.core.weights import MissingWeights

DEBUG_ENV = "PREFRESTORE_DEBUG"
MAX_MESSAGE = 600  # characters of one error line


class InputError(ValueError):
    """Bad input or data that the user can fix (exit 1); the message names the file, key or value."""


class UsageError(Exception):
    """A command line that cannot work as given (exit 2): a malformed or missing argument."""


def debug_enabled() -> bool:
    return os.environ.get(DEBUG_ENV, "").strip().lower() in ("1", "true", "yes", "on")


def _one_line(text: str) -> str:
    line = " ".join(str(text).split())
    return line if len(line) <= MAX_MESSAGE else line[:MAX_MESSAGE - 3] + "..."


def classify(exc: BaseException) -> tuple[int, str] | None:
    """``(exit code, one-line message)`` for an expected failure, or None for a bug."""
    name = type(exc).__name__
    if isinstance(exc, KeyboardInterrupt):
        return 130, "interrupted"
    if isinstance(exc, ConfigError):
        return 2, _one_line(f"config error: {exc}")
    if isinstance(exc, UsageError):
        return 2, _one_line(f"usage: {exc}")
    if isinstance(exc, MissingWeights):
        return 3, _one_line(f"missing weights: {exc}")
    if name == "ValidationFailed":
        return 4, _one_line(f"validation failed: {exc}")
    if name == "CheckpointError":  # prefrestore.model.headers: a public checkpoint that does not match
        return 1, _one_line(f"bad checkpoint: {exc}")
    if isinstance(exc, OSError) and exc.filename is not None and exc.strerror:
        return 1, _one_line(f"error: {exc.strerror}: {exc.filename}")
    if isinstance(exc, (InputError, ValueError, KeyError, OSError)):
        text = exc.args[0] if isinstance(exc, KeyError) and exc.args else exc
        return 1, _one_line(f"error: {text}")
    if name in ("MlflowException", "RestException"):
        return 1, _one_line(f"error: {getattr(exc, 'message', exc)}")
    if name == "SafetensorError":
        return 1, _one_line(f"error: not a valid safetensors file ({exc})")
    return None


def quiet_offline_runtime() -> None:
    """Nothing is downloaded at run time (the weight store is local): hub clients default to
    offline, and the one library that reaches for the hub while being imported (bitsandbytes, via
    peft: a CPU kernel from ``kernels-community``) finds it offline without a warning."""
    for var in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_DATASETS_OFFLINE"):
        os.environ.setdefault(var, "1")
    for name in ("bitsandbytes.backends.cpu.ops", "kernels._internals.hf_hub", "kernels"):
        logging.getLogger(name).addFilter(_drop_kernel_fetch)


def _drop_kernel_fetch(record: logging.LogRecord) -> bool:
    return "kernels-community" not in record.getMessage()
