"""DeepSpeed ZeRO through accelerate (``stage1_x.deepspeed: zero1|zero2``, ``infra/deepspeed/*.json``).

The misconfigurations fail with a clear message in any environment. The engine itself runs where the
``deepspeed`` package is installed (the ``dist`` extra; ``make test`` does not install it): one CPU
process under ``torchrun``, so the DeepSpeed engine, its sharded checkpoints and resuming from them
are exercised without a GPU.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from prefrestore.core.config import load
from prefrestore.train import checkpoint
from prefrestore.train.common import CHECKPOINTS, load_train_config, make_accelerator
from prefrestore.train.stage1 import Stage12Config, train

FAST = {"stage1_2.global_batch": 4, "stage1_2.per_device_batch": 2, "stage1_2.max_steps": 4,
        "stage1_2.checkpoint_every": 2, "stage1_2.val_images": 2, "stage1_2.deterministic": True,
        "restore.steps": 2}

# Run under torchrun: train stage 1.2 with the given overrides (and stop_after), write the summary.
SCRIPT = """
import json, sys
from pathlib import Path
import torch
torch.set_num_threads(1)
from prefrestore.core.config import load
from prefrestore.train.stage1 import train
inputs, out, sets, stop = json.loads(sys.argv[1]), Path(sys.argv[2]), json.loads(sys.argv[3]), int(sys.argv[4])
summary = train("stage1_2", load("tiny").with_overrides(sets), {k: Path(v) for k, v in inputs.items()}, out,
                stop_after=stop or None)
Path(str(out) + ".json").write_text(json.dumps(summary, default=str))
"""

needs_deepspeed = pytest.mark.skipif(importlib.util.find_spec("deepspeed") is None,
                                     reason="deepspeed is not installed (the `dist` extra)")


def _cfg() -> Stage12Config:
    return load_train_config(load("tiny").with_overrides({**FAST, "stage1_2.deepspeed": "zero1"}), "stage1_2",
                             Stage12Config)


def test_deepspeed_without_a_launcher_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("LOCAL_RANK", raising=False)
    monkeypatch.setenv("WORLD_SIZE", "1")
    with pytest.raises(RuntimeError, match="torchrun --nproc_per_node"):
        make_accelerator(_cfg())


@pytest.mark.skipif(torch.cuda.is_available(), reason="the CPU-only rule")
def test_deepspeed_over_several_cpu_processes_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    """accelerate would start no process group: each rank would train alone, silently."""
    monkeypatch.setenv("LOCAL_RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(RuntimeError, match="not supported"):
        make_accelerator(_cfg())


@pytest.fixture(scope="module")
def inputs(tiny_train_inputs: dict[str, Path]) -> dict[str, Path]:
    return tiny_train_inputs


def _torchrun(tmp_path: Path, inputs: dict[str, Path], out: Path, sets: dict, stop: int = 0) -> dict:
    script = tmp_path / "ds_train.py"
    script.write_text(SCRIPT)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'mlflow.db'}"}
    env.pop("PREFRESTORE_PARENT_RUN_ID", None)
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "1",
                           str(script), json.dumps({k: str(v) for k, v in inputs.items()}), str(out),
                           json.dumps(sets), str(stop)], env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return json.loads(Path(str(out) + ".json").read_text())


def _last_weights(out: Path) -> dict[str, torch.Tensor]:
    return load_file(str(checkpoint.list_checkpoints(out / CHECKPOINTS)[-1] / checkpoint.TRAINABLE))


@needs_deepspeed
@pytest.mark.parametrize("zero", ["zero1", "zero2"])
def test_zero_on_cpu_equals_plain_adamw_and_resumes_exactly(inputs, tmp_path: Path, zero: str) -> None:
    """One process: ZeRO is AdamW with its state in DeepSpeed's engine, so the weights match the
    plain run; a run stopped after 2 of 4 steps resumes from the sharded checkpoint to the same weights."""
    plain = train("stage1_2", load("tiny").with_overrides(FAST), inputs, tmp_path / "plain")
    sets = {**FAST, "stage1_2.deepspeed": zero}
    full = _torchrun(tmp_path, inputs, tmp_path / zero, sets)
    ck = checkpoint.list_checkpoints(tmp_path / zero / CHECKPOINTS)[-1]
    assert (ck / checkpoint.ACCELERATE_DIR).is_dir()  # DeepSpeed's engine state, in the checksummed checkpoint
    assert not (ck / checkpoint.OPTIMIZER).exists()
    checkpoint.verify(ck)
    a, b = _last_weights(tmp_path / "plain"), _last_weights(tmp_path / zero)
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(b[k], a[k], rtol=1e-5, atol=1e-6, msg=k)
    assert full["train/loss"] == pytest.approx(plain["train/loss"], rel=1e-5)

    part = _torchrun(tmp_path, inputs, tmp_path / "resumed", sets, stop=2)
    assert part["stopped_early"] and part["steps"] == 2
    resumed = _torchrun(tmp_path, inputs, tmp_path / "resumed", sets)
    assert resumed["resumed_from"] == 2 and resumed["steps"] == 4
    c = _last_weights(tmp_path / "resumed")
    for k in b:
        torch.testing.assert_close(c[k], b[k], rtol=0, atol=0, msg=k)
