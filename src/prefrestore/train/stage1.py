"""Stage 1, Multi-modal Knowledge Alignment (paper Sec. IV-C.1, Table I): steps ``stage1_1`` and ``stage1_2``.

Stage 1.1, semantic-to-diffusion alignment (Eq. 10): ``L = L_CE + alpha L_diff``.
- Trains Qwen3 (embeddings, lm_head), the diffusion connector and SANA's caption layers.
- Frozen: the TA-Tok tokenizer, SANA's blocks, the VAE.
- The AR is teacher-forced on the HQ image's codes; its hidden states go through the connector into
  the frozen SANA, so L_diff's gradient flows through SANA back into the connector and the AR.

Stage 1.2, texture-to-diffusion alignment (Eq. 11): ``L = L_diff + beta mean((E_frozen(HQ) - E(LQ))^2)``.
- Trains SANA's transformer blocks, the vae_connector and the VAE encoder (plus SANA's
  ``patch_embed`` when z_low is channel-concatenated: it is then z_low's input projection).
- The AR is frozen: its condition is computed without gradient.
- z_low = E(LQ) enters SANA as extra cross-attention tokens or concatenated to the noisy latent
  (``model.lq_condition``).
- The diffusion target and Eq. 11's target use a frozen copy of the starting encoder. That copy is
  neither saved in checkpoints nor in the output model (SPEC §3).

Data: :class:`~prefrestore.data.degrade.on_the_fly.OnTheFlyPairs` (fresh degradations each epoch, self-
reconstruction with ``degrade.p_rec``), captions joined by id, instructions drawn with ``p_txt``.
"""

from __future__ import annotations

import dataclasses
import logging
import zlib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from prefrestore.core import tracking
from prefrestore.core.config import Params, as_dict, check_range
from prefrestore.data.caption import load_captions
from prefrestore.data.degrade.direct import DegradeConfig
from prefrestore.data.degrade.on_the_fly import OnTheFlyPairs
from prefrestore.data.ingest import DataConfig
from prefrestore.model.flow import FlowSchedule, flow_matching_loss, interpolate
from prefrestore.model.instructions import InstructionsConfig, training_instruction
from prefrestore.model.model import PrefRestoreModel
from prefrestore.model.restore import RestoreConfig, save_inference
from prefrestore.train import distributed, heldout
from prefrestore.train.common import (
    CHECKPOINTS,
    VALIDATION_DIR,
    TrainConfig,
    TrainTask,
    finalize,
    fingerprint,
    finished,
    fit,
    load_train_config,
)

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class Stage11Config(TrainConfig):
    """Params section ``stage1_1`` (Table I, Eq. 10)."""

    alpha: float  # weight of L_diff in Eq. 10

    def __post_init__(self) -> None:
        super().__post_init__()
        check_range("alpha", self.alpha, 0.0, 1e3)


@dataclasses.dataclass(frozen=True)
class Stage12Config(TrainConfig):
    """Params section ``stage1_2`` (Table I, Eq. 11)."""

    beta: float  # weight of Eq. 11's latent MSE

    def __post_init__(self) -> None:
        super().__post_init__()
        check_range("beta", self.beta, 0.0, 1e3)


# --------------------------------------------------------------------------- data
class InstructedPairs(torch.utils.data.Dataset):
    """:class:`OnTheFlyPairs` plus each sample's instruction (caption joined by id, ``p_txt`` draw).

    The template draw uses an RNG seeded by ``(seed, epoch, id)``: the same for any order or worker count.
    """

    def __init__(self, pairs: OnTheFlyPairs, captions: Mapping[str, str], cfg: InstructionsConfig, seed: int) -> None:
        missing = [i for i in pairs.ids if i not in captions]
        if missing:
            raise ValueError(f"{len(missing)} training faces have no caption row (e.g. {missing[:3]}); "
                             "re-run the caption step on this faces folder")
        self.pairs, self.captions, self.cfg, self.seed = pairs, captions, cfg, seed

    def set_epoch(self, epoch: int) -> None:
        self.pairs.set_epoch(epoch)

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, index: int) -> dict[str, Any]:
        item = self.pairs[index]
        rng = np.random.default_rng([self.seed, self.pairs.epoch, zlib.crc32(item["id"].encode())])
        item["instruction"] = training_instruction(self.captions[item["id"]], self.cfg, rng, item["self_rec"])
        return item


def collate(items: list[dict[str, Any]]) -> dict[str, Any]:
    return {"ids": [it["id"] for it in items], "hq": torch.stack([it["hq"] for it in items]),
            "lq": torch.stack([it["lq"] for it in items]), "instructions": [it["instruction"] for it in items]}


# --------------------------------------------------------------------------- losses
class SemanticAlignLoss(nn.Module):
    """Eq. 10: ``L_CE`` over the HQ image tokens + ``alpha L_diff`` through the frozen SANA (stage 1.1)."""

    def __init__(self, model: PrefRestoreModel, schedule: FlowSchedule, alpha: float) -> None:
        super().__init__()
        self.model, self.schedule, self.alpha = model, schedule, alpha

    def forward(self, batch: Mapping[str, Any]) -> dict[str, torch.Tensor]:
        m = self.model
        lq, hq = batch["lq"].to(m.device), batch["hq"].to(m.device)
        with torch.no_grad():  # frozen tokenizer and VAE
            lq_codes, hq_codes = m.lq_codes(lq), m.lq_codes(hq)
            z = m.encode(hq)
        ids, mask = m.prompts(batch["instructions"], lq_codes)
        ce, hidden = m.ar_forward(ids, mask, hq_codes)  # teacher forcing on the HQ codes
        cond = m.cond_from_hidden(hidden, None).drop(m.cfg.cond_dropout)  # AR tokens only (no z_low yet)
        sigma = self.schedule.sample_sigma(z.shape[0], device=z.device)
        noise = torch.randn_like(z)
        v = m.velocity(interpolate(z, noise, sigma), sigma, cond, self.schedule)
        l_diff = flow_matching_loss(v, z, noise)
        return {"loss": ce + self.alpha * l_diff, "ce": ce.detach(), "l_diff": l_diff}


class TextureAlignLoss(nn.Module):
    """``L_diff + beta mean((E_frozen(HQ) - E(LQ))^2)`` (Eq. 11, stage 1.2); the AR condition has no gradient."""

    def __init__(self, model: PrefRestoreModel, schedule: FlowSchedule, beta: float) -> None:
        super().__init__()
        self.model, self.schedule, self.beta = model, schedule, beta
        # a tuple keeps the frozen encoder out of the module tree: not saved, not in DDP, not trained
        self._target = (model.frozen_encoder_copy(),)

    @property
    def target_encoder(self) -> nn.Module:
        return self._target[0]

    def forward(self, batch: Mapping[str, Any]) -> dict[str, torch.Tensor]:
        m = self.model
        lq, hq = batch["lq"].to(m.device), batch["hq"].to(m.device)
        target = self.target_encoder.to(m.device)
        with torch.no_grad():  # frozen tokenizer, AR and reference encoder
            lq_codes, hq_codes = m.lq_codes(lq), m.lq_codes(hq)
            ids, mask = m.prompts(batch["instructions"], lq_codes)
            _, hidden = m.ar_forward(ids, mask, hq_codes)
            z = m.encode(hq, encoder=target)  # the decoder's latent space: target of L_diff and Eq. 11
        z_low = m.encode(lq)  # the trainable encoder sees the degraded image
        cond = m.cond_from_hidden(hidden.detach(), None, lq_latent=z_low).drop(m.cfg.cond_dropout)
        sigma = self.schedule.sample_sigma(z.shape[0], device=z.device)
        noise = torch.randn_like(z)
        v = m.velocity(interpolate(z, noise, sigma), sigma, cond, self.schedule)
        l_diff = flow_matching_loss(v, z, noise)
        l_mse = torch.mean((z - z_low.float()) ** 2)  # Eq. 11
        return {"loss": l_diff + self.beta * l_mse, "l_diff": l_diff.detach(), "l_mse": l_mse.detach()}


# --------------------------------------------------------------------------- steps
STAGES = {
    "stage1_1": ("1.1", Stage11Config),
    "stage1_2": ("1.2", Stage12Config),
}


def train(step: str, params: Params, inputs: Mapping[str, Path], out: Path,
          stop_after: int | None = None) -> dict[str, Any]:
    """Train stage ``step`` ("stage1_1" | "stage1_2") from ``inputs["base"]`` into ``out``.

    Resumes from ``out/checkpoints`` when it holds a sound checkpoint of the same settings and inputs;
    a finished run with the same fingerprint returns its summary without training. ``stop_after``
    (tests, kill drills) stops after that many optimizer steps, leaving a checkpoint to resume from.
    """
    stage, cls = STAGES[step]
    cfg = load_train_config(params, step, cls)
    data = params.section("data", DataConfig)
    dcfg = params.section("degrade", DegradeConfig)
    icfg = params.section("instructions", InstructionsConfig)
    schedule = params.section("flow", FlowSchedule)
    settings = params.section("restore", RestoreConfig)
    out = Path(out)
    sections = {name: as_dict(s) for name, s in
                (("train", cfg), ("data", data), ("degrade", dcfg), ("instructions", icfg), ("flow", schedule),
                 ("restore", settings))}
    fp = fingerprint(step, sections, {k: Path(v) for k, v in inputs.items()})
    done = finished(out, fp)
    if done is not None and stop_after is None:
        log.info("%s: %s already holds the finished run (fingerprint %s)", step, out, fp)
        return done

    model = PrefRestoreModel.from_pretrained(inputs["base"])
    names = model.freeze_for(stage)  # type: ignore[arg-type]
    if stage == "1.1":
        loss: nn.Module = SemanticAlignLoss(model, schedule, cfg.alpha)
    else:
        loss = TextureAlignLoss(model, schedule, cfg.beta)
    pairs = OnTheFlyPairs(Path(inputs["faces"]), dcfg, "train", data.seed)
    dataset = InstructedPairs(pairs, load_captions(Path(inputs["captions"])), icfg, data.seed)
    held = heldout.held_out(Path(inputs["faces"]), dcfg, cfg.val_images) if cfg.val_images else None

    def validate(m: nn.Module, at: int) -> dict[str, float]:
        assert held is not None
        return heldout.evaluate(m, held, settings, schedule, seed=data.seed, batch_size=cfg.per_device_batch,
                                   grid_path=out / VALIDATION_DIR / f"step-{at:08d}.png")

    task = TrainTask(step, model, loss, dataset, collate, validate if held is not None else None)
    tracking.set_tags({"trainable_params": sum(p.numel() for p in model.parameters() if p.requires_grad),
                       "trainable_groups": len(names)})
    result = fit(task, cfg, out / CHECKPOINTS, fp, seed=data.seed + (11 if stage == "1.1" else 12),
                 stop_after=stop_after)
    summary: dict[str, Any] = {
        "stage": stage, "steps": result.steps, "resumed_from": result.resumed_from, "seconds": round(result.seconds, 2),
        "trainable_params": sum(p.numel() for p in model.parameters() if p.requires_grad),
        "fingerprint": fp, **{k: v for k, v in result.last.items()}, **result.validation,
    }
    if result.validation:
        v = result.validation
        summary["restores"] = bool(v["val/psnr_restored"] > v["val/psnr_input"]
                                   and v["val/ssim_restored"] > v["val/ssim_input"])
    summary = distributed.broadcast(summary)  # rank 0 validated: every rank returns its summary
    if result.stopped_early:
        summary["stopped_early"] = True
        return summary

    def save_model(dest: Path) -> None:
        model.save_pretrained(dest)
        save_inference(dest, settings, schedule)

    if distributed.is_main():  # under torchrun rank 0 writes the model directory; the others wait for it
        finalize(out, save_model, summary)
    distributed.barrier()
    return summary


def run_stage1_1(params: Params, inputs: Mapping[str, Path], out: Path) -> dict[str, Any]:
    """Step ``stage1_1``: semantic-to-diffusion alignment (Eq. 10). See the module doc."""
    return train("stage1_1", params, inputs, out)


def run_stage1_2(params: Params, inputs: Mapping[str, Path], out: Path) -> dict[str, Any]:
    """Step ``stage1_2``: texture-to-diffusion alignment (Eq. 11). See the module doc."""
    return train("stage1_2", params, inputs, out)
