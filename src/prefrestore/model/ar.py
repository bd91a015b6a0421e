"""AR semantic integrator: Qwen3 over an extended vocabulary (paper Sec. IV-B.1, Eq. 8, Appendix C).

The text vocabulary is extended with ``<I0>..<I{K-1}>`` (the TA-Tok codes), ``<S0>..<S2>`` (scale
tokens) and ``<im_start>``/``<im_end>``. The prompt is (Appendix C)::

    [<|im_start|>system\\n{system}<|im_end|>\\n]<|im_start|>user\\n{instruction, <image> -> <im_start> <I..>*N <im_end>}<|im_end|>\\n<|im_start|>assistant\\n<im_start><S0>

built with :func:`prefrestore.model.instructions.chat_prompt` (the one home of prompt strings),
after which exactly N HQ image tokens follow (N = 729 in the paper). ``<S0>`` is forced (one scale).
The diffusion connector reads the final hidden states at ``<S0>`` and the N image positions
(``[B, N + 1, H]``; paper: 730). The CE loss of Eq. 10 is taken over the N HQ image tokens.
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm
from transformers import (
    DynamicCache,
    PreTrainedTokenizerBase,
    PreTrainedTokenizerFast,
    Qwen3Config,
    Qwen3ForCausalLM,
    Qwen3Model,
)

from prefrestore.model.config import ArConfig
from prefrestore.model.instructions import CHAT_END, CHAT_START, IMAGE_PLACEHOLDER, chat_prompt
from prefrestore.model.instructions import IMAGE_END as IM_END
from prefrestore.model.instructions import IMAGE_START as IM_START

PAD = "<|endoftext|>"
UNK = "<unk>"
# transformers 5 renamed Qwen3Model.forward's ``past_key_values`` to ``cache``
_CACHE_KW = "cache" if "cache" in inspect.signature(Qwen3Model.forward).parameters else "past_key_values"

# Words of the instruction templates and of typical captions (Appendix D/F-A); everything else
# maps to <unk> in the tiny tokenizer. The paper profile uses Qwen3's real BPE tokenizer instead.
_TINY_WORDS_TEXT = (
    """user assistant system please reconstruct the given image based on content : . , ' a an of and with in is are
    photography portrait person man woman boy girl child young old elderly middle aged adult
    face facial features hair hairstyle color skin tone eyes eye nose mouth lips smile smiling
    expression beard mustache glasses sunglasses earrings hat cap wearing short long curly straight
    wavy blond blonde brown black white gray grey red dark light fair pale tan olive medium
    background blue green looking camera slightly open closed teeth neutral forehead cheeks
    chin eyebrows thick thin bald side parted bangs ponytail shirt collar necklace makeup
    lipstick freckles wrinkles round oval square jaw high cheekbones his her their"""
)
TINY_WORDS = tuple(_TINY_WORDS_TEXT.split())


def image_token(i: int) -> str:
    return f"<I{i}>"


def scale_token(i: int) -> str:
    return f"<S{i}>"


def build_tiny_text_tokenizer(cfg: ArConfig) -> PreTrainedTokenizerFast:
    """An offline word-level tokenizer with exactly ``cfg.text_vocab_size`` base ids (no download)."""
    from tokenizers import Tokenizer, normalizers, pre_tokenizers
    from tokenizers.models import WordLevel

    base = [PAD, CHAT_START, CHAT_END, UNK, IMAGE_PLACEHOLDER, *dict.fromkeys(TINY_WORDS)]
    if len(base) > cfg.text_vocab_size:
        raise ValueError(f"ar.text_vocab_size={cfg.text_vocab_size} < {len(base)} tiny tokenizer words")
    base += [f"<reserved_{i}>" for i in range(cfg.text_vocab_size - len(base))]
    tok = Tokenizer(WordLevel({w: i for i, w in enumerate(base)}, unk_token=UNK))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.Split(pattern=r"<\|im_start\|>|<\|im_end\|>|<image>|\w+|[^\w\s]", behavior="isolated")
    pre = pre_tokenizers.Sequence([pre_tokenizers.WhitespaceSplit(), tok.pre_tokenizer])
    tok.pre_tokenizer = pre
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token=UNK, pad_token=PAD,
                                   additional_special_tokens=[CHAT_START, CHAT_END, IMAGE_PLACEHOLDER])
    return fast


def extend_vocabulary(tokenizer: PreTrainedTokenizerBase, codebook_size: int, num_scale_tokens: int) -> None:
    """Add ``<I0>..``, ``<S0>..``, ``<im_start>``, ``<im_end>`` unless present (BLIP3o-NEXT's tokenizer has them)."""
    wanted = [image_token(i) for i in range(codebook_size)]
    wanted += [scale_token(i) for i in range(num_scale_tokens)] + [IM_START, IM_END]
    vocab = tokenizer.get_vocab()
    missing = [t for t in wanted if t not in vocab]
    if missing:
        tokenizer.add_tokens(missing, special_tokens=True)


def qwen3_config(cfg: ArConfig, vocab_size: int) -> Qwen3Config:
    return Qwen3Config(
        vocab_size=vocab_size,
        hidden_size=cfg.hidden_size,
        intermediate_size=cfg.intermediate_size,
        num_hidden_layers=cfg.num_layers,
        num_attention_heads=cfg.num_heads,
        num_key_value_heads=cfg.num_kv_heads,
        head_dim=cfg.head_dim,
        rope_theta=cfg.rope_theta,
        max_position_embeddings=cfg.max_position_embeddings,
        tie_word_embeddings=cfg.tie_word_embeddings,
    )


class ArIntegrator(nn.Module):
    """Qwen3 LM + its text tokenizer + the ids of the added image/scale/boundary tokens."""

    def __init__(self, cfg: ArConfig, lm: Qwen3ForCausalLM, tokenizer: PreTrainedTokenizerBase,
                 codebook_size: int, num_image_tokens: int) -> None:
        super().__init__()
        self.cfg = cfg
        self.lm = lm
        self.tokenizer = tokenizer
        self.codebook_size = codebook_size
        self.num_image_tokens = num_image_tokens
        ids = tokenizer.convert_tokens_to_ids
        self.image_offset = ids(image_token(0))
        last = ids(image_token(codebook_size - 1))
        if last - self.image_offset != codebook_size - 1:
            raise ValueError(f"image tokens <I0>..<I{codebook_size - 1}> are not contiguous ids in the tokenizer")
        self.scale0_id = ids(scale_token(0))
        self.im_start_id, self.im_end_id = ids(IM_START), ids(IM_END)
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else ids(PAD)
        if len(tokenizer) > lm.get_input_embeddings().num_embeddings:
            raise ValueError(f"tokenizer has {len(tokenizer)} ids but the LM only "
                             f"{lm.get_input_embeddings().num_embeddings} embeddings (resize first)")

    @classmethod
    def build(cls, cfg: ArConfig, codebook_size: int, num_image_tokens: int,
              tokenizer: PreTrainedTokenizerBase | None = None) -> ArIntegrator:
        """Random-init Qwen3 with the extended vocabulary (tiny tokenizer unless one is given)."""
        if tokenizer is None:
            if cfg.text_tokenizer != "tiny_wordlevel":
                raise ValueError("ar.text_tokenizer=qwen3 needs the real Qwen3 tokenizer (init: qwen3_parts or blip3o_next)")
            tokenizer = build_tiny_text_tokenizer(cfg)
        extend_vocabulary(tokenizer, codebook_size, cfg.num_scale_tokens)
        lm = Qwen3ForCausalLM(qwen3_config(cfg, len(tokenizer)))
        return cls(cfg, lm, tokenizer, codebook_size, num_image_tokens)

    @property
    def hidden_size(self) -> int:
        return self.lm.config.hidden_size

    # --- prompts (Appendix C) ---
    def prompt_ids(self, instruction: str, lq_ids: torch.Tensor, system_message: str) -> list[int]:
        """One prompt (:func:`prefrestore.model.instructions.chat_prompt`) with ``<image>`` replaced by
        ``<im_start> <I..>*N <im_end>`` and ``<S0>`` appended after the ``<im_start>`` trigger."""
        if lq_ids.ndim != 1 or lq_ids.numel() != self.num_image_tokens:
            raise ValueError(f"expected {self.num_image_tokens} LQ ids, got shape {tuple(lq_ids.shape)}")
        text = chat_prompt(instruction, IMAGE_PLACEHOLDER, system_message)  # checks: exactly one <image>
        before, after = text.split(IMAGE_PLACEHOLDER)
        encode = lambda part: self.tokenizer(part, add_special_tokens=False)["input_ids"]  # noqa: E731
        image = [self.im_start_id, *(lq_ids.cpu() + self.image_offset).tolist(), self.im_end_id]
        ids = encode(before) + image + encode(after) + [self.scale0_id]
        if ids[-2] != self.im_start_id:
            raise RuntimeError("the text tokenizer did not map the <im_start> trigger to its added token")
        return ids

    def batch_prompts(self, instructions: Sequence[str], lq_ids: torch.Tensor,
                      system_message: str) -> tuple[torch.Tensor, torch.Tensor]:
        """Left-padded ``(input_ids, attention_mask)`` ``[B, T]`` for a batch of prompts."""
        if len(instructions) != lq_ids.shape[0]:
            raise ValueError(f"{len(instructions)} instructions for {lq_ids.shape[0]} images")
        rows = [self.prompt_ids(text, ids, system_message) for text, ids in zip(instructions, lq_ids, strict=True)]
        width = max(map(len, rows))
        device = self.lm.device
        input_ids = torch.full((len(rows), width), self.pad_id, dtype=torch.long, device=device)
        mask = torch.zeros((len(rows), width), dtype=torch.long, device=device)
        for i, row in enumerate(rows):
            input_ids[i, width - len(row):] = torch.tensor(row, device=device)
            mask[i, width - len(row):] = 1
        return input_ids, mask

    # --- training: teacher forcing ---
    def forward_train(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                      hq_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Teacher-forced pass on prompt + HQ codes: ``(CE over the N HQ tokens (Eq. 10), hidden [B, N+1, H])``."""
        n = self.num_image_tokens
        if hq_ids.shape != (input_ids.shape[0], n):
            raise ValueError(f"hq_ids must be [B, {n}], got {tuple(hq_ids.shape)}")
        full = torch.cat([input_ids, hq_ids.to(input_ids.device) + self.image_offset], dim=1)
        mask = torch.cat([attention_mask, torch.ones_like(hq_ids, device=attention_mask.device)], dim=1)
        hidden = self.lm.model(input_ids=full, attention_mask=mask,
                               position_ids=_positions(mask), use_cache=False).last_hidden_state
        hidden = hidden[:, -(n + 1):]  # <S0> and the N HQ image positions
        logits = self.lm.lm_head(hidden[:, :-1])  # position k predicts HQ token k
        loss = F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]),
                               (hq_ids.to(logits.device) + self.image_offset).reshape(-1))
        return loss, hidden

    # --- inference: constrained generation with a KV cache ---
    @torch.no_grad()
    def generate(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, greedy: bool,
                 top_p: float = 1.0, top_k: int = 0, temperature: float = 1.0,
                 generator: torch.Generator | None = None, progress: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        """Exactly N image tokens after ``<S0>``: ``(codes [B, N] in [0, K), hidden [B, N+1, H])``.

        Logits are restricted to ``<I0>..<I{K-1}>``. Greedy is argmax; otherwise temperature, then
        top-k (0: off) and top-p (nucleus) filtering, drawn with ``generator``.
        """
        n, k0 = self.num_image_tokens, self.image_offset
        cache = DynamicCache()
        mask = attention_mask
        out = self.lm.model(input_ids=input_ids, attention_mask=mask, position_ids=_positions(mask),
                            use_cache=True, **{_CACHE_KW: cache})
        h = out.last_hidden_state[:, -1]
        hiddens, codes = [h], []
        position = _positions(mask)[:, -1:]
        for _ in tqdm(range(n), desc="ar.generate", disable=not progress, leave=False):
            logits = self.lm.lm_head(h)[:, k0:k0 + self.codebook_size].float()
            code = logits.argmax(-1) if greedy else _sample(logits, top_p, top_k, temperature, generator)
            codes.append(code)
            mask = torch.cat([mask, torch.ones_like(mask[:, :1])], dim=1)
            position = position + 1
            out = self.lm.model(input_ids=(code + k0)[:, None], attention_mask=mask, position_ids=position,
                                use_cache=True, **{_CACHE_KW: cache})
            h = out.last_hidden_state[:, -1]
            hiddens.append(h)
        return torch.stack(codes, 1), torch.stack(hiddens, 1)

    # --- save / load ---
    def save_pretrained(self, path: Path) -> None:
        self.lm.save_pretrained(path, safe_serialization=True)
        self.tokenizer.save_pretrained(path)

    @classmethod
    def from_pretrained(cls, path: Path, cfg: ArConfig, codebook_size: int, num_image_tokens: int) -> ArIntegrator:
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True, trust_remote_code=False)
        extend_vocabulary(tokenizer, codebook_size, cfg.num_scale_tokens)
        lm = Qwen3ForCausalLM.from_pretrained(path, local_files_only=True, trust_remote_code=False)
        if len(tokenizer) > lm.get_input_embeddings().num_embeddings:
            lm.resize_token_embeddings(len(tokenizer))
        return cls(cfg, lm, tokenizer, codebook_size, num_image_tokens)


def _positions(mask: torch.Tensor) -> torch.Tensor:
    """Position ids for a left-padded batch: 0 at each row's first real token."""
    return (mask.long().cumsum(-1) - 1).clamp(min=0)


def _sample(logits: torch.Tensor, top_p: float, top_k: int, temperature: float,
            generator: torch.Generator | None) -> torch.Tensor:
    """Temperature + top-k + top-p (nucleus) sampling over ``logits`` ``[B, K]``."""
    logits = logits / max(temperature, 1e-6)
    if 0 < top_k < logits.shape[-1]:
        kth = logits.topk(top_k, dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p < 1.0:
        sorted_logits, order = logits.sort(dim=-1, descending=True)
        cum = sorted_logits.softmax(-1).cumsum(-1)
        drop = cum - sorted_logits.softmax(-1) > top_p  # keep the smallest prefix whose mass reaches top_p
        sorted_logits = sorted_logits.masked_fill(drop, float("-inf"))
        logits = torch.full_like(logits, float("-inf")).scatter(-1, order, sorted_logits)
    probs = logits.softmax(-1)
    return torch.multinomial(probs.cpu() if generator is not None and generator.device.type == "cpu" else probs,
                             1, generator=generator).squeeze(-1).to(logits.device)
