"""Manifests of the weight files the ``evaluate`` step loads through pyiqa and facexlib (Tables II-VI).

Each file ``metrics.iqa`` declares (under the exact name pyiqa expects in ``$TORCH_HOME/hub/pyiqa``)
gets a :class:`~prefrestore.model.parts.Part` whose manifest is the state dict the loading call
expects, read off the installed pyiqa / facexlib / torchvision / timm classes built on the
``meta`` device:

- pyiqa ``load_pretrained_network(net, path, strict, weight_keys)`` loads ``torch.load(path)``,
  takes ``[weight_keys]`` when given and strips a ``module.`` prefix (``arch_util.clean_state_dict``);
  ``state_key`` and the reader in ``model.verify`` do the same.
- ``strict=False`` loads (LPIPS' ``lin*`` layers) list only what the file holds.
- CLIP-IQA+'s file is one tensor (the learned prompt context); FID(FFHQ)'s statistics are an ``.npz``.

Not covered, on purpose: OpenAI's ``RN50.pt`` is a TorchScript archive, which cannot be read
with ``weights_only=True``; its sha256 is pinned in ``metrics.iqa`` instead. The Swin and timm ViT
backbones are loaded by timm's own remapping code, whose source layouts this project has not read.

Manifests live in ``evaluation/manifests/``; ``prefrestore weights manifests`` writes and checks them
with the model parts', and ``prefrestore weights verify --profile P --aux NAME`` checks a user's file.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

from prefrestore.core.weights import WeightFile
from prefrestore.metrics import iqa
from prefrestore.model.headers import TensorInfo
from prefrestore.model.manifest import Part, module_tensors, on_meta, value

MANIFEST_DIR = Path(__file__).resolve().parent / "manifests"
PYIQA_SRC = "pyiqa 0.1.16 (installed; chaofengc/IQA-PyTorch)"


@contextlib.contextmanager
def _no_pretrained() -> Iterator[None]:
    """Build the architectures only: the backbones' own ``pretrained=True`` and pyiqa's loader become no-ops."""
    import timm
    from pyiqa.archs import inception, topiq_arch

    saved = timm.create_model, inception.load_pretrained_network, topiq_arch.FaceRestoreHelper, topiq_arch.create_swin

    def bare(create: Callable[..., Any]) -> Callable[..., Any]:
        return lambda *args, **kwargs: create(*args, **{**kwargs, "pretrained": False})

    # CFANet's face helper (RetinaFace + ParseNet, their own files and manifests) is a plain attribute,
    # not part of CFANet's state dict
    timm.create_model, inception.load_pretrained_network, topiq_arch.FaceRestoreHelper, topiq_arch.create_swin = (
        bare(saved[0]), lambda *a, **k: None, lambda *a, **k: None, bare(saved[3]))
    try:
        yield
    finally:
        timm.create_model, inception.load_pretrained_network, topiq_arch.FaceRestoreHelper, topiq_arch.create_swin = saved


def _built(factory: Callable[[], Any], dtype: str = "F32") -> dict[str, TensorInfo]:
    """Parameters on ``meta`` via accelerate's ``init_empty_weights`` (some archs call ``.item()`` while
    building, which a ``torch.device('meta')`` context refuses); buffers are small and stay on the CPU."""
    from accelerate import init_empty_weights

    with _no_pretrained(), init_empty_weights(include_buffers=False):
        return module_tensors(factory(), dtype)


def lpips_lin_tensors(c: Mapping[str, Any]) -> dict[str, TensorInfo]:
    """LPIPS v0.1 ``lin0..lin4`` (1x1 convs over AlexNet's five feature widths); loaded with strict=False."""
    from pyiqa.archs.lpips_arch import NetLinLayer

    out: dict[str, TensorInfo] = {}
    for i, ch in enumerate(c["chns"]):
        out.update(module_tensors(on_meta(lambda ch=ch: NetLinLayer(ch, use_dropout=True)), "F32", f"lin{i}."))
    return out


def alexnet_tensors(_: Mapping[str, Any]) -> dict[str, TensorInfo]:
    from torchvision.models import alexnet

    return _built(lambda: alexnet(weights=None))


def fid_inception_tensors(_: Mapping[str, Any]) -> dict[str, TensorInfo]:
    from pyiqa.archs.inception import fid_inception_v3

    return _built(fid_inception_v3)


def musiq_tensors(c: Mapping[str, Any]) -> dict[str, TensorInfo]:
    from pyiqa.archs.musiq_arch import MUSIQ

    return _built(lambda: MUSIQ(pretrained=False, num_class=c["num_class"]))


def maniqa_tensors(c: Mapping[str, Any]) -> dict[str, TensorInfo]:
    from pyiqa.archs.maniqa_arch import MANIQA

    return _built(lambda: MANIQA(pretrained=False, train_dataset=c["train_dataset"], scale=c["scale"]))


def cfanet_tensors(c: Mapping[str, Any]) -> dict[str, TensorInfo]:
    from pyiqa.archs.topiq_arch import CFANet

    return _built(lambda: CFANet(semantic_model_name=c["semantic_model_name"], model_name=c["model_name"],
                                 use_ref=False, test_img_size=c["test_img_size"], pretrained=False,
                                 backbone_pretrain=False))


def retinaface_tensors(_: Mapping[str, Any]) -> dict[str, TensorInfo]:
    from facexlib.detection.retinaface import RetinaFace

    # its constructor moves the module to ``device``, which meta parameters cannot follow: built for real
    # (27 M parameters, under a second)
    with _no_pretrained():
        return module_tensors(RetinaFace(network_name="resnet50", half=False, device="cpu"), "F32")


def parsenet_tensors(c: Mapping[str, Any]) -> dict[str, TensorInfo]:
    from facexlib.parsing.parsenet import ParseNet

    return _built(lambda: ParseNet(in_size=c["in_size"], out_size=c["in_size"], parsing_ch=c["parsing_ch"]))


def _part(name: str, title: str, weight: WeightFile, layout: str, code: Mapping[str, str],
          config: Mapping[str, Mapping[str, Any]], build: Callable[[Mapping[str, Any]], dict[str, TensorInfo]],
          state_key: str | None = None, notes: tuple[str, ...] = ()) -> Part:
    return Part(name=name, title=title, weight=weight, layout=layout, subfolder="", code=code,  # type: ignore[arg-type]
                config=config, dtype="F32", build=build, notes=notes, state_key=state_key,
                manifest_dir=MANIFEST_DIR)


def _code(path: str, cls: str, repo: str = "chaofengc/IQA-PyTorch") -> dict[str, str]:
    return {"repo": repo, "path": path, "class": cls, "version": PYIQA_SRC if "IQA" in repo else "installed"}


LPIPS_LIN = _part(
    "pyiqa-lpips-alex", "LPIPS v0.1 AlexNet linear heads (lpips, Table II)", iqa.LPIPS_W[0], "torch_state_dict",
    _code("pyiqa/archs/lpips_arch.py", "LPIPS.lin0..lin4 (NetLinLayer)"),
    {"chns": value([64, 192, 384, 256, 256], "pyiqa lpips_arch.py: AlexNet channel widths (self.chns)")},
    lpips_lin_tensors, notes=("loaded with strict=False: the file holds only the five lin layers",))
ALEXNET = _part(
    "torchvision-alexnet", "torchvision AlexNet IMAGENET1K_V1 (LPIPS features)", iqa.LPIPS_W[1], "torch_state_dict",
    _code("torchvision/models/alexnet.py", "AlexNet", "pytorch/vision"), {}, alexnet_tensors)
FID_INCEPTION = _part(
    "pyiqa-fid-inception", "FID InceptionV3 (pytorch-fid weights; fid, Tables II-VI)", iqa.INCEPTION_W[0],
    "torch_state_dict", _code("pyiqa/archs/inception.py", "fid_inception_v3"), {}, fid_inception_tensors)
FFHQ_STATS = Part(
    name="pyiqa-fid-ffhq-stats", title="FID(FFHQ) reference statistics (clean, trainval70k, 512 px)",
    weight=iqa.FFHQ_STATS_W[0], layout="npz", subfolder="", code=_code("pyiqa/archs/fid_arch.py", "load_patched_stats"),
    config={"dims": value(2048, "pyiqa fid_arch.py: pool3 features of the FID InceptionV3")}, dtype="F64",
    build=lambda c: {"mu": ((c["dims"],), "F64"), "sigma": ((c["dims"], c["dims"]), "F64")},
    notes=("np.load(path): stats['mu'], stats['sigma'] (fid_arch.py)",), manifest_dir=MANIFEST_DIR)
MUSIQ = _part(
    "pyiqa-musiq-koniq", "MUSIQ KonIQ-10k (musiq, Tables II-VI)", iqa.MUSIQ_W[0], "torch_state_dict",
    _code("pyiqa/archs/musiq_arch.py", "MUSIQ"),
    {"num_class": value(1, "pyiqa default_model_configs 'musiq': pretrained 'koniq10k' (one MOS output)")}, musiq_tensors)
MANIQA = _part(
    "pyiqa-maniqa-koniq", "MANIQA KonIQ-10k, ViT-B/8 inside (maniqa, Tables II-VI)", iqa.MANIQA_W[0],
    "torch_state_dict", _code("pyiqa/archs/maniqa_arch.py", "MANIQA"),
    {"train_dataset": value("koniq", "pyiqa default_model_configs 'maniqa'"),
     "scale": value(0.8, "pyiqa default_model_configs 'maniqa'")}, maniqa_tensors,
    notes=("the checkpoint carries the timm ViT-B/8 (vit.*) it was fine-tuned with: loaded strict",))
CLIPIQA_CTX = Part(
    name="pyiqa-clipiqa-plus-prompts", title="CLIP-IQA+ learned prompt context (clipiqa_plus, Tables II-VI)",
    weight=iqa.CLIPIQA_W[0], layout="torch_tensor", subfolder="", code=_code("pyiqa/archs/clipiqa_arch.py", "PromptLearner"),
    config={"num_prompts": value(2, "clipiqa_arch.py PromptLearner: 'Good photo..', 'Bad photo..'"),
            "n_ctx": value(16, "clipiqa_arch.py PromptLearner default n_ctx=16"),
            "ctx_dim": value(512, "CLIP RN50 text width (token_embedding 49408 x 512)")},
    dtype="F32", build=lambda c: {"ctx": ((c["num_prompts"], c["n_ctx"], c["ctx_dim"]), "F32")},
    notes=("one tensor, assigned to prompt_learner.ctx.data (clipiqa_arch.py)",
           "its RN50.pt backbone is TorchScript: checked by its pinned sha256, not by manifest"),
    manifest_dir=MANIFEST_DIR)
def _topiq(name: str, title: str, weight: WeightFile, preset: str, backbone: str, model_name: str, size: int) -> Part:
    """A CFANet face checkpoint; its config values are pyiqa's ``default_model_configs[preset]``."""
    src = f"pyiqa default_model_configs '{preset}'"
    return _part(name, title, weight, "torch_state_dict", _code("pyiqa/archs/topiq_arch.py", "CFANet"),
                 {"semantic_model_name": value(backbone, src), "model_name": value(model_name, src),
                  "test_img_size": value(size, src)},
                 cfanet_tensors, state_key="params", notes=("load_pretrained_network(..., weight_keys='params')",))


TOPIQ_FACE = _topiq("pyiqa-topiq-face-res50", "TOPIQ-NR face, ResNet-50 (topiq_face, Table VI)", iqa.TOPIQ_FACE_W[0],
                    "topiq_nr-face", "resnet50", "topiq_nr_cgfiqa_res50", 512)
TOPIQ_SWIN_FACE = _topiq("pyiqa-topiq-face-swin", "TOPIQ-NR face, Swin-B 384 (topiq_swin_face, Table VI)",
                         iqa.TOPIQ_SWIN_FACE_W[0], "topiq_nr_swin-face", "swin_base_patch4_window12_384",
                         "topiq_nr_cgfiqa_swin", 384)
RETINAFACE = _part(
    "facexlib-retinaface-r50", "facexlib RetinaFace ResNet-50 (face detection for topiq_face)", iqa.FACE_HELPER_W[0],
    "torch_state_dict", _code("facexlib/detection/retinaface.py", "RetinaFace", "xinntao/facexlib"), {},
    retinaface_tensors, notes=("init_detection_model strips 'module.' and loads strict",))
PARSENET = _part(
    "facexlib-parsenet", "facexlib ParseNet 512 (face parsing for topiq_face)", iqa.FACE_HELPER_W[1],
    "torch_state_dict", _code("facexlib/parsing/parsenet.py", "ParseNet", "xinntao/facexlib"),
    {"in_size": value(512, "facexlib init_parsing_model('parsenet')"),
     "parsing_ch": value(19, "facexlib init_parsing_model('parsenet')")}, parsenet_tensors)

METRIC_PARTS: tuple[Part, ...] = (LPIPS_LIN, ALEXNET, FID_INCEPTION, FFHQ_STATS, MUSIQ, MANIQA, CLIPIQA_CTX,
                                  TOPIQ_FACE, TOPIQ_SWIN_FACE, RETINAFACE, PARSENET)
PARTS: dict[str, Part] = {p.name: p for p in METRIC_PARTS}
