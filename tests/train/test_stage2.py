"""Stage 2 (DiffusionNFT + LoRA) on a tiny model: rollouts, frozen weights, outputs, tracking, resume, errors."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from prefrestore.core.config import load
from prefrestore.core.weights import MissingWeights
from prefrestore.data.degrade.direct import DegradeConfig
from prefrestore.data.degrade.on_the_fly import OnTheFlyPairs
from prefrestore.evaluation import report as eval_report
from prefrestore.model import lora
from prefrestore.model.config import ModelConfig
from prefrestore.model.flow import FlowSchedule
from prefrestore.model.model import PrefRestoreModel
from prefrestore.model.restore import Restorer
from prefrestore.train import stage2 as train_stage2
from prefrestore.train.nft import Stage2Config, collect_rollouts, nft_epoch
from prefrestore.train.nft_objective import group_std
from prefrestore.train.rewards import RewardsConfig, build_scorers
from prefrestore.train.rollout_shards import GroupShard

# a few seconds per run: 1 group of 2 rollouts, 2 sampler steps, 2 held-out faces, 2 seeds
FAST = {
    "stage2.groups_per_epoch": 2, "stage2.group_size": 2, "stage2.sample_batch": 4, "stage2.train_batch": 4,
    "stage2.timesteps_per_sample": 1, "stage2.sampler_steps": 2, "stage2.heldout_size": 2,
    "stage2.eval_seeds": 1, "stage2.determinism_seeds": 2, "stage2.eval_every": 1, "stage2.checkpoint_every": 1,
    "stage2.grid_samples": 2, "stage2.epochs": 2,
}


def _params(**overrides):
    return load("tiny").with_overrides({**FAST, **overrides})


@pytest.fixture(scope="module")
def inputs(tiny_faces: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Faces (shared tiny set), captions (the caption step's attributes backend) and a random tiny base model."""
    from prefrestore.data import caption

    root = tmp_path_factory.mktemp("stage2_inputs")
    params = load("tiny")
    caption.run(params, {"faces": tiny_faces}, root / "captions")
    torch.manual_seed(0)
    PrefRestoreModel.build(params.section("model", ModelConfig), "").save_pretrained(root / "base")
    return {"faces": tiny_faces, "captions": root / "captions", "base": root / "base"}


@pytest.fixture(scope="module")
def finished_run(inputs: dict[str, Path], tmp_path_factory: pytest.TempPathFactory):
    """One short stage-2 run inside the CLI's MLflow step run; returns (summary, out, run id, tracking uri)."""
    from prefrestore.core import tracking

    uri = f"sqlite:///{tmp_path_factory.mktemp('mlflow_stage2') / 'mlflow.db'}"
    out = tmp_path_factory.mktemp("stage2") / "out"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MLFLOW_TRACKING_URI", uri)
        mp.delenv("PREFRESTORE_PARENT_RUN_ID", raising=False)
        params = _params()
        with tracking.step_run("stage2", params, inputs) as run:
            summary = train_stage2.run(params, inputs, out, progress=False)
    return summary, out, run.info.run_id, uri


# --------------------------------------------------------------------------------------------- rollouts


def _model_and_batch(inputs: dict[str, Path], params):
    """The stage-1 base with stage 2's LoRA adapters, and a batch of the first two training faces."""
    cfg = params.section("stage2", Stage2Config)
    model = PrefRestoreModel.from_pretrained(inputs["base"])
    lora.add_lora(model.transformer, cfg.lora_rank, cfg.lora_alpha, cfg.lora_targets)
    data = OnTheFlyPairs(inputs["faces"], params.section("degrade", DegradeConfig), "train", 0)
    return model, train_stage2.make_batch(model, data, [0, 1], {}, 4)


def test_rollouts_deterministic_per_seed_and_end_at_sigma_zero(inputs: dict[str, Path]) -> None:
    params = _params()
    cfg = params.section("stage2", Stage2Config)
    schedule = params.section("flow", FlowSchedule)
    model, batch = _model_and_batch(inputs, params)
    seen: list[float] = []
    fn = train_stage2.policy(model, batch, schedule, lora.OLD)

    def recording(x, sigma, group):
        assert torch.all(sigma == sigma[0])  # one sigma per call, the same for every row
        seen.append(float(sigma[0]))
        return fn(x, sigma, group)

    sigmas = schedule.sigmas(cfg.sampler_steps)
    shape = model.latent_shape(1)[1:]

    def roll(seed: int, f=fn):
        return collect_rollouts(f, [0, 1], 3, shape, sigmas, "dpm2", 6, torch.Generator().manual_seed(seed))

    a, b, c = roll(7, recording), roll(7), roll(8)
    assert float(sigmas[-1]) == 0.0 and seen == [float(s) for s in sigmas[:-1]]  # the grid ends at exactly 0
    assert torch.equal(a.x0, b.x0) and torch.equal(a.noise, b.noise)
    assert not torch.allclose(a.x0, c.x0)
    assert a.group.tolist() == [0, 0, 0, 1, 1, 1]
    # K samples of one condition differ only through their noise: same noise -> same sample
    same = collect_rollouts(fn, [0, 0], 1, shape, sigmas, "dpm2", 4, torch.Generator().manual_seed(7))
    twin = collect_rollouts(fn, [0], 1, shape, sigmas, "dpm2", 4, torch.Generator().manual_seed(7))
    assert torch.allclose(same.x0[:1], twin.x0, atol=1e-6)


def _flat_epoch(inputs: dict[str, Path], zero_std_groups: str):
    """One epoch where every rollout scores 0.5 (all groups flat), with the current adapter ahead of the
    old one; returns (stats, stepped, parameters before, current before, old before, model)."""
    params = _params(**{"stage2.zero_std_groups": zero_std_groups, "stage2.kl_weight": 0.0})
    cfg = params.section("stage2", Stage2Config)
    schedule = params.section("flow", FlowSchedule)
    rcfg = dataclasses.replace(params.section("rewards", RewardsConfig), weights={"psnr": 1.0})
    model, batch = _model_and_batch(inputs, params)
    model.requires_grad_(False)
    lora.update_old_(model.transformer, 0.0)
    with torch.no_grad():
        for p in lora.adapter_parameters(model.transformer, lora.CURRENT).values():
            p.add_(0.05)  # the current policy has moved away from the old one
    trainable = list(lora.adapter_parameters(model.transformer, lora.CURRENT).values())
    for p in trainable:
        p.requires_grad_(True)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    cur = {k: v.clone() for k, v in lora.adapter_state(model.transformer, lora.CURRENT).items()}
    old = {k: v.clone() for k, v in lora.adapter_state(model.transformer, lora.OLD).items()}
    constant = {"psnr": lambda images, hq, captions: torch.full((images.shape[0],), 0.5)}
    policies = train_stage2.sana_policies(model, batch, constant, rcfg, cfg, schedule)
    shard = GroupShard(tuple(batch.ids), cfg.group_size, 0, 1)
    stats, _, stepped = nft_epoch(policies, shard, rcfg.weights, cfg, schedule, torch.optim.SGD(trainable, lr=0.5),
                                  trainable, 0, torch.Generator().manual_seed(0))
    assert stats["train/zero_std_ratio"] == 1.0 and stats["train/zero_std_groups"] == 2
    return stats, stepped, before, cur, old, model


def _gap(a: dict, b: dict) -> float:
    return sum(float((a[k] - b[k]).abs().sum()) for k in a)


def test_zero_variance_groups_dropped_give_no_update(inputs: dict[str, Path]) -> None:
    """``zero_std_groups: drop``: flat groups leave the loss; with every group flat no weight moves,
    no optimizer step is counted and the old policy stays where it was."""
    stats, stepped, before, _, old, model = _flat_epoch(inputs, "drop")
    assert not stepped and stats["train/loss"] == 0.0 and "train/old_decay" not in stats
    assert all(torch.equal(p, before[n]) for n, p in model.named_parameters())
    assert _gap(lora.adapter_state(model.transformer, lora.OLD), old) == 0.0


def test_zero_variance_groups_kept_pull_towards_the_old_policy(inputs: dict[str, Path]) -> None:
    """``keep`` (both released codes): flat groups train at r = 0.5, whose gradient 2 beta^2 (v_theta - v_old)
    pulls the current adapter back towards the old one once the two differ; a step is taken."""
    stats, stepped, _, cur, old, model = _flat_epoch(inputs, "keep")
    assert stepped and stats["train/loss"] > 0.0 and stats["train/grad_norm"] > 0.0
    now = lora.adapter_state(model.transformer, lora.CURRENT)
    assert _gap(now, old) < _gap(cur, old)  # current moved towards old


def test_group_std_is_per_group() -> None:
    r = torch.tensor([1.0, 1.0, 2.0, 4.0])
    g = torch.tensor([0, 0, 1, 1])
    assert group_std(r, g).tolist() == [0.0, 0.0, 1.0, 1.0]


# --------------------------------------------------------------------------------------------- the step


def test_run_writes_a_loadable_model_and_logs(finished_run, inputs: dict[str, Path]) -> None:
    summary, out, run_id, uri = finished_run
    for key in ("heldout_reward_before", "heldout_reward_after", "median_std_before", "median_std_after",
                "heldout_psnr_after", "final_old_gap", "final_zero_std_ratio"):
        assert isinstance(summary[key], float) and torch.isfinite(torch.tensor(summary[key])), key
    assert [c["epoch"] for c in summary["curve"]] == [0, 1, 2]
    assert summary["optimizer_steps"] == 2  # one step per epoch (no flat epoch here)
    assert json.loads((out / "metrics.json").read_text())["fingerprint"] == summary["fingerprint"]
    assert summary["stage"] == "2" and eval_report.variant_of(out) == "quality"  # the evaluate step's variant tag
    for f in ("lora/adapter_model.safetensors", "lora/old_adapter.safetensors", "lora/adapter_config.json",
              "determinism.json", "determinism_boxplot.png", "inference.json", "validation/epoch-000002.png"):
        assert (out / f).is_file(), f
    assert (out / "checkpoints").is_dir()
    restorer = Restorer.from_pretrained(out, device="cpu")  # loads like any model directory
    img = restorer.restore_uint8([torch.zeros(64, 64, 3, dtype=torch.uint8).numpy()], None, seed=0)[0]
    assert img.shape == (64, 64, 3)

    from mlflow.tracking import MlflowClient

    client = MlflowClient(uri)
    logged = set(client.get_run(run_id).data.metrics)
    for name in ("heldout/reward_total", "heldout/psnr", "heldout/ssim", "determinism/median_std_before",
                 "determinism/median_std_after", "reward/total_mean", "reward/psnr_mean", "reward/psnr_std",
                 "train/zero_std_ratio", "train/old_gap", "train/kl", "train/loss"):
        assert name in logged, name
    history = client.get_metric_history(run_id, "heldout/reward_total")
    assert sorted(m.step for m in history) == [0, 1, 2]
    artifacts = {a.path for a in client.list_artifacts(run_id)}
    assert {"validation", "determinism"} <= artifacts


def test_only_lora_targets_change_and_merge_is_exact(finished_run, inputs: dict[str, Path]) -> None:
    _, out, _, _ = finished_run
    base = PrefRestoreModel.from_pretrained(inputs["base"])
    tuned = PrefRestoreModel.from_pretrained(out)
    b, t = base.state_dict(), tuned.state_dict()
    assert set(b) == set(t)
    cfg = _params().section("stage2", Stage2Config)
    changed = {k for k in b if not torch.equal(b[k], t[k])}
    assert changed, "stage 2 changed nothing"
    targets = tuple(f"{x}.weight" for x in cfg.lora_targets)
    assert all(k.startswith("transformer.") and k.endswith(targets) for k in changed), changed
    # the saved adapter applied to the base model equals the merged model
    lora.add_lora(base.transformer, cfg.lora_rank, cfg.lora_alpha, cfg.lora_targets)
    lora.load_adapter_state(base.transformer, lora.CURRENT, load_file(out / "lora" / "adapter_model.safetensors"))
    x = torch.randn(2, *base.latent_shape(1)[1:])
    cond = base.condition(torch.rand(2, 3, 64, 64), None)
    schedule = _params().section("flow", FlowSchedule)
    sigma = torch.tensor([0.3, 0.9])
    with torch.no_grad():
        assert torch.allclose(base.velocity(x, sigma, cond, schedule), tuned.velocity(x, sigma, cond, schedule),
                              atol=1e-5)


def test_rerun_is_a_no_op(finished_run, inputs: dict[str, Path]) -> None:
    summary, out, _, _ = finished_run
    again = train_stage2.run(_params(), inputs, out, progress=False)
    assert again == json.loads(json.dumps(summary, default=str))


def test_resume_equals_uninterrupted(inputs: dict[str, Path], tmp_path: Path) -> None:
    """2 epochs in one go == 1 epoch, then a second call that resumes to 2 (LoRA weights, both adapters)."""
    quick = {"stage2.determinism_seeds": 0, "stage2.eval_every": 0, "stage2.grid_samples": 0,
             "stage2.heldout_size": 1, "stage2.checkpoint_every": 1}
    full = train_stage2.run(_params(**quick, **{"stage2.epochs": 2}), inputs, tmp_path / "a", progress=False)
    half = train_stage2.run(_params(**quick, **{"stage2.epochs": 1}), inputs, tmp_path / "b", progress=False)
    assert half["resumed_from"] == 0
    rest = train_stage2.run(_params(**quick, **{"stage2.epochs": 2}), inputs, tmp_path / "b", progress=False)
    assert rest["resumed_from"] == 1 and full["resumed_from"] == 0
    for name in ("adapter_model.safetensors", "old_adapter.safetensors"):
        a = load_file(tmp_path / "a" / "lora" / name)
        b = load_file(tmp_path / "b" / "lora" / name)
        assert set(a) == set(b)
        assert all(torch.equal(a[k], b[k]) for k in a), name
    assert any(v.abs().sum() > 0 for k, v in load_file(tmp_path / "a" / "lora" / "adapter_model.safetensors").items()
               if "lora_B" in k)


def test_missing_reward_weights_fail_clearly(inputs: dict[str, Path], tmp_path: Path,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    """The paper's reward set (PickScore, HPSv2.1, CLIP) without staged weights: MissingWeights, nothing written."""
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("PREFRESTORE_MODEL_STORE", str(tmp_path / "store"))
    params = _params(**{"rewards.weights": {"pickscore": 1.0, "hpsv21": 1.0, "clip": 1.0, "psnr": 0.0,
                                            "ssim": 0.0, "sharpness": 0.0}})
    with pytest.raises(MissingWeights, match="reward 'clip'.*models--openai--clip-vit-large-patch14"):
        train_stage2.run(params, inputs, tmp_path / "out", progress=False)
    assert not (tmp_path / "out").exists()
    with pytest.raises(MissingWeights):
        build_scorers(params.section("rewards", RewardsConfig))


def test_fingerprint_mismatch_refuses_to_resume(finished_run, inputs: dict[str, Path], tmp_path: Path) -> None:
    import shutil

    _, out, _, _ = finished_run
    copy = tmp_path / "copy"
    shutil.copytree(out / "checkpoints", copy / "checkpoints")
    with pytest.raises(RuntimeError, match="different settings"):
        train_stage2.run(_params(**{"stage2.beta": 0.2}), inputs, copy, progress=False)


@pytest.mark.slow
def test_tiny_pipeline_stage2_raises_heldout_reward_and_lowers_spread(tmp_path: Path) -> None:
    """Done-when of issues 6 and 7 on the tiny profile, from scratch (~6 min on 2 CPU cores): ingest,
    captions, bootstrap, stage 1.1, stage 1.2 (whose restorations must beat their degraded inputs on
    the held-out set), then stage 2 with the profile's own settings."""
    from prefrestore.data import caption, ingest
    from prefrestore.train import stage0 as train_stage0
    from prefrestore.train import stage1 as train_stage1

    params = load("tiny")
    ins = {"faces": tmp_path / "faces", "captions": tmp_path / "captions"}
    ingest.run(params, {}, ins["faces"])
    caption.run(params, {"faces": ins["faces"]}, ins["captions"])
    train_stage0.run(params, ins, tmp_path / "stage0")
    train_stage1.run_stage1_1(params, {**ins, "base": tmp_path / "stage0"}, tmp_path / "stage1_1")
    s12 = train_stage1.run_stage1_2(params, {**ins, "base": tmp_path / "stage1_1"}, tmp_path / "stage1_2")
    assert s12["val/psnr_restored"] > s12["val/psnr_input"] and s12["val/ssim_restored"] > s12["val/ssim_input"]
    assert s12["restores"]
    summary = train_stage2.run(params, {**ins, "base": tmp_path / "stage1_2"}, tmp_path / "stage2", progress=False)
    assert summary["heldout_reward_after"] > summary["heldout_reward_before"]
    assert summary["median_std_after"] < summary["median_std_before"]


def test_mixed_precision_autocasts_only_on_cuda(inputs: dict[str, Path]) -> None:
    """``stage2.mixed_precision: bf16`` autocasts the policy only on CUDA: on the CPU its velocities
    are bit-for-bit the fp32 ones, and the policy returns fp32 either way."""
    from prefrestore.train.stage2_batch import autocast

    params = _params()
    schedule = params.section("flow", FlowSchedule)
    cfg = params.section("stage2", Stage2Config)
    model, batch = _model_and_batch(inputs, params)
    x = torch.randn((2, *model.latent_shape(1)[1:]), generator=torch.Generator().manual_seed(0))
    sigma, group = torch.full((2,), 0.5), torch.tensor([0, 1])
    assert cfg.mixed_precision == "bf16"  # the default, also on tiny
    plain = train_stage2.policy(model, batch, schedule, None, mixed_precision="no")(x, sigma, group)
    mixed = train_stage2.policy(model, batch, schedule, None, mixed_precision="bf16")(x, sigma, group)
    assert mixed.dtype == torch.float32 and torch.equal(mixed, plain)
    a, b = torch.randn(4, 8), torch.randn(8, 8)
    with autocast("bf16", torch.device("cpu")):
        assert (a @ b).dtype == torch.float32
    if torch.cuda.is_available() and torch.cuda.is_bf16_supported():  # never in CI; on a lent GPU
        with autocast("bf16", torch.device("cuda")):
            assert (a.cuda() @ b.cuda()).dtype == torch.bfloat16
