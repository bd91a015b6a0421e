"""Metric wrappers: weight-free values against independent computations; weighted ones are
unavailable here (and errors under require); face/preference math on tiny random-init models."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch

from prefrestore import metrics
from prefrestore.core.weights import MissingWeights
from prefrestore.metrics import face, iqa, pixel, preference, semantic
from prefrestore.metrics.base import BuildContext, MeanScorer, Unavailable, no_downloads


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


def _ssim_reference(x, y, win=11, sigma=1.5):
    """Per-image mean SSIM and cs of ``[C, H, W]`` float64: five moments, one 2-D window, no shortcuts."""
    r = torch.arange(win, dtype=torch.float64) - win // 2
    g = torch.exp(-(r**2) / (2 * sigma**2))
    w2 = torch.outer(g, g) / torch.outer(g, g).sum()
    c = x.shape[0]

    def f(z):
        return torch.nn.functional.conv2d(z[None], w2.expand(c, 1, win, win), groups=c)[0]

    mx, my = f(x), f(y)
    sxx, syy, sxy = f(x * x) - mx**2, f(y * y) - my**2, f(x * y) - mx * my
    cs = (2 * sxy + 0.03**2) / (sxx + syy + 0.03**2)
    return ((2 * mx * my + 0.01**2) / (mx**2 + my**2 + 0.01**2) * cs).mean(), cs.mean()


def test_ms_ssim_matches_float64_reference():
    x, y = _pair(6, b=2, size=180)  # five scales; odd sides on the way down (180 -> 90 -> 45 -> 22)
    w = torch.tensor(pixel.MS_SSIM_WEIGHTS, dtype=torch.float64)
    got = pixel.ms_ssim(x, y)
    for i in range(2):
        xi, yi, terms = x[i].double(), y[i].double(), []
        for j in range(5):
            s, cs = _ssim_reference(xi, yi)
            terms.append(cs if j < 4 else s)
            xi, yi = (torch.nn.functional.avg_pool2d(z[None], 2)[0] for z in (xi, yi))
        assert got[i].item() == pytest.approx(torch.prod(torch.stack(terms) ** w).item(), abs=1e-5)


def test_pixel_metrics_equal_pyiqas_rgb_variants():
    """The one-pass metrics are pyiqa's definitions (``psnr``, ``ssimc``, ``ms_ssim`` on RGB), which is
    what makes bench_evaluate's comparison against pyiqa's per-metric calls like for like."""
    import pyiqa

    x, y = _pair(8, b=2, size=176)
    x, y = (torch.round(t * 255) / 255 for t in (x, y))  # 8-bit images, as decoded from files
    for ours, name, kw in ((pixel.psnr, "psnr", {}), (pixel.ssim, "ssimc", {}),
                           (pixel.ms_ssim, "ms_ssim", {"test_y_channel": False})):
        ref = pyiqa.create_metric(name, device="cpu", **kw)(x, y).flatten().double()
        assert torch.allclose(ours(x, y).double(), ref, atol=1e-4), name


def test_cpu_filter_equals_conv_filter():
    planes = torch.rand(5, 37, 52, generator=torch.Generator().manual_seed(7))
    a, b = pixel.blur_valid_cv2(planes, 11, 1.5), pixel.blur_valid_conv(planes, 11, 1.5)
    assert a.shape == b.shape == (5, 27, 42)
    assert torch.allclose(a, b, atol=1e-6)


def test_shared_first_scale_is_recomputed_for_new_or_changed_tensors():
    x, y = _pair(8, b=2)
    first = pixel.ssim(x, y)
    assert torch.equal(pixel.ssim(x, y), first)  # same objects: the shared terms
    x.mul_(0.5)  # changed in place: not the cached terms any more
    assert torch.equal(pixel.ssim(x, y), pixel.ssim(x.clone(), y.clone()))
    assert not torch.equal(pixel.ssim(x, y), first)
    with torch.inference_mode():  # tensors without a version counter are never served from the cache
        xi, yi = x.clone(), y.clone()
    assert torch.equal(pixel.ssim(xi, yi), pixel.ssim(x, y))
    assert torch.equal(pixel.ms_ssim(xi, yi), pixel.ms_ssim(x.clone(), y.clone()))


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
    from prefrestore.evaluation.evaluate import MetricSet

    spec = metrics.SPECS[name]
    assert spec.missing(), f"{name} should report its missing weights"
    ctx = BuildContext(torch.device("cpu"), 512, "trainval70k", 512, 128)
    got = MetricSet([spec], ctx, require=False).scorer(spec)
    assert isinstance(got, Unavailable) and "missing" in got.reason
    with pytest.raises(MissingWeights):
        MetricSet([spec], ctx, require=True).scorer(spec)


def test_dsl_fiqa_is_staged_and_never_scores_with_unusable_files(tmp_path, monkeypatch):
    from prefrestore.cli.weights import gather
    from prefrestore.core.weights import local_path
    from prefrestore.evaluation.evaluate import MetricSet

    for var in ("TORCH_HOME", "PREFRESTORE_MODEL_STORE"):
        monkeypatch.setenv(var, str(tmp_path / var.lower()))
    spec = metrics.SPECS["dsl_fiqa"]
    for w in spec.weights:  # every file present, none of them a checkpoint
        local_path(w).parent.mkdir(parents=True, exist_ok=True)
        local_path(w).write_bytes(b"staged")
    assert spec.missing() == []
    ctx = BuildContext(torch.device("cpu"), 512, "trainval70k", 512, 128)
    got = MetricSet([spec], ctx, require=False).scorer(spec)
    assert isinstance(got, Unavailable) and "not a plain tensor checkpoint" in got.reason
    with pytest.raises(MissingWeights, match="IQA.pt"):
        MetricSet([spec], ctx, require=True).scorer(spec)
    assert [e for e in gather()[0] if "evaluate (DSL-FIQA)" in e.used_by]  # listed for staging


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


def _tiny_vit(patch_size=16, **kwargs):
    """dreamsim's ViT at width 32 (12 blocks: DreamSim reads the CLS token of block 11)."""
    from functools import partial

    from dreamsim.feature_extraction.vision_transformer import VisionTransformer

    return VisionTransformer(patch_size=patch_size, embed_dim=32, depth=12, num_heads=2, mlp_ratio=2,
                             qkv_bias=True, norm_layer=partial(torch.nn.LayerNorm, eps=1e-6), **kwargs)


def _stage_tiny_dreamsim(folder):
    """The ensemble's staged files, with tiny random ViTs in place of the ViT-B/16 backbones."""
    from dreamsim.config import dreamsim_args
    from dreamsim.model import PerceptualModel
    from peft import LoraConfig, get_peft_model

    (folder / "checkpoints").mkdir(parents=True)
    torch.save(_tiny_vit(num_classes=0).state_dict(), folder / "checkpoints/dino_vitbase16_pretrain.pth")
    head = {f"module.head.mlp.{i}.{p}": torch.randn(4, 4) for i in (0, 2, 4) for p in ("weight", "bias")}
    torch.save({"student": {**head, "module.head.last_layer.weight": torch.randn(4, 4)}},
               folder / "dino_vitb16_pretrain.pth")
    for name in ("clip", "open_clip"):
        vit = _tiny_vit()
        vit.pos_drop = torch.nn.LayerNorm(32)  # as dreamsim's CLIP-as-DINO conversion
        torch.save({"state_dict": {**vit.state_dict(), "proj": torch.randn(32, 16)}},
                   folder / f"{name}_vitb16_pretrain.pth.tar")
    with semantic._dino_from_store(folder):
        base = PerceptualModel(**dreamsim_args["model_config"]["ensemble"], device="cpu", load_dir=str(folder),
                               normalize_embeds=True)
    lora = get_peft_model(base, LoraConfig(r=2, lora_alpha=4, lora_dropout=0.0, bias="none", target_modules=["qkv"]))
    with torch.no_grad():
        for n, p in lora.named_parameters():
            if "lora_B" in n:
                p.normal_()  # a non-trivial adapter, so loading it changes the output
    lora.save_pretrained(folder / "ensemble_lora")
    return lora


def test_dreamsim_builds_offline_from_staged_files(tmp_path, monkeypatch):
    pytest.importorskip("dreamsim")
    from dreamsim.feature_extraction import load_clip_as_dino, load_open_clip_as_dino, vision_transformer

    monkeypatch.setenv("PREFRESTORE_MODEL_STORE", str(tmp_path))
    for mod in (vision_transformer, load_clip_as_dino, load_open_clip_as_dino):
        monkeypatch.setattr(mod, "vit_base", _tiny_vit)
    torch.manual_seed(0)
    staged = _stage_tiny_dreamsim(tmp_path / "dreamsim").eval()
    spec = metrics.SPECS["dreamsim"]
    assert spec.missing() == []
    hub = (torch.hub.load, torch.hub.set_dir, torch.hub.get_dir())
    scorer = spec.build(BuildContext(torch.device("cpu"), 512, "trainval70k", 512, 128))
    assert (torch.hub.load, torch.hub.set_dir, torch.hub.get_dir()) == hub  # hub state untouched
    x, y = _pair(9, b=2, size=64)
    same, diff = scorer.update(x, x, None), scorer.fresh().update(x, y.flip(-1), None)
    assert torch.allclose(same, torch.ones(2), atol=1e-5) and (diff < same).all()
    prep = torch.nn.functional.interpolate(x, size=(224, 224), mode="bicubic", antialias=True).clamp(0, 1)
    flip = torch.nn.functional.interpolate(y.flip(-1), size=(224, 224), mode="bicubic", antialias=True).clamp(0, 1)
    with torch.no_grad():
        assert torch.allclose(diff, 1 - staged(prep, flip), atol=1e-5)  # the staged adapter was loaded


def test_dreamsim_hub_guard_serves_only_dino():
    pytest.importorskip("dreamsim")
    with semantic._dino_from_store(Path("/nonexistent")), pytest.raises(MissingWeights, match="only the staged"):
        torch.hub.load("facebookresearch/dinov2", "dinov2_vitb14")


def test_mean_scorer_checks_counts():
    s = MeanScorer(lambda r, h, c: torch.ones(1))
    with pytest.raises(ValueError, match="values for a batch"):
        s.update(torch.rand(2, 3, 8, 8), None, None)
