"""The Qwen2.5-VL captioner path, on a tiny random-init Qwen2.5-VL saved and loaded like the real one."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from prefrestore.core.images import save_png
from prefrestore.core.weights import MissingWeights
from prefrestore.data import caption, captioner_qwen
from prefrestore.data.synthetic import make_face

GREEDY = captioner_qwen.GenerationSettings(max_new_tokens=8, do_sample=False, temperature=1.0, top_p=1.0, seed=0)


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory) -> Path:
    return captioner_qwen.build_tiny(tmp_path_factory.mktemp("qwen_tiny"))


@pytest.fixture(scope="module")
def tiny(tiny_dir):
    return captioner_qwen.load(str(tiny_dir), "Describe this face.", "system", device="cpu", dtype="auto")


def _images():
    rs = np.random.RandomState(0)
    # Different sizes give different numbers of visual tokens, hence padding inside the batch.
    return [rs.randint(0, 255, (64, 64, 3), dtype=np.uint8), rs.randint(0, 255, (28, 112, 3), dtype=np.uint8),
            rs.randint(0, 255, (40, 40, 3), dtype=np.uint8)]


def test_loads_real_classes_fp32_on_cpu_without_remote_code(tiny):
    from transformers import Qwen2_5_VLForConditionalGeneration, Qwen2_5_VLProcessor

    assert isinstance(tiny.model, Qwen2_5_VLForConditionalGeneration)
    assert isinstance(tiny.processor, Qwen2_5_VLProcessor)
    assert tiny.model.dtype == torch.float32 and tiny.device.type == "cpu"
    assert tiny.processor.tokenizer.padding_side == "left"


def test_batch_is_left_padded(tiny):
    text = tiny.processor.apply_chat_template(tiny.messages(), add_generation_prompt=True, tokenize=False)
    batch = tiny.processor(text=[text] * 3, images=_images(), padding=True, return_tensors="pt")
    mask = batch["attention_mask"]
    lengths = mask.sum(1)
    assert lengths.min() < lengths.max(), "the test needs rows of different lengths"
    short = int(lengths.argmin())
    assert mask[short, 0] == 0 and mask[short, -1] == 1  # padding on the left, prompt flush right
    assert (batch["input_ids"][:, -1] == batch["input_ids"][0, -1]).all()  # all rows end on the prompt's last token


def test_greedy_is_deterministic_and_independent_of_batch_composition(tiny):
    images = _images()
    together = tiny.caption(images, GREEDY)
    assert len(together) == 3 and all(isinstance(t, str) and t for t in together)
    assert tiny.caption(images, GREEDY) == together
    alone = [tiny.caption([im], GREEDY)[0] for im in images]
    assert alone == together


def test_sampled_retry_is_reproducible_under_its_seed(tiny):
    images = _images()
    sampled = captioner_qwen.GenerationSettings(max_new_tokens=12, do_sample=True, temperature=1.0, top_p=1.0, seed=5)
    assert tiny.caption(images, sampled) == tiny.caption(images, sampled)


def test_prompt_role_places_the_appendix_d_prompt(tiny_dir):
    sys_cap = captioner_qwen.load(str(tiny_dir), "PROMPT", "system", device="cpu")
    user_cap = captioner_qwen.load(str(tiny_dir), "PROMPT", "user", device="cpu")
    sys_text = sys_cap.processor.apply_chat_template(sys_cap.messages(), add_generation_prompt=True, tokenize=False)
    user_text = user_cap.processor.apply_chat_template(user_cap.messages(), add_generation_prompt=True, tokenize=False)
    assert sys_text.startswith("<|im_start|>system\nPROMPT<|im_end|>\n<|im_start|>user\n<|vision_start|>")
    assert "<|im_start|>user\n<|vision_start|><|image_pad|><|vision_end|>PROMPT<|im_end|>" in user_text


def test_step_with_tiny_qwen_flags_gibberish_after_one_retry(tiny_params, tiny_dir, tmp_path):
    faces = tmp_path / "faces"
    rows = []
    for i in range(3):
        img, _ = make_face(0, i, 32)
        save_png(faces / "images" / f"f{i}.png", img)
        rows.append({"id": f"f{i}", "path": f"images/f{i}.png", "attributes": "{}", "caption_hint": ""})
    pd.DataFrame(rows).to_parquet(faces / "manifest.parquet", index=False)
    params = tiny_params.with_overrides({"caption.backend": "qwen2_5_vl", "caption.model": str(tiny_dir),
                                         "caption.max_new_tokens": 8, "caption.device": "cpu",
                                         "caption.batch_size": 2})
    summary = caption.run(params, {"faces": faces}, tmp_path / "out")
    frame = pd.read_parquet(tmp_path / "out" / "captions.parquet")
    # Random weights write gibberish: each caption is retried once (sampled), then flagged invalid.
    assert summary["captioned"] == 3 and summary["valid"] == 0 and summary["flagged"] == 3
    assert (frame["attempts"] == 2).all() and (~frame["valid"]).all()
    assert frame["flag"].str.startswith("invalid:").all()
    assert len(list((tmp_path / "out" / "shards").glob("*.jsonl"))) == 2  # one shard per batch of 2


def _copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


@pytest.mark.parametrize("victim", ["model.safetensors", "config.json", "tokenizer.json", "processor_config.json"])
def test_missing_file_is_a_clear_error(tiny_dir, tmp_path, victim):
    broken = _copy(tiny_dir, tmp_path / "broken")
    (broken / victim).unlink()
    if victim == "tokenizer.json":
        (broken / "tokenizer_config.json").unlink()
    with pytest.raises(MissingWeights, match=victim.replace(".", r"\.")):
        captioner_qwen.load(str(broken), "p", "system", device="cpu")


def test_missing_weight_shard_is_named(tiny_dir, tmp_path):
    broken = _copy(tiny_dir, tmp_path / "sharded")
    (broken / "model.safetensors").rename(broken / "model-00001-of-00002.safetensors")
    index = {"metadata": {}, "weight_map": {"a": "model-00001-of-00002.safetensors",
                                            "b": "model-00002-of-00002.safetensors"}}
    (broken / "model.safetensors.index.json").write_text(json.dumps(index))
    with pytest.raises(MissingWeights, match="model-00002-of-00002.safetensors"):
        captioner_qwen.resolve_model_dir(str(broken))


def test_uncached_hub_id_raises_and_never_falls_back(tiny_params, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    assert captioner_qwen.WEIGHTS[0].name == "hf/Qwen/Qwen2.5-VL-32B-Instruct"
    assert captioner_qwen.WEIGHTS[0].root == "hf"
    with pytest.raises(MissingWeights, match="Qwen2.5-VL-32B-Instruct"):
        captioner_qwen.load(captioner_qwen.DEFAULT_MODEL, "p", "system", device="cpu")
    params = tiny_params.with_overrides({"caption.backend": "qwen2_5_vl"})
    faces = tmp_path / "faces"
    save_png(faces / "images" / "a.png", make_face(0, 0, 32)[0])
    pd.DataFrame([{"id": "a", "path": "images/a.png", "attributes": "{}", "caption_hint": ""}]).to_parquet(
        faces / "manifest.parquet", index=False)
    with pytest.raises(MissingWeights):
        caption.run(params, {"faces": faces}, tmp_path / "out")
    assert not (tmp_path / "out" / "captions.parquet").exists()


def test_cached_hub_id_loads_offline_from_hf_home(tiny_dir, tmp_path, monkeypatch):
    hf = tmp_path / "hf"
    repo = hf / "hub" / "models--tiny-org--tiny-qwen"
    _copy(tiny_dir, repo / "snapshots" / "0123abcd")
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("0123abcd")
    monkeypatch.setenv("HF_HOME", str(hf))
    cap = captioner_qwen.load("tiny-org/tiny-qwen", "Describe this face.", "system", device="cpu")
    assert cap.caption(_images()[:1], GREEDY)


@pytest.mark.gpu
def test_cuda_path_is_bf16_and_batched(tiny_dir):
    cap = captioner_qwen.load(str(tiny_dir), "Describe this face.", "system", device="auto", dtype="auto")
    assert cap.device.type == "cuda" and cap.model.dtype == torch.bfloat16
    assert next(cap.model.parameters()).device.type == "cuda"
    images = _images()
    together = cap.caption(images, GREEDY)
    assert len(together) == 3 and all(together)
    assert cap.caption(images, GREEDY) == together  # greedy is repeatable on the GPU too
