"""The paper's captioner: Qwen2.5-VL-32B-Instruct, loaded offline (Appendix D).

- Loading: :func:`load` takes a local model directory or a hub id. A hub id is resolved in the
  ``$HF_HOME`` hub cache with ``local_files_only=True``; nothing is downloaded.
- Missing files: a directory that lacks a file the model needs raises
  :class:`~prefrestore.core.weights.MissingWeights`, naming the file. That includes a safetensors
  shard listed in the index. There is no fallback to a random model: random models come only
  from :func:`build_tiny`, which tests call explicitly.
- ``trust_remote_code`` is never passed. The classes are transformers' own
  ``Qwen2_5_VLForConditionalGeneration`` and ``AutoProcessor``.
- Generation is batched with left padding, so every row's new tokens start at the same column.
  Greedy decoding by default. bf16 on CUDA, fp32 on CPU.
- The prompt is the Appendix D prompt, passed in from ``params.yaml`` ``caption.system_prompt``.
  ``caption.prompt_role`` puts it in the system turn or beside the image in the user turn.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from prefrestore.core.weights import MissingWeights, WeightFile, require, root_dir

DEFAULT_MODEL = "Qwen/Qwen2.5-VL-32B-Instruct"


def hub_weight(model_id: str) -> WeightFile:
    """A hub id's snapshot folder in the ``hf`` root (the hub cache layout)."""
    org_name = model_id.replace("/", "--")
    return WeightFile(
        name=f"hf/{model_id}",
        root="hf",
        relpath=f"hub/models--{org_name}",
        sha256=None,
        used_by="caption (qwen2_5_vl backend)",
        source=f"https://huggingface.co/{model_id}",
    )


WEIGHTS: tuple[WeightFile, ...] = (hub_weight(DEFAULT_MODEL),)

# Each group needs at least one of its files in the model directory.
REQUIRED_FILES: tuple[tuple[str, ...], ...] = (
    ("config.json",),
    ("preprocessor_config.json", "processor_config.json"),
    ("tokenizer.json", "tokenizer_config.json"),
    ("model.safetensors", "model.safetensors.index.json"),
)


@dataclasses.dataclass(frozen=True)
class GenerationSettings:
    """Decoding settings of one attempt (greedy first, sampling on a retry)."""

    max_new_tokens: int  # cap on generated tokens per caption
    do_sample: bool  # False: greedy
    temperature: float  # sampling temperature (ignored when greedy)
    top_p: float  # nucleus mass (ignored when greedy)
    seed: int  # torch seed set before a sampled batch


def check_model_dir(path: Path) -> Path:
    """Raise :class:`MissingWeights` naming the first absent file; return ``path``."""
    if not path.is_dir():
        raise MissingWeights(f"caption model directory does not exist: {path}")
    for group in REQUIRED_FILES:
        if not any((path / name).is_file() for name in group):
            raise MissingWeights(
                f"caption model directory {path} lacks {' or '.join(group)} "
                f"(a Qwen2.5-VL directory saved with save_pretrained, safetensors weights)"
            )
    index = path / "model.safetensors.index.json"
    if index.is_file() and not (path / "model.safetensors").is_file():
        shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        for shard in shards:
            if not (path / shard).is_file():
                raise MissingWeights(f"caption model directory {path} lacks weight shard {shard} (listed in {index.name})")
    return path


def resolve_model_dir(model: str) -> Path:
    """A local directory as given, or a hub id's cached snapshot (offline). Checked for files."""
    local = Path(model).expanduser()
    if local.is_dir() or model.startswith((".", "/", "~")):
        return check_model_dir(local)
    require(hub_weight(model))  # the repo folder exists in the hub cache, else MissingWeights
    from huggingface_hub import snapshot_download

    try:
        snapshot = Path(snapshot_download(model, cache_dir=root_dir("hf") / "hub", local_files_only=True))
    except Exception as exc:  # the hub raises several kinds; all mean "not cached"
        raise MissingWeights(f"caption model {model!r}: no complete snapshot in the local hub cache ({exc})") from exc
    return check_model_dir(snapshot)


def pick_device_dtype(device: str, dtype: str) -> tuple[torch.device, torch.dtype]:
    """``auto`` picks CUDA + bf16 when present, else CPU + fp32."""
    dev = torch.device("cuda" if torch.cuda.is_available() else "cpu") if device == "auto" else torch.device(device)
    if dtype == "auto":
        return dev, torch.bfloat16 if dev.type == "cuda" else torch.float32
    return dev, {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}[dtype]


class QwenCaptioner:
    """Batched captioning with a Qwen2.5-VL model and its processor."""

    name = "qwen2_5_vl"
    needs_pixels = True

    def __init__(self, model: Any, processor: Any, prompt: str, prompt_role: str, device: torch.device) -> None:
        self.model = model
        self.processor = processor
        self.processor.tokenizer.padding_side = "left"  # new tokens start at one column for every row
        self.prompt = prompt
        self.prompt_role = prompt_role
        self.device = device

    def messages(self) -> list[dict[str, Any]]:
        """The chat: Appendix D's prompt in the system turn (or the user turn), the face in the user turn."""
        image = {"type": "image"}
        if self.prompt_role == "system":
            return [
                {"role": "system", "content": [{"type": "text", "text": self.prompt}]},
                {"role": "user", "content": [image]},
            ]
        return [{"role": "user", "content": [image, {"type": "text", "text": self.prompt}]}]

    def caption(self, images: Sequence[np.ndarray], settings: GenerationSettings) -> list[str]:
        """One caption per ``uint8 [H, W, 3]`` image; the batch is left-padded and decoded at once."""
        if not images:
            return []
        new_tokens = self.generate_ids(images, settings)
        return [t.strip() for t in self.processor.batch_decode(new_tokens, skip_special_tokens=True)]

    @torch.inference_mode()
    def generate_ids(self, images: Sequence[np.ndarray], settings: GenerationSettings) -> torch.Tensor:
        """The new token ids ``[B, T]`` of one left-padded batch (what :meth:`caption` decodes)."""
        text = self.processor.apply_chat_template(self.messages(), add_generation_prompt=True, tokenize=False)
        pixels = [np.array(im) for im in images]  # writable copies (decoded arrays may be read-only)
        batch = self.processor(text=[text] * len(images), images=pixels, padding=True, return_tensors="pt")
        batch = batch.to(self.device)
        if "pixel_values" in batch:
            batch["pixel_values"] = batch["pixel_values"].to(self.model.dtype)
        kwargs: dict[str, Any] = {"max_new_tokens": settings.max_new_tokens, "do_sample": settings.do_sample}
        if settings.do_sample:
            torch.manual_seed(settings.seed)
            kwargs.update(temperature=settings.temperature, top_p=settings.top_p, top_k=0)
        else:
            kwargs.update(temperature=None, top_p=None, top_k=None)
        out = self.model.generate(**batch, **kwargs)
        return out[:, batch["input_ids"].shape[1] :]


def load(model: str, prompt: str, prompt_role: str, device: str = "auto", dtype: str = "auto") -> QwenCaptioner:
    """Load a Qwen2.5-VL captioner offline from a directory or a cached hub id (see module doc)."""
    from transformers import AutoProcessor, Qwen2_5_VLForConditionalGeneration

    path = resolve_model_dir(model)
    dev, torch_dtype = pick_device_dtype(device, dtype)
    net = Qwen2_5_VLForConditionalGeneration.from_pretrained(
        path, local_files_only=True, use_safetensors=True, dtype=torch_dtype, device_map=str(dev)
    ).eval()
    processor = AutoProcessor.from_pretrained(path, local_files_only=True)
    return QwenCaptioner(net, processor, prompt, prompt_role, dev)


# --------------------------------------------------------------------------- tiny model, for tests

_SPECIAL = ("<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>",
            "<|image_pad|>", "<|video_pad|>")
_CHAT_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}{% else %}"
    "{% for c in message['content'] %}{% if c['type'] == 'image' %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif c['type'] == 'text' %}{{ c['text'] }}{% endif %}{% endfor %}{% endif %}"
    "<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def build_tiny(path: Path, seed: int = 0) -> Path:
    """Save a tiny random-init Qwen2.5-VL and its processor to ``path`` (for tests and benchmarks).

    These are the real classes from small configs. The tokenizer is a character-level vocabulary
    with Qwen's special tokens and a Qwen-style chat template. The image processor keeps images
    small: at most 56x56 pixels, i.e. 4 merged visual tokens. The output text is gibberish.
    """
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

    processor, ids = tiny_processor(max_pixels=56 * 56)
    tokenizer = processor.tokenizer
    config = Qwen2_5_VLConfig(
        text_config={
            "vocab_size": len(tokenizer), "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
            "num_attention_heads": 4, "num_key_value_heads": 2, "max_position_embeddings": 1024,
            "rope_parameters": {"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [1, 1, 2]},
            "bos_token_id": ids["<|endoftext|>"], "eos_token_id": ids["<|im_end|>"],
            "pad_token_id": ids["<|endoftext|>"],
        },
        vision_config={
            "depth": 2, "hidden_size": 32, "intermediate_size": 64, "num_heads": 4, "out_hidden_size": 32,
            "patch_size": 14, "spatial_merge_size": 2, "temporal_patch_size": 2, "window_size": 56,
            "fullatt_block_indexes": [1],
        },
        **special_token_ids(ids),
    )
    torch.manual_seed(seed)
    model = Qwen2_5_VLForConditionalGeneration(config)
    path.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(path)
    processor.save_pretrained(path)
    return path


def special_token_ids(ids: dict[str, int]) -> dict[str, int]:
    """The vision special-token ids a ``Qwen2_5_VLConfig`` takes, from :func:`tiny_processor`'s map."""
    return {"image_token_id": ids["<|image_pad|>"], "video_token_id": ids["<|video_pad|>"],
            "vision_start_token_id": ids["<|vision_start|>"], "vision_end_token_id": ids["<|vision_end|>"]}


def tiny_processor(max_pixels: int) -> tuple[Any, dict[str, int]]:
    """A Qwen2.5-VL processor with a character-level tokenizer, and its special-token ids.

    The tokenizer is a character vocabulary with Qwen's special tokens and a Qwen-style chat
    template; images are resized to at most ``max_pixels`` (multiples of 28, as Qwen's own).
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import (
        PreTrainedTokenizerFast,
        Qwen2_5_VLProcessor,
        Qwen2VLImageProcessor,
        Qwen2VLVideoProcessor,
    )

    vocab = {tok: i for i, tok in enumerate(_SPECIAL)}
    for ch in [chr(c) for c in range(32, 127)] + ["\n"]:
        vocab.setdefault(ch, len(vocab))
    core = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<|endoftext|>"))
    core.pre_tokenizer = pre_tokenizers.Split("", "isolated")
    core.decoder = decoders.Fuse()
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=core, eos_token="<|im_end|>", pad_token="<|endoftext|>",
        additional_special_tokens=list(_SPECIAL[1:]), padding_side="left", chat_template=_CHAT_TEMPLATE,
    )
    pixels = {"min_pixels": 28 * 28, "max_pixels": max_pixels}
    processor = Qwen2_5_VLProcessor(
        image_processor=Qwen2VLImageProcessor(patch_size=14, merge_size=2, temporal_patch_size=2, **pixels),
        tokenizer=tokenizer,
        video_processor=Qwen2VLVideoProcessor(**pixels),
        chat_template=_CHAT_TEMPLATE,
    )
    return processor, {tok: tokenizer.convert_tokens_to_ids(tok) for tok in _SPECIAL}
