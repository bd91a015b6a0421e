"""The TA-Tok-style semantic tokenizer: deterministic nearest-code ids, and what a bootstrap needs."""

from __future__ import annotations

import pytest
import torch

from prefrestore.core.config import load
from prefrestore.model.config import ModelConfig
from prefrestore.model.tokenizer import SemanticTokenizer


@pytest.fixture()
def tok() -> SemanticTokenizer:
    torch.manual_seed(0)
    return SemanticTokenizer(load("tiny").section("model", ModelConfig).tokenizer)


def test_ids_are_nearest_codes_and_deterministic(tok: SemanticTokenizer) -> None:
    images = torch.rand(3, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    ids = tok(images)
    assert ids.shape == (3, tok.cfg.num_tokens) and ids.dtype == torch.long
    assert torch.equal(tok(images), ids)
    with torch.no_grad():
        feats = tok.features(images)
    brute = torch.cdist(feats.reshape(-1, feats.shape[-1]), tok.codebook).argmin(-1).reshape(ids.shape)
    assert torch.equal(brute, ids)
    assert torch.equal(tok.quantize(feats, chunk=5), ids)  # chunking does not change the answer


def test_vq_loss_trains_codebook_and_task_layer(tok: SemanticTokenizer) -> None:
    images = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    _, loss = tok.vq_loss(images)
    loss.backward()
    assert tok.codebook.grad is not None and tok.codebook.grad.abs().sum() > 0
    assert tok.encode_task_layer[0].weight.grad.abs().sum() > 0


def test_kmeans_init_reduces_quantisation_error(tok: SemanticTokenizer) -> None:
    images = torch.rand(8, 3, 32, 32, generator=torch.Generator().manual_seed(2))

    def error() -> float:
        with torch.no_grad():
            feats = tok.features(images)
            return float(((tok.codebook[tok.quantize(feats)] - feats) ** 2).mean())

    before = error()
    tok.kmeans_init(images, iters=5, seed=0)
    assert error() < 0.5 * before


def test_bad_input_shape(tok: SemanticTokenizer) -> None:
    with pytest.raises(ValueError, match="B, 3, H, W"):
        tok(torch.rand(1, 64, 64))
