"""Step ``bootstrap``: the starting model that stage 1.1 fine-tunes (its ``base`` input).

What it does depends on ``model.init``:

- ``qwen3_parts`` / ``blip3o_next`` (the ``paper`` / ``released`` profiles): **no training**. It assembles the initial model from the
  local model store (the public parts of docs/PAPER_PROFILE.md, mapped by ``model/weight_map.py``) through
  :func:`prefrestore.model.from_params`, which raises :class:`~prefrestore.core.weights.MissingWeights`
  naming each absent file. It then saves the result as the HF-style base directory.
- ``random`` (the ``tiny`` profile): **stage 0**, a stand-in for the pretraining that BLIP3o-NEXT,
  SANA and TA-Tok received upstream, run on the project's own faces (train split, HQ only):
  1. ``vae``: the DC-AE as an autoencoder, loss ``L1 + MSE`` on [-1, 1] pixels; then the latent
     shift and scale are set so that ``z = (E(x) - shift) * scale`` has zero mean and unit std;
  2. ``codebook``: TA-Tok's codebook set to k-means centroids of the (frozen, random) SigLIP
     task-layer features of the training faces;
  3. ``prior``: Qwen3 + diffusion connector + SANA trained jointly with Eq. 10's loss, ``L_CE +
     L_diff``. The AR sees the image's own codes (self-reconstruction) and the caption template.
     SANA learns conditional flow matching of HQ latents on the AR's cross-attention tokens.

  Each phase ends with a checkpoint of the whole model (``checkpoints/phase-<n>-<name>``). A re-run
  continues after the last finished phase. Stage-0 training refuses the pretrained inits (``qwen3_parts``, ``blip3o_next``).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from prefrestore.core import tracking
from prefrestore.core.atomic import write_json
from prefrestore.core.config import Params, as_dict, check_range
from prefrestore.core.images import load_rgb
from prefrestore.data.caption import load_captions
from prefrestore.data.ingest import DataConfig
from prefrestore.model import from_params
from prefrestore.model.config import ModelConfig
from prefrestore.model.flow import FlowSchedule
from prefrestore.model.instructions import InstructionsConfig, restoration_instruction
from prefrestore.model.model import PrefRestoreModel
from prefrestore.model.restore import RestoreConfig, save_inference
from prefrestore.train import distributed
from prefrestore.train.common import (
    CHECKPOINTS,
    finalize,
    fingerprint,
    finished,
    peak_memory_mb,
    seed_everything,
)
from prefrestore.train.stage1 import SemanticAlignLoss

log = logging.getLogger(__name__)

PHASES = ("vae", "codebook", "prior")


@dataclasses.dataclass(frozen=True)
class BootstrapConfig:
    """Params section ``bootstrap`` (stage 0; used only with ``model.init: random``)."""

    batch_size: int  # images per step of the vae and prior phases
    vae_steps: int  # DC-AE autoencoder steps
    vae_lr: float  # AdamW peak lr of the vae phase (cosine to 0)
    kmeans_images: int  # training faces whose features feed the codebook k-means
    kmeans_iters: int  # k-means iterations
    prior_steps: int  # AR + connector + SANA steps (Eq. 10, everything but tokenizer and VAE trainable)
    prior_lr: float  # AdamW peak lr of the prior phase (cosine to 0)
    grad_clip: float  # max global gradient norm
    log_every: int  # steps between metric logs

    def __post_init__(self) -> None:
        check_range("batch_size", self.batch_size, 1, 1 << 16)
        for name in ("vae_steps", "kmeans_images", "kmeans_iters", "prior_steps"):
            check_range(name, getattr(self, name), 0, 1 << 30)
        for name in ("vae_lr", "prior_lr"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name}={getattr(self, name)} must be > 0")
            check_range(name, getattr(self, name), 1e-12, 1.0)
        check_range("grad_clip", self.grad_clip, 0.0, 1e6)
        check_range("log_every", self.log_every, 1, 1 << 30)


def run(params: Params, inputs: Mapping[str, Path], out: Path) -> dict[str, Any]:
    """Write the base model directory ``out`` (see the module doc for the two modes)."""
    mcfg = params.section("model", ModelConfig)
    cfg = params.section("bootstrap", BootstrapConfig)
    data = params.section("data", DataConfig)
    icfg = params.section("instructions", InstructionsConfig)
    schedule = params.section("flow", FlowSchedule)
    settings = params.section("restore", RestoreConfig)
    out = Path(out)
    sections = {"model": mcfg.to_dict(), "bootstrap": as_dict(cfg), "data": as_dict(data),
                "instructions": as_dict(icfg), "flow": as_dict(schedule), "restore": as_dict(settings)}
    fp = fingerprint("bootstrap", sections, {k: Path(v) for k, v in inputs.items()})
    done = finished(out, fp)
    if done is not None:
        return done
    if distributed.world_size() > 1:  # every rank would train its own stage 0 and write the same out
        raise RuntimeError(f"bootstrap runs in one process (it is minutes on a CPU); launched with "
                           f"{distributed.world_size()} processes: run it without torchrun")
    t0 = time.perf_counter()
    if mcfg.init != "random":
        log.info(f"bootstrap: model.init={mcfg.init} -> assembling the base model from the local store (no training)")
        tracking.set_tags({"bootstrap_mode": "assemble"})
        model = from_params(params)  # MissingWeights names any absent part
        summary: dict[str, Any] = {"mode": "assemble"}
    else:
        log.info("bootstrap: model.init=random -> stage 0 training on the project's faces")
        tracking.set_tags({"bootstrap_mode": "train"})
        model, summary = train_stage0(params, cfg, inputs, out, fp)
        summary["mode"] = "train"
    summary.update({"fingerprint": fp, "seconds": round(time.perf_counter() - t0, 2),
                    "params": sum(p.numel() for p in model.parameters())})

    def save_model(dest: Path) -> None:
        model.save_pretrained(dest)
        save_inference(dest, settings, schedule)

    finalize(out, save_model, summary)
    return summary


# --------------------------------------------------------------------------- stage 0
def train_faces(faces: Path, resolution: int) -> tuple[list[str], torch.Tensor]:
    """All ``train`` faces as float ``[N, 3, R, R]`` in [0, 1] (tiny sets fit in memory)."""
    frame = pd.read_parquet(Path(faces) / "manifest.parquet")
    frame = frame[frame["split"] == "train"].sort_values("id")
    if frame.empty:
        raise ValueError(f"{faces}: no 'train' faces")
    arr = np.stack([load_rgb(Path(faces) / str(p)) for p in frame["path"]])
    if arr.shape[1:3] != (resolution, resolution):
        raise ValueError(f"{faces}: faces are {arr.shape[1:3]}, model.image_size is {resolution}")
    return [str(i) for i in frame["id"]], torch.from_numpy(arr).permute(0, 3, 1, 2).float() / 255.0


def _cosine(step: int, total: int) -> float:
    return 0.5 * (1.0 + math.cos(math.pi * step / max(1, total)))


def _phase_dir(out: Path, index: int) -> Path:
    return out / CHECKPOINTS / f"phase-{index}-{PHASES[index]}"


def _resume_phase(out: Path, fp: str) -> tuple[int, Path | None]:
    """The number of finished phases and the folder of the last one (fingerprint-checked)."""
    for index in reversed(range(len(PHASES))):
        d = _phase_dir(out, index)
        meta = d / "phase.json"
        if meta.is_file() and (d / "config.json").is_file():
            info = json.loads(meta.read_text(encoding="utf-8"))
            if info.get("fingerprint") == fp:
                return index + 1, d
            log.warning("bootstrap: ignoring %s (other settings or inputs)", d)
    return 0, None


def train_stage0(params: Params, cfg: BootstrapConfig, inputs: Mapping[str, Path], out: Path,
                 fp: str) -> tuple[PrefRestoreModel, dict[str, Any]]:
    data = params.section("data", DataConfig)
    schedule = params.section("flow", FlowSchedule)
    mcfg = params.section("model", ModelConfig)
    ids, faces = train_faces(Path(inputs["faces"]), mcfg.image_size)
    captions = load_captions(Path(inputs["captions"]))
    instructions = [restoration_instruction(captions.get(i, "")) for i in ids]
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    done, last = _resume_phase(out, fp)
    if last is not None:
        log.info("bootstrap: resuming after phase %s (%s)", PHASES[done - 1], last)
        model = PrefRestoreModel.from_pretrained(last)
    else:
        seed_everything(data.seed)
        model = from_params(params)
    model.to(device)
    summary: dict[str, Any] = {}
    for index in range(done, len(PHASES)):
        seed_everything(data.seed + 100 + index)
        name = PHASES[index]
        if name == "vae":
            summary.update(_train_vae(model, faces, cfg, device))
        elif name == "codebook":
            summary.update(_fit_codebook(model, faces, cfg, data.seed, device))
        else:
            summary.update(_train_prior(model, faces, instructions, cfg, schedule, device))
        d = _phase_dir(out, index)
        model.save_pretrained(d)
        write_json(d / "phase.json", {"fingerprint": fp, "phase": name, "summary": summary})
    return model.cpu(), summary


def _batches(n: int, batch: int, steps: int, seed: int) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(0, n, (batch,), generator=g) for _ in range(steps)]


def _flip(x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """Random horizontal flips (faces are left-right symmetric enough)."""
    mask = torch.rand(x.shape[0], generator=g) < 0.5
    x = x.clone()
    x[mask] = x[mask].flip(-1)
    return x


def _train_vae(model: PrefRestoreModel, faces: torch.Tensor, cfg: BootstrapConfig, device: torch.device) -> dict:
    """Phase 1: DC-AE autoencoding, ``L1 + MSE`` between ``D(E(x))`` and ``x`` on [-1, 1]."""
    if cfg.vae_steps == 0:
        return {}
    vae = model.vae
    vae.requires_grad_(True).train()
    opt = torch.optim.AdamW(vae.parameters(), lr=cfg.vae_lr, weight_decay=0.0)
    g = torch.Generator().manual_seed(1)
    loss = torch.zeros(())
    for step, idx in enumerate(tqdm(_batches(len(faces), cfg.batch_size, cfg.vae_steps, 2), desc="stage0 vae")):
        for group in opt.param_groups:
            group["lr"] = cfg.vae_lr * _cosine(step, cfg.vae_steps)
        x = _flip(faces[idx], g).to(device) * 2.0 - 1.0
        z = vae.encoder(x)  # raw DC-AE latent; encode_latent's shift/scale cancel in D(E(x))
        rec = vae.decoder(z)
        loss = torch.nn.functional.l1_loss(rec, x) + torch.nn.functional.mse_loss(rec, x)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        norm = torch.nn.utils.clip_grad_norm_(vae.parameters(), cfg.grad_clip) if cfg.grad_clip else float("nan")
        opt.step()
        if (step + 1) % cfg.log_every == 0:
            tracking.log_metrics({"stage0/vae_loss": float(loss), "stage0/vae_grad_norm": float(norm),
                                  "stage0/peak_mem_mb": peak_memory_mb(device)}, step=step + 1)
    vae.requires_grad_(False).eval()
    with torch.no_grad():
        x = faces[:64].to(device)
        raw = vae.encoder(x * 2.0 - 1.0)
        # z = (E(x) - shift) * scale with unit std, as SD/DC-AE calibrate their scaling_factor; the
        # flow's noise is N(0, 1), so latents on another scale would skew every sigma. The value is
        # saved in the model's config.json.
        vcfg = dataclasses.replace(model.cfg.vae, shift_factor=float(raw.mean()), scaling_factor=float(1.0 / raw.std()))
        model.cfg = dataclasses.replace(model.cfg, vae=vcfg)
        rec = model.decode(model.encode(x))
        psnr = float((10 * torch.log10(1.0 / ((rec - x) ** 2).flatten(1).mean(1))).mean())
    tracking.log_metrics({"stage0/vae_psnr": psnr})
    return {"vae_loss": float(loss), "vae_psnr": round(psnr, 3), "vae_scaling_factor": vcfg.scaling_factor,
            "vae_shift_factor": vcfg.shift_factor}


def _fit_codebook(model: PrefRestoreModel, faces: torch.Tensor, cfg: BootstrapConfig, seed: int,
                  device: torch.device) -> dict:
    """Phase 2: TA-Tok codebook = k-means centroids of the task-layer features of the training faces."""
    if cfg.kmeans_iters == 0 or cfg.kmeans_images == 0:
        return {}
    images = faces[:cfg.kmeans_images].to(device)
    model.tokenizer.kmeans_init(images, iters=cfg.kmeans_iters, seed=seed)
    with torch.no_grad():
        used = torch.unique(model.tokenizer(images)).numel()
    tracking.log_metrics({"stage0/codes_used": used})
    return {"codes_used": int(used)}


def _train_prior(model: PrefRestoreModel, faces: torch.Tensor, instructions: list[str], cfg: BootstrapConfig,
                 schedule: FlowSchedule, device: torch.device) -> dict:
    """Phase 3: AR + diffusion connector + SANA with Eq. 10's loss on self-reconstruction prompts."""
    if cfg.prior_steps == 0:
        return {}
    prefixes = ("ar.lm.", "diffusion_connector.", "transformer.")
    for name, p in model.named_parameters():
        p.requires_grad_(name.startswith(prefixes))
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=cfg.prior_lr, weight_decay=0.0)
    loss_fn = SemanticAlignLoss(model, schedule, alpha=1.0).train()
    g = torch.Generator().manual_seed(3)
    terms: dict[str, torch.Tensor] = {}
    for step, idx in enumerate(tqdm(_batches(len(faces), cfg.batch_size, cfg.prior_steps, 4), desc="stage0 prior")):
        for group in opt.param_groups:
            group["lr"] = cfg.prior_lr * _cosine(step, cfg.prior_steps)
        x = _flip(faces[idx], g)
        terms = loss_fn({"lq": x, "hq": x, "instructions": [instructions[i] for i in idx.tolist()]})
        opt.zero_grad(set_to_none=True)
        terms["loss"].backward()
        norm = torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip) if cfg.grad_clip else float("nan")
        opt.step()
        if (step + 1) % cfg.log_every == 0:
            tracking.log_metrics({f"stage0/prior_{k}": float(v) for k, v in terms.items()}
                                 | {"stage0/prior_grad_norm": float(norm)}, step=step + 1)
    model.requires_grad_(False).eval()
    return {f"prior_{k}": round(float(v), 5) for k, v in terms.items()}
