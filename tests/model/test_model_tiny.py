"""Behaviour of the tiny Pref-Restore model built from the real transformers/diffusers classes."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch

from prefrestore.core.config import load
from prefrestore.model import samplers
from prefrestore.model.config import ModelConfig
from prefrestore.model.flow import FlowSchedule
from prefrestore.model.model import PrefRestoreModel
from prefrestore.model.restore import restore


@pytest.fixture(scope="module")
def cfg() -> ModelConfig:
    return load("tiny").section("model", ModelConfig)


@pytest.fixture(scope="module")
def schedule() -> FlowSchedule:
    return load("tiny").section("flow", FlowSchedule)


@pytest.fixture(scope="module")
def model(cfg: ModelConfig) -> PrefRestoreModel:
    torch.manual_seed(0)
    return PrefRestoreModel.build(cfg, "").eval()


@pytest.fixture(scope="module")
def lq() -> torch.Tensor:
    return torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(1))


def test_tiny_model_is_tiny(model: PrefRestoreModel) -> None:
    assert sum(p.numel() for p in model.parameters()) < 5_000_000


def test_condition_shapes(cfg: ModelConfig, lq: torch.Tensor) -> None:
    cfg = dataclasses.replace(cfg, lq_condition="cross_attn")
    model = PrefRestoreModel.build(cfg, "").eval()
    cond = model.condition(lq, None)
    n, latent = cfg.num_image_tokens, cfg.latent_size
    assert cond.tokens.shape == (2, 1 + n + latent * latent, cfg.generator.caption_channels)
    assert cond.tokens.shape[1] == cfg.num_cond_tokens
    assert cond.lq_latent is None
    assert torch.isfinite(cond.tokens).all()


def test_generation_matches_teacher_forcing(model: PrefRestoreModel, cfg: ModelConfig, lq: torch.Tensor) -> None:
    """KV-cached generation and the teacher-forced pass see the same hidden states."""
    instructions = ["<image>\nPlease reconstruct the given image.",
                    "<image>\nPlease reconstruct the given image based on the image content: a photography of a man"]
    codes, hidden = model.generate(lq, instructions, greedy=True)
    n = cfg.num_image_tokens
    assert codes.shape == (2, n) and hidden.shape == (2, n + 1, cfg.ar.hidden_size)
    assert codes.min() >= 0 and codes.max() < cfg.tokenizer.codebook_size
    ids, mask = model.prompts(instructions, model.lq_codes(lq))
    assert (mask[0] == 0).any(), "prompts of different length are left-padded"
    loss, tf_hidden = model.ar_forward(ids, mask, codes)
    torch.testing.assert_close(tf_hidden, hidden, atol=1e-4, rtol=1e-4)
    # greedy codes are the argmax of the teacher-forced logits over the image vocabulary
    logits = model.ar.lm.lm_head(tf_hidden[:, :-1])[..., model.ar.image_offset:model.ar.image_offset + 256]
    assert torch.equal(logits.argmax(-1), codes)
    assert loss.item() > 0


def test_sampled_generation(model: PrefRestoreModel, lq: torch.Tensor) -> None:
    greedy, _ = model.generate(lq, None, greedy=True)
    top1, _ = model.generate(lq, None, greedy=False, top_k=1, generator=torch.Generator().manual_seed(0))
    assert torch.equal(greedy, top1)
    a, _ = model.generate(lq, None, greedy=False, top_p=0.95, top_k=50, generator=torch.Generator().manual_seed(3))
    b, _ = model.generate(lq, None, greedy=False, top_p=0.95, top_k=50, generator=torch.Generator().manual_seed(3))
    c, _ = model.generate(lq, None, greedy=False, top_p=0.95, top_k=50, generator=torch.Generator().manual_seed(4))
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_prompt_layout(model: PrefRestoreModel, cfg: ModelConfig, lq: torch.Tensor) -> None:
    codes = model.lq_codes(lq[:1])[0]
    ids = model.ar.prompt_ids("<image>\nPlease reconstruct the given image.", codes, "")
    toks = model.ar.tokenizer.convert_ids_to_tokens(ids)
    assert toks[0] == "<|im_start|>" and toks[-2:] == ["<im_start>", "<S0>"]
    start = toks.index("<im_start>")
    assert toks[start + 1 + cfg.num_image_tokens] == "<im_end>"
    assert ids[start + 1:start + 1 + cfg.num_image_tokens] == (codes + model.ar.image_offset).tolist()
    with pytest.raises(ValueError, match="exactly one"):
        model.ar.prompt_ids("no placeholder", codes, "")


def test_restore_end_to_end_deterministic(model: PrefRestoreModel, lq: torch.Tensor, schedule: FlowSchedule) -> None:
    kw = dict(steps=3, cfg_scale=2.0, schedule=schedule)
    out = restore(model, lq, None, seed=7, **kw)
    assert out.shape == lq.shape and out.min() >= 0 and out.max() <= 1
    torch.testing.assert_close(restore(model, lq, None, seed=7, **kw), out, atol=0, rtol=0)
    # sample i of a batch with seed s == that image alone with seed s + i; another seed differs
    alone = restore(model, lq[1:], None, seed=8, **kw)
    torch.testing.assert_close(alone, out[1:], atol=1e-5, rtol=1e-5)
    assert not torch.allclose(alone, restore(model, lq[1:], None, seed=9, **kw))
    # dpm2 sampler and other input sizes work too (resized in and out)
    small = lq[:1, :, :48, :48]
    assert restore(model, small, None, seed=0, sampler="dpm2", **kw).shape == (1, 3, 48, 48)


def test_restore_rejects_bad_input(model: PrefRestoreModel, schedule: FlowSchedule) -> None:
    with pytest.raises(ValueError, match="B, 3, H, W"):
        restore(model, torch.rand(3, 64, 64), None, seed=0, steps=1, cfg_scale=1.0, schedule=schedule)
    bad = torch.rand(1, 3, 64, 64)
    bad[0, 0, 0, 0] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        restore(model, bad, None, seed=0, steps=1, cfg_scale=1.0, schedule=schedule)


def test_cfg_null_is_zeros_and_scale_one_is_conditional(model: PrefRestoreModel, lq: torch.Tensor,
                                                        schedule: FlowSchedule) -> None:
    cond = model.condition(lq, None)
    null = cond.null()
    assert torch.count_nonzero(null.tokens) == 0 and null.tokens.shape == cond.tokens.shape
    x = torch.randn(model.latent_shape(2))
    sigma = torch.full((2,), 0.5)
    v_c = model.velocity(x, sigma, cond, schedule)
    v_u = model.velocity(x, sigma, null, schedule)
    assert not torch.allclose(v_c, v_u)
    guided = samplers.with_cfg(lambda a, s: model.velocity(a, s, cond, schedule),
                               lambda a, s: model.velocity(a, s, null, schedule), 1.0)
    torch.testing.assert_close(guided(x, sigma), v_c)
    g2 = samplers.with_cfg(lambda a, s: model.velocity(a, s, cond, schedule),
                           lambda a, s: model.velocity(a, s, null, schedule), 2.0)
    torch.testing.assert_close(g2(x, sigma), v_u + 2.0 * (v_c - v_u))


def test_condition_dropout(model: PrefRestoreModel, lq: torch.Tensor) -> None:
    cond = model.condition(lq, None)
    assert torch.count_nonzero(cond.drop(1.0).tokens) == 0
    assert cond.drop(0.0) is cond
    dropped = cond.drop(0.5, torch.Generator().manual_seed(0))
    rows = [bool(torch.count_nonzero(t)) for t in dropped.tokens]
    for kept, orig, new in zip(rows, cond.tokens, dropped.tokens, strict=True):
        assert torch.equal(new, orig) if kept else torch.count_nonzero(new) == 0


def test_save_reload_identical(model: PrefRestoreModel, lq: torch.Tensor, schedule: FlowSchedule, tmp_path) -> None:
    path = tmp_path / "model"
    model.save_pretrained(path)
    assert json.loads((path / "config.json").read_text())["format"] == "prefrestore-model"
    for sub in ("tokenizer", "ar", "connectors", "transformer", "vae"):
        assert (path / sub / "config.json").is_file(), sub
        assert list((path / sub).rglob("*.safetensors")), sub
    assert not list(path.rglob("*.bin")) and not list(path.rglob("*.pt"))
    vae_configs = [p for p in path.rglob("config.json") if "AutoencoderDC" in p.read_text()]
    assert len(vae_configs) == 1, "exactly one VAE is saved"
    loaded = PrefRestoreModel.from_pretrained(path)
    for (n1, p1), (n2, p2) in zip(model.state_dict().items(), loaded.state_dict().items(), strict=True):
        assert n1 == n2 and torch.equal(p1, p2), n1
    kw = dict(steps=2, cfg_scale=2.0, schedule=schedule)
    torch.testing.assert_close(restore(loaded, lq, None, seed=3, **kw), restore(model, lq, None, seed=3, **kw),
                               atol=0, rtol=0)
    model.save_pretrained(path)  # overwriting an existing directory is atomic and works
    assert (path / "config.json").is_file()


def test_from_pretrained_rejects_non_model_dir(tmp_path) -> None:
    with pytest.raises(FileNotFoundError, match="not a Pref-Restore model"):
        PrefRestoreModel.from_pretrained(tmp_path)


def test_connectors_have_separate_norms(model: PrefRestoreModel) -> None:
    assert model.diffusion_connector[-1] is not model.vae_connector[-1]
    assert model.diffusion_connector[-1].weight.data_ptr() != model.vae_connector[-1].weight.data_ptr()
    assert isinstance(model.diffusion_connector[-1], torch.nn.RMSNorm)
    assert model.vae_connector[0].in_features == model.cfg.generator.inner_dim


def test_zlow_position_option(cfg: ModelConfig) -> None:
    cfg = dataclasses.replace(cfg, lq_condition="cross_attn")  # z_low tokens exist only in this mode
    torch.manual_seed(0)
    plain = PrefRestoreModel.build(dataclasses.replace(cfg, zlow_position="none"), "")
    latent = torch.ones(1, cfg.vae.latent_channels, cfg.latent_size, cfg.latent_size)
    tokens = plain.zlow_tokens(latent)
    # a constant latent through patch_embed + connector gives identical tokens: no position at all
    assert torch.allclose(tokens, tokens[:, :1].expand_as(tokens))
    torch.manual_seed(0)
    positioned = PrefRestoreModel.build(dataclasses.replace(cfg, zlow_position="sincos2d"), "")
    pos_tokens = positioned.zlow_tokens(latent)
    assert torch.unique(pos_tokens[0], dim=0).shape[0] == cfg.latent_size**2


@pytest.mark.parametrize("mode", ["concat", "concat_channels"])
def test_concat_condition(cfg: ModelConfig, lq: torch.Tensor, schedule: FlowSchedule, mode: str) -> None:
    concat_cfg = dataclasses.replace(cfg, lq_condition=mode)
    model = PrefRestoreModel.build(concat_cfg, "").eval()
    extra = cfg.vae.latent_channels if mode == "concat_channels" else 0
    assert model.transformer.config.in_channels == cfg.vae.latent_channels + extra
    cond = model.condition(lq, None)
    assert cond.tokens.shape[1] == 1 + cfg.num_image_tokens == concat_cfg.num_cond_tokens
    assert cond.lq_latent is not None and cond.lq_latent.shape == model.latent_shape(2)
    v = model.velocity(torch.randn(model.latent_shape(2)), torch.full((2,), 0.3), cond, schedule)
    assert v.shape == model.latent_shape(2)
    assert torch.count_nonzero(cond.null().lq_latent) == 0
    out = restore(model, lq, None, seed=0, steps=2, cfg_scale=1.0, schedule=schedule)
    assert out.shape == lq.shape


def test_channel_concat_aligns_lq_with_output_positions(cfg: ModelConfig, schedule: FlowSchedule) -> None:
    """With channel concat, changing the LQ latent at one position changes the velocity mostly there
    (SANA's Mix-FFN is local); stages without an LQ latent see zeros in those channels."""
    model = PrefRestoreModel.build(dataclasses.replace(cfg, lq_condition="concat_channels"), "").eval()
    shape = model.latent_shape(1)
    x, sigma = torch.randn(shape), torch.full((1,), 0.5)
    tokens = torch.zeros(1, 1 + cfg.num_image_tokens, cfg.generator.caption_channels)
    from prefrestore.model.generator import Condition

    base = torch.zeros(shape)
    poked = base.clone()
    poked[..., 0, 0] = 5.0
    v0 = model.velocity(x, sigma, Condition(tokens, base), schedule)
    v1 = model.velocity(x, sigma, Condition(tokens, poked), schedule)
    delta = (v1 - v0).abs().sum(1)[0]
    assert delta[0, 0] > 0
    assert delta[0, 0] >= delta[-1, -1] and delta[:2, :2].sum() > delta[-2:, -2:].sum()
    torch.testing.assert_close(model.velocity(x, sigma, Condition(tokens), schedule), v0)


def test_encode_decode_shapes(model: PrefRestoreModel, cfg: ModelConfig, lq: torch.Tensor) -> None:
    z = model.encode(lq)
    assert z.shape == model.latent_shape(2)
    x = model.decode(z)
    assert x.shape == lq.shape and x.min() >= 0 and x.max() <= 1
    frozen = model.frozen_encoder_copy()
    assert all(not p.requires_grad for p in frozen.parameters())
    assert "frozen" not in " ".join(n for n, _ in model.named_modules())
    torch.testing.assert_close(model.encode(lq, encoder=frozen), z)


def test_a_directory_saved_before_the_added_config_keys_loads_unchanged(tmp_path) -> None:
    """Model directories written before ``connector_norm_init`` and ``codebook_l2_norm`` existed load,
    with the values they were built with."""
    import json

    import torch

    from prefrestore.core.config import load
    from prefrestore.model.config import ModelConfig
    from prefrestore.model.model import PrefRestoreModel

    torch.manual_seed(0)
    PrefRestoreModel.build(load("tiny").section("model", ModelConfig), "").save_pretrained(tmp_path / "m")
    top = tmp_path / "m" / "config.json"
    meta = json.loads(top.read_text())
    assert meta["model"]["connector_norm_init"] == 1.0 and meta["model"]["tokenizer"]["codebook_l2_norm"] is False
    del meta["model"]["connector_norm_init"], meta["model"]["tokenizer"]["codebook_l2_norm"]
    top.write_text(json.dumps(meta))
    old = PrefRestoreModel.from_pretrained(tmp_path / "m")
    assert old.cfg.connector_norm_init == 1.0 and old.cfg.tokenizer.codebook_l2_norm is False
