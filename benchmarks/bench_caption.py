"""Captions/s against batch size for the Qwen2.5-VL captioner, tiny or at the 32B model's shapes.

The baseline is the first batch size, measured in the same process on the same images. Each
larger batch size reports its speed-up over it. Greedy decoding, with a fixed number of new tokens
per caption (EOS disabled), so every batch does the same work. Each batch size's new token ids for
the images the baseline also captioned are compared with the baseline's: left padding must not
change a greedy caption (in bf16, batching can change rounding, so a mismatch there is reported,
not fatal).

``--shape tiny`` (default): the tiny random-init model, saved and loaded through the real
``captioner_qwen.load`` path; every batch size captions all ``--images`` faces.

``--shape 32b`` (a lent GPU): Qwen2.5-VL-32B-Instruct's published sizes (64 decoder layers, hidden
5120, 40 heads / 8 KV heads, MLP 27648, vocab 152064; the 32-block vision tower with window
attention), random init in bf16 directly on the GPU, with the character-level test processor.
Faces are 512 px, i.e. 504x504 after Qwen's resize = 324 merged visual tokens, as for the
paper's 512-px FFHQ faces; the system prompt is cut to 80 characters = 80 tokens, about the
Qwen tokenizer's length of Appendix D's prompt. Batch size ``b`` captions ``max(b, 4)`` faces (the
first 4 are compared). Peak GPU memory is reported per batch size: the caption node pool is one
80 GB H100, and the weights alone take ~66 GB.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_caption.py --images 32 --batch-sizes 1 2 4 8 16 --threads 1
    python3 benchmarks/bench_caption.py --shape 32b --device cuda --batch-sizes 1 8 16 32 --max-new-tokens 128
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from prefrestore.core.config import load as load_params  # noqa: E402
from prefrestore.data import captioner_qwen  # noqa: E402
from prefrestore.data.synthetic import make_face  # noqa: E402

COMPARED = 4  # faces every batch size captions, whose tokens are compared with the baseline's


def qwen25_vl_32b(device: str) -> captioner_qwen.QwenCaptioner:
    """Qwen2.5-VL-32B-Instruct's architecture, random init in bf16 on ``device`` (see module doc)."""
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

    processor, ids = captioner_qwen.tiny_processor(max_pixels=512 * 512)
    config = Qwen2_5_VLConfig(
        text_config={
            "vocab_size": 152064, "hidden_size": 5120, "intermediate_size": 27648, "num_hidden_layers": 64,
            "num_attention_heads": 40, "num_key_value_heads": 8, "max_position_embeddings": 128000,
            "rms_norm_eps": 1e-6, "tie_word_embeddings": False,
            "rope_parameters": {"rope_type": "default", "rope_theta": 1000000.0, "mrope_section": [16, 24, 24]},
            "bos_token_id": ids["<|endoftext|>"], "eos_token_id": ids["<|im_end|>"],
            "pad_token_id": ids["<|endoftext|>"],
        },
        vision_config={
            "depth": 32, "hidden_size": 1280, "intermediate_size": 3456, "num_heads": 16, "out_hidden_size": 5120,
            "patch_size": 14, "spatial_merge_size": 2, "temporal_patch_size": 2, "window_size": 112,
            "fullatt_block_indexes": [7, 15, 23, 31],
        },
        **captioner_qwen.special_token_ids(ids),
    )
    with torch.device(device):
        model = Qwen2_5_VLForConditionalGeneration._from_config(config, dtype=torch.bfloat16).eval()
    prompt = load_params("paper").tree["caption"]["system_prompt"][:80]
    return captioner_qwen.QwenCaptioner(model, processor, prompt, "system", torch.device(device))


def tiny(device: str) -> captioner_qwen.QwenCaptioner:
    with tempfile.TemporaryDirectory() as tmp:
        path = captioner_qwen.build_tiny(Path(tmp) / "tiny")
        return captioner_qwen.load(str(path), "Describe this portrait.", "system", device=device)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shape", choices=("tiny", "32b"), default="tiny")
    ap.add_argument("--images", type=int, default=32, help="faces captioned per batch size (tiny)")
    ap.add_argument("--resolution", type=int, default=0, help="face side, pixels (0: 64 tiny, 512 32b)")
    ap.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 2, 4, 8, 16])
    ap.add_argument("--max-new-tokens", type=int, default=32)
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    cuda = args.device.startswith("cuda")
    resolution = args.resolution or (512 if args.shape == "32b" else 64)

    t0 = time.perf_counter()
    cap = qwen25_vl_32b(args.device) if args.shape == "32b" else tiny(args.device)
    build_s = time.perf_counter() - t0
    cap.model.generation_config.eos_token_id = None  # fixed-length captions: equal work per batch size
    n_faces = max(args.batch_sizes + [COMPARED]) if args.shape == "32b" else args.images
    faces = [make_face(0, i, resolution)[0] for i in range(n_faces)]
    settings = captioner_qwen.GenerationSettings(args.max_new_tokens, False, 1.0, 1.0, 0)
    cap.generate_ids(faces[:2], settings)  # warm-up

    params_b = sum(p.numel() for p in cap.model.parameters()) / 1e9
    name = torch.cuda.get_device_name() if cuda else "cpu"
    print(f"shape={args.shape} params={params_b:.2f}B device={name} dtype={cap.model.dtype} threads={args.threads} "
          f"res={resolution} new_tokens={args.max_new_tokens} build={build_s:.1f}s", flush=True)
    base_bs = args.batch_sizes[0]
    print(f"| batch size | captions/s | new tokens/s | ratio vs bs={base_bs} | peak GPU mem GiB | same tokens |")
    print("|---|---|---|---|---|---|", flush=True)
    base_rate, base_ids = float("nan"), None
    for bs in args.batch_sizes:  # each row is printed when measured (a long run that is cut keeps its rows)
        todo = faces[: max(bs, COMPARED)] if args.shape == "32b" else faces
        if cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        t0 = time.perf_counter()
        ids = torch.cat([cap.generate_ids(todo[s : s + bs], settings).cpu() for s in range(0, len(todo), bs)])
        if cuda:
            torch.cuda.synchronize()
        rate = len(todo) / (time.perf_counter() - t0)
        peak = torch.cuda.max_memory_allocated() / 2**30 if cuda else float("nan")
        if base_ids is None:
            base_rate, base_ids = rate, ids
        same = torch.equal(ids[:COMPARED], base_ids[:COMPARED])
        print(f"| {bs} | {rate:.2f} | {rate * args.max_new_tokens:.0f} | {rate / base_rate:.2f}x | {peak:.1f} | {same} |",
              flush=True)
    assert np.isfinite(base_rate)


if __name__ == "__main__":
    main()
