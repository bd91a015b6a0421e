"""DSL-FIQA: unavailable without its files; the released state-dict layout (meta device); a tiny
network saved in the release's layout loads through the real loader and scores faces; the
WFLW->300W landmark map and the landmark code of one crop against hand-worked values."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from prefrestore import metrics
from prefrestore.core.weights import MissingWeights, local_path
from prefrestore.data.synthetic import make_face
from prefrestore.metrics import dsl_fiqa, face
from prefrestore.metrics.base import BuildContext, Unavailable
from prefrestore.metrics.dsl_fiqa_arch import DslFiqa, DslFiqaConfig, landmark_encoding

# ViT 10 blocks deep (blocks 6-9 exist), 4x4 tokens, Swin windows of 2 (so shifted windows and masks)
TINY = DslFiqaConfig(img_size=32, patch_size=8, embed_dim=32, vit_depth=10, vit_heads=2, dim_mlp=32,
                     num_heads=(2, 2), window_size=2, depths=(2, 2), num_landmark=8, num_crops=3)
CPU = torch.device("cpu")
CTX = BuildContext(CPU, 512, "trainval70k", 512, 128)


@pytest.fixture()
def roots(tmp_path, monkeypatch):
    for var in ("HF_HOME", "TORCH_HOME", "PREFRESTORE_MODEL_STORE"):
        monkeypatch.setenv(var, str(tmp_path / var.lower()))
    return tmp_path


def _faces(n=2, size=48, seed=3):
    imgs = np.stack([make_face(seed, i, size)[0] for i in range(n)])
    return torch.from_numpy(imgs).permute(0, 3, 1, 2).float() / 255.0


def _tiny_fan():
    from facexlib.alignment.awing_arch import FAN

    torch.manual_seed(1)
    return FAN(num_modules=1, num_landmarks=98, device="cpu").eval()


def _stage_tiny(seed=0, prefix="module."):
    """A random tiny DSL-FIQA saved as the release saves it (``IQA.pt``, ``DE.pt``: state dicts)."""
    torch.manual_seed(seed)
    model = DslFiqa(TINY).eval()
    with torch.no_grad():  # non-trivial BN statistics, so a wrong load would show
        for m in model.de.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.1, 0.1)
                m.running_var.uniform_(0.5, 1.5)
    for w, net in ((dsl_fiqa.IQA_W, model.iqa), (dsl_fiqa.DE_W, model.de)):
        path = local_path(w)
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.save({prefix + k: v for k, v in net.state_dict().items()}, path)
    return model


# ---------------------------------------------------------------- availability and declaration
def test_unavailable_without_weights_names_the_files(roots):
    from prefrestore.evaluation.evaluate import MetricSet

    spec = metrics.SPECS["dsl_fiqa"]
    got = MetricSet([spec], CTX, require=False).scorer(spec)
    assert isinstance(got, Unavailable)
    for name in ("dsl_fiqa/GFIQA/IQA.pt", "dsl_fiqa/GFIQA/DE.pt", "alignment_WFLW_4HG.pth"):
        assert name in got.reason
    with pytest.raises(MissingWeights, match="dsl_fiqa"):
        MetricSet([spec], CTX, require=True).scorer(spec)
    with pytest.raises(MissingWeights, match="IQA.pt"):
        dsl_fiqa.load_dsl_fiqa(CPU, TINY)


def test_weights_are_declared_for_staging():
    from prefrestore.cli.weights import gather

    staged = {e.relpath: e for e in gather()[0]}
    for w in (dsl_fiqa.IQA_W, dsl_fiqa.DE_W):
        assert w.root == "store" and w.used_by == "evaluate (DSL-FIQA)"
        assert "drive.google.com" in w.source and w.relpath in staged
    assert face.AWING_W in metrics.SPECS["dsl_fiqa"].weights  # the LMD declaration, reused


# ---------------------------------------------------------------- the released layout
def test_released_state_dict_keys_and_shapes():
    cfg = DslFiqaConfig()
    assert (cfg.img_size, cfg.patch_size, cfg.num_crops, cfg.num_landmark, cfg.scale) == (384, 16, 20, 500, 0.8)
    with torch.device("meta"):
        model = DslFiqa(cfg)
    iqa = {k: tuple(v.shape) for k, v in model.iqa.state_dict().items()}
    expected = {
        "vit.pos_embed": (1, 577, 768),
        "vit.blocks.11.mlp.fc2.weight": (768, 3072),
        "vit.head.weight": (1000, 768),
        "tablock1.1.c_q.weight": (576, 576),
        "conv1.weight": (768, 3072, 1, 1),
        "swintransformer1.layers.0.blocks.1.attn.relative_position_bias_table": (49, 4),
        "swintransformer1.layers.1.blocks.1.attn_mask": (36, 16, 16),
        "swintransformer1.downsample.weight": (768, 768, 3, 3),
        "tablock2.0.c_v.weight": (576, 576),
        "conv2.weight": (384, 768, 1, 1),
        "swintransformer2.layers.1.blocks.0.attn.qkv.weight": (1152, 384),
        "swintransformer2.layers.0.conv.weight": (384, 384, 3, 3),
        "conv_decoder.weight": (256, 384, 1, 1),
        "decoder.0.attn.task_query": (1, 1, 256),
        "decoder.2.attn.q.weight": (256, 256),
        "decoder.2.attn.kv.weight": (512, 256),
        "decoder.2.mlp.dwconv.dwconv.weight": (1024, 1, 3, 3),
        "decoder.1.norm2.weight": (256,),
        "testmlp.3.weight": (256, 256),
        "embed_mlp.0.weight": (10500, 10500),
        "embed_mlp.3.weight": (576, 10500),
        "fc_score.0.weight": (257, 257),
        "fc_score.3.weight": (1, 257),
        "fc_weight.3.bias": (1,),
    }
    assert {k: iqa.get(k) for k in expected} == expected
    assert not any(k.startswith("decoder.3.") for k in iqa)  # three decoder blocks
    assert {k.split(".")[0] for k in iqa} == {
        "vit", "tablock1", "conv1", "swintransformer1", "tablock2", "conv2", "swintransformer2", "decoder",
        "conv_decoder", "testmlp", "embed_mlp", "fc_score", "fc_weight"}
    de = {k: tuple(v.shape) for k, v in model.de.state_dict().items()}
    assert de["E.0.weight"] == (64, 3, 3, 3) and de["E.15.weight"] == (256, 256, 3, 3)
    assert de["E.16.running_var"] == (256,) and de["mlp.2.weight"] == (256, 256)
    assert len(de) == 6 * (2 + 5) + 4  # six conv (2 tensors) + BN (5 tensors), and the two-layer mlp


# ---------------------------------------------------------------- a tiny released-layout checkpoint
def test_tiny_checkpoint_loads_and_scores_faces(roots):
    staged = _stage_tiny()
    model = dsl_fiqa.load_dsl_fiqa(CPU, TINY)
    assert not model.training
    crops, code = torch.rand(2, 3, 32, 32) * 2 - 1, torch.rand(2, TINY.num_landmark) * 2 - 1
    with torch.no_grad():
        assert torch.allclose(model(crops, code), staged(crops, code), atol=1e-6)  # the staged weights

    fan = _tiny_fan()
    x = _faces(3)
    scorer = dsl_fiqa.dsl_fiqa_scorer(model, fan, CPU)
    got = scorer.update(x, None, None)
    assert got.shape == (3,) and torch.isfinite(got).all()
    assert torch.equal(scorer.fresh().update(x, None, None), got)  # same input, same crops, same score
    assert torch.equal(scorer.fresh().update(x[[2, 0]], None, None), got[[2, 0]])  # batch position is irrelevant
    assert scorer.finish() == pytest.approx(got.double().mean().item())

    # face 1 by hand: its points, its crops, one crop at a time, the mean
    u8 = face.to_uint8(x)
    pts = dsl_fiqa.landmarks_68(fan, u8, CPU)[1]
    corners, codes = dsl_fiqa.plan_crops(48, 48, pts, TINY, dsl_fiqa.crop_rng(u8[1]))
    per_crop = []
    for (top, left), c in zip(corners, codes, strict=True):
        crop = (x[1, :, top : top + 32, left : left + 32] - 0.5) / 0.5
        with torch.no_grad():
            per_crop.append(model(crop[None], torch.from_numpy(c)[None]).item())
    assert len(per_crop) == TINY.num_crops
    assert got[1].item() == pytest.approx(sum(per_crop) / len(per_crop), abs=1e-5)


def test_spec_builds_from_staged_files(roots, monkeypatch):
    _stage_tiny(prefix="")
    fan_path = local_path(face.AWING_W)
    fan_path.parent.mkdir(parents=True)
    fan_path.write_bytes(b"placeholder")  # present; the tiny FAN below is what is loaded
    monkeypatch.setattr(dsl_fiqa, "CONFIG", TINY)
    monkeypatch.setattr(face, "load_awing_fan", lambda device: _tiny_fan())
    spec = metrics.SPECS["dsl_fiqa"]
    assert spec.missing() == []
    out = spec.build(CTX).update(_faces(2), None, None)
    assert out.shape == (2,) and torch.isfinite(out).all()


@pytest.mark.parametrize("damage", ["drop", "rename", "reshape"])
def test_mismatched_checkpoint_is_a_clear_error(roots, damage):
    _stage_tiny()
    path = local_path(dsl_fiqa.IQA_W)
    state = torch.load(path, weights_only=True)
    key = "module.decoder.1.attn.kv.weight"
    if damage == "drop":
        del state[key]
    elif damage == "rename":
        state["module.decoder.1.attn.kv_proj.weight"] = state.pop(key)
    else:
        state[key] = state[key][:10]
    torch.save(state, path)
    with pytest.raises(MissingWeights, match=r"does not match the DSL-FIQA DslFiqaIQA") as err:
        dsl_fiqa.load_dsl_fiqa(CPU, TINY)
    assert "decoder.1.attn.kv.weight" in str(err.value)
    if damage == "rename":
        assert "unexpected keys (1)" in str(err.value) and "missing keys (1)" in str(err.value)


# ---------------------------------------------------------------- landmarks and crops
def test_wflw_to_ibug68_map():
    m = dsl_fiqa.WFLW98_TO_IBUG68
    assert len(m) == 68 and len(set(m)) == 68 and all(0 <= i < 96 for i in m)  # pupils 96-97 unused
    assert list(m) == sorted(m)  # both layouts run jaw, brows, nose, eyes, mouth in the same order
    anchors = {0: 0, 8: 16, 16: 32,  # jaw ends and chin
               17: 33, 21: 37, 22: 42, 26: 46,  # brow ends (upper edges)
               27: 51, 30: 54, 33: 57,  # top of the bridge, nose tip, nostril-line centre
               36: 60, 39: 64, 42: 68, 45: 72,  # eye corners
               48: 76, 54: 82, 60: 88, 64: 92, 67: 95}  # mouth corners, outer and inner
    assert {k: m[k] for k in anchors} == anchors


def test_landmark_code_of_one_crop_by_hand():
    pts = np.full((68, 2), 500.0)  # far outside
    pts[5], pts[10], pts[30] = (10, 20), (42, 50), (26, 26)  # inside a 32-px crop at top=20, left=10
    pts[40] = (43, 20)  # one pixel right of the crop
    rng = np.random.default_rng(0)
    got = dsl_fiqa.landmark_code(pts, 20, 10, 32, 6, rng)  # (10, 20) and (42, 50) sit on the edges: inside
    idx = np.array([5, 10, 30, 69, 69, 69], dtype=np.float64)  # padded with len(points) + 1
    want = (idx - 5) / (64 + 1e-6) * 2 - 1
    assert got.dtype == np.float32 and np.allclose(got, want) and got[0] == -1 and got[-1] == pytest.approx(1)
    nothing = dsl_fiqa.landmark_code(pts, 200, 200, 32, 6, rng)
    assert np.all(nothing == -1)  # all padding: min == max
    many = dsl_fiqa.landmark_code(np.zeros((68, 2)), 0, 0, 32, 6, np.random.default_rng(1))
    assert many.shape == (6,) and many.min() == -1 and many.max() == pytest.approx(1)  # a subset of 68 inside


def test_crops_are_per_face_deterministic_and_small_faces_are_upscaled():
    a, b = make_face(0, 0, 48)[0], make_face(0, 1, 48)[0]
    pts = np.zeros((68, 2))
    plan = [dsl_fiqa.plan_crops(48, 48, pts, TINY, dsl_fiqa.crop_rng(img))[0] for img in (a, a, b)]
    assert plan[0] == plan[1] != plan[2]
    assert all(0 <= t < 16 and 0 <= left < 16 for t, left in plan[0])
    with pytest.raises(ValueError, match="fit_for_crops"):
        dsl_fiqa.plan_crops(32, 48, pts, TINY, np.random.default_rng(0))
    img = torch.rand(3, 20, 30)
    big, sy, sx = dsl_fiqa.fit_for_crops(img, 32)
    assert big.shape == (3, 33, 50) and (sy, sx) == (33 / 20, 50 / 30) and big.min() >= 0 and big.max() <= 1
    same, *_ = dsl_fiqa.fit_for_crops(torch.rand(3, 40, 40), 32)
    assert same.shape == (3, 40, 40)
    crops, codes = dsl_fiqa.face_crops(img, pts, TINY, np.random.default_rng(0))
    assert crops.shape == (3, 3, 32, 32) and codes.shape == (3, 8) and crops.min() >= -1


def test_landmark_encoding_layout():
    got = landmark_encoding(torch.tensor([[0.5, -0.25]]), 2)
    x = np.array([0.5, -0.25])
    want = np.concatenate([x, np.sin(x), np.cos(x), np.sin(2 * x), np.cos(2 * x)])
    assert got.shape == (1, 10) and np.allclose(got.numpy()[0], want)
    assert DslFiqaConfig().code_dim == 10500 and math.isclose(DslFiqaConfig().grid, 24)


def test_vit_features_are_the_hooked_block_outputs_without_class_token():
    """The release hooks every ViT block and keeps outputs 6-9 minus the class token."""
    torch.manual_seed(0)
    net = DslFiqa(TINY).iqa.eval()
    seen = []
    hooks = [blk.register_forward_hook(lambda m, i, o: seen.append(o)) for blk in net.vit.blocks]
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        net.vit(x)
        for h in hooks:
            h.remove()
        ours = net.vit.forward_intermediates(x, indices=[6, 7, 8, 9], output_fmt="NLC", intermediates_only=True)
    assert len(seen) == 10 and all(torch.equal(a, b[:, 1:]) for a, b in zip(ours, seen[6:10], strict=True))


def test_decoder_attention_repeats_the_degradation_queries_over_tokens():
    """Explicit softmax attention, queries resized to the token count by nearest (index i * M // N)."""
    torch.manual_seed(0)
    attn = DslFiqa(TINY).iqa.decoder[0].attn.eval()
    x, queries = torch.randn(2, 16, 256), torch.randn(2, 96, 256)
    heads, d = 8, 32
    q = attn.q(queries).reshape(2, 96, heads, d).transpose(1, 2)[:, :, torch.arange(16) * 96 // 16]
    k, v = attn.kv(x).reshape(2, 16, 2, heads, d).permute(2, 0, 3, 1, 4)
    w = torch.softmax(q @ k.transpose(-2, -1) * d**-0.5, dim=-1)
    want = attn.proj((w @ v).transpose(1, 2).reshape(2, 16, 256))
    with torch.no_grad():
        assert torch.allclose(attn(x, queries), want, atol=1e-5)
