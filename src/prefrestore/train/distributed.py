"""Ranks and the few collectives the training steps need under ``torchrun`` / ``accelerate launch``.

``torchrun`` starts one process per device and exports ``RANK``, ``LOCAL_RANK`` and ``WORLD_SIZE``.
Stage 1 gets its process group from ``accelerate.Accelerator`` (DDP); stage 2 calls :func:`device`,
which starts it through ``accelerate.PartialState`` (gloo on CPU, NCCL on GPUs). Rank 0 is the main
process: it alone writes checkpoints, model directories and MLflow runs.

Every helper is the identity (or a no-op) in a single process, so a plain run is untouched.
"""

from __future__ import annotations

import datetime
import os
from collections.abc import Iterable, Mapping
from typing import Any

import torch

# How long a rank may wait in a collective. Rank 0 alone evaluates the held-out set (stage 1
# validation; stage 2 held-out reward and the Fig. 8 seeds) and writes the model while the others
# wait, which at paper scale can outlast NCCL's default of 10 minutes.
TIMEOUT = datetime.timedelta(hours=2)


def rank() -> int:
    """This process's global rank (0 without a launcher)."""
    if _group():
        return torch.distributed.get_rank()
    return int(os.environ.get("RANK", "0"))


def world_size() -> int:
    """Processes of this launch (1 without a launcher)."""
    if _group():
        return torch.distributed.get_world_size()
    return int(os.environ.get("WORLD_SIZE", "1"))


def is_main() -> bool:
    return rank() == 0


def _group() -> bool:
    return torch.distributed.is_available() and torch.distributed.is_initialized()


def device() -> torch.device:
    """This process's device; under a launcher, also starts the process group (accelerate picks the backend)."""
    if world_size() == 1:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    from accelerate import PartialState

    return PartialState(cpu=not torch.cuda.is_available(), timeout=TIMEOUT).device


def barrier() -> None:
    if _group() and world_size() > 1:
        torch.distributed.barrier()


def broadcast(value: Any) -> Any:
    """Rank 0's ``value`` on every rank (any picklable object)."""
    if not _group() or world_size() == 1:
        return value
    box = [value]
    torch.distributed.broadcast_object_list(box, src=0)
    return box[0]


def gather(value: Any) -> list[Any]:
    """Every rank's ``value`` (picklable), in rank order, on every rank."""
    if not _group() or world_size() == 1:
        return [value]
    out: list[Any] = [None] * world_size()
    torch.distributed.all_gather_object(out, value)
    return out


def sum_floats(values: Mapping[str, float]) -> dict[str, float]:
    """Each number summed over ranks (every rank passes the same keys)."""
    if not _group() or world_size() == 1:
        return dict(values)
    keys = sorted(values)
    t = torch.tensor([float(values[k]) for k in keys], dtype=torch.float64, device=_comm_device())
    torch.distributed.all_reduce(t)
    return dict(zip(keys, t.tolist(), strict=True))


def sum_grads_(params: Iterable[torch.nn.Parameter]) -> None:
    """In place: every parameter's gradient becomes its sum over ranks (a missing one counts as zeros).

    What DDP's all-reduce does, but summed: callers weight each rank's loss by its share of the
    global batch, so the sum is the gradient of the global mean.
    """
    if not _group() or world_size() == 1:
        return
    params = list(params)
    grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
    flat = torch.cat([g.reshape(-1) for g in grads])
    torch.distributed.all_reduce(flat)
    offset = 0
    for p, g in zip(params, grads, strict=True):
        n = g.numel()
        p.grad = flat[offset:offset + n].view_as(g).clone()
        offset += n


def _comm_device() -> torch.device:
    if "nccl" in str(torch.distributed.get_backend()):  # NCCL reduces CUDA tensors only
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")
