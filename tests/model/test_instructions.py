"""Instruction templates and chat framing (paper Sec. V-D, Appendices C and F; released dataset.py)."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from prefrestore.core.config import ConfigError, load
from prefrestore.model import instructions as ins


def test_templates_are_the_papers():
    assert ins.restoration_instruction("a photography of a man") == (
        "<image>\nPlease reconstruct the given image based on the image content: a photography of a man"
    )
    assert ins.restoration_instruction(None) == "<image>\nPlease reconstruct the given image."
    assert ins.rollout_instruction() == "<image>\nPlease reconstruct the given image."
    assert ins.ROLLOUT_PROMPT == "Please reconstruct the given image."


@pytest.mark.parametrize("caption", ["", "   ", "\n\t", None])
def test_empty_caption_falls_back_to_the_plain_template(caption):
    assert ins.restoration_instruction(caption) == ins.NO_CAPTION_TEMPLATE
    cfg = ins.InstructionsConfig(p_txt=1.0, self_recon_prompt="restore", system_message="")
    assert ins.training_instruction(caption, cfg, np.random.default_rng(0)) == ins.NO_CAPTION_TEMPLATE


@pytest.mark.parametrize(("profile", "p_txt"), [("paper", 0.95), ("released", 0.9)])
def test_p_txt_frequency(profile, p_txt):
    cfg = ins.load_config(load(profile))
    assert cfg.p_txt == p_txt
    rng = np.random.default_rng(123)
    n = 20_000
    with_caption = sum(
        ins.training_instruction("a photography of a woman", cfg, rng).endswith("a woman") for _ in range(n)
    )
    tol = 4 * np.sqrt(p_txt * (1 - p_txt) / n)  # 4 sigma of a binomial proportion
    assert abs(with_caption / n - p_txt) < tol


def test_draw_is_reproducible_and_consumes_one_number_per_sample():
    cfg = ins.InstructionsConfig(p_txt=0.5, self_recon_prompt="side_mission", system_message="")
    rng1, rng2 = np.random.default_rng(9), np.random.default_rng(9)
    seq1 = [ins.training_instruction("a photography of a man", cfg, rng1, self_recon=(i % 3 == 0)) for i in range(50)]
    seq2 = [ins.training_instruction("a photography of a man", cfg, rng2, self_recon=(i % 3 == 0)) for i in range(50)]
    assert seq1 == seq2
    assert ins.SIDE_MISSION in seq1 and ins.NO_CAPTION_TEMPLATE in seq1
    # A side-mission sample still draws once, so the next plain sample sees the same number.
    rng3 = np.random.default_rng(9)
    seq3 = [ins.training_instruction("a photography of a man", cfg, rng3, self_recon=False) for _ in range(50)]
    assert [s for i, s in enumerate(seq1) if i % 3] == [s for i, s in enumerate(seq3) if i % 3]


def test_self_reconstruction_instruction_paper_vs_released():
    rng = np.random.default_rng(0)
    paper = ins.load_config(load("paper"))
    released = ins.load_config(load("released"))
    assert paper.self_recon_prompt == "restore"
    assert ins.training_instruction("a photography of a man", dataclasses.replace(paper, p_txt=1.0), rng,
                                    self_recon=True).startswith("<image>\nPlease reconstruct the given image based")
    side = ins.training_instruction("a photography of a man", released, rng, self_recon=True)
    assert side == ("<image>\nThis is a side mission. Please complete the auxiliary reconstruction task "
                    "by duplicating the given high-definition image.")
    assert "a photography" not in side


def test_chat_prompt_framing_appendix_c():
    lq = ins.image_token_string([12, 7, 0])
    assert lq == "<im_start><I12><I7><I0><im_end>"
    prompt = ins.chat_prompt(ins.restoration_instruction("a photography of a man"), lq, system_message="")
    assert prompt == (
        "<|im_start|>user\n<im_start><I12><I7><I0><im_end>\n"
        "Please reconstruct the given image based on the image content: a photography of a man<|im_end|>\n"
        "<|im_start|>assistant\n<im_start>"
    )
    # The prompt ends with the image-start trigger; the training target closes it.
    full = prompt + ins.chat_target("<S0><I1><I2>")
    assert full.endswith("<|im_start|>assistant\n<im_start><S0><I1><I2><im_end><|im_end|>\n")
    released = ins.load_config(load("released"))
    with_system = ins.chat_prompt(ins.rollout_instruction(), "<LQ>", released.system_message)
    assert with_system.startswith("<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n<LQ>\n")


@pytest.mark.parametrize("bad", ["Please reconstruct the given image.", "<image><image>\nPlease"])
def test_chat_prompt_needs_exactly_one_placeholder(bad):
    with pytest.raises(ValueError, match="exactly one"):
        ins.chat_prompt(bad, "<LQ>", "")


def test_p_txt_out_of_range_is_a_config_error():
    with pytest.raises(ConfigError, match="p_txt"):
        load("paper").with_overrides({"instructions.p_txt": 1.5}).section("instructions", ins.InstructionsConfig)
