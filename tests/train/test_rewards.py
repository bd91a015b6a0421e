"""Rewards: the params mapping, offline scorers' values, CLIP-family formulas on tiny real classes,
and a clear MissingWeights for every real scorer whose weights are absent."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from prefrestore.core.config import ConfigError, load
from prefrestore.core.weights import MissingWeights
from prefrestore.metrics import face, preference
from prefrestore.train import rewards
from prefrestore.train.rewards import RewardsConfig, build_scorers, score_all, total_reward


def _faces(n: int = 3, side: int = 32, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, 3, side, side, generator=g)


def test_config_profiles() -> None:
    paper = load("paper").section("rewards", RewardsConfig)
    assert paper.active() == {"clip": 1.0, "hpsv21": 1.0, "pickscore": 1.0}
    assert paper.pickscore_divisor == 26.0 and paper.clip_divisor == 100.0
    tiny = load("tiny").section("rewards", RewardsConfig)
    assert tiny.active() == {"psnr": 1.0, "ssim": 1.0}  # the offline fidelity reward
    assert not rewards.needs_hq(paper) and rewards.needs_hq(tiny)


def test_config_rejects_unknown_and_all_zero(tiny_params) -> None:
    with pytest.raises(ConfigError, match="unknown key"):
        tiny_params.with_overrides({"rewards.weights.aesthetic": 1.0}).section("rewards", RewardsConfig)
    zero = {f"rewards.weights.{k}": 0.0 for k in rewards.SPECS}
    with pytest.raises(ConfigError, match="nothing to optimise"):
        tiny_params.with_overrides(zero).section("rewards", RewardsConfig)
    with pytest.raises(ConfigError, match="weights.psnr"):
        tiny_params.with_overrides({"rewards.weights.psnr": -1.0}).section("rewards", RewardsConfig)


def test_psnr_and_mse_values() -> None:
    hq = _faces()
    noisy = (hq + 0.1 * torch.randn_like(hq)).clamp(0, 1)
    psnr = rewards.psnr_reward(40.0)
    mse = ((noisy - hq) ** 2).flatten(1).mean(1)
    assert torch.allclose(psnr(noisy, hq, []), 10 * torch.log10(1 / mse) / 40.0, atol=1e-5)
    assert torch.allclose(psnr(hq, hq, []), torch.full((3,), 100.0 / 40.0))  # finite when identical
    assert torch.allclose(rewards.neg_mse_reward()(noisy, hq, []), -mse)
    with pytest.raises(ValueError, match="pass hq"):
        psnr(noisy, None, [])


def test_ssim_is_one_for_identical_and_lower_for_noisy() -> None:
    hq = _faces()
    ssim = rewards.ssim_reward()
    assert torch.allclose(ssim(hq, hq, []), torch.ones(3), atol=1e-5)
    assert bool((ssim((hq + 0.2 * torch.randn_like(hq)).clamp(0, 1), hq, []) < 0.9).all())


def test_sharpness_prefers_sharp_images() -> None:
    sharp = _faces()
    blurred = F.avg_pool2d(F.pad(sharp, (2, 2, 2, 2), mode="replicate"), 5, stride=1)
    score = rewards.sharpness_reward(1e-3)
    s_sharp, s_blur = score(sharp, None, []), score(blurred, None, [])
    assert bool((s_sharp > s_blur).all())
    assert bool(((s_sharp >= 0) & (s_sharp < 1)).all())
    assert torch.equal(score(torch.full((1, 3, 8, 8), 0.5), None, []), torch.zeros(1))  # flat image


def test_tiny_profile_builds_offline_and_sums(tiny_params) -> None:
    cfg = tiny_params.with_overrides({"rewards.weights.sharpness": 0.5}).section("rewards", RewardsConfig)
    scorers = build_scorers(cfg)
    hq = _faces()
    restored = (hq + 0.05 * torch.randn_like(hq)).clamp(0, 1)
    scores = score_all(scorers, restored, hq, ["a photography of a man"] * 3)
    assert set(scores) == {"psnr", "ssim", "sharpness"} and all(v.shape == (3,) for v in scores.values())
    total = total_reward(scores, cfg.weights)
    assert torch.allclose(total, scores["psnr"] + scores["ssim"] + 0.5 * scores["sharpness"])
    with pytest.raises(KeyError, match="ssim"):
        total_reward({"psnr": scores["psnr"]}, cfg.weights)


def test_score_all_rejects_wrong_shapes_and_nan() -> None:
    img = _faces(2)
    with pytest.raises(ValueError, match="returned 1"):
        score_all({"bad": lambda i, h, c: torch.zeros(1)}, img, None, ["", ""])
    with pytest.raises(ValueError, match="non-finite"):
        score_all({"bad": lambda i, h, c: torch.tensor([0.0, float("nan")])}, img, None, ["", ""])


@pytest.fixture
def empty_weight_roots(tmp_path, monkeypatch):
    for var in ("HF_HOME", "TORCH_HOME", "PREFRESTORE_MODEL_STORE"):
        monkeypatch.setenv(var, str(tmp_path / var.lower()))
    return tmp_path


@pytest.mark.parametrize("name", ["pickscore", "hpsv21", "clip", "lpips", "lmd", "arcface"])
def test_real_scorers_fail_clearly_without_weights(empty_weight_roots, name: str) -> None:
    cfg = load("paper").section("rewards", RewardsConfig)
    with pytest.raises(MissingWeights, match=r"weight file .* is missing"):
        rewards.SPECS[name].build(cfg, "cpu")


def test_paper_rewards_refuse_to_build_without_weights(empty_weight_roots) -> None:
    cfg = load("paper").section("rewards", RewardsConfig)
    with pytest.raises(MissingWeights, match="reward 'clip'"):
        build_scorers(cfg)


def _tiny_hf_clip():
    from transformers import CLIPConfig, CLIPModel

    torch.manual_seed(0)
    cfg = CLIPConfig(
        text_config=dict(vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                         num_attention_heads=2, max_position_embeddings=32, bos_token_id=0, eos_token_id=2,
                         pad_token_id=1),
        vision_config=dict(hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
                           image_size=32, patch_size=8),
        projection_dim=8,
    )
    return CLIPModel(cfg).eval()


def _char_tokenize(texts, max_length=None, **kw):
    ids = [[0] + [3 + (ord(c) % 60) for c in t[:10]] + [2] for t in texts]
    width = max_length or max(map(len, ids))
    return {"input_ids": torch.tensor([i + [1] * (width - len(i)) for i in ids]),
            "attention_mask": torch.tensor([[1] * len(i) + [0] * (width - len(i)) for i in ids])}


def test_pickscore_and_clip_rewards_are_the_scaled_logit() -> None:
    """PickScore / CLIP score rewards: the evaluation's scorer (real transformers class), logit_scale * cos / divisor."""
    model = _tiny_hf_clip()
    reward = rewards.text_reward(preference.hf_clip_scorer(model, _char_tokenize, True, torch.device("cpu")), 26.0)
    images, captions = _faces(2, 48), ["a photography of a man", "a photography of a woman"]
    got = reward(images, None, captions)
    with torch.no_grad():
        out = model(pixel_values=preference.clip_pixels(images, 32), **_char_tokenize(captions, max_length=32))
    assert got.shape == (2,) and got.dtype == torch.float32
    assert torch.allclose(got, out.logits_per_image.diagonal() / 26.0, atol=1e-5)
    assert not torch.allclose(got, reward(images, None, ["zzz", "qqq"]))  # the text matters
    with pytest.raises(ValueError, match="captions"):
        reward(images, None, ["one"])


def test_hpsv21_reward_is_the_open_clip_cosine() -> None:
    """HPSv2.1 reward on a tiny open_clip CLIP: the evaluation's cosine of the normalised features, in [-1, 1]."""
    import open_clip
    from open_clip.model import CLIP

    torch.manual_seed(0)
    model = CLIP(embed_dim=16, vision_cfg=dict(image_size=32, layers=1, width=32, head_width=16, patch_size=8),
                 text_cfg=dict(context_length=77, vocab_size=49408, width=32, heads=2, layers=1))
    tok = open_clip.get_tokenizer("ViT-H-14")  # BPE vocab ships with the package: offline
    reward = rewards.text_reward(preference.open_clip_scorer(model, tok, torch.device("cpu")), 1.0)
    images = _faces(2, 40)
    got = reward(images, None, ["a photography of a man", "a photography of a child"])
    with torch.no_grad():
        img = model.encode_image(preference.clip_pixels(images, 32))
        txt = model.encode_text(tok(["a photography of a man", "a photography of a child"]))
    assert torch.allclose(got, F.cosine_similarity(img, txt, dim=-1), atol=1e-5)
    assert bool((got.abs() <= 1).all())


def test_clip_pixels_resize_crop_normalise() -> None:
    x = torch.full((1, 3, 40, 60), 0.5)
    out = preference.clip_pixels(x, 32, (0.5, 0.5, 0.5), (0.5, 0.5, 0.5))
    assert out.shape == (1, 3, 32, 32) and torch.allclose(out, torch.zeros_like(out), atol=1e-5)


def test_preference_rewards_share_the_evaluation_weight_files() -> None:
    """One location per file: the rewards declare the Table VIII / face metrics' files, not copies of their own."""
    pairs = [(rewards.PICKSCORE_WEIGHTS, (preference.PICKSCORE_W, preference.PICKSCORE_TOKENIZER_W)),
             (rewards.CLIP_WEIGHTS, (preference.CLIP_L14_W,)), (rewards.HPS_WEIGHTS, (preference.HPSV21_W,)),
             (rewards.LMD_WEIGHTS, (face.AWING_W,)), (rewards.ARCFACE_WEIGHTS, (face.ARCFACE_W,))]
    for mine, theirs in pairs:
        assert [(w.root, w.relpath) for w in mine] == [(w.root, w.relpath) for w in theirs]
        assert all(w.used_by.startswith("reward ") for w in mine)


def test_lmd_reward_uses_the_evaluation_lmd(monkeypatch, tmp_path) -> None:
    """1 / (1 + LMD / lmd_scale_px) with LMD exactly the evaluation metric's (AWing landmarks at 512 px)."""
    from facexlib.alignment.awing_arch import FAN

    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    staged = tmp_path / face.AWING_W.relpath
    staged.parent.mkdir(parents=True)
    staged.write_bytes(b"stand-in")  # present for require(); the loader below returns a tiny random FAN
    torch.manual_seed(0)
    fan = FAN(num_modules=1, num_landmarks=98, device="cpu").eval()
    monkeypatch.setattr(face, "load_awing_fan", lambda device: fan)
    cfg = load("paper").section("rewards", RewardsConfig)
    reward = rewards.lmd_reward(cfg, "cpu")
    hq = _faces(2, 64, seed=1)
    restored = hq.flip(-1)
    lmd = face.lmd_scorer(fan, rewards.LMD_RESOLUTION, torch.device("cpu")).update(restored, hq, None)
    assert torch.allclose(reward(restored, hq, []), (1.0 / (1.0 + lmd / cfg.lmd_scale_px)).float())
    assert torch.equal(reward(hq, hq, []), torch.ones(2))


def test_arcface_reward_is_the_cosine_of_the_evaluation_deg(monkeypatch) -> None:
    """ArcFace reward = cos(Deg) of the evaluation metric: same network, same 128 px grey input."""
    torch.manual_seed(0)
    net = face.ResNetFace().eval()
    monkeypatch.setattr(face, "load_arcface", lambda device: net)
    reward = rewards.arcface_reward(load("paper").section("rewards", RewardsConfig), "cpu")
    hq = _faces(2, 64, seed=2)
    restored = (hq + 0.2 * torch.randn_like(hq)).clamp(0, 1)
    deg = face.deg_scorer(net, rewards.ARCFACE_SIZE, torch.device("cpu")).update(restored, hq, None)
    got = reward(restored, hq, [])
    assert torch.allclose(got.double(), torch.cos(deg.double() * torch.pi / 180.0), atol=1e-5)
    assert torch.allclose(reward(hq, hq, []), torch.ones(2), atol=1e-5)
