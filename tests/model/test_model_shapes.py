"""Paper shapes, checked on the meta device (nothing allocated, nothing downloaded)."""

from __future__ import annotations

import pytest
import torch

from prefrestore.core.config import ConfigError, load
from prefrestore.model.config import ModelConfig
from prefrestore.model.params_count import build_components, count_parameters, model_info


@pytest.fixture(scope="module")
def paper() -> ModelConfig:
    return load("paper").section("model", ModelConfig)


def test_paper_config_numbers(paper: ModelConfig) -> None:
    assert paper.num_image_tokens == 729
    assert paper.tokenizer.codebook_size == 65536
    assert paper.generator.caption_channels == 2304
    assert paper.vae.latent_channels == 32 and paper.vae.compression == 32 and paper.latent_size == 16
    assert paper.num_zlow_tokens == 256 and paper.num_cond_tokens == 986
    assert paper.ar.hidden_size == 1024  # Qwen3-0.6B
    assert load("released").section("model", ModelConfig).ar.hidden_size == 2048


def test_paper_shapes_on_meta(paper: ModelConfig) -> None:
    parts = build_components(paper, "meta")
    counts = count_parameters(parts)
    assert 1.55e9 < counts["transformer"] < 1.65e9  # SANA 1.6B
    assert 5.5e8 < counts["ar"] < 7.5e8  # Qwen3-0.6B + 65,541 new rows
    sana = parts["transformer"]
    assert sana.config.caption_channels == 2304 and sana.config.in_channels == 32
    latent = torch.empty(2, 32, 16, 16, device="meta")
    tokens = sana.patch_embed(latent)
    assert tokens.shape == (2, 256, 2240)
    zlow = parts["vae_connector"](tokens)
    assert zlow.shape == (2, 256, 2304)
    hidden = torch.empty(2, 730, paper.ar.hidden_size, device="meta")
    ar_tokens = parts["diffusion_connector"](hidden)
    assert torch.cat([ar_tokens, zlow], 1).shape == (2, 986, 2304)
    vocab = parts["ar"].get_input_embeddings().num_embeddings
    assert vocab == paper.ar.text_vocab_size + 65536 + 3 + 2
    pixels = torch.empty(1, 3, 384, 384, device="meta")
    feats = parts["tokenizer"].features(pixels)
    assert feats.shape == (1, 729, paper.tokenizer.code_dim)


def test_model_info_table() -> None:
    text = model_info("tiny")
    assert "total" in text and "cross-attn tokens" in text
    with pytest.raises(ConfigError):
        model_info("no-such-profile")


def test_model_info_cli(capsys: pytest.CaptureFixture[str]) -> None:
    from prefrestore.cli.main import main

    assert main(["model-info", "--profile", "tiny"]) == 0
    assert "vae_connector" in capsys.readouterr().out


def test_bad_model_config_is_rejected() -> None:
    params = load("tiny")
    with pytest.raises(ConfigError, match="cond_dropout"):
        params.with_overrides({"model.cond_dropout": 1.5}).section("model", ModelConfig)
    with pytest.raises(ConfigError, match="zlow_position"):
        params.with_overrides({"model.zlow_position": "rope"}).section("model", ModelConfig)
    with pytest.raises(ConfigError, match="block_types"):
        params.with_overrides({"model.vae.block_types": ["ResBlock"]}).section("model", ModelConfig)
