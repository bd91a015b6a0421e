"""Metric wrappers: weight-free values against independent computations; weighted ones are
unavailable here (and errors under require); face/preference math on tiny random-init models."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from prefrestore import metrics
from prefrestore.metrics import face, iqa, pixel, preference
from prefrestore.metrics.base import BuildContext, MeanScorer, Unavailable, no_downloads
from prefrestore.weights import MissingWeights


@pytest.fixture()
def empty_roots(tmp_path, monkeypatch):
    """Weight roots that hold nothing (as on this machine, but explicit)."""
    for var in ("HF_HOME", "TORCH_HOME", "PREFRESTORE_MODEL_STORE"):
        monkeypatch.setenv(var, str(tmp_path / var.lower()))
    return tmp_path


def _pair(seed=0, b=3, size=48):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(b, 3, size, size, generator=g)
    y = (x + 0.1 * torch.randn(b, 3, size, size, generator=g)).clamp(0, 1)
    return x, y


def test_psnr_matches_numpy_formula():
    x, y = _pair()
    got = pixel.psnr(x, y)
    for i in range(3):
        mse = np.mean((x[i].numpy().astype(np.float64) - y[i].numpy().astype(np.float64)) ** 2)
        assert got[i].item() == pytest.approx(10 * math.log10(1 / mse), rel=1e-9)


def test_ssim_matches_skimage():
    from skimage.metrics import structural_similarity

    x, y = _pair(1)
    got = pixel.ssim(x, y)
    for i in range(3):
        ref = structural_similarity(x[i].permute(1, 2, 0).double().numpy(), y[i].permute(1, 2, 0).double().numpy(),
                                    channel_axis=2, gaussian_weights=True, sigma=1.5,
                                    use_sample_covariance=False, data_range=1.0)
        assert got[i].item() == pytest.approx(ref, abs=1e-5)


def test_ms_ssim_is_one_for_identical_and_falls_with_noise():
    x, _ = _pair(2, size=176)  # five scales fit
    assert torch.allclose(pixel.ms_ssim(x, x), torch.ones(3, dtype=torch.float64))
    g = torch.Generator().manual_seed(3)
    noise = torch.randn(x.shape, generator=g)
    vals = [pixel.ms_ssim(x, (x + s * noise).clamp(0, 1)).mean().item() for s in (0.02, 0.1, 0.3)]
    assert vals[0] > vals[1] > vals[2]
    small = pixel.ms_ssim(x[..., :40, :40], x[..., :40, :40] * 0.5)  # fewer scales on small images
    assert small.shape == (3,) and (small < 1).all()


def test_weight_free_metrics_always_build(empty_roots):
    ctx = BuildContext(torch.device("cpu"), 512, "trainval70k", 512, 128)
    for name in ("psnr", "ssim", "ms_ssim"):
        spec = metrics.SPECS[name]
        assert spec.missing() == []
        x, y = _pair()
        assert spec.build(ctx).update(x, y, None).shape == (3,)


WEIGHTED = [n for n, s in metrics.SPECS.items() if s.weights]


@pytest.mark.parametrize("name", WEIGHTED)
def test_weighted_metrics_unavailable_here_and_errors_under_require(name, empty_roots):
    from prefrestore.evaluate import MetricSet

    spec = metrics.SPECS[name]
    assert spec.missing(), f"{name} should report its missing weights"
    ctx = BuildContext(torch.device("cpu"), 512, "trainval70k", 512, 128)
    got = MetricSet([spec], ctx, require=False).scorer(spec)
    assert isinstance(got, Unavailable) and "missing" in got.reason
    with pytest.raises(MissingWeights):
        MetricSet([spec], ctx, require=True).scorer(spec)


def test_pyiqa_weight_names_are_the_ones_pyiqa_loads():
    from pyiqa.archs import clipiqa_arch, fid_arch, inception, lpips_arch, maniqa_arch, musiq_arch, topiq_arch

    names = {w.relpath.rsplit("/", 1)[-1] for w in metrics.WEIGHTS}
    for url in (lpips_arch.default_model_urls["0.1_alex"], musiq_arch.default_model_urls["koniq10k"],
                maniqa_arch.default_model_urls["koniq"], clipiqa_arch.default_model_urls["clipiqa+"],
                topiq_arch.default_model_urls["topiq_nr_cgfiqa_res50"],
                topiq_arch.default_model_urls["topiq_nr_cgfiqa_swin"], inception.FID_WEIGHTS_URL,
                fid_arch.default_model_urls["ffhq_clean_trainval70k_512.npz"]):
        assert url.rsplit("/", 1)[-1] in names


def test_no_downloads_refuses_network(tmp_path):
    with no_downloads(), pytest.raises(MissingWeights):
        torch.hub.download_url_to_file("https://example.invalid/x.pth", str(tmp_path / "x.pth"))
    assert not (tmp_path / "x.pth").exists()


def test_pyiqa_cache_mismatch_is_an_error(monkeypatch, tmp_path):
    from pyiqa.utils import download_util

    monkeypatch.setattr(download_util, "DEFAULT_CACHE_DIR", str(tmp_path / "elsewhere"))
    with pytest.raises(MissingWeights, match="fixed when it was imported"):
        iqa.check_pyiqa_cache()


def test_clean_resize_shape_and_range():
    out = iqa.clean_resize_299(torch.rand(2, 3, 40, 56))
    assert out.shape == (2, 3, 299, 299) and out.min() >= 0 and out.max() <= 255


# ---------------------------------------------------------------- face metrics
def test_identity_angle_degrees():
    a = torch.tensor([[1.0, 0.0], [1.0, 0.0], [1.0, 1.0]])
    b = torch.tensor([[1.0, 0.0], [0.0, 2.0], [-1.0, -1.0]])
    assert face.identity_angle(a, b).tolist() == pytest.approx([0.0, 90.0, 180.0], abs=1e-4)


def test_arcface_loads_dataparallel_checkpoint_and_scores_deg(tmp_path, monkeypatch):
    monkeypatch.setenv("PREFRESTORE_MODEL_STORE", str(tmp_path))
    torch.manual_seed(0)
    net = face.ResNetFace()
    path = tmp_path / face.ARCFACE_W.relpath
    path.parent.mkdir(parents=True)
    torch.save({f"module.{k}": v for k, v in net.state_dict().items()}, path)
    loaded = face.load_arcface(torch.device("cpu"))
    for k, v in net.state_dict().items():
        assert torch.equal(loaded.state_dict()[k], v)
    scorer = face.deg_scorer(loaded, 128, torch.device("cpu"))
    x, y = _pair(4, b=2, size=64)
    same = scorer.update(x, x, None)
    diff = scorer.fresh().update(x, y.flip(-1), None)
    assert torch.allclose(same, torch.zeros(2), atol=1e-2)
    assert (diff > 0.01).all()


def test_arcface_input_is_grey_128_in_unit_range():
    imgs = np.random.default_rng(0).integers(0, 256, (2, 64, 80, 3), dtype=np.uint8)
    x = face.arcface_input(imgs, 128)
    assert x.shape == (2, 1, 128, 128) and x.min() >= -1 and x.max() <= 1


def test_lmd_zero_for_identical_faces_with_tiny_fan():
    from facexlib.alignment.awing_arch import FAN

    torch.manual_seed(0)
    fan = FAN(num_modules=1, num_landmarks=98, device="cpu").eval()
    scorer = face.lmd_scorer(fan, 64, torch.device("cpu"))
    x, y = _pair(5, b=2, size=64)
    assert torch.allclose(scorer.update(x, x, None), torch.zeros(2))
    pts = face.landmarks_98(fan, face.to_uint8(x), 64, torch.device("cpu"))
    assert pts.shape == (2, 98, 2) and pts.min() >= 0 and pts.max() <= 64
    heat = np.zeros((1, 2, 64, 64))
    heat[0, 0, 10, 20] = 1.0  # peak at x=20, y=10; right and lower neighbours larger than left/upper
    heat[0, 0, 10, 21] = heat[0, 0, 11, 20] = 0.5
    heat[0, 1, 30, 5] = 1.0
    assert face.calculate_points(heat)[0].tolist() == [[20.75, 10.75], [5.5, 30.5]]
    a, b = np.zeros((1, 98, 2)), np.full((1, 98, 2), 3.0)
    assert face.landmark_distance(a, b)[0] == pytest.approx(math.sqrt(18))


# ---------------------------------------------------------------- preference / semantic scorers
def _tiny_hf_clip():
    from transformers import CLIPConfig, CLIPModel

    cfg = CLIPConfig(
        text_config=dict(vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                         num_attention_heads=2, max_position_embeddings=8, bos_token_id=0, eos_token_id=1,
                         pad_token_id=1),
        vision_config=dict(hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
                           image_size=32, patch_size=8),
        projection_dim=8)
    torch.manual_seed(0)
    return CLIPModel(cfg).eval()


def _tok(captions, **kw):
    ids = torch.tensor([[0] + [2 + (ord(c) % 60) for c in cap[:6]] + [1] * (7 - len(cap[:6])) for cap in captions])
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids)}


def test_hf_clip_scorer_is_scaled_cosine():
    model = _tiny_hf_clip()
    scorer = preference.hf_clip_scorer(model, _tok, True, torch.device("cpu"))
    imgs = torch.rand(2, 3, 48, 40)
    caps = ["a photography of a man", "a photography of a woman"]
    got = scorer(imgs, caps)
    with torch.no_grad():
        fi = preference._embeds(model.get_image_features(pixel_values=preference.clip_pixels(imgs, 32)))
        ft = preference._embeds(model.get_text_features(**_tok(caps)))
    want = torch.nn.functional.cosine_similarity(fi, ft) * model.logit_scale.exp()
    assert torch.allclose(got, want, atol=1e-5)
    plain = preference.hf_clip_scorer(model, _tok, False, torch.device("cpu"))(imgs, caps)
    assert (plain.abs() <= 1).all()
    with pytest.raises(ValueError, match="captions"):
        scorer(imgs, caps[:1])


def test_open_clip_scorer_cosine_on_tiny_model():
    import open_clip
    from open_clip.model import CLIPTextCfg, CLIPVisionCfg

    torch.manual_seed(0)
    model = open_clip.model.CLIP(8, CLIPVisionCfg(layers=1, width=16, head_width=8, image_size=32, patch_size=8),
                                 CLIPTextCfg(context_length=8, vocab_size=64, width=16, heads=2, layers=1))
    scorer = preference.open_clip_scorer(model, lambda caps: _tok(caps)["input_ids"], torch.device("cpu"))
    out = scorer(torch.rand(3, 3, 40, 40), ["a", "b", "c"])
    assert out.shape == (3,) and (out.abs() <= 1 + 1e-6).all()


@pytest.mark.parametrize("factory", [preference.pickscore, preference.hpsv21, preference.clip_score])
def test_preference_factories_raise_missing_weights(factory, empty_roots):
    with pytest.raises(MissingWeights):
        factory("cpu")


def test_mean_scorer_checks_counts():
    s = MeanScorer(lambda r, h, c: torch.ones(1))
    with pytest.raises(ValueError, match="values for a batch"):
        s.update(torch.rand(2, 3, 8, 8), None, None)
