"""Captions/s against batch size for the Qwen2.5-VL captioner (tiny random-init config, CPU or GPU).

The baseline is batch size 1, measured in the same process on the same images. Each larger batch
size reports its speed-up over it. Greedy decoding, with a fixed number of new tokens per caption
(EOS disabled), so every batch does the same work. Every batch size's captions are also checked
against the baseline's: left padding must not change a greedy caption.

    .venv/bin/python benchmarks/bench_caption.py --images 32 --batch-sizes 1 2 4 8 16 --threads 1
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from prefrestore import captioner_qwen
from prefrestore.synthetic import make_face


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=32, help="faces captioned per batch size")
    ap.add_argument("--resolution", type=int, default=64, help="face side, pixels")
    ap.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 2, 4, 8, 16])
    ap.add_argument("--max-new-tokens", type=int, default=32)
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    with tempfile.TemporaryDirectory() as tmp:
        path = captioner_qwen.build_tiny(Path(tmp) / "tiny")
        cap = captioner_qwen.load(str(path), "Describe this portrait.", "system", device=args.device)
    cap.model.generation_config.eos_token_id = None  # fixed-length captions: equal work per batch size
    faces = [make_face(0, i, args.resolution)[0] for i in range(args.images)]
    settings = captioner_qwen.GenerationSettings(args.max_new_tokens, False, 1.0, 1.0, 0)
    cap.caption(faces[:2], settings)  # warm-up

    results: dict[int, tuple[float, list[str]]] = {}
    for bs in args.batch_sizes:
        t0 = time.perf_counter()
        texts = [t for s in range(0, len(faces), bs) for t in cap.caption(faces[s : s + bs], settings)]
        if args.device.startswith("cuda"):
            torch.cuda.synchronize()
        results[bs] = (len(faces) / (time.perf_counter() - t0), texts)

    base_bs = args.batch_sizes[0]
    base_rate, base_texts = results[base_bs]
    print(f"device={cap.device} dtype={cap.model.dtype} threads={args.threads} images={args.images} "
          f"res={args.resolution} new_tokens={args.max_new_tokens}")
    print(f"| batch size | captions/s | ratio vs bs={base_bs} | same captions |")
    print("|---|---|---|---|")
    for bs, (rate, texts) in results.items():
        print(f"| {bs} | {rate:.2f} | {rate / base_rate:.2f}x | {texts == base_texts} |")
    assert np.isfinite(base_rate)


if __name__ == "__main__":
    main()
