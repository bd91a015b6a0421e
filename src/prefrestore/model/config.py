"""Typed config of the ``model`` section of ``params.yaml`` (SPEC §2; paper Sec. V-A).

One frozen dataclass per component. The same dataclasses are written into the model directory's
top-level ``config.json`` so that a saved model carries its own hyperparameters (STYLE §4).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Literal

from prefrestore.core.config import build, check_range

LqCondition = Literal["cross_attn", "concat", "concat_channels"]
ZlowPosition = Literal["none", "sincos2d"]
# random: build from shapes | qwen3_parts: Qwen3-0.6B + TA-Tok + SANA, each from its own release (paper) |
# blip3o_next: BLIP3o-NEXT-SFT-3B + TA-Tok + SANA's DC-AE, as the released code starts (model/weight_map.py)
Init = Literal["random", "qwen3_parts", "blip3o_next"]


@dataclasses.dataclass(frozen=True)
class TokenizerConfig:
    """TA-Tok: SigLIP2 vision tower, hidden layer ``feature_layer``, task layer, nearest-code VQ."""

    image_size: int  # the LQ image is resized to this side for the vision tower
    patch_size: int  # vision patch; (image_size // patch_size)^2 semantic tokens
    hidden_size: int  # vision tower width
    intermediate_size: int  # vision MLP width
    num_layers: int  # vision transformer layers
    num_heads: int  # vision attention heads
    feature_layer: int  # hidden_states index fed to the task layer (-2: second to last)
    code_dim: int  # codebook vector width (output of encode_task_layer)
    codebook_size: int  # number of discrete semantic codes
    codebook_l2_norm: bool  # quantise by cosine: features and codes L2-normalised (TA-Tok SimVQ l2_normalized)
    commitment_beta: float  # VQ commitment weight (only for bootstrapping the codebook)

    def __post_init__(self) -> None:
        if self.image_size < self.patch_size:  # the patch conv floors: 384 // 14 = 27 (SigLIP2-384)
            raise ValueError(f"tokenizer.image_size {self.image_size} < patch {self.patch_size}")
        if self.hidden_size % self.num_heads:
            raise ValueError("tokenizer.hidden_size must be divisible by tokenizer.num_heads")
        check_range("tokenizer.feature_layer", self.feature_layer, -self.num_layers - 1, self.num_layers)
        check_range("tokenizer.codebook_size", self.codebook_size, 2, 1 << 20)
        check_range("tokenizer.commitment_beta", self.commitment_beta, 0.0, 10.0)

    @property
    def grid(self) -> int:
        return self.image_size // self.patch_size

    @property
    def num_tokens(self) -> int:
        return self.grid * self.grid


@dataclasses.dataclass(frozen=True)
class ArConfig:
    """Qwen3 causal LM shapes (paper: Qwen3-0.6B) and the text tokenizer it uses."""

    hidden_size: int  # Qwen3 width H
    intermediate_size: int  # Qwen3 MLP width
    num_layers: int  # decoder layers
    num_heads: int  # attention heads
    num_kv_heads: int  # key/value heads (GQA)
    head_dim: int  # per-head width
    rope_theta: float  # rotary base
    max_position_embeddings: int  # longest sequence
    tie_word_embeddings: bool  # lm_head shares the input embedding
    text_vocab_size: int  # embedding rows before the image/scale tokens are added
    num_scale_tokens: int  # <S0>..<S{n-1}>; <S0> selects the full image_tokens scale
    text_tokenizer: Literal["qwen3", "tiny_wordlevel"]  # qwen3: local store; tiny: built offline

    def __post_init__(self) -> None:
        check_range("ar.num_layers", self.num_layers, 1, 512)
        if self.num_heads % self.num_kv_heads:
            raise ValueError("ar.num_heads must be a multiple of ar.num_kv_heads")
        check_range("ar.num_scale_tokens", self.num_scale_tokens, 1, 16)


@dataclasses.dataclass(frozen=True)
class GeneratorConfig:
    """SANA transformer shapes (paper: SANA-1.5 1.6B)."""

    num_layers: int  # SANA blocks
    num_heads: int  # self-attention heads
    head_dim: int  # self-attention head width; inner width = num_heads * head_dim
    cross_heads: int  # cross-attention heads
    cross_head_dim: int  # cross-attention head width
    caption_channels: int  # width C of the cross-attention tokens (the connectors' output)
    mlp_ratio: float  # Mix-FFN expansion
    qk_norm: Literal["none", "rms_norm_across_heads"]  # SANA-1.5 normalises q/k
    timestep_scale: float  # SANA multiplies the timestep input by this

    def __post_init__(self) -> None:
        check_range("generator.num_layers", self.num_layers, 1, 512)
        check_range("generator.mlp_ratio", self.mlp_ratio, 0.5, 16.0)

    @property
    def inner_dim(self) -> int:
        return self.num_heads * self.head_dim


@dataclasses.dataclass(frozen=True)
class VaeConfig:
    """DC-AE (diffusers ``AutoencoderDC``) shapes and the latent normalisation z = (E(x) - shift) * scale."""

    latent_channels: int  # DC-AE latent channels (32)
    block_out_channels: tuple[int, ...]  # per-stage widths; compression = 2^(stages - 1)
    block_types: tuple[str, ...]  # ResBlock / EfficientViTBlock per stage (encoder and decoder)
    encoder_layers_per_block: tuple[int, ...]  # encoder depth per stage
    decoder_layers_per_block: tuple[int, ...]  # decoder depth per stage
    qkv_multiscales: tuple[tuple[int, ...], ...]  # EfficientViT multi-scale kernels per stage
    attention_head_dim: int  # EfficientViT head width
    upsample_block_type: str  # decoder upsampling (interpolate / pixel_shuffle)
    downsample_block_type: str  # encoder downsampling (Conv / pixel_unshuffle)
    shift_factor: float  # z = (E(x) - shift) * scale
    scaling_factor: float | None  # z = (E(x) - shift) * scale; null: read from the pretrained DC-AE's config.json

    def __post_init__(self) -> None:
        n = len(self.block_out_channels)
        for name in ("block_types", "encoder_layers_per_block", "decoder_layers_per_block", "qkv_multiscales"):
            if len(getattr(self, name)) != n:
                raise ValueError(f"vae.{name} needs {n} entries (one per block_out_channels)")
        if self.scaling_factor is not None:
            check_range("vae.scaling_factor", self.scaling_factor, 1e-4, 1e4)

    @property
    def compression(self) -> int:
        return 2 ** (len(self.block_out_channels) - 1)


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """Params section ``model``: the whole Pref-Restore model (SPEC §2)."""

    image_size: int  # side of the HQ/LQ images the VAE sees (pixels)
    init: Init  # random: build from shapes; qwen3_parts / blip3o_next: public checkpoints from the store
    lq_condition: LqCondition  # how z_low enters SANA: cross_attn tokens, width- or channel-concat latent
    zlow_position: ZlowPosition  # position for z_low cross-attn tokens: none or 2-D sincos
    cond_dropout: float  # CFG: probability of zeroing a sample's condition in training
    connector_norm_init: float  # initial RMSNorm weight of a freshly built connector (BLIP3o-NEXT: sqrt(5.5))
    tokenizer: TokenizerConfig
    ar: ArConfig
    generator: GeneratorConfig
    vae: VaeConfig

    def __post_init__(self) -> None:
        check_range("model.cond_dropout", self.cond_dropout, 0.0, 1.0)
        check_range("model.connector_norm_init", self.connector_norm_init, 1e-3, 1e3)
        if self.init == "random" and self.vae.scaling_factor is None:
            raise ValueError("model.vae.scaling_factor is null, which only a pretrained DC-AE can fill; set it for init: random")
        if self.image_size % self.vae.compression:
            raise ValueError(f"model.image_size {self.image_size} not divisible by VAE f{self.vae.compression}")

    @property
    def latent_size(self) -> int:
        return self.image_size // self.vae.compression

    @property
    def extra_in_channels(self) -> int:
        """Channels SANA's input gains for ``lq_condition: concat_channels`` (the LQ latent)."""
        return self.vae.latent_channels if self.lq_condition == "concat_channels" else 0

    @property
    def num_image_tokens(self) -> int:
        """N: semantic tokens per image (paper: 729)."""
        return self.tokenizer.num_tokens

    @property
    def num_zlow_tokens(self) -> int:
        """L: z_low cross-attention tokens (patch 1 on the latent grid; paper: 256)."""
        return self.latent_size**2 if self.lq_condition == "cross_attn" else 0

    @property
    def num_cond_tokens(self) -> int:
        """Cross-attention tokens: <S0> + N AR states (+ L z_low tokens). Paper: 730 + 256 = 986."""
        return 1 + self.num_image_tokens + self.num_zlow_tokens

    def to_dict(self) -> dict[str, Any]:
        return _plain(dataclasses.asdict(self))

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelConfig:
        return build(cls, data, "model config.json")


def _plain(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {k: _plain(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_plain(v) for v in obj]
    return obj
