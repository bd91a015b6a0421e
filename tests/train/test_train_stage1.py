"""Stage 1.1 / 1.2 training: gradient paths, frozen groups, loss decrease, resume, corrupt checkpoints."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from prefrestore.core.config import ConfigError, load
from prefrestore.model.config import ModelConfig
from prefrestore.model.flow import FlowSchedule
from prefrestore.model.model import PrefRestoreModel
from prefrestore.train import checkpoint
from prefrestore.train.common import CHECKPOINTS, load_train_config
from prefrestore.train.stage1 import SemanticAlignLoss, Stage11Config, Stage12Config, TextureAlignLoss, train

FAST = {  # a few optimizer steps with grad accumulation (2 micro-batches of 2), tiny validation
    "stage1_1.global_batch": 4, "stage1_1.per_device_batch": 2, "stage1_1.max_steps": 4,
    "stage1_1.checkpoint_every": 2, "stage1_1.val_images": 2, "stage1_1.deterministic": True,
    "stage1_1.lr": 1.0e-3,
    "stage1_2.global_batch": 4, "stage1_2.per_device_batch": 2, "stage1_2.max_steps": 4,
    "stage1_2.checkpoint_every": 2, "stage1_2.val_images": 2, "stage1_2.deterministic": True,
    "restore.steps": 2,
}


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny ops: one thread is faster on a loaded 2-core box
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def params():
    return load("tiny").with_overrides(FAST)


@pytest.fixture(scope="module")
def base(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    model = PrefRestoreModel.build(load("tiny").section("model", ModelConfig), "")
    path = tmp_path_factory.mktemp("base") / "model"
    model.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def captions(tiny_faces, tmp_path_factory) -> Path:
    from prefrestore.data import caption

    out = tmp_path_factory.mktemp("captions") / "captions"
    caption.run(load("tiny"), {"faces": tiny_faces}, out)
    return out


@pytest.fixture(scope="module")
def inputs(tiny_faces, captions, base) -> dict[str, Path]:
    return {"faces": tiny_faces, "captions": captions, "base": base}


def _batch(model: PrefRestoreModel, n: int = 2) -> dict:
    g = torch.Generator().manual_seed(5)
    hq = torch.rand(n, 3, 64, 64, generator=g)
    return {"hq": hq, "lq": (hq + 0.1 * torch.randn(n, 3, 64, 64, generator=g)).clamp(0, 1),
            "instructions": ["<image>\nPlease reconstruct the given image."] * n}


def _snapshot(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in model.named_parameters()}


# --------------------------------------------------------------------------- config
def test_bad_config_fails_at_load(monkeypatch):
    tiny = load("tiny")
    with pytest.raises(ConfigError, match="unknown key"):
        tiny.with_overrides({"stage1_1.learning_rate": 1e-3})
    with pytest.raises(ConfigError, match="lr=0.0 must be > 0"):
        load_train_config(tiny.with_overrides({"stage1_1.lr": 0.0}), "stage1_1", Stage11Config)
    with pytest.raises(ConfigError, match="not divisible by per_device_batch"):
        load_train_config(tiny.with_overrides({"stage1_2.per_device_batch": 3}), "stage1_2", Stage12Config)
    monkeypatch.setenv("WORLD_SIZE", "3")  # 16 images per step over 3 processes x 16 does not divide
    with pytest.raises(ConfigError, match="world_size"):
        load_train_config(tiny, "stage1_1", Stage11Config)
    monkeypatch.setenv("WORLD_SIZE", "1")
    assert load_train_config(tiny, "stage1_1", Stage11Config).accumulation(1) == 1
    for profile in ("paper", "released"):
        cfg = load_train_config(load(profile), "stage1_1", Stage11Config)
        assert cfg.global_batch == 128 and cfg.weight_decay == 0.0 and cfg.alpha == 1.0
    assert load("paper").section("stage1_1", Stage11Config).lr == 1e-5
    assert load("released").section("stage1_1", Stage11Config).lr == 1e-4
    assert load("released").section("stage1_2", Stage12Config).lr == 2e-5


# --------------------------------------------------------------------------- gradient paths
def test_stage11_diffusion_gradient_reaches_connector_and_ar(base):
    """Eq. 10: L_diff alone (CE off) back-propagates through the frozen SANA into connector and AR."""
    model = PrefRestoreModel.from_pretrained(base)
    model.freeze_for("1.1")
    schedule = load("tiny").section("flow", FlowSchedule)
    loss = SemanticAlignLoss(model, schedule, alpha=1.0).train()
    torch.manual_seed(0)
    terms = loss(_batch(model))
    terms["l_diff"].backward()
    conn = model.diffusion_connector[0].weight.grad
    ar = model.ar.lm.model.layers[0].self_attn.q_proj.weight.grad
    caption = model.transformer.caption_projection.linear_1.weight.grad
    assert conn is not None and conn.abs().sum() > 0
    assert ar is not None and ar.abs().sum() > 0
    assert caption is not None and caption.abs().sum() > 0
    for name, p in model.named_parameters():  # SANA blocks, VAE, tokenizer: frozen, no gradient
        if name.startswith(("transformer.transformer_blocks.", "vae.", "tokenizer.", "vae_connector.")):
            assert not p.requires_grad and p.grad is None, name


def test_stage12_ar_gets_no_gradient_and_encoder_does(base):
    model = PrefRestoreModel.from_pretrained(base)
    model.freeze_for("1.2")
    schedule = load("tiny").section("flow", FlowSchedule)
    loss = TextureAlignLoss(model, schedule, beta=1.0).train()
    assert not any(n.startswith("_target") for n, _ in loss.named_parameters())
    torch.manual_seed(0)
    loss(_batch(model))["loss"].backward()
    assert model.vae.encoder.conv_in.weight.grad.abs().sum() > 0
    if model.cfg.lq_condition == "cross_attn":  # z_low reaches SANA through the connector's tokens
        assert model.vae_connector[0].weight.grad.abs().sum() > 0
    else:  # channel concat: z_low enters SANA's input beside the noisy latent, the connector is unused
        assert model.cfg.lq_condition == "concat_channels" and model.vae_connector[0].weight.grad is None
    assert model.transformer.transformer_blocks[0].attn2.to_q.weight.grad.abs().sum() > 0
    assert all(p.grad is None for p in model.ar.parameters())
    assert all(p.grad is None for p in loss.target_encoder.parameters())


@pytest.mark.parametrize("stage", ["1.1", "1.2"])
def test_loss_decreases_on_a_fixed_batch(base, stage):
    torch.manual_seed(0)
    model = PrefRestoreModel.from_pretrained(base)
    model.freeze_for(stage)
    schedule = load("tiny").section("flow", FlowSchedule)
    loss = (SemanticAlignLoss(model, schedule, 1.0) if stage == "1.1" else TextureAlignLoss(model, schedule, 1.0))
    batch = _batch(model, 4)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=2e-3)

    def measure() -> float:
        with torch.random.fork_rng(devices=[]), torch.no_grad():
            torch.manual_seed(123)  # same sigmas, noise and dropout before and after
            return float(loss(batch)["loss"])

    before = measure()
    for _ in range(15):
        opt.zero_grad()
        loss(batch)["loss"].backward()
        opt.step()
    assert measure() < 0.8 * before


# --------------------------------------------------------------------------- the step
def test_stage12_trains_only_its_group_and_saves_one_vae(params, inputs, tmp_path):
    start = _snapshot(PrefRestoreModel.from_pretrained(inputs["base"]))
    out = tmp_path / "s12"
    summary = train("stage1_2", params, inputs, out)
    assert summary["steps"] == 4 and "val/psnr_restored" in summary and "val/psnr_input" in summary
    after = _snapshot(PrefRestoreModel.from_pretrained(out))
    # tiny: z_low is channel-concatenated, so SANA's patch_embed (its input projection) trains too
    trainable = ("transformer.transformer_blocks.", "vae_connector.", "vae.encoder.", "transformer.patch_embed.")
    changed = {n for n in start if not torch.equal(start[n], after[n])}
    assert changed and all(n.startswith(trainable) for n in changed), sorted(changed)[:5]
    assert any(n.startswith("vae.encoder.") for n in changed) and "transformer.patch_embed.proj.weight" in changed
    assert not any(n.startswith(("ar.", "tokenizer.", "vae.decoder.", "diffusion_connector.", "transformer.proj_out."))
                   for n in changed)
    # one VAE in the model dir; checkpoints hold the trainable set only (no frozen encoder copy)
    assert len(list(out.glob("vae/*.safetensors"))) == 1 and not (out / "vae_frozen").exists()
    ck = checkpoint.list_checkpoints(out / CHECKPOINTS)[-1]
    keys = set(load_file(str(ck / checkpoint.TRAINABLE)))
    assert keys == {n for n in start if n.startswith(trainable)}
    assert (out / "metrics.json").is_file() and (out / "inference.json").is_file()
    # a finished run is not redone
    assert train("stage1_2", params, inputs, out)["seconds"] == summary["seconds"]


def test_stage11_resume_equals_uninterrupted(params, inputs, tmp_path):
    full = train("stage1_1", params, inputs, tmp_path / "full")
    part = train("stage1_1", params, inputs, tmp_path / "resumed", stop_after=2)
    assert part["stopped_early"] and part["steps"] == 2
    assert not (tmp_path / "resumed" / "config.json").exists()  # no model dir until the run ends
    resumed = train("stage1_1", params, inputs, tmp_path / "resumed")
    assert resumed["resumed_from"] == 2 and resumed["steps"] == full["steps"] == 4
    a = load_file(str(checkpoint.list_checkpoints(tmp_path / "full" / CHECKPOINTS)[-1] / checkpoint.TRAINABLE))
    b = load_file(str(checkpoint.list_checkpoints(tmp_path / "resumed" / CHECKPOINTS)[-1] / checkpoint.TRAINABLE))
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=0, msg=k)
    assert full["train/loss"] == resumed["train/loss"]
    # frozen groups unchanged in stage 1.1
    start = _snapshot(PrefRestoreModel.from_pretrained(inputs["base"]))
    end = _snapshot(PrefRestoreModel.from_pretrained(tmp_path / "full"))
    frozen = [n for n in start if n.startswith(("transformer.transformer_blocks.", "vae.", "tokenizer."))]
    assert frozen and all(torch.equal(start[n], end[n]) for n in frozen)
    assert not torch.equal(start["diffusion_connector.0.weight"], end["diffusion_connector.0.weight"])


def test_corrupt_checkpoint_is_detected_and_skipped(params, inputs, tmp_path):
    out = tmp_path / "run"
    train("stage1_1", params, inputs, out, stop_after=4)  # checkpoints at steps 2 and 4, no final model
    ckpts = checkpoint.list_checkpoints(out / CHECKPOINTS)
    assert [p.name for p in ckpts] == ["step-00000002", "step-00000004"]
    newest = ckpts[-1] / checkpoint.TRAINABLE
    newest.write_bytes(newest.read_bytes()[:100])  # truncated, as by a full disk
    with pytest.raises(checkpoint.CorruptCheckpoint, match="fails its checksum"):
        checkpoint.verify(ckpts[-1])
    (out / CHECKPOINTS / ".step-00000006.tmp").mkdir()  # a save killed half-way
    found, report = checkpoint.latest(out / CHECKPOINTS)
    assert found == ckpts[0]
    assert any("corrupt" in line and "step-00000004" in line for line in report)
    assert any("partial" in line for line in report) and not (out / CHECKPOINTS / ".step-00000006.tmp").exists()
    (ckpts[0] / checkpoint.MANIFEST).unlink()
    with pytest.raises(checkpoint.CorruptCheckpoint, match="partial write"):
        checkpoint.load(ckpts[0])


def test_checkpoint_of_other_settings_is_refused(params, inputs, tmp_path):
    out = tmp_path / "run"
    train("stage1_1", params, inputs, out, stop_after=2)
    other = params.with_overrides({"stage1_1.alpha": 0.5})
    with pytest.raises(RuntimeError, match="different settings or inputs"):
        train("stage1_1", other, inputs, out)


def test_cli_resume_flag_requires_something_to_continue(params, inputs, tmp_path, capsys):
    """``--resume`` fails before any work on an empty or corrupt --out, and continues a killed run."""
    from prefrestore.cli.main import main as cli

    argv = ["stage1_1", "--profile", "tiny", *[f"--in={k}={v}" for k, v in inputs.items()],
            *[f"--set={k}={v}" for k, v in FAST.items() if k.startswith(("stage1_1.", "restore."))]]
    out = tmp_path / "s11"
    assert cli([*argv, "--out", str(out), "--resume"]) == 1
    assert "no checkpoint" in capsys.readouterr().err
    assert not out.exists()
    train("stage1_1", params, inputs, out, stop_after=2)  # a run killed after 2 of 4 steps
    ck = checkpoint.list_checkpoints(out / CHECKPOINTS)
    assert len(ck) == 1
    assert cli([*argv, "--out", str(out), "--resume"]) == 0
    assert (out / "config.json").is_file()
    assert checkpoint.list_checkpoints(out / CHECKPOINTS)[-1].name != ck[0].name  # it went on to step 4
    broken = tmp_path / "broken"
    train("stage1_1", params, inputs, broken, stop_after=2)
    only = checkpoint.list_checkpoints(broken / CHECKPOINTS)[0]
    target = next(p for p in only.iterdir() if p.suffix == ".safetensors")
    target.write_bytes(target.read_bytes()[:-8])  # truncated: the checksum no longer holds
    assert cli([*argv, "--out", str(broken), "--resume"]) == 1
    assert "none sound" in capsys.readouterr().err
