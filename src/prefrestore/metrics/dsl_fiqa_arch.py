"""The DSL-FIQA network (Chen et al., "DSL-FIQA: Assessing Facial Image Quality via Dual-Set
Degradation Learning and Landmark-Guided Transformer", CVPR 2024), rebuilt to load the authors'
released ``IQA.pt`` and ``DE.pt`` (github.com/DSL-FIQA/DSL-FIQA, ``models/iqa.py`` and
``models/transformer_decoder.py``).

Module attribute names are the release's, because they are the checkpoints' state-dict keys;
the code is this project's. One crop of ``img_size`` px goes through:

1. a timm ViT (``vit_base_patch16_384`` at the released sizes); the tokens of blocks 6-9
   (class token dropped) are concatenated on channels;
2. MANIQA's head: transposed-attention blocks (``tablock1``), a 1x1 conv, a MANIQA Swin stage,
   again (``tablock2``, ``conv2``, ``swintransformer2``); the TABlock and SwinTransformer are
   pyiqa's own classes, which keep MANIQA's parameter names (the release ships MANIQA's swin.py);
3. ``conv_decoder`` to 256 channels, then three decoder blocks whose queries are the degradation
   encoder's ``8 x 12`` features (nearest-resized to the token count);
4. with landmarks: a NeRF-style encoding of the crop's landmark-index code, an MLP and a sigmoid
   give one extra channel per token;
5. per-token score (ReLU) and weight (sigmoid) heads; the crop's score is ``sum(s*w) / sum(w)``.

Sizes come from :class:`DslFiqaConfig` (released values by default), so tests build tiny ones.
"""

from __future__ import annotations

import dataclasses
from functools import partial

import torch
import torch.nn.functional as F
from torch import nn

DEGRADATION_DIM = 256  # channels of the degradation encoder, and so of the decoder (fixed in the release)
DECODER_HEADS = 8
DECODER_DEPTH = 3
DECODER_MLP_RATIO = 4
DEGRADATION_GRID = (8, 12)  # the encoder's adaptive pool: 96 query tokens


@dataclasses.dataclass(frozen=True)
class DslFiqaConfig:
    """Sizes of the network and of its inference; defaults are the release's ``config.conf``."""

    vit_name: str = "vit_base_patch16_384"  # timm architecture (patch 16 / 384 px in the release)
    img_size: int = 384  # crop side
    patch_size: int = 16
    embed_dim: int = 768  # ViT width; MANIQA stage 1 works at this width, stage 2 at half
    vit_depth: int = 12
    vit_heads: int = 12
    feature_blocks: tuple[int, ...] = (6, 7, 8, 9)  # ViT blocks whose tokens are used
    dim_mlp: int = 768  # Swin MLP hidden size
    num_heads: tuple[int, ...] = (4, 4)  # Swin heads per stage layer
    window_size: int = 4
    depths: tuple[int, ...] = (2, 2)
    num_tab: int = 2  # TABlocks per stage
    scale: float = 0.8  # Swin residual scale
    num_landmark: int = 500  # length of a crop's landmark-index code
    multires: int = 10  # frequencies of the landmark encoding
    use_landmark: bool = True
    add_mlp: bool = False  # the release's ``testmlp`` (built, loaded, unused when False)
    num_crops: int = 20  # random crops per face; the face's score is their mean

    def __post_init__(self) -> None:
        if self.img_size % self.patch_size:
            raise ValueError(f"img_size {self.img_size} is not a multiple of patch_size {self.patch_size}")
        if max(self.feature_blocks) >= self.vit_depth:
            raise ValueError(f"feature_blocks {self.feature_blocks} need a ViT deeper than {self.vit_depth}")
        if self.embed_dim % 2 or len(self.num_heads) != len(self.depths):
            raise ValueError("embed_dim must be even and num_heads must have one entry per Swin layer")

    @property
    def grid(self) -> int:
        """Tokens per side of a crop."""
        return self.img_size // self.patch_size

    @property
    def code_dim(self) -> int:
        """Width of the encoded landmark code: the code itself plus a sine and cosine per frequency."""
        return self.num_landmark * (1 + 2 * self.multires)


def landmark_encoding(code: torch.Tensor, multires: int) -> torch.Tensor:
    """``[..., L]`` -> ``[..., L * (1 + 2 * multires)]``: the code, then sin and cos at 2^0..2^(multires-1).

    Blocks are laid out as the release's NeRF embedder: identity, sin(f0), cos(f0), sin(f1), ...
    """
    freqs = 2.0 ** torch.linspace(0.0, multires - 1, multires)
    parts = [code]
    for f in freqs.tolist():
        parts += [torch.sin(code * f), torch.cos(code * f)]
    return torch.cat(parts, dim=-1)


class DegradationEncoder(nn.Module):
    """``DE.pt``: six conv-BN-LeakyReLU layers (two stride-2) and an adaptive pool to ``8 x 12``.

    ``forward`` gives the ``[B, 8, 12, 256]`` features the IQA net queries with; ``mlp`` is the
    contrastive projection head of Dual-Set Degradation Learning (loaded, unused for scoring).
    """

    def __init__(self) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        c_in = 3
        for c_out, stride in ((64, 1), (64, 1), (128, 2), (128, 1), (DEGRADATION_DIM, 2), (DEGRADATION_DIM, 1)):
            layers += [nn.Conv2d(c_in, c_out, 3, stride, 1), nn.BatchNorm2d(c_out), nn.LeakyReLU(0.1, True)]
            c_in = c_out
        layers.append(nn.AdaptiveAvgPool2d(DEGRADATION_GRID))
        self.E = nn.Sequential(*layers)
        self.mlp = nn.Sequential(nn.Linear(c_in, c_in), nn.LeakyReLU(0.1, True), nn.Linear(c_in, c_in))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.E(x).permute(0, 2, 3, 1)


class _DepthwiseConv(nn.Module):
    """3x3 depthwise conv over a token sequence laid out on an ``h x w`` grid."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.dwconv = nn.Conv2d(dim, dim, 3, 1, 1, groups=dim)

    def forward(self, x: torch.Tensor, h: int, w: int) -> torch.Tensor:
        b, n, c = x.shape
        y = self.dwconv(x.transpose(1, 2).reshape(b, c, h, w))
        return y.flatten(2).transpose(1, 2)


class _ConvMlp(nn.Module):
    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.dwconv = _DepthwiseConv(hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor, h: int, w: int) -> torch.Tensor:
        return self.fc2(self.act(self.dwconv(self.fc1(x), h, w)))


class _QueryAttention(nn.Module):
    """Keys and values from the tokens, queries from the degradation features.

    The ``M`` query tokens are resized (nearest) to the ``N`` image tokens, head by head, so the
    output keeps one row per image token. ``task_query`` is in the checkpoint but not used.
    """

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.q = nn.Linear(dim, dim)
        self.kv = nn.Linear(dim, dim * 2)
        self.proj = nn.Linear(dim, dim)
        self.task_query = nn.Parameter(torch.zeros(1, 1, dim))

    def forward(self, x: torch.Tensor, queries: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape
        d = c // self.heads
        q = self.q(queries).reshape(b, queries.shape[1], self.heads, d).transpose(1, 2)
        k, v = self.kv(x).reshape(b, n, 2, self.heads, d).permute(2, 0, 3, 1, 4)
        q = F.interpolate(q, size=(n, d), mode="nearest")
        out = F.scaled_dot_product_attention(q, k, v)  # softmax(q k^T / sqrt(d)) v
        return self.proj(out.transpose(1, 2).reshape(b, n, c))


class _DecoderBlock(nn.Module):
    def __init__(self, dim: int, heads: int, mlp_ratio: int) -> None:
        super().__init__()
        norm = partial(nn.LayerNorm, eps=1e-6)
        self.norm1 = norm(dim)
        self.attn = _QueryAttention(dim, heads)
        self.norm2 = norm(dim)
        self.mlp = _ConvMlp(dim, dim * mlp_ratio)

    def forward(self, x: torch.Tensor, queries: torch.Tensor, h: int, w: int) -> torch.Tensor:
        x = x + self.attn(self.norm1(x), queries)
        return x + self.mlp(self.norm2(x), h, w)


def _head(dim: int, last: nn.Module, drop: float = 0.1) -> nn.Sequential:
    return nn.Sequential(nn.Linear(dim, dim), nn.ReLU(), nn.Dropout(drop), nn.Linear(dim, 1), last)


def _swin(cfg: DslFiqaConfig, dim: int) -> nn.Module:
    from pyiqa.archs.maniqa_swin import SwinTransformer

    # its constructor calls .item(), which a meta-device build cannot: build on the CPU, then move
    with torch.device("cpu"):
        swin = SwinTransformer(patches_resolution=(cfg.grid, cfg.grid), depths=list(cfg.depths),
                               num_heads=list(cfg.num_heads), embed_dim=dim, window_size=cfg.window_size,
                               dim_mlp=cfg.dim_mlp, scale=cfg.scale)
    return swin.to(torch.get_default_device())


class DslFiqaIQA(nn.Module):
    """``IQA.pt``: one normalised crop ``[B, 3, S, S]`` + degradation features + landmark code -> ``[B]``."""

    def __init__(self, cfg: DslFiqaConfig) -> None:
        super().__init__()
        import timm
        from pyiqa.archs.maniqa_arch import TABlock

        self.cfg = cfg
        tokens, dim = cfg.grid**2, cfg.embed_dim
        self.vit = timm.create_model(cfg.vit_name, pretrained=False, img_size=cfg.img_size,
                                     patch_size=cfg.patch_size, embed_dim=dim, depth=cfg.vit_depth,
                                     num_heads=cfg.vit_heads)
        self.tablock1 = nn.ModuleList(TABlock(tokens) for _ in range(cfg.num_tab))
        self.conv1 = nn.Conv2d(dim * len(cfg.feature_blocks), dim, 1)
        self.swintransformer1 = _swin(cfg, dim)
        self.tablock2 = nn.ModuleList(TABlock(tokens) for _ in range(cfg.num_tab))
        self.conv2 = nn.Conv2d(dim, dim // 2, 1)
        self.swintransformer2 = _swin(cfg, dim // 2)
        self.decoder = nn.ModuleList(_DecoderBlock(DEGRADATION_DIM, DECODER_HEADS, DECODER_MLP_RATIO)
                                     for _ in range(DECODER_DEPTH))
        self.conv_decoder = nn.Conv2d(dim // 2, DEGRADATION_DIM, 1)
        d = DEGRADATION_DIM
        self.testmlp = nn.Sequential(nn.Linear(d, d), nn.ReLU(), nn.Dropout(0.1), nn.Linear(d, d), nn.ReLU())
        code = cfg.code_dim
        self.embed_mlp = nn.Sequential(nn.Linear(code, code), nn.ReLU(), nn.Dropout(0.1), nn.Linear(code, tokens),
                                       nn.Sigmoid())
        width = d + int(cfg.use_landmark)
        self.fc_score = _head(width, nn.ReLU())
        self.fc_weight = _head(width, nn.Sigmoid())

    def _stage(self, x: torch.Tensor, tabs: nn.ModuleList, conv: nn.Module, swin: nn.Module) -> torch.Tensor:
        """``[B, C, N]`` tokens -> TABlocks -> 1x1 conv -> Swin -> ``[B, C', g, g]``."""
        for tab in tabs:
            x = tab(x)
        g = self.cfg.grid
        return swin(conv(x.reshape(x.shape[0], -1, g, g)))

    def forward(self, x: torch.Tensor, degradation: torch.Tensor, code: torch.Tensor) -> torch.Tensor:
        cfg = self.cfg
        feats = self.vit.forward_intermediates(x, indices=list(cfg.feature_blocks), output_fmt="NLC",
                                               intermediates_only=True, stop_early=True)
        t = torch.cat(feats, dim=2).transpose(1, 2)  # [B, 4C, N]: the tokens of blocks 6-9, no class token
        t = self._stage(t, self.tablock1, self.conv1, self.swintransformer1)
        t = self._stage(t.flatten(2), self.tablock2, self.conv2, self.swintransformer2)
        t = self.conv_decoder(t).flatten(2).transpose(1, 2)  # [B, N, 256]
        queries = degradation.flatten(1, 2)  # [B, 96, 256]
        for blk in self.decoder:
            t = blk(t, queries, cfg.grid, cfg.grid)
        if cfg.add_mlp:
            t = self.testmlp(t)
        if cfg.use_landmark:
            extra = self.embed_mlp(landmark_encoding(code.float(), cfg.multires))  # [B, N]
            t = torch.cat((t, extra.unsqueeze(-1)), dim=-1)
        score, weight = self.fc_score(t), self.fc_weight(t)
        return (score * weight).sum(dim=(1, 2)) / weight.sum(dim=(1, 2))


class DslFiqa(nn.Module):
    """Both released networks: ``iqa`` (``IQA.pt``) and ``de`` (``DE.pt``); scores normalised crops."""

    def __init__(self, cfg: DslFiqaConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.iqa = DslFiqaIQA(cfg)
        self.de = DegradationEncoder()

    def forward(self, crops: torch.Tensor, code: torch.Tensor) -> torch.Tensor:
        """``crops`` ``[B, 3, S, S]`` in ``(x - 0.5) / 0.5``, ``code`` ``[B, num_landmark]`` -> ``[B]``."""
        return self.iqa(crops, self.de(crops), code)
