"""The training recipe shared by stages 1.1 and 1.2 (paper Table I; SPEC §3).

- AdamW (betas, eps, weight decay from the stage's section), cosine schedule with linear warm-up
  (``warmup_ratio`` of ``max_steps``) down to ``min_lr``, global-norm gradient clipping.
- The global batch (Table I: 128) is ``per_device_batch x world_size x accumulation``; a global batch
  that does not divide is a config error raised when the section is loaded.
- ``accelerate``: the same code runs on CPU, one GPU, and ``torchrun``/``accelerate launch`` over many
  GPUs or nodes (DDP); with ``deepspeed: zero1|zero2`` it uses ``infra/deepspeed/<name>.json``.
  bf16 autocast is used where the device supports it (CUDA with bf16), never on CPU. Under several
  processes rank 0 alone validates and writes checkpoints, MLflow metrics and the model; the logged
  loss terms are the mean over ranks.
- Data order: each epoch is a permutation seeded by ``(seed, epoch)``, cut into global batches and
  sharded by rank, so the position ``(epoch, batch)`` in a checkpoint resumes the stream exactly.
- Checkpoints (:mod:`prefrestore.train.checkpoint`) every ``checkpoint_every`` steps and at the end; a run
  that finds a sound checkpoint of the same fingerprint continues from it. MLflow: loss terms, lr,
  grad norm, throughput and peak memory every ``log_every`` steps; validation metrics and image grids
  every ``validate_every`` steps (:mod:`prefrestore.train.heldout`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import logging
import math
import os
import random
import resource
import shutil
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from prefrestore.core import tracking
from prefrestore.core.atomic import atomic_path, write_json
from prefrestore.core.config import PROJECT_ROOT, ConfigError, Params, check_range
from prefrestore.train import checkpoint, distributed
from prefrestore.train.distributed import world_size

log = logging.getLogger(__name__)

DEEPSPEED_DIR = PROJECT_ROOT / "infra" / "deepspeed"
CHECKPOINTS = "checkpoints"
VALIDATION_DIR = "validation"
METRICS_FILE = "metrics.json"


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """Fields every stage-1 section shares (Table I); each is documented in ``params.yaml``."""

    lr: float  # peak learning rate
    min_lr: float  # cosine floor
    warmup_ratio: float  # linear warm-up share of max_steps
    weight_decay: float  # AdamW weight decay
    adam_betas: tuple[float, float]  # AdamW betas
    adam_eps: float  # AdamW epsilon
    grad_clip: float  # max global gradient norm (0: off)
    global_batch: int  # images per optimizer step over all processes
    per_device_batch: int  # micro-batch per process
    max_steps: int  # optimizer steps
    mixed_precision: Literal["bf16", "no"]  # bf16 autocast where supported
    deepspeed: Literal["none", "zero1", "zero2"]  # DeepSpeed ZeRO config (infra/deepspeed/<name>.json)
    checkpoint_every: int  # optimizer steps between checkpoints (and one at the end)
    keep_checkpoints: int  # newest checkpoints kept
    validate_every: int  # optimizer steps between validations (0: only at the end)
    val_images: int  # held-out images per validation
    log_every: int  # optimizer steps between metric logs
    num_workers: int  # DataLoader worker processes
    deterministic: bool  # torch.use_deterministic_algorithms during training

    def __post_init__(self) -> None:
        if not self.lr > 0:
            raise ValueError(f"lr={self.lr} must be > 0")
        check_range("lr", self.lr, 1e-12, 1.0)
        check_range("min_lr", self.min_lr, 0.0, self.lr)
        check_range("warmup_ratio", self.warmup_ratio, 0.0, 0.99)
        check_range("weight_decay", self.weight_decay, 0.0, 1.0)
        for b in self.adam_betas:
            check_range("adam_betas", b, 0.0, 0.99999)
        check_range("adam_eps", self.adam_eps, 1e-12, 1e-2)
        check_range("grad_clip", self.grad_clip, 0.0, 1e6)
        check_range("per_device_batch", self.per_device_batch, 1, 1 << 16)
        check_range("global_batch", self.global_batch, 1, 1 << 20)
        if self.global_batch % self.per_device_batch:
            raise ValueError(f"global_batch={self.global_batch} is not divisible by "
                             f"per_device_batch={self.per_device_batch}")
        check_range("max_steps", self.max_steps, 1, 1 << 30)
        check_range("checkpoint_every", self.checkpoint_every, 1, 1 << 30)
        check_range("keep_checkpoints", self.keep_checkpoints, 1, 1000)
        check_range("validate_every", self.validate_every, 0, 1 << 30)
        check_range("val_images", self.val_images, 0, 1 << 20)
        check_range("log_every", self.log_every, 1, 1 << 30)
        check_range("num_workers", self.num_workers, 0, 256)

    def accumulation(self, world_size: int) -> int:
        """Micro-batches per optimizer step on each process: ``global / (per_device * world)``."""
        per_step = self.per_device_batch * world_size
        if self.global_batch % per_step:
            raise ValueError(f"global_batch={self.global_batch} is not divisible by per_device_batch x world_size "
                             f"= {self.per_device_batch} x {world_size} = {per_step}")
        return self.global_batch // per_step

    def warmup_steps(self) -> int:
        return math.ceil(self.warmup_ratio * self.max_steps)


def load_train_config(params: Params, section: str, cls: type[Any]) -> Any:
    """Read a stage section and check the batch arithmetic against this launch's world size."""
    cfg = params.section(section, cls)
    try:
        cfg.accumulation(world_size())
    except ValueError as exc:
        raise ConfigError(f"{params.profile}.{section}: {exc}") from exc
    return cfg


# --------------------------------------------------------------------------- optimizer, schedule
def lr_at(step: int, cfg: TrainConfig) -> float:
    """Learning rate of optimizer step ``step`` (0-based): linear warm-up, then cosine to ``min_lr``."""
    warm = cfg.warmup_steps()
    if step < warm:
        return cfg.lr * (step + 1) / warm
    span = max(1, cfg.max_steps - warm)
    progress = min(1.0, (step - warm) / span)
    return cfg.min_lr + (cfg.lr - cfg.min_lr) * 0.5 * (1.0 + math.cos(math.pi * progress))


def build_optimizer(params: Sequence[nn.Parameter], cfg: TrainConfig) -> torch.optim.AdamW:
    return torch.optim.AdamW(params, lr=cfg.lr, betas=tuple(cfg.adam_betas), eps=cfg.adam_eps,
                             weight_decay=cfg.weight_decay)


def build_scheduler(optimizer: torch.optim.Optimizer, cfg: TrainConfig) -> torch.optim.lr_scheduler.LambdaLR:
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: lr_at(step, cfg) / cfg.lr)


# --------------------------------------------------------------------------- accelerator
def make_accelerator(cfg: TrainConfig, trainable_numel: int) -> Any:
    """An ``accelerate.Accelerator`` for this launch: DDP/CPU/GPU, DeepSpeed ZeRO when configured.

    Under DeepSpeed, the ZeRO buckets are capped at ``trainable_numel`` (the elements of the trainable
    parameters): ZeRO allocates a whole bucket up front, and one larger than the model only costs
    memory (the 5e8-element buckets of ``infra/deepspeed`` are 2 GB per rank in fp32). Without a GPU,
    DeepSpeed runs on its CPU accelerator over gloo (the same ZeRO optimizer as on GPUs).
    """
    from accelerate import Accelerator
    from accelerate.utils import DistributedDataParallelKwargs, InitProcessGroupKwargs

    cuda = torch.cuda.is_available()
    bf16 = cfg.mixed_precision == "bf16" and cuda and torch.cuda.is_bf16_supported()
    accum = cfg.accumulation(world_size())
    plugin = None
    if cfg.deepspeed != "none":
        if "LOCAL_RANK" not in os.environ:
            raise RuntimeError(f"deepspeed: {cfg.deepspeed} needs a launcher that sets the process-group "
                               "environment: run the step under `torchrun --nproc_per_node N` (N = 1 is fine)")
        import importlib.util

        if importlib.util.find_spec("deepspeed") is None:
            raise RuntimeError(f"deepspeed: {cfg.deepspeed} is configured but the deepspeed package is not "
                               "installed; install it or set deepspeed: none")
        from accelerate.utils import DeepSpeedPlugin

        ds_config = json.loads((DEEPSPEED_DIR / f"{cfg.deepspeed}.json").read_text(encoding="utf-8"))
        ds_config["bf16"] = {"enabled": bf16}
        ds_config["train_micro_batch_size_per_gpu"] = cfg.per_device_batch
        ds_config["gradient_accumulation_steps"] = accum
        ds_config["train_batch_size"] = cfg.global_batch
        ds_config["gradient_clipping"] = cfg.grad_clip
        zero = ds_config["zero_optimization"]
        for key in ("reduce_bucket_size", "allgather_bucket_size"):
            zero[key] = max(1, min(int(zero[key]), trainable_numel))
        if not cuda:
            # DeepSpeed's CPU accelerator JIT-compiles a shared-memory all-reduce at start-up (90 s on
            # 2 cores, needs a compiler) that only its inference all-reduce uses; training runs on gloo
            import deepspeed.ops

            deepspeed.ops.__compatible_ops__["deepspeed_shm_comm"] = False
        plugin = DeepSpeedPlugin(hf_ds_config=ds_config)
    # Frozen-but-present modules and CFG-dropped conditions can leave a trainable tensor without a
    # gradient in some micro-batch; DDP must not hang on it.
    ddp = DistributedDataParallelKwargs(find_unused_parameters=True)
    # ranks wait while rank 0 validates. DeepSpeed without a GPU: accelerate finds no backend of its
    # own and would count one process per rank (each training alone); gloo is named explicitly
    group = InitProcessGroupKwargs(timeout=distributed.TIMEOUT,
                                   backend="gloo" if plugin is not None and not cuda else None)
    # cpu=True would make accelerate drop the DeepSpeed plugin without a word; without it, DeepSpeed
    # runs on its own CPU accelerator when there is no GPU (tests/train/test_deepspeed.py)
    return Accelerator(mixed_precision="bf16" if bf16 else "no", gradient_accumulation_steps=accum,
                       deepspeed_plugin=plugin, cpu=not cuda and plugin is None, kwargs_handlers=[ddp, group])


def peak_memory_mb(device: torch.device) -> float:
    """Peak allocated CUDA memory, or this process's peak RSS on CPU (MiB)."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / 2**20 if sys.platform == "darwin" else rss / 1024


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


@contextlib.contextmanager
def deterministic(enabled: bool) -> Iterator[None]:
    """``torch.use_deterministic_algorithms`` for the duration (restored afterwards)."""
    before = torch.are_deterministic_algorithms_enabled()
    if enabled:
        torch.use_deterministic_algorithms(True, warn_only=True)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(before, warn_only=True)


# --------------------------------------------------------------------------- data order
def epoch_batches(n: int, global_batch: int, seed: int, epoch: int) -> list[list[int]]:
    """The global batches of one epoch: a permutation seeded by ``(seed, epoch)``, last partial batch dropped."""
    if n < global_batch:
        raise ValueError(f"the training set has {n} images, fewer than one global batch ({global_batch})")
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed * 1_000_003 + epoch)).tolist()
    return [perm[i * global_batch:(i + 1) * global_batch] for i in range(n // global_batch)]


def rank_micro_batches(batch: Sequence[int], per_device: int, world: int, rank: int) -> list[list[int]]:
    """This rank's micro-batches of one global batch (micro-batch ``m`` of rank ``r`` is slice ``m * world + r``)."""
    accum = len(batch) // (per_device * world)
    return [list(batch[(m * world + rank) * per_device:(m * world + rank + 1) * per_device]) for m in range(accum)]


# --------------------------------------------------------------------------- the loop
@dataclasses.dataclass
class TrainTask:
    """One stage's pieces for :func:`fit` (built by the stage module)."""

    name: str  # step name, used in logs ("stage1_1")
    model: nn.Module  # the PrefRestoreModel, its trainable parameters already selected (requires_grad)
    loss: nn.Module  # forward(batch) -> dict with "loss" (and other scalar terms to log)
    dataset: Any  # map-style dataset with set_epoch(epoch)
    collate: Callable[[list[Any]], Any]
    validate: Callable[[nn.Module, int], dict[str, float]] | None  # (model, step) -> metrics, main process only


@dataclasses.dataclass
class TrainResult:
    steps: int  # optimizer steps done in total
    resumed_from: int  # step of the checkpoint this call continued from (0: fresh)
    stopped_early: bool  # stop_after hit before max_steps
    last: dict[str, float]  # last logged training metrics
    validation: dict[str, float]  # last validation metrics
    seconds: float
    report: list[str]  # checkpoint problems found at start


def trainable_state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.detach() for n, p in model.named_parameters() if p.requires_grad}


def load_trainable(model: nn.Module, state: Mapping[str, torch.Tensor]) -> None:
    params = dict(model.named_parameters())
    wanted = {n for n, p in params.items() if p.requires_grad}
    if set(state) != wanted:
        missing, extra = sorted(wanted - set(state)), sorted(set(state) - wanted)
        raise checkpoint.CorruptCheckpoint(f"checkpoint trainable set differs from this stage's: missing {missing[:3]}, "
                                           f"unexpected {extra[:3]}")
    with torch.no_grad():
        for name, value in state.items():
            params[name].copy_(value.to(params[name].device, params[name].dtype))


def fit(task: TrainTask, cfg: TrainConfig, ckpt_dir: Path, fingerprint: str, seed: int,
        stop_after: int | None = None) -> TrainResult:
    """Train ``task`` for ``cfg.max_steps`` optimizer steps, resuming from ``ckpt_dir`` when possible.

    ``stop_after``: stop (with a checkpoint) once this many steps are done in total, as if the job
    were killed there; a later call continues.
    """
    t_start = time.perf_counter()
    accelerator = make_accelerator(cfg, sum(p.numel() for p in task.model.parameters() if p.requires_grad))
    rank, world = accelerator.process_index, accelerator.num_processes
    accum = cfg.accumulation(world)
    model = task.model.to(accelerator.device)
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise ValueError(f"{task.name}: no trainable parameters")
    optimizer = build_optimizer(params, cfg)
    scheduler = build_scheduler(optimizer, cfg)

    path, report = checkpoint.latest(ckpt_dir) if accelerator.is_main_process else (None, [])
    path = _broadcast(accelerator, path)
    for line in report:
        log.warning("%s: %s", task.name, line)
    if report:
        tracking.set_tags({"checkpoint_report": " | ".join(report)[:4000]})
    start = 0
    seed_everything(seed + rank)
    if path is not None:
        ck = checkpoint.load(path)
        if ck.fingerprint != fingerprint:
            raise RuntimeError(f"{task.name}: checkpoint {path} was written for different settings or inputs "
                               f"(fingerprint {ck.fingerprint} != {fingerprint}); delete {ckpt_dir} to start over, "
                               "or restore the settings it was made with")
        load_trainable(model, ck.trainable)
        if ck.optimizer is not None:
            optimizer.load_state_dict(ck.optimizer)
        scheduler.load_state_dict(ck.scheduler)
        checkpoint.set_rng_state(checkpoint.load_rng(path, rank))
        start = ck.step
        log.info("%s: resuming from %s (step %d)", task.name, path, start)

    loss_module, optimizer = accelerator.prepare(task.loss, optimizer)
    if path is not None and cfg.deepspeed != "none" and (path / checkpoint.ACCELERATE_DIR).is_dir():
        accelerator.load_state(str(path / checkpoint.ACCELERATE_DIR))
    n = len(task.dataset)
    per_epoch = len(epoch_batches(n, cfg.global_batch, seed, 0))
    stop = min(cfg.max_steps, stop_after) if stop_after is not None else cfg.max_steps
    last: dict[str, float] = {}
    validation: dict[str, float] = {}
    step = start
    bar = tqdm(total=cfg.max_steps, initial=start, desc=task.name, disable=not accelerator.is_main_process)
    window_t, window_n = time.perf_counter(), 0
    with deterministic(cfg.deterministic):
        while step < stop:
            epoch, first = divmod(step, per_epoch)
            task.dataset.set_epoch(epoch)
            batches = epoch_batches(n, cfg.global_batch, seed, epoch)[first:]
            micro = [mb for b in batches for mb in rank_micro_batches(b, cfg.per_device_batch, world, rank)]
            # an own generator: creating the iterator must not draw from the global RNG (exact resume)
            loader = torch.utils.data.DataLoader(task.dataset, batch_sampler=micro, collate_fn=task.collate,
                                                 num_workers=cfg.num_workers,
                                                 generator=torch.Generator().manual_seed(seed + epoch))
            stream = iter(loader)
            for _ in batches:
                if step >= stop:
                    break
                sums: dict[str, float] = {}
                grad_norm = float("nan")
                loss_module.train()
                for _m in range(accum):
                    batch = next(stream)
                    with accelerator.accumulate(loss_module):
                        with accelerator.autocast():
                            terms = loss_module(batch)
                        accelerator.backward(terms["loss"])
                        if accelerator.sync_gradients and cfg.grad_clip > 0:
                            norm = accelerator.clip_grad_norm_(params, cfg.grad_clip)
                            grad_norm = float(norm) if norm is not None else float("nan")
                        optimizer.step()
                        if accelerator.sync_gradients:
                            scheduler.step()
                        optimizer.zero_grad(set_to_none=True)
                    for k, v in terms.items():
                        sums[k] = sums.get(k, 0.0) + float(v.detach()) / accum
                step += 1
                window_n += cfg.global_batch
                bar.update(1)
                bar.set_postfix(loss=f"{sums['loss']:.4f}")
                if step % cfg.log_every == 0 or step == stop:
                    elapsed = time.perf_counter() - window_t
                    if world > 1:  # each rank saw its share of the global batch: log the global mean
                        sums = {k: v / world for k, v in distributed.sum_floats(sums).items()}
                    last = {f"train/{k}": v for k, v in sums.items()}
                    last.update({"train/lr": optimizer.param_groups[0]["lr"], "train/grad_norm": grad_norm,
                                 "train/samples_per_s": window_n / max(elapsed, 1e-9),
                                 "train/peak_mem_mb": peak_memory_mb(accelerator.device), "train/epoch": epoch})
                    window_t, window_n = time.perf_counter(), 0
                    if accelerator.is_main_process:
                        tracking.log_metrics(last, step=step)
                due_val = task.validate is not None and (
                    (cfg.validate_every and step % cfg.validate_every == 0) or step == cfg.max_steps)
                if due_val and accelerator.is_main_process:
                    validation = _validate(task, accelerator.unwrap_model(loss_module), model, step)
                if step % cfg.checkpoint_every == 0 or step == stop:
                    _save(accelerator, cfg, model, optimizer, scheduler, ckpt_dir, step, per_epoch, fingerprint)
    bar.close()
    accelerator.wait_for_everyone()
    return TrainResult(step, start, step < cfg.max_steps, last, validation, time.perf_counter() - t_start, report)


def _validate(task: TrainTask, loss_module: nn.Module, model: nn.Module, step: int) -> dict[str, float]:
    """Run the task's validation without touching the training RNG streams."""
    assert task.validate is not None
    was_training = loss_module.training
    loss_module.eval()
    with torch.random.fork_rng(devices=[]), torch.no_grad():
        metrics = task.validate(model, step)
    loss_module.train(was_training)
    tracking.log_metrics(metrics, step=step)
    return metrics


def _broadcast(accelerator: Any, value: Any) -> Any:
    if accelerator.num_processes == 1:
        return value
    from accelerate.utils import broadcast_object_list

    box = [value]
    broadcast_object_list(box, from_process=0)
    return box[0]


def _save(accelerator: Any, cfg: TrainConfig, model: nn.Module, optimizer: Any, scheduler: Any, ckpt_dir: Path,
          step: int, per_epoch: int, fingerprint: str) -> None:
    from accelerate.utils import gather_object

    rngs = gather_object([checkpoint.rng_state()]) if accelerator.num_processes > 1 else [checkpoint.rng_state()]
    ds_dir = Path(ckpt_dir) / f".ds-step-{step:08d}"
    if cfg.deepspeed != "none":  # sharded optimizer state: every rank writes its part
        accelerator.save_state(str(ds_dir))
        accelerator.wait_for_everyone()  # every rank's shard is on disk before rank 0 moves the folder
    if accelerator.is_main_process:
        epoch, position = divmod(step, per_epoch)
        checkpoint.save(
            ckpt_dir, step, trainable=trainable_state(model),
            optimizer=None if cfg.deepspeed != "none" else optimizer.state_dict(),
            scheduler=scheduler.state_dict(), data={"epoch": epoch, "batch": position},
            fingerprint=fingerprint, rng_states=rngs, keep=cfg.keep_checkpoints,
            accelerate_state=(lambda dest: shutil.move(str(ds_dir), str(dest))) if cfg.deepspeed != "none" else None,
        )
    accelerator.wait_for_everyone()


# --------------------------------------------------------------------------- outputs
def fingerprint(step: str, sections: Mapping[str, Any], inputs: Mapping[str, Path]) -> str:
    """Hash of a run's settings and inputs: a checkpoint of another fingerprint is never resumed.

    Inputs are hashed by their small index files (the faces manifest holds every image's SHA-256;
    the captions table; a model directory's ``config.json``) plus every file's name and size.
    """
    h = hashlib.sha256()
    h.update(step.encode())
    h.update(json.dumps(sections, sort_keys=True, default=str).encode())
    for name in sorted(inputs):
        root = Path(inputs[name])
        h.update(name.encode())
        for f in sorted(p for p in root.rglob("*") if p.is_file() and "checkpoints" not in p.parts):
            rel = f.relative_to(root).as_posix()
            h.update(f"{rel}:{f.stat().st_size}".encode())
            if f.suffix in (".parquet", ".json"):
                h.update(f.read_bytes())
    return h.hexdigest()[:16]


def finished(out: Path, fp: str) -> dict[str, Any] | None:
    """The summary of a finished run of the same fingerprint in ``out`` (re-runs are no-ops)."""
    f = Path(out) / METRICS_FILE
    if not (f.is_file() and (Path(out) / "config.json").is_file()):
        return None
    summary = json.loads(f.read_text(encoding="utf-8"))
    return summary if summary.get("fingerprint") == fp else None


def finalize(out: Path, save_model: Callable[[Path], None], summary: Mapping[str, Any]) -> None:
    """Replace ``out`` atomically with the model directory + ``checkpoints/``, ``validation/`` and ``metrics.json``.

    Checkpoints and validation grids of the run are hard-linked (copied where links fail) into the
    new directory before the swap, so a crash at any point leaves a resumable ``out``.
    """
    out = Path(out)
    with atomic_path(out) as tmp:
        save_model(tmp)
        for sub in (CHECKPOINTS, VALIDATION_DIR):
            if (out / sub).is_dir():
                shutil.copytree(out / sub, tmp / sub, copy_function=_link_or_copy)
        write_json(tmp / METRICS_FILE, dict(summary))


def _link_or_copy(src: str, dst: str) -> None:
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)
