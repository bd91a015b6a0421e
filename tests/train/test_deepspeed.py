"""DeepSpeed ZeRO through accelerate (``stage1_x.deepspeed: zero1|zero2``, ``infra/deepspeed/*.json``).

The misconfigurations fail with a clear message in any environment. The engine runs for real on
CPU: ``deepspeed`` (the ``dist`` extra, installed by ``make setup`` without compiled ops) picks its
CPU accelerator, and ``torchrun --nproc_per_node 2`` gives it two gloo ranks, so ZeRO shards the AdamW
state over them exactly as over GPUs. Each run is compared with plain AdamW in one process on the
same global batch (``tests/helpers/torchrun.py``); the 2-process ZeRO-2 run of stage 1.2 is in the
default suite, the other stage x ZeRO combinations are ``slow``.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from helpers.torchrun import history, rank_report, run_pair, start, wait

from prefrestore.core.config import ConfigError, load
from prefrestore.pipeline.launcher import cluster_config
from prefrestore.train import checkpoint
from prefrestore.train.common import CHECKPOINTS, load_train_config, make_accelerator
from prefrestore.train.stage1 import Stage11Config, Stage12Config

pytestmark = pytest.mark.skipif(
    not (torch.distributed.is_available() and torch.distributed.is_gloo_available()),
    reason="torch.distributed with gloo is not available")


def _fast(stage: str) -> dict[str, object]:
    """4 optimizer steps of a global batch of 4 (2 ranks x 2, or 1 process x 2 micro-batches of 2),
    every step logged, a checkpoint after step 2 and at the end; no validation."""
    return {f"{stage}.global_batch": 4, f"{stage}.per_device_batch": 2, f"{stage}.max_steps": 4,
            f"{stage}.checkpoint_every": 2, f"{stage}.val_images": 0, f"{stage}.deterministic": True,
            f"{stage}.log_every": 1, "restore.steps": 2}


CONFIGS = {"stage1_1": Stage11Config, "stage1_2": Stage12Config}


def assert_adam_close(got: torch.Tensor, want: torch.Tensor, lr: float, steps: int, name: str) -> None:
    """Weights trained by two AdamW runs that differ only in float rounding (reduction order over ranks) agree.

    Every element within fp32 tolerance (rtol 1e-4, atol 1e-6), except at most 0.1% of a tensor (at least one
    element): where an element's gradient is at rounding level, Adam divides it by its own tiny second moment,
    so a rounding difference becomes a different step of up to ``lr`` (measured: one element in 4096 off by
    2.4e-5 at lr 8e-3 on an Intel Xeon box; none on Zen 4). Those few may differ, by at most ``lr`` per step.
    """
    diff = (got - want).abs()
    off = diff > 1e-6 + 1e-4 * want.abs()
    allowed = max(1, want.numel() // 1000)
    assert int(off.sum()) <= allowed, f"{name}: {int(off.sum())} of {want.numel()} elements differ (largest {float(diff.max()):.3g})"
    assert float(diff.max()) <= lr * steps, f"{name}: an element differs by {float(diff.max()):.3g}, more than {steps} steps of lr {lr}"


def test_adam_closeness_fails_on_a_real_difference() -> None:
    want = torch.linspace(-0.2, 0.2, 4096)
    near = want.clone()
    near[7] += 2.4e-5  # one Adam-amplified element: accepted
    assert_adam_close(near, want, lr=8e-3, steps=4, name="w")
    with pytest.raises(AssertionError, match="elements differ"):  # a partition left un-updated: thousands off
        assert_adam_close(want + torch.where(torch.arange(4096) < 2048, 1e-3, 0.0), want, lr=8e-3, steps=4, name="w")
    far = want.clone()
    far[7] += 0.1  # one element far past what 4 steps can move it
    with pytest.raises(AssertionError, match="more than 4 steps"):
        assert_adam_close(far, want, lr=8e-3, steps=4, name="w")


def _cfg() -> Stage12Config:
    return load_train_config(load("tiny").with_overrides({**_fast("stage1_2"), "stage1_2.deepspeed": "zero1"}),
                             "stage1_2", Stage12Config)


def test_deepspeed_without_a_launcher_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("LOCAL_RANK", raising=False)
    monkeypatch.setenv("WORLD_SIZE", "1")
    with pytest.raises(RuntimeError, match="torchrun --nproc_per_node"):
        make_accelerator(_cfg(), 1000)


def test_deepspeed_has_one_home_in_the_stage_section() -> None:
    """ZeRO is the stage's own setting (``stage1_x.deepspeed``); the launch config has no second copy of it."""
    with pytest.raises(ConfigError, match="deepspeed"):
        cluster_config(load("paper").with_overrides({"cluster.training.stage1_1.deepspeed": "zero1"}))
    assert load("paper").section("stage1_1", Stage11Config).deepspeed == "zero1"  # released: ZeRO-1


@pytest.fixture(scope="module")
def inputs(tiny_train_inputs: dict[str, Path]) -> dict[str, Path]:
    return tiny_train_inputs


@pytest.mark.parametrize("stage, zero", [
    ("stage1_2", "zero2"),
    pytest.param("stage1_2", "zero1", marks=pytest.mark.slow),
    pytest.param("stage1_1", "zero1", marks=pytest.mark.slow),
    pytest.param("stage1_1", "zero2", marks=pytest.mark.slow),
])
def test_zero_on_two_ranks_equals_one_process_resumes_and_saves_a_plain_model(
        inputs: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch, stage: str, zero: str) -> None:
    """ZeRO over 2 gloo ranks against plain AdamW in 1 process, same global batch of 4:

    - the loss of every step and the trained weights agree to fp32 tolerance;
    - each rank's ZeRO optimizer holds about half of the AdamW moments;
    - a run killed after the sharded step-2 checkpoint resumes to the uninterrupted run's weights;
    - the output is a plain ``save_pretrained`` directory that ``prefrestore restore`` loads without
      importing DeepSpeed.
    """
    sets = {**_fast(stage), f"{stage}.deepspeed": zero}
    one, w1, stats1, two = run_pair(tmp_path, stage, inputs, sets, monkeypatch, reseed=True,
                                    sets_one={**_fast(stage), f"{stage}.deepspeed": "none"})
    (w2_0, report0), (w2_1, report1) = rank_report(tmp_path / "np2", 0), rank_report(tmp_path / "np2", 1)
    assert one["steps"] == two["steps"] == 4
    losses1 = history(os.environ["MLFLOW_TRACKING_URI"], stage, "train/loss", from_step=1)
    losses2 = history(f"sqlite:///{tmp_path / 'np2' / 'mlflow.db'}", stage, "train/loss", from_step=1)
    assert len(losses1) == len(losses2) == 4
    assert losses2 == pytest.approx(losses1, rel=1e-5)  # the loss curve, step by step
    assert w1.keys() == w2_0.keys() == w2_1.keys() and w1
    lr = load_train_config(load("tiny").with_overrides(sets), stage, CONFIGS[stage]).lr
    for k in w1:
        assert torch.equal(w2_0[k], w2_1[k]), k  # ZeRO all-gathers the updated partitions
        assert_adam_close(w2_0[k], w1[k], lr, steps=4, name=k)

    full = 2 * sum(v.numel() for v in w1.values())  # AdamW: 2 moments per trainable element
    assert 0.5 * full < stats1["optimizer_state_numel"] <= full  # plain AdamW, one process: all of them
    shards = [report0["stats"]["optimizer_state_numel"], report1["stats"]["optimizer_state_numel"]]
    assert sum(shards) >= full  # every element has its moments on one rank (plus alignment padding)
    for shard in shards:
        assert shard == pytest.approx(full / 2, rel=0.02), shards

    out = tmp_path / "np2" / "out"
    ck = checkpoint.list_checkpoints(out / CHECKPOINTS)[0]
    assert ck.name == "step-00000002" and (ck / checkpoint.ACCELERATE_DIR).is_dir()
    assert not (ck / checkpoint.OPTIMIZER).exists()  # the optimizer state is DeepSpeed's, sharded
    assert len(list((ck / checkpoint.ACCELERATE_DIR).rglob("*optim_states.pt"))) == 2  # one shard per rank
    checkpoint.verify(ck)

    # killed after the step-2 checkpoint (mid-way through writing the next one): resume on 2 ranks
    killed = tmp_path / "killed"
    shutil.copytree(ck, killed / "out" / CHECKPOINTS / ck.name)
    (killed / "out" / CHECKPOINTS / ".ds-step-00000004").mkdir()  # a half-written shard folder
    resumed = wait(start(killed, stage, inputs, sets, reseed=True), killed)
    assert resumed["resumed_from"] == 2 and resumed["steps"] == 4
    w3, _ = rank_report(killed, 0)
    for k in w2_0:
        torch.testing.assert_close(w3[k], w2_0[k], rtol=0, atol=0, msg=k)
    assert history(f"sqlite:///{killed / 'mlflow.db'}", stage, "train/loss", from_step=1) == pytest.approx(losses2[2:], rel=1e-6)

    if zero != "zero2" or stage != "stage1_2":
        return
    # the model directory: config.json + safetensors per component, nothing of DeepSpeed's
    assert (out / "config.json").is_file() and list(out.rglob("*.safetensors"))
    assert not [p for p in out.rglob("*") if CHECKPOINTS not in p.parts and p.suffix in (".pt", ".py")]
    face = next((inputs["faces"] / "images").glob("*.png"))
    script = ("import sys; from prefrestore.cli.main import main; code = main(sys.argv[1:]); "
              "assert 'deepspeed' not in sys.modules, 'restore imported deepspeed'; sys.exit(code)")
    proc = subprocess.run([sys.executable, "-c", script, "restore", str(face), "--model", str(out), "--out",
                           str(tmp_path / "restored"), "--profile", "tiny", "--steps", "2"],
                          capture_output=True, text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (tmp_path / "restored" / face.with_suffix(".png").name).is_file()
