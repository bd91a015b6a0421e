"""Training under ``torchrun`` on CPU (gloo): 2 processes against 1, through the CLI, as the cluster launches it.

Each test runs the same step twice from the tiny profile: with ``torchrun --standalone
--nproc_per_node 2`` in the background (``tests/helpers/torchrun_worker.py`` records, per rank, the weights
it trained and every file it wrote under ``--out``) and, meanwhile, alone in the test's process.
Both runs use one global batch per step, so they must take the same optimizer steps:

- stage 1.2 (accelerate DDP): 1 process x 2 micro-batches of 2 vs 2 processes x 1 micro-batch of 2;
- stage 2 (DiffusionNFT): 3 groups split 2 + 1 over the ranks, rewards gathered for Eq. 12,
  LoRA gradients summed over ranks.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from helpers.torchrun import history, mlflow_runs, rank_report, run_pair

from prefrestore.model.model import PrefRestoreModel

pytestmark = pytest.mark.skipif(
    not (torch.distributed.is_available() and torch.distributed.is_gloo_available()),
    reason="torch.distributed with gloo is not available")


@pytest.fixture(scope="module")
def inputs(tiny_train_inputs: dict[str, Path]) -> dict[str, Path]:
    return tiny_train_inputs


def test_stage1_ddp_equals_one_process_and_only_rank0_writes(inputs: dict[str, Path], tmp_path: Path,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    """Stage 1.2 for 3 steps of a global batch of 4: 2 ranks hold identical weights, equal to 1 process's."""
    sets = {"stage1_2.global_batch": 4, "stage1_2.per_device_batch": 2, "stage1_2.max_steps": 3,
            "stage1_2.checkpoint_every": 2, "stage1_2.val_images": 2, "stage1_2.deterministic": True,
            "restore.steps": 2}
    # --reseed: each micro-batch draws its sigmas/noise from its own sample ids, so the two ways of
    # cutting the global batch see the same randomness and must take the same steps
    one, w1, _, two = run_pair(tmp_path, "stage1_2", inputs, sets, monkeypatch, reseed=True)
    (w2_0, report0), (w2_1, report1) = rank_report(tmp_path / "np2", 0), rank_report(tmp_path / "np2", 1)
    writes0, writes1 = report0["writes"], report1["writes"]
    assert w1.keys() == w2_0.keys() == w2_1.keys() and w1
    for k in w2_0:  # DDP: every rank applies the same all-reduced step
        assert torch.equal(w2_0[k], w2_1[k]), k
    base = dict(PrefRestoreModel.from_pretrained(inputs["base"]).named_parameters())
    moved = max(float((w1[k] - base[k].detach()).abs().max()) for k in w1)
    assert moved > 1e-4  # it trained
    for k in w1:  # mean of the rank gradients == mean over the accumulated micro-batches
        torch.testing.assert_close(w2_0[k], w1[k], rtol=1e-4, atol=1e-6, msg=k)
    assert one["steps"] == two["steps"] == 3
    assert two["train/loss"] == pytest.approx(one["train/loss"], rel=1e-5)  # logged: the mean over all ranks
    assert two["train/grad_norm"] == pytest.approx(one["train/grad_norm"], rel=1e-5)  # averaged, not summed
    assert "val/psnr_restored" in two  # rank 0 validated, and its summary is the run's
    # rank 0 alone wrote the checkpoints (with both ranks' RNG states) and the model directory
    out = tmp_path / "np2" / "out"
    assert writes1 == [], f"rank 1 wrote under --out: {writes1[:5]}"
    assert any("/checkpoints/" in w for w in writes0) and (out / "config.json").is_file()
    for ck in ("step-00000002", "step-00000003"):
        assert {p.name for p in (out / "checkpoints" / ck).glob("rng-rank*.json")} == {"rng-rank0.json",
                                                                                       "rng-rank1.json"}
    runs = mlflow_runs(f"sqlite:///{tmp_path / 'np2' / 'mlflow.db'}", "stage1_2")
    assert len(runs) == 1 and runs[0].data.metrics["train/loss"] == pytest.approx(two["train/loss"])


def test_stage2_ranks_split_groups_and_equal_one_process(inputs: dict[str, Path], tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """DiffusionNFT over 2 ranks (3 groups: 2 + 1): same adapters on both ranks, as 1 process's, after each epoch."""
    sets = {"stage2.groups_per_epoch": 3, "stage2.group_size": 2, "stage2.sample_batch": 4, "stage2.train_batch": 4,
            "stage2.timesteps_per_sample": 2, "stage2.sampler_steps": 2, "stage2.heldout_size": 2,
            "stage2.eval_seeds": 1, "stage2.determinism_seeds": 2, "stage2.eval_every": 1,
            "stage2.checkpoint_every": 1, "stage2.grid_samples": 2, "stage2.epochs": 2}
    one, w1, _, two = run_pair(tmp_path, "stage2", inputs, sets, monkeypatch)
    (w2_0, report0), (w2_1, report1) = rank_report(tmp_path / "np2", 0), rank_report(tmp_path / "np2", 1)
    writes0, writes1 = report0["writes"], report1["writes"]
    assert w1.keys() == w2_0.keys() == w2_1.keys()
    assert {k.split(".")[0] for k in w1} == {"e0", "e1"} and {k.split(".")[1] for k in w1} == {"default", "old"}
    for k in w2_0:  # summed LoRA gradients and the old-policy EMA: identical on every rank
        assert torch.equal(w2_0[k], w2_1[k]), k
    assert max(float(v.abs().max()) for k, v in w1.items() if "lora_B" in k) > 1e-4  # B starts at 0: it trained
    for k in w1:  # the rollouts of a group do not depend on the rank that draws them; float noise only
        torch.testing.assert_close(w2_0[k], w1[k], rtol=1e-3, atol=1e-5, msg=k)
    for key in ("final_reward_mean", "heldout_reward_after", "heldout_psnr_after", "median_std_after"):
        assert two[key] == pytest.approx(one[key], rel=1e-4), key
    assert [c["epoch"] for c in two["curve"]] == [0, 1, 2]
    out = tmp_path / "np2" / "out"
    assert writes1 == [], f"rank 1 wrote under --out: {writes1[:5]}"
    assert any("/checkpoints/" in w for w in writes0) and (out / "lora" / "adapter_model.safetensors").is_file()
    # one MLflow run (rank 0's); the loss and the pre-clip gradient norm of every step are one process's
    uri_one, uri_two = os.environ["MLFLOW_TRACKING_URI"], f"sqlite:///{tmp_path / 'np2' / 'mlflow.db'}"
    assert len(mlflow_runs(uri_two, "stage2")) == 1
    for metric in ("train/loss", "train/grad_norm", "reward/total_mean"):
        assert history(uri_two, "stage2", metric) == pytest.approx(history(uri_one, "stage2", metric), rel=1e-4)
