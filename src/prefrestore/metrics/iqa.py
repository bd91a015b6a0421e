"""pyiqa-backed metrics of the paper's tables: LPIPS, FID (HQ and FFHQ), MUSIQ, CLIPIQA+, MANIQA,
topiq_nr-face and topiq_nr_swin-face (SPEC 4; Tables II-VI, "implemented with IQA-PyTorch").

pyiqa fetches missing weights from the network on first use. Here nothing may be downloaded, so
each metric declares every file pyiqa (and timm, torchvision, facexlib underneath it) would load,
under the exact names pyiqa expects in ``$TORCH_HOME/hub/pyiqa``; presence is checked before a
metric is built, and the build runs under :func:`no_downloads` as a second guard.

FID is computed in one streaming pass (features of each image as it goes by) with pyiqa's own
Inception network, clean-fid resize and Frechet distance, against the HQ images of a paired
benchmark (FID(HQ)) or pyiqa's FFHQ statistics (``dataset_name='FFHQ', dataset_res=512,
dataset_split='trainval70k'``, FID(FFHQ)).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from prefrestore.core.weights import MissingWeights, WeightFile, root_dir
from prefrestore.metrics.base import BuildContext, MeanScorer, MetricSpec, no_downloads

_HF = "https://huggingface.co/chaofengc/IQA-PyTorch-Weights/resolve/main"
_FX = "https://github.com/xinntao/facexlib/releases/download"


def _pyiqa(file: str, used_by: str, sha256: str | None = None) -> WeightFile:
    return WeightFile(f"pyiqa/{file}", "torch", f"hub/pyiqa/{file}", sha256, used_by, f"{_HF}/{file}")


LPIPS_W = (
    _pyiqa("LPIPS_v0.1_alex-df73285e.pth", "lpips"),
    WeightFile("torchvision/alexnet", "torch", "hub/checkpoints/alexnet-owt-7be5be79.pth", None, "lpips",
               "https://download.pytorch.org/models/alexnet-owt-7be5be79.pth"),
)
INCEPTION_W = (_pyiqa("pt_inception-2015-12-05-6726825d.pth", "fid"),)
FFHQ_STATS_W = (_pyiqa("ffhq_clean_trainval70k_512.npz", "fid_ffhq"),)
MUSIQ_W = (_pyiqa("musiq_koniq_ckpt-e95806b9.pth", "musiq"),)
MANIQA_W = (
    _pyiqa("ckpt_koniq10k.pt", "maniqa"),
    WeightFile("timm/vit_base_patch8_224", "hf", "hub/models--timm--vit_base_patch8_224.augreg2_in21k_ft_in1k",
               None, "maniqa", "hf:timm/vit_base_patch8_224.augreg2_in21k_ft_in1k"),
)
CLIPIQA_W = (
    # pyiqa saves under the URL's basename, which is percent-encoded: '+' is '%2B' on disk
    _pyiqa("CLIP-IQA%2B_learned_prompts-603f3273.pth", "clipiqa_plus"),
    WeightFile("clip/RN50", "torch", "hub/clip/RN50.pt",
               "afeb0e10f9e5a86da6080e35cf09123aca3b358a0c3e3b6c78a7b63bc04b6762", "clipiqa_plus",
               "https://openaipublic.azureedge.net/clip/models/"
               "afeb0e10f9e5a86da6080e35cf09123aca3b358a0c3e3b6c78a7b63bc04b6762/RN50.pt"),
)
FACE_HELPER_W = (  # facexlib RetinaFace + ParseNet, loaded by pyiqa's CFANet from hub/pyiqa
    WeightFile("pyiqa/detection_Resnet50_Final.pth", "torch", "hub/pyiqa/detection_Resnet50_Final.pth", None,
               "topiq_face", f"{_FX}/v0.1.0/detection_Resnet50_Final.pth"),
    WeightFile("pyiqa/parsing_parsenet.pth", "torch", "hub/pyiqa/parsing_parsenet.pth", None,
               "topiq_face", f"{_FX}/v0.2.2/parsing_parsenet.pth"),
)
TOPIQ_FACE_W = (_pyiqa("topiq_nr_cgfiqa_res50-0a8b8e4f.pth", "topiq_face"), *FACE_HELPER_W)
TOPIQ_SWIN_FACE_W = (
    _pyiqa("topiq_nr_gfiqa_swin-7bb80a60.pth", "topiq_swin_face"),
    WeightFile("swin/swin_base_patch4_window12_384_22kto1k", "torch",
               "hub/checkpoints/swin_base_patch4_window12_384_22kto1k.pth", None, "topiq_swin_face",
               "https://github.com/SwinTransformer/storage/releases/download/v1.0.0/"
               "swin_base_patch4_window12_384_22kto1k.pth"),
    *FACE_HELPER_W,
)

WEIGHTS: tuple[WeightFile, ...] = (
    *LPIPS_W, *INCEPTION_W, *FFHQ_STATS_W, *MUSIQ_W, *MANIQA_W, *CLIPIQA_W, *TOPIQ_FACE_W,
    *TOPIQ_SWIN_FACE_W[:2],
)


def check_pyiqa_cache() -> Path:
    """pyiqa fixed its weight folder at import; it must be the one we checked."""
    from pyiqa.utils import download_util

    expected = root_dir("torch") / "hub" / "pyiqa"
    actual = Path(download_util.DEFAULT_CACHE_DIR)
    if actual.resolve() != expected.resolve():
        raise MissingWeights(
            f"pyiqa reads weights from {actual} (fixed when it was imported) but $TORCH_HOME says {expected}; "
            "set TORCH_HOME before anything imports pyiqa"
        )
    return expected


def assert_tensor_only(paths: tuple[WeightFile, ...]) -> None:
    """pyiqa loads checkpoints with ``torch.load(weights_only=False)``; refuse any that hold code.

    Loading them first with ``weights_only=True`` proves they contain only tensors and plain data.
    """
    from prefrestore.core.weights import local_path

    for w in paths:
        p = local_path(w)
        if p.suffix in (".pth", ".pt") and w.name != "clip/RN50":  # RN50.pt is TorchScript, sha-checked
            try:
                torch.load(p, map_location="cpu", weights_only=True)
            except Exception as exc:
                raise MissingWeights(f"{p} is not a plain tensor checkpoint; refusing to load it: {exc}") from exc


def create_pyiqa(name: str, ctx: BuildContext, weights: tuple[WeightFile, ...], **opts):
    """``pyiqa.create_metric`` after the presence, location and safety checks, with downloads refused."""
    check_pyiqa_cache()
    assert_tensor_only(weights)
    import pyiqa

    with no_downloads():
        return pyiqa.create_metric(name, device=ctx.device, **opts)


def _pyiqa_spec(name: str, pyiqa_name: str, label: str, fr: bool, lower: bool,
                weights: tuple[WeightFile, ...], per_image: bool = False, **opts) -> MetricSpec:
    def build(ctx: BuildContext) -> MeanScorer:
        metric = create_pyiqa(pyiqa_name, ctx, weights, **opts)

        def score(restored, hq, captions):
            x = restored.to(ctx.device)
            y = hq.to(ctx.device) if fr else None
            if per_image:  # topiq face metrics align one face at a time (pyiqa: batch size 1)
                return torch.cat([metric(x[i : i + 1]).reshape(1) for i in range(x.shape[0])])
            return (metric(x, y) if fr else metric(x)).reshape(-1)

        return MeanScorer(score)

    return MetricSpec(name, label, fr, False, lower, weights, build)


def clean_resize_299(x: torch.Tensor) -> torch.Tensor:
    """clean-fid preprocessing: each channel resized to 299x299 with PIL bicubic on float32 0-255."""
    from PIL import Image

    out = []
    for img in (x.detach().float().cpu().clamp(0, 1) * 255.0).numpy():
        chans = [np.asarray(Image.fromarray(c.astype(np.float32), mode="F").resize((299, 299), Image.BICUBIC))
                 .clip(0, 255) for c in img]
        out.append(np.stack(chans, 0))
    return torch.from_numpy(np.stack(out, 0).astype(np.float32))


class StreamingFID:
    """FID between the restored images and either the HQ images (seen batch by batch) or FFHQ stats."""

    def __init__(self, ctx: BuildContext, against: str):
        check_pyiqa_cache()
        assert_tensor_only(INCEPTION_W)
        from pyiqa.archs import fid_arch

        self._fid_arch = fid_arch
        with no_downloads():
            self.model = fid_arch.FID().model.to(ctx.device).eval()
            if against == "ffhq":
                self.ref = fid_arch.get_reference_statistics("ffhq", ctx.fid_dataset_res, "clean",
                                                            ctx.fid_dataset_split)
        self.device = ctx.device
        self.against = against
        self.feats: list[np.ndarray] = []
        self.ref_feats: list[np.ndarray] = []

    def fresh(self) -> StreamingFID:
        new = object.__new__(StreamingFID)
        new.__dict__.update(self.__dict__)
        new.feats, new.ref_feats = [], []
        return new

    def _features(self, x: torch.Tensor) -> np.ndarray:
        batch = (clean_resize_299(x).to(self.device) - 128.0) / 128.0
        with torch.no_grad():
            feat = self.model(batch, False, False)[0]
        return feat.reshape(feat.shape[0], -1).cpu().numpy().astype(np.float64)

    def update(self, restored, hq, captions):
        self.feats.append(self._features(restored))
        if self.against == "hq":
            self.ref_feats.append(self._features(hq))
        return None

    def finish(self) -> float:
        feats = np.concatenate(self.feats)
        if feats.shape[0] < 2:
            raise ValueError("FID needs at least two images")
        mu, sigma = feats.mean(0), np.cov(feats, rowvar=False)
        if self.against == "hq":
            ref = np.concatenate(self.ref_feats)
            mu_r, sigma_r = ref.mean(0), np.cov(ref, rowvar=False)
        else:
            mu_r, sigma_r = self.ref
        return float(self._fid_arch.frechet_distance(mu, sigma, mu_r, sigma_r))


SPECS: tuple[MetricSpec, ...] = (
    _pyiqa_spec("lpips", "lpips", "LPIPS", True, True, LPIPS_W),
    MetricSpec("fid_hq", "FID(HQ)", True, False, True, INCEPTION_W, lambda ctx: StreamingFID(ctx, "hq")),
    MetricSpec("fid_ffhq", "FID(FFHQ)", False, False, True, INCEPTION_W + FFHQ_STATS_W,
               lambda ctx: StreamingFID(ctx, "ffhq")),
    _pyiqa_spec("musiq", "musiq", "MUSIQ", False, False, MUSIQ_W),
    _pyiqa_spec("clipiqa_plus", "clipiqa+", "CLIPIQA+", False, False, CLIPIQA_W),
    _pyiqa_spec("maniqa", "maniqa", "MANIQA", False, False, MANIQA_W),
    # backbone_pretrain=False: the CFANet checkpoint (strict load) already holds the ResNet50 weights
    _pyiqa_spec("topiq_face", "topiq_nr-face", "topiq", False, False, TOPIQ_FACE_W, per_image=True,
                backbone_pretrain=False),
    _pyiqa_spec("topiq_swin_face", "topiq_nr_swin-face", "topiq-swin", False, False, TOPIQ_SWIN_FACE_W,
                per_image=True),
)
