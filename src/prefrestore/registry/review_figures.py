"""The reviewer's figures (matplotlib ``Figure`` objects, no pyplot state), from what
:mod:`prefrestore.registry.review` reads: the stage-1 validation curve (Fig. 3), stage-2 reward
curves (Figs. 6 and 9), the determinism box plots (Fig. 8) and the sample grids.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from prefrestore.registry.review import (
    STAGE1_STEPS,
    Evaluation,
    NoData,
    image_artifacts,
    metric_history,
)

# Fig. 9 as stated in the paper's text (Appendix E): held-out compound reward.
PAPER_FIG9 = {"base model (step 0)": 20.66, "CodeFormer": 21.37, "plateau (step 210)": 24.49}


def _figure(ncols: int, width: float = 4.5, height: float = 3.4) -> tuple[Any, list[Any]]:
    """A pyplot-free Figure (no global state, no double display in notebooks) and its axes."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width * ncols, height), layout="constrained")
    axes = fig.subplots(1, ncols, squeeze=False)[0]
    return fig, list(axes)


def stage1_curves(client: Any, steps: Mapping[str, Any]) -> pd.DataFrame:
    """Fig. 3 data: the ``val/*`` curves of stage 1.1 then 1.2 on one step axis (1.2 offset by 1.1's last step)."""
    frames, offset = [], 0
    for stage in STAGE1_STEPS:
        run = steps.get(stage)
        if run is None:
            continue
        keys = sorted(k for k in run.data.metrics if k.startswith("val/"))
        last = 0
        for key in keys:
            hist = metric_history(client, run.info.run_id, key)
            if hist.empty:
                continue
            last = max(last, int(hist["step"].max()))
            frames.append(hist.assign(stage=stage, key=key, global_step=hist["step"] + offset))
        offset += last
    if not frames:
        raise NoData("no stage-1 validation curve: the stage1_1/stage1_2 runs logged no 'val/*' metrics "
                     "(validation.py logs them every stage1_*.validate_every steps and at the last step)")
    return pd.concat(frames, ignore_index=True)


def plot_stage1(curves: Mapping[str, pd.DataFrame]):
    """Fig. 3 view: FID(HQ) (when logged), PSNR and SSIM of restored vs. input, per run (label -> curves)."""
    panels = [("FID(HQ)↓", ("val/fid_hq",)), ("PSNR↑", ("val/psnr_restored", "val/psnr_input")),
              ("SSIM↑", ("val/ssim_restored", "val/ssim_input"))]
    fig, axes = _figure(len(panels))
    for ax, (title, keys) in zip(axes, panels, strict=True):
        drawn = 0
        for label, frame in curves.items():
            for key in keys:
                part = frame[frame["key"] == key].sort_values("global_step")
                if part.empty:
                    continue
                style = "--" if key.endswith("_input") else "-"
                ax.plot(part["global_step"], part["value"], style, marker="o", ms=3,
                        label=f"{label}: {key.removeprefix('val/')}")
                drawn += 1
            bound = frame[frame["stage"] == STAGE1_STEPS[0]]["global_step"]
            if not bound.empty and (frame["stage"] == STAGE1_STEPS[1]).any():
                ax.axvline(bound.max(), color="grey", lw=0.8, ls=":")
        if drawn:
            ax.legend(fontsize=7)
        else:
            flags = [f[f["key"] == "val/fid_hq_available"]["value"] for f in curves.values()]
            avail = [float(v.iloc[-1]) for v in flags if not v.empty]
            why = "unavailable: Inception weights not staged" if avail and max(avail) == 0 else "not logged"
            ax.text(0.5, 0.5, f"{title}\n{why}", ha="center", va="center", transform=ax.transAxes)
        ax.set_title(title)
        ax.set_xlabel("step (stage 1.1 | stage 1.2)")
        ax.grid(alpha=0.3)
    fig.suptitle("Stage-1 validation (Fig. 3 view)")
    return fig


def _keys(run: Any, prefix: str, suffix: str = "") -> list[str]:
    return sorted(k for k in run.data.metrics if k.startswith(prefix) and k.endswith(suffix))


def reward_curves(client: Any, stage2_runs: Mapping[str, Any]):
    """Fig. 6 view: the total training reward (left axis) and each reward term (right axis) per epoch."""
    runs = {k: r for k, r in stage2_runs.items() if r is not None and "reward/total_mean" in r.data.metrics}
    if not runs:
        raise NoData("no stage-2 reward curve: no stage2 run logged 'reward/total_mean' (train_stage2.py, per epoch)")
    fig, axes = _figure(len(runs), width=5.5)
    for ax, (label, run) in zip(axes, runs.items(), strict=True):
        total = metric_history(client, run.info.run_id, "reward/total_mean")
        ax.plot(total["step"], total["value"], color="purple", marker="o", ms=3, label="total reward")
        ax.set_ylabel("total reward")
        ax.set_xlabel("epoch (optimizer step)")
        right = ax.twinx()
        for key in _keys(run, "reward/", "_mean"):
            if key == "reward/total_mean":
                continue
            hist = metric_history(client, run.info.run_id, key)
            right.plot(hist["step"], hist["value"], ls="--", marker=".", label=key[len("reward/"):-len("_mean")])
        right.set_ylabel("reward terms")
        handles = ax.get_legend_handles_labels()
        more = right.get_legend_handles_labels()
        ax.legend(handles[0] + more[0], handles[1] + more[1], fontsize=7, loc="best")
        ax.set_title(label, fontsize=9)
        ax.grid(alpha=0.3)
    fig.suptitle("Stage-2 training rewards (Fig. 6 view)")
    return fig


def heldout_curves(client: Any, stage2_runs: Mapping[str, Any]):
    """Fig. 9 view: held-out total reward per epoch, the stage-1 model (epoch 0) dashed; PSNR/SSIM
    to HQ beside it (they must not collapse while the reward climbs: reward hacking, SPEC §6.8)."""
    runs = {k: r for k, r in stage2_runs.items() if r is not None and "heldout/reward_total" in r.data.metrics}
    if not runs:
        raise NoData("no held-out reward curve: no stage2 run logged 'heldout/reward_total' (train_stage2.py)")
    keys = ("heldout/reward_total", "heldout/psnr", "heldout/ssim")
    fig, axes = _figure(len(keys))
    for ax, key in zip(axes, keys, strict=True):
        for label, run in runs.items():
            hist = metric_history(client, run.info.run_id, key)
            if hist.empty:
                continue
            (line,) = ax.plot(hist["step"], hist["value"], marker="o", ms=3, label=label)
            start = hist[hist["step"] == 0]
            if not start.empty:
                ax.axhline(float(start["value"].iloc[0]), color=line.get_color(), ls="--", lw=0.8,
                           label=f"{label}: stage 1 (epoch 0)")
        ax.set_title(key)
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    quoted = ", ".join(f"{k} {v}" for k, v in PAPER_FIG9.items())
    fig.suptitle(f"Stage-2 held-out reward (Fig. 9 view). Paper, quoted (its reward scale): {quoted}", fontsize=9)
    return fig


def determinism_boxplot(spreads: Mapping[str, Mapping[str, Sequence[float]]], title: str | None = None):
    """Fig. 8 view: one panel per score (the sum last), one box per model, median in each panel's title."""
    if not spreads:
        raise NoData("no determinism spreads to plot")
    common = set.intersection(*(set(s) for s in spreads.values()))
    names = sorted(common - {"sum"}) + (["sum"] if "sum" in common else [])
    if not names:
        raise NoData("the spreads share no score")
    fig, axes = _figure(len(names), width=3.2)
    models = list(spreads)
    for ax, name in zip(axes, names, strict=True):
        data = [list(spreads[m][name]) for m in models]
        ax.boxplot(data, showfliers=False)
        ax.set_xticks(range(1, len(models) + 1), models)
        meds = ", ".join(f"{pd.Series(d).median():.4g}" for d in data)
        ax.set_title(f"{name}\nmedian std: {meds}", fontsize=8)
        ax.set_ylabel("std over seeds")
        ax.grid(alpha=0.3, axis="y")
    fig.suptitle(title or "Score std over sampling seeds (Fig. 8 view)", fontsize=9)
    return fig


def sample_grids(client: Any, steps: Mapping[str, Any], evals: Mapping[str, Evaluation], dst: Path
                 ) -> list[tuple[str, Path]]:
    """The newest logged sample grid of each producer, downloaded: (title, local path).

    Stage-1 validation grids (``validation/step-*.png``: LQ | restored | HQ), the stage-2 held-out
    grid (``validation/epoch-*.png``: LQ | stage 1 | now | HQ), each benchmark's evaluation grid
    (``evaluate/<benchmark>/grid.png``) and the stage-2 determinism box plot.
    """
    wanted: list[tuple[str, str, str]] = []  # (title, run id, artifact path)
    for stage in (*STAGE1_STEPS, "stage2"):
        run = steps.get(stage)
        if run is None:
            continue
        grids = [p for p in image_artifacts(client, run.info.run_id, "validation")]
        if grids:
            wanted.append((f"{stage}: {grids[-1]}", run.info.run_id, grids[-1]))
        if stage == "stage2":
            wanted += [(f"stage2: {p}", run.info.run_id, p) for p in image_artifacts(client, run.info.run_id,
                                                                                      "determinism")]
    for variant, ev in evals.items():
        for rid in ev.run_ids:
            wanted += [(f"evaluate {variant}: {p}", rid, p) for p in image_artifacts(client, rid, "evaluate")
                       if p.endswith("/grid.png")]
    if not wanted:
        raise NoData("no image artifacts: validation grids (stage1_*/stage2), evaluate/<benchmark>/grid.png")
    out = []
    for title, rid, path in wanted:
        local = client.download_artifacts(rid, path, str(Path(dst) / rid))
        out.append((title, Path(local)))
    return out


def image_grid(items: Sequence[tuple[str, Path]], width: float = 9.0):
    """The images one below the other, each with its title (sample grids are wide: keep them full-width)."""
    from matplotlib.figure import Figure
    from PIL import Image

    if not items:
        raise NoData("no images to show")
    imgs = [Image.open(p).convert("RGB") for _, p in items]
    heights = [width * im.height / im.width + 0.4 for im in imgs]
    fig = Figure(figsize=(width, sum(heights)), layout="constrained")
    axes = fig.subplots(len(imgs), 1, squeeze=False, height_ratios=heights)[:, 0]
    for ax, (title, _), im in zip(axes, items, imgs, strict=True):
        ax.imshow(im)
        ax.set_title(title, fontsize=8)
        ax.axis("off")
    return fig
