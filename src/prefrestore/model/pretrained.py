"""The ``paper`` preset's starting weights, read offline from the local model store (SPEC §5).

Each part comes from its own published checkpoint, staged under ``$PREFRESTORE_MODEL_STORE``
(see ``prefrestore weights plan``); nothing is downloaded. A missing part raises
:class:`prefrestore.core.weights.MissingWeights` naming the file and where it belongs.

- AR: Qwen3 + its tokenizer from the BLIP3o-NEXT folder (vocabulary already extended there;
  extended here otherwise and the embeddings resized).
- Vision tower: SigLIP2-so400m-patch14-384 (``SiglipVisionModel``; see :mod:`.tokenizer`).
- TA-Tok quantiser: ``encode_task_layer.*`` and the codebook from ``ta_tok.pth`` (a pickle-free
  ``torch.load(weights_only=True)``, the format TA-Tok ships in).
- SANA-1.5 1.6B transformer and DC-AE: the diffusers pipeline folder's ``transformer/`` and ``vae/``.
- Connectors: fresh (stage 1.1 trains ``diffusion_connector``, stage 1.2 ``vae_connector``).
"""

from __future__ import annotations

import torch
from diffusers import AutoencoderDC, SanaTransformer2DModel
from transformers import AutoTokenizer, Qwen3ForCausalLM, SiglipVisionModel

from prefrestore.core.weights import WeightFile, require
from prefrestore.model.ar import ArIntegrator, extend_vocabulary
from prefrestore.model.config import ModelConfig
from prefrestore.model.connectors import Connector
from prefrestore.model.model import PrefRestoreModel
from prefrestore.model.tokenizer import SemanticTokenizer

BLIP3O_NEXT = WeightFile("blip3o-next-ar", "store", "BLIP3o-NEXT-SFT-3B", None,
                         "model (Qwen3 AR integrator + extended tokenizer)", "https://huggingface.co/BLIP3o/BLIP3o-NEXT-SFT-3B")
SIGLIP2 = WeightFile("siglip2-so400m-384", "store", "siglip2-so400m-patch14-384", None,
                     "model (TA-Tok vision tower)", "https://huggingface.co/google/siglip2-so400m-patch14-384")
TA_TOK = WeightFile("ta-tok", "store", "TA-Tok/ta_tok.pth", None,
                    "model (TA-Tok task layer + 65,536-code codebook)", "https://huggingface.co/csuhan/TA-Tok")
SANA = WeightFile("sana-1.5-1.6b", "store", "SANA1.5_1.6B_1024px_diffusers", None,
                  "model (SANA-1.5 1.6B transformer + DC-AE f32c32)",
                  "https://huggingface.co/Efficient-Large-Model/SANA1.5_1.6B_1024px_diffusers")
WEIGHTS: tuple[WeightFile, ...] = (BLIP3O_NEXT, SIGLIP2, TA_TOK, SANA)


def load_ta_tok_quantizer(tok: SemanticTokenizer, path) -> None:
    """Copy ``encode_task_layer.*`` and the codebook out of a TA-Tok state dict (weights only)."""
    state = torch.load(path, map_location="cpu", weights_only=True)
    state = state.get("model", state) if isinstance(state, dict) else state
    task = {k.split("encode_task_layer.", 1)[1]: v for k, v in state.items() if "encode_task_layer." in k}
    books = [k for k in state if k.endswith(("codebook", "embedding.weight", "embed.weight")) and "quant" in k]
    if not task or len(books) != 1:
        raise ValueError(f"{path}: cannot find encode_task_layer.* and one quantiser codebook "
                         f"(keys: {sorted(state)[:40]}...)")
    tok.encode_task_layer.load_state_dict(task)
    tok.codebook.data.copy_(state[books[0]].reshape(tok.codebook.shape))


def build_pretrained(cfg: ModelConfig, system_message: str) -> PrefRestoreModel:
    """The ``init: pretrained`` model, each part from the local store (offline)."""
    ar_dir, vision_dir, ta_tok, sana_dir = (require(w) for w in WEIGHTS)
    vision = SiglipVisionModel.from_pretrained(vision_dir, local_files_only=True)
    tok = SemanticTokenizer(cfg.tokenizer, vision=vision)
    load_ta_tok_quantizer(tok, ta_tok)
    text_tok = AutoTokenizer.from_pretrained(ar_dir, local_files_only=True, trust_remote_code=False)
    extend_vocabulary(text_tok, cfg.tokenizer.codebook_size, cfg.ar.num_scale_tokens)
    lm = Qwen3ForCausalLM.from_pretrained(ar_dir, local_files_only=True, trust_remote_code=False)
    if len(text_tok) > lm.get_input_embeddings().num_embeddings:
        lm.resize_token_embeddings(len(text_tok))
    if lm.config.hidden_size != cfg.ar.hidden_size:
        raise ValueError(f"{ar_dir}: Qwen3 hidden {lm.config.hidden_size} != model.ar.hidden_size "
                         f"{cfg.ar.hidden_size} (pick the matching profile: paper 1024, released 2048)")
    ar = ArIntegrator(cfg.ar, lm, text_tok, cfg.tokenizer.codebook_size, cfg.num_image_tokens)
    transformer = SanaTransformer2DModel.from_pretrained(sana_dir, subfolder="transformer", local_files_only=True)
    vae = AutoencoderDC.from_pretrained(sana_dir, subfolder="vae", local_files_only=True)
    width = cfg.generator.caption_channels
    return PrefRestoreModel(cfg, tok, ar, Connector(cfg.ar.hidden_size, width),
                            Connector(cfg.generator.inner_dim, width), transformer, vae, system_message)
