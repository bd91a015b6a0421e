"""Every prompt string of the restorer, in one place: instruction templates and the chat framing.

Sources:
- Templates: paper Sec. V-D and Appendix F-A. With a caption,
  ``<image>\\nPlease reconstruct the given image based on the image content: {caption}``;
  without one, ``<image>\\nPlease reconstruct the given image.``.
- Template choice: the caption template is used with probability ``p_txt`` (Appendix F-A).
  The paper uses 0.95 and the released code 0.9 (``params.yaml`` profiles ``paper`` / ``released``).
- Self-reconstruction (Appendix F-B): the degradation is skipped and the HQ image is the input.
  - The paper keeps the ordinary template for it (``self_recon_prompt: restore``).
  - The released code swaps in a "side mission" instruction asking to duplicate the HQ input
    (``self_recon_prompt: side_mission``; :data:`SIDE_MISSION`).
- Chat framing (Appendix C):
  ``<|im_start|>user [instruction] [LQ visual tokens] <|im_end|> <|im_start|>assistant <|im_start|>``.
  - The paper's listing puts spaces where Qwen's chat template has newlines. We follow the chat
    template: ``<|im_start|>user\\n...<|im_end|>\\n<|im_start|>assistant\\n``.
  - The final trigger is the image-start token. Appendix C-A names it "im_start", typeset like
    the chat token ``<|im_start|>``, but the released code and BLIP3o use a separate added token
    ``<im_start>`` (:data:`IMAGE_START`, with :data:`IMAGE_END`). We emit that token.
  - The LQ image sits where the template's ``<image>`` placeholder is, which is before the text
    (the templates start with ``<image>\\n``). The caller supplies the token string that replaces
    it, e.g. ``<im_start><I12><I7>...<im_end>`` built by :func:`image_token_string`.
  - The released code also opens every conversation with a system turn ("You are a helpful
    assistant."). The paper shows none. ``system_message`` chooses: ``""`` means no system turn.
- Stage-2 rollouts condition on the fixed prompt :data:`ROLLOUT_PROMPT`, with no caption
  (SPEC §3, "Rollouts").

Empty or whitespace-only captions (and ``None``) fall back to the no-caption template, so a
missing or flagged caption never yields "...image content: " with nothing after it. A caption
is used verbatim otherwise; callers pass ``""`` for captions the caption step flagged invalid.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from typing import Literal

import numpy as np

from prefrestore.core.config import Params, check_range

IMAGE_PLACEHOLDER = "<image>"  # where the LQ image's tokens go in an instruction
CAPTION_TEMPLATE = "<image>\nPlease reconstruct the given image based on the image content: {caption}"
NO_CAPTION_TEMPLATE = "<image>\nPlease reconstruct the given image."
SIDE_MISSION = (
    "<image>\nThis is a side mission. Please complete the auxiliary reconstruction task by "
    "duplicating the given high-definition image."
)
ROLLOUT_PROMPT = "Please reconstruct the given image."  # stage-2 rollout condition (fixed, no caption)

CHAT_START = "<|im_start|>"  # Qwen chat turn start
CHAT_END = "<|im_end|>"  # Qwen chat turn end
IMAGE_START = "<im_start>"  # added image-boundary token; after the assistant prefix it triggers image tokens
IMAGE_END = "<im_end>"  # added image-boundary token closing a run of image tokens


@dataclasses.dataclass(frozen=True)
class InstructionsConfig:
    p_txt: float  # probability of the caption template (Appendix F-A)
    self_recon_prompt: Literal["restore", "side_mission"]  # instruction of self-reconstruction samples
    system_message: str  # system turn text; "" = no system turn (Appendix C)

    def __post_init__(self) -> None:
        check_range("p_txt", self.p_txt, 0.0, 1.0)


def load_config(params: Params) -> InstructionsConfig:
    return params.section("instructions", InstructionsConfig)


def restoration_instruction(caption: str | None) -> str:
    """The restoration instruction (Sec. V-D): the caption template, or the plain one without a caption."""
    if caption is None or not caption.strip():
        return NO_CAPTION_TEMPLATE
    return CAPTION_TEMPLATE.format(caption=caption.strip())


def rollout_instruction() -> str:
    """The stage-2 rollout instruction: :data:`ROLLOUT_PROMPT` after the image placeholder."""
    return f"{IMAGE_PLACEHOLDER}\n{ROLLOUT_PROMPT}"


def training_instruction(
    caption: str | None, cfg: InstructionsConfig, rng: np.random.Generator, self_recon: bool = False
) -> str:
    """The instruction of one training sample (Appendix F-A, F-B).

    One uniform draw per sample: the caption template when ``u < p_txt`` (and the caption is not
    empty), else the plain one. A self-reconstruction sample under ``side_mission`` gets
    :data:`SIDE_MISSION` instead. The draw is made in every case, so the stream of ``rng`` does not
    depend on which branch was taken.
    """
    use_caption = rng.random() < cfg.p_txt
    if self_recon and cfg.self_recon_prompt == "side_mission":
        return SIDE_MISSION
    return restoration_instruction(caption if use_caption else None)


def image_token_string(ids: Iterable[int], wrap: bool = True) -> str:
    """Discrete image ids as text tokens ``<I{id}>``, wrapped in the image-boundary tokens."""
    body = "".join(f"<I{int(i)}>" for i in ids)
    return f"{IMAGE_START}{body}{IMAGE_END}" if wrap else body


def chat_prompt(instruction: str, lq_image: str, system_message: str) -> str:
    """The AR prompt of Appendix C, ending with the image-start trigger.

    ``lq_image`` replaces the instruction's single ``<image>`` placeholder (the LQ visual tokens,
    or a placeholder the model splices later). The result ends with
    ``<|im_start|>assistant\\n<im_start>``, after which the AR generates the HQ image's tokens.
    """
    if instruction.count(IMAGE_PLACEHOLDER) != 1:
        raise ValueError(
            f"instruction must hold exactly one {IMAGE_PLACEHOLDER!r} placeholder, "
            f"found {instruction.count(IMAGE_PLACEHOLDER)}: {instruction[:80]!r}"
        )
    user = instruction.replace(IMAGE_PLACEHOLDER, lq_image)
    system = f"{CHAT_START}system\n{system_message}{CHAT_END}\n" if system_message else ""
    return f"{system}{CHAT_START}user\n{user}{CHAT_END}\n{CHAT_START}assistant\n{IMAGE_START}"


def chat_target(hq_image_tokens: str) -> str:
    """What follows :func:`chat_prompt` in training: the HQ image tokens, then the closing tokens."""
    return f"{hq_image_tokens}{IMAGE_END}{CHAT_END}\n"
