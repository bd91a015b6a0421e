"""Run one ``prefrestore`` step through its CLI, under ``torchrun`` or alone, and record what each rank did.

    python -m torch.distributed.run --standalone --nproc_per_node 2 tests/helpers/torchrun_worker.py REPORT [--reseed] \\
        -- stage1_2 --profile tiny --in ... --out OUT --summary FILE --set ...

Writes, per rank ``r``:

- ``REPORT/rank<r>.json``: ``writes``, every path under ``OUT`` this process created, renamed, removed
  or opened for writing (a ``sys.addaudithook`` hook, so it sees the step's code without knowing it),
  and ``stats``: stage 1's ``optimizer_state_numel``, the elements of the AdamW moments this rank
  holds when ``fit`` returns (read from the DeepSpeed engine's ZeRO optimizer under DeepSpeed);
- ``REPORT/rank<r>.safetensors``: the weights this rank trained. Stage 1: the trainable parameters
  when ``fit`` returns. Stage 2: both LoRA adapters after every epoch (``e<epoch>.<current|old>.<name>``).

The test runs the one-process reference in its own process with the same recorders (:func:`install`;
``tests/helpers/torchrun.py`` starts both).
``--reseed`` seeds the global RNG from each stage-1 micro-batch's sample ids before its loss, so
that runs that cut one global batch differently (1 process x 2 micro-batches, 2 processes x 1)
draw the same sigmas, noise and condition dropout for the same images.
"""

from __future__ import annotations

import json
import os
import sys
import zlib
from pathlib import Path

import torch
from safetensors.torch import save_file

WRITE_EVENTS = ("os.rename", "os.mkdir", "os.remove", "os.rmdir", "os.link", "os.symlink", "shutil.rmtree")


def main() -> int:
    argv = sys.argv[1:]
    split = argv.index("--")
    report, flags, step_argv = Path(argv[0]), argv[1:split], argv[split + 1:]
    out = Path(step_argv[step_argv.index("--out") + 1]).resolve()
    rank = int(os.environ.get("RANK", "0"))
    torch.set_num_threads(1)
    writes: list[str] = []

    def under_out(path: object) -> str | None:
        if not isinstance(path, str | bytes | os.PathLike):
            return None
        p = Path(os.fsdecode(path)).resolve()
        return str(p) if p == out or out in p.parents else None

    def audit(event: str, args: tuple) -> None:
        if event == "open":
            path, mode, flags_ = args
            writing = any(c in mode for c in "wax+") if isinstance(mode, str) else bool(flags_ & (os.O_WRONLY | os.O_RDWR))
            hit = under_out(path) if writing else None
        elif event in WRITE_EVENTS:
            hit = under_out(args[0]) or (under_out(args[1]) if event == "os.rename" else None)
        else:
            return
        if hit:
            writes.append(f"{event} {hit}")

    from prefrestore.cli.main import main as cli

    weights: dict[str, torch.Tensor] = {}
    stats: dict[str, int] = {}
    install(weights, "--reseed" in flags, setattr, stats)
    sys.addaudithook(audit)
    code = cli(step_argv)
    report.mkdir(parents=True, exist_ok=True)
    save_file(weights, str(report / f"rank{rank}.safetensors"))
    (report / f"rank{rank}.json").write_text(json.dumps({"rank": rank, "writes": writes, "stats": stats}),
                                             encoding="utf-8")
    return code


def install(weights: dict[str, torch.Tensor], reseed: bool, patch=setattr, stats: dict | None = None) -> None:
    """Wrap stage 1's ``fit`` and stage 2's ``nft_epoch`` so that they copy the trained weights into ``weights``
    (and stage 1's optimizer-state size into ``stats``).

    ``patch(obj, name, value)``: ``setattr``, or pytest's ``monkeypatch.setattr`` (undone after the test).
    """
    from prefrestore.model import lora
    from prefrestore.train import common as train_common
    from prefrestore.train import stage1 as train_stage1
    from prefrestore.train import stage2 as train_stage2
    from prefrestore.train.common import trainable_state

    fit, nft_epoch, sana_policies = train_stage1.fit, train_stage2.nft_epoch, train_stage2.sana_policies
    make_accelerator = train_common.make_accelerator
    models = []  # the stage-2 model, seen when its policies are built
    made: list = []

    def recording_accelerator(*args, **kwargs):
        made.append(make_accelerator(*args, **kwargs))
        return made[-1]

    def recording_fit(task, *args, **kwargs):
        result = fit(task, *args, **kwargs)
        weights.update({k: v.detach().cpu().clone() for k, v in trainable_state(task.model).items()})
        if stats is not None:
            stats["optimizer_state_numel"] = optimizer_state_numel(made[-1])
        return result

    def recording_policies(model, *args, **kwargs):
        models[:] = [model]
        return sana_policies(model, *args, **kwargs)

    def recording_epoch(policies, *args, **kwargs):
        result = nft_epoch(policies, *args, **kwargs)
        step = args[6]  # nft_epoch(policies, shard, weights, cfg, schedule, optimizer, params, step, ...)
        for name in (lora.CURRENT, lora.OLD):
            for k, v in lora.adapter_state(models[0].transformer, name).items():
                weights[f"e{step}.{name}.{k}"] = v
        return result

    patch(train_stage1, "fit", recording_fit)
    patch(train_common, "make_accelerator", recording_accelerator)
    patch(train_stage2, "nft_epoch", recording_epoch)
    patch(train_stage2, "sana_policies", recording_policies)
    if reseed:
        for cls in (train_stage1.SemanticAlignLoss, train_stage1.TextureAlignLoss):
            patch(cls, "forward", _reseeded(cls.forward))


def optimizer_state_numel(accelerator) -> int:
    """Elements of the AdamW moments (``exp_avg``, ``exp_avg_sq``) this process holds.

    The prepared optimizer wraps the one that steps: accelerate's wrapper -> (DeepSpeed's ZeRO
    optimizer, whose state covers this rank's flat partition only ->) ``torch.optim.AdamW``.
    """
    (opt,) = accelerator._optimizers
    while hasattr(opt, "optimizer"):
        opt = opt.optimizer
    return sum(int(v.numel()) for state in opt.state.values() for k, v in state.items()
               if k in ("exp_avg", "exp_avg_sq"))


def _reseeded(forward):
    def wrapped(self, batch):
        torch.manual_seed(zlib.crc32("|".join(batch["ids"]).encode()))
        return forward(self, batch)

    return wrapped


if __name__ == "__main__":
    sys.exit(main())
