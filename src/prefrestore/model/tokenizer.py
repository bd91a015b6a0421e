"""TA-Tok-style semantic tokenizer: SigLIP2 vision tower -> hidden layer -2 -> task layer -> VQ (SPEC §2).

Paper Sec. V-A: the LQ image is resized to 384x384 and turned into 729 discrete ids from a
65,536-entry visual vocabulary ``V_img`` (Eq. 8's ``s_i``). The vision tower is transformers'
``SiglipVisionModel``: the fixed-resolution SigLIP2 checkpoint TA-Tok uses
(``google/siglip2-so400m-patch14-384``) is published with ``model_type: siglip`` and loads into the
SigLIP classes; ``Siglip2VisionModel`` is the NaFlex (variable-resolution, pre-patchified input)
variant and does not load that checkpoint. The quantiser is plain L2-nearest-code lookup, so
tokenisation is deterministic. It is frozen in stages 1.1/1.2/2; :meth:`vq_loss` and
:meth:`kmeans_init` exist only to bootstrap a tiny codebook from scratch.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn
from transformers import SiglipVisionConfig, SiglipVisionModel

from prefrestore.core.atomic import write_json
from prefrestore.model.config import TokenizerConfig

SIGLIP_MEAN = 0.5  # SigLIP normalises [0, 1] pixels with mean 0.5, std 0.5 -> [-1, 1]
SIGLIP_STD = 0.5


def vision_config(cfg: TokenizerConfig) -> SiglipVisionConfig:
    return SiglipVisionConfig(
        hidden_size=cfg.hidden_size,
        intermediate_size=cfg.intermediate_size,
        num_hidden_layers=cfg.num_layers,
        num_attention_heads=cfg.num_heads,
        image_size=cfg.image_size,
        patch_size=cfg.patch_size,
        vision_use_head=False,
    )


class SemanticTokenizer(nn.Module):
    """Images ``[B, 3, H, W]`` in [0, 1] -> semantic ids ``[B, N]`` (N = (image_size / patch)^2)."""

    def __init__(self, cfg: TokenizerConfig, vision: SiglipVisionModel | None = None) -> None:
        super().__init__()
        self.cfg = cfg
        self.vision = vision if vision is not None else SiglipVisionModel(vision_config(cfg))
        # encode_task_layer: maps SigLIP features to the codebook space
        self.encode_task_layer = nn.Sequential(
            nn.Linear(cfg.hidden_size, cfg.hidden_size), nn.Tanh(), nn.Linear(cfg.hidden_size, cfg.code_dim)
        )
        self.codebook = nn.Parameter(torch.randn(cfg.codebook_size, cfg.code_dim) / cfg.code_dim**0.5)

    def preprocess(self, images: torch.Tensor) -> torch.Tensor:
        """[0, 1] images of any size -> SigLIP input at ``image_size``, normalised to [-1, 1]."""
        if images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"expected images [B, 3, H, W], got {tuple(images.shape)}")
        size = self.cfg.image_size
        x = images.float()
        if x.shape[-2:] != (size, size):
            x = F.interpolate(x, size=(size, size), mode="bicubic", align_corners=False, antialias=True)
        x = (x.clamp(0, 1) - SIGLIP_MEAN) / SIGLIP_STD
        return x.to(self.codebook.dtype)

    def features(self, images: torch.Tensor) -> torch.Tensor:
        """Pre-quantisation features ``[B, N, code_dim]`` (hidden layer ``feature_layer`` + task layer)."""
        out = self.vision(pixel_values=self.preprocess(images), output_hidden_states=True)
        return self.encode_task_layer(out.hidden_states[self.cfg.feature_layer])

    def quantize(self, feats: torch.Tensor, chunk: int = 4096) -> torch.Tensor:
        """Nearest code per vector (L2; cosine with ``codebook_l2_norm``): ``[B, N, D] -> ids [B, N]`` (chunked; 65,536 codes fit)."""
        flat = feats.detach().reshape(-1, feats.shape[-1]).float()
        book = self.codebook.detach().float()
        if self.cfg.codebook_l2_norm:  # TA-Tok SimVQ with l2_normalized: nearest by cosine
            flat, book = F.normalize(flat, dim=-1), F.normalize(book, dim=-1)
        book_sq = (book * book).sum(-1)
        ids = []
        for rows in flat.split(chunk):
            # ||f - c||^2 = ||f||^2 - 2 f.c + ||c||^2; ||f||^2 is constant per row
            ids.append((book_sq[None, :] - 2.0 * rows @ book.T).argmin(-1))
        return torch.cat(ids).reshape(feats.shape[:-1])

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.quantize(self.features(images))

    def vq_loss(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Bootstrap only (VQ-VAE objective): ``(ids, ||sg(f) - c||^2 + beta ||f - sg(c)||^2)``."""
        feats = self.features(images)
        ids = self.quantize(feats)
        codes = self.codebook[ids]
        codebook_term = F.mse_loss(codes, feats.detach())
        commitment = F.mse_loss(feats, codes.detach())
        return ids, codebook_term + self.cfg.commitment_beta * commitment

    @torch.no_grad()
    def kmeans_init(self, images: torch.Tensor, iters: int, seed: int) -> None:
        """Bootstrap only: set the codebook to k-means centroids of the features of ``images``."""
        feats = self.features(images).reshape(-1, self.cfg.code_dim).float()
        k = self.cfg.codebook_size
        g = torch.Generator().manual_seed(seed)
        pick = torch.randint(0, feats.shape[0], (k,), generator=g)
        centroids = feats[pick].clone()
        for _ in range(iters):
            assign = torch.cdist(feats, centroids).argmin(-1)
            sums = torch.zeros_like(centroids).index_add_(0, assign, feats)
            counts = torch.bincount(assign, minlength=k).float()
            filled = counts > 0
            centroids[filled] = sums[filled] / counts[filled, None]
        self.codebook.copy_(centroids.to(self.codebook.dtype))

    # --- save / load (HF-style: vision/ + quantizer.safetensors + config.json) ---
    def save_pretrained(self, path: Path) -> None:
        path.mkdir(parents=True, exist_ok=True)
        self.vision.save_pretrained(path / "vision", safe_serialization=True)
        state = {f"encode_task_layer.{k}": v.contiguous() for k, v in self.encode_task_layer.state_dict().items()}
        state["codebook"] = self.codebook.detach().contiguous()
        save_file(state, str(path / "quantizer.safetensors"))
        write_json(path / "config.json", {"component": "ta_tok_quantizer", "codebook_size": self.cfg.codebook_size,
                                          "code_dim": self.cfg.code_dim, "feature_layer": self.cfg.feature_layer})

    @classmethod
    def from_pretrained(cls, path: Path, cfg: TokenizerConfig) -> SemanticTokenizer:
        meta = json.loads((path / "config.json").read_text(encoding="utf-8"))
        if (meta["codebook_size"], meta["code_dim"]) != (cfg.codebook_size, cfg.code_dim):
            raise ValueError(f"{path}: codebook {meta['codebook_size']}x{meta['code_dim']} does not match config")
        vision = SiglipVisionModel.from_pretrained(path / "vision", local_files_only=True)
        tok = cls(cfg, vision=vision)
        state = load_file(str(path / "quantizer.safetensors"))
        tok.codebook.data.copy_(state.pop("codebook"))
        tok.encode_task_layer.load_state_dict({k.removeprefix("encode_task_layer."): v for k, v in state.items()})
        return tok
