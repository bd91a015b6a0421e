"""The evaluate step: restore every benchmark image and measure it with the paper's metrics.

Benchmarks (SPEC 1, 4; Tables II-VI) are folders with a ``manifest.parquet`` (``id``, ``lq_path``,
optional ``hq_path`` and ``caption``; paths relative to the folder). A benchmark is *paired* when
every row has an HQ image (CelebA-Test): then LPIPS, FID(HQ), LMD, Deg, PSNR/SSIM, ClipScore-I and
DreamSim apply. The no-reference metrics (MUSIQ, CLIPIQA+, MANIQA, FID(FFHQ), topiq, DSL-FIQA)
apply everywhere; caption metrics where the manifest has captions.

One pass: each image is decoded once, restored once, and the same tensors feed every metric, in
batches. The degraded input is measured alongside as the "Input" row. An unreadable image is
reported and excluded from every metric (the count shows in the table); a mismatched pair (ids or
sizes differ) is an error. A metric whose weights are missing is "unavailable" (an error with
``evaluate.require``). Restored images are cached as they are made, so an interrupted run resumes.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from prefrestore.core import atomic, integrity, tracking
from prefrestore.core.config import Params, check_range
from prefrestore.core.images import BadImage, ImageLimits, load_rgb, save_png
from prefrestore.core.weights import MissingWeights
from prefrestore.metrics import get as get_metrics
from prefrestore.metrics.base import BuildContext, MetricSpec, Scorer, Unavailable

# (list of uint8 HWC LQ images, captions or None, seed) -> list of uint8 HWC restored images
RestoreFn = Callable[[list[np.ndarray], Sequence[str] | None, int], list[np.ndarray]]
Value = float | Unavailable


@dataclasses.dataclass(frozen=True)
class EvaluateConfig:
    benchmarks: tuple[str, ...]  # benchmark subfolders to evaluate
    metrics: tuple[str, ...]  # metric ids (prefrestore.metrics.SPECS)
    require: bool  # missing weights: error instead of "unavailable"
    batch_size: int  # images per metric batch
    max_images: int | None  # first N images per benchmark (None: all)
    seed: int  # restoration seed
    use_captions: bool  # pass manifest captions to the restorer
    grid_samples: int  # rows in the sample grid
    keep_restored: bool  # copy the restored PNGs into the report (and so into MLflow)
    fid_dataset_res: int  # FID(FFHQ) reference resolution
    fid_dataset_split: str  # FID(FFHQ) reference split
    lmd_resolution: int  # LMD landmark resolution
    arcface_size: int  # Deg ArcFace input side
    determinism_seeds: int  # Fig. 8 seeds per image (0: off)

    def __post_init__(self) -> None:
        check_range("batch_size", self.batch_size, 1, 4096)
        check_range("grid_samples", self.grid_samples, 0, 64)
        check_range("lmd_resolution", self.lmd_resolution, 16, 4096)
        check_range("arcface_size", self.arcface_size, 16, 1024)
        check_range("determinism_seeds", self.determinism_seeds, 0, 1024)
        if self.determinism_seeds == 1:
            raise ValueError("determinism_seeds must be 0 (off) or >= 2")
        if self.max_images is not None:
            check_range("max_images", self.max_images, 1, 10**9)
        if not self.benchmarks:
            raise ValueError("benchmarks is empty")
        get_metrics(self.metrics)  # unknown ids are errors at load time


class PairingError(ValueError):
    """A paired benchmark whose LQ and HQ do not match (ids or sizes)."""


@dataclasses.dataclass(frozen=True)
class Benchmark:
    name: str
    root: Path
    rows: pd.DataFrame  # id, lq_path, hq_path (paired), caption (optional)
    paired: bool
    has_captions: bool
    limits: ImageLimits | None = None  # the served model's input limit (params image_limits), applied on decode


def load_benchmark(root: Path, max_images: int | None = None) -> Benchmark:
    """Read a benchmark's manifest and check its pairing rules (paired iff every row has an HQ)."""
    root = Path(root)
    manifest = root / "manifest.parquet"
    if not manifest.is_file():
        raise FileNotFoundError(f"benchmark {root.name}: no manifest.parquet in {root}")
    rows = pd.read_parquet(manifest)
    for col in ("id", "lq_path"):
        if col not in rows.columns:
            raise ValueError(f"benchmark {root.name}: manifest lacks column '{col}' (has {list(rows.columns)})")
    rows = rows.assign(id=rows["id"].astype(str))
    if rows["id"].duplicated().any():
        raise ValueError(f"benchmark {root.name}: duplicate ids {rows['id'][rows['id'].duplicated()].tolist()[:5]}")
    if len(rows) == 0:
        raise ValueError(f"benchmark {root.name}: empty manifest")
    has_hq = rows["hq_path"].notna() & (rows["hq_path"].astype(str) != "") if "hq_path" in rows else None
    paired = bool(has_hq is not None and has_hq.all())
    if has_hq is not None and has_hq.any() and not paired:
        raise PairingError(f"benchmark {root.name}: {int((~has_hq).sum())} rows lack hq_path while others have one")
    if paired:
        bad = [(i, lq, hq) for i, lq, hq in zip(rows["id"], rows["lq_path"], rows["hq_path"], strict=True)
               if Path(str(lq)).stem != Path(str(hq)).stem]
        if bad:
            raise PairingError(f"benchmark {root.name}: LQ and HQ file names disagree for ids {bad[:3]}")
    has_captions = "caption" in rows and bool((rows["caption"].fillna("").astype(str).str.strip() != "").all())
    rows = rows.sort_values("id", kind="stable").reset_index(drop=True)
    if max_images is not None:
        rows = rows.iloc[:max_images].reset_index(drop=True)
    return Benchmark(root.name, root, rows, paired, has_captions)


@dataclasses.dataclass
class BenchmarkResult:
    name: str
    paired: bool
    n_images: int  # rows in the manifest (after max_images)
    excluded: dict[str, str]  # id -> reason (unreadable LQ or HQ)
    restored: dict[str, Value]  # metric id -> value (applicable metrics only)
    input: dict[str, Value]  # same metrics on the degraded input ("Input" row)
    per_image: pd.DataFrame  # id + per-image values of per-image metrics (restored)
    images_per_s: float

    def summary(self) -> dict[str, Any]:
        def enc(v: Value) -> Any:
            return v if isinstance(v, float) else str(v)

        return {"paired": self.paired, "n_images": self.n_images, "n_excluded": len(self.excluded),
                "excluded": self.excluded, "restored": {k: enc(v) for k, v in self.restored.items()},
                "input": {k: enc(v) for k, v in self.input.items()}, "images_per_s": self.images_per_s}


def applicable(spec: MetricSpec, bench: Benchmark) -> bool:
    """Pairing rule: full-reference metrics need HQ; text metrics need captions."""
    return (bench.paired or not spec.needs_hq) and (bench.has_captions or not spec.needs_caption)


class MetricSet:
    """Builds each metric once (models shared across benchmarks) or records why it cannot run."""

    def __init__(self, specs: Sequence[MetricSpec], ctx: BuildContext, require: bool):
        self.specs = list(specs)
        self.ctx, self.require = ctx, require
        self._built: dict[str, Scorer | Unavailable] = {}

    def scorer(self, spec: MetricSpec) -> Scorer | Unavailable:
        if spec.name not in self._built:
            missing = spec.missing()
            if missing:
                if self.require:
                    raise MissingWeights(f"metric '{spec.name}' cannot run (evaluate.require): {'; '.join(missing)}")
                self._built[spec.name] = Unavailable("; ".join(missing))
            else:
                try:
                    self._built[spec.name] = spec.build(self.ctx)
                except MissingWeights as exc:
                    if self.require:
                        raise
                    self._built[spec.name] = Unavailable(str(exc))
        return self._built[spec.name]

    def unavailable(self) -> dict[str, str]:
        return {k: v.reason for k, v in self._built.items() if isinstance(v, Unavailable)}


def _decode(bench: Benchmark, row: pd.Series) -> tuple[np.ndarray, np.ndarray | None]:
    lim = {"max_pixels": bench.limits.max_pixels, "min_side": bench.limits.min_side} if bench.limits else {}
    lq = load_rgb(bench.root / str(row["lq_path"]), **lim)
    hq = load_rgb(bench.root / str(row["hq_path"]), **lim) if bench.paired else None
    if hq is not None and lq.shape != hq.shape:
        raise PairingError(f"benchmark {bench.name}, id {row['id']}: LQ {lq.shape} and HQ {hq.shape} sizes differ")
    return lq, hq


def _to_tensor(images: Sequence[np.ndarray]) -> torch.Tensor:
    """uint8 ``[H, W, 3]`` images -> contiguous ``[B, 3, H, W]`` float32 in [0, 1] (planar: each
    channel of each image one block, as the per-plane filters of the pixel metrics want)."""
    return torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).contiguous().float().div_(255.0)


def _same_size_groups(images: Sequence[np.ndarray]) -> list[list[int]]:
    groups: dict[tuple[int, ...], list[int]] = {}
    for i, img in enumerate(images):
        groups.setdefault(img.shape, []).append(i)
    return list(groups.values())


def evaluate_folder(
    restore_fn: RestoreFn,
    bench: Benchmark,
    metrics: MetricSet,
    *,
    batch_size: int,
    seed: int = 0,
    use_captions: bool = False,
    measure_input: bool = True,
    restored_dir: Path | None = None,
    progress: bool = True,
) -> tuple[BenchmarkResult, list[tuple[np.ndarray, np.ndarray, np.ndarray | None]]]:
    """One pass over a benchmark: decode once, restore once, feed every applicable metric.

    ``restored_dir`` caches restored PNGs by id: an existing one is reused instead of restoring
    again (resume). Returns the result and up to a few (LQ, restored, HQ) samples for the grid.
    """
    specs = [s for s in metrics.specs if applicable(s, bench)]
    scorers: dict[str, Scorer | Unavailable] = {}
    in_scorers: dict[str, Scorer] = {}
    for spec in specs:
        base = metrics.scorer(spec)
        scorers[spec.name] = base if isinstance(base, Unavailable) else base.fresh()
        if measure_input and not isinstance(base, Unavailable):
            in_scorers[spec.name] = base.fresh()
    live = {k: v for k, v in scorers.items() if not isinstance(v, Unavailable)}
    excluded: dict[str, str] = {}
    per_image: dict[str, list[float]] = {"id": []}
    samples: list[tuple[np.ndarray, np.ndarray, np.ndarray | None]] = []
    n_done, t0 = 0, time.perf_counter()
    bar = tqdm(total=len(bench.rows), desc=f"evaluate {bench.name}", unit="img", disable=not progress)
    for start in range(0, len(bench.rows), batch_size):
        chunk = bench.rows.iloc[start : start + batch_size]
        ids, lqs, hqs, caps = [], [], [], []
        for _, row in chunk.iterrows():
            try:
                lq, hq = _decode(bench, row)
            except (BadImage, FileNotFoundError) as exc:
                excluded[row["id"]] = f"{type(exc).__name__}: {exc}"
                continue
            ids.append(row["id"])
            lqs.append(lq)
            hqs.append(hq)
            caps.append(str(row["caption"]) if bench.has_captions else "")
        bar.update(len(chunk))
        if not ids:
            continue
        restored = _restore(restore_fn, ids, lqs, caps if (use_captions and bench.has_captions) else None,
                            seed, restored_dir)
        for i, (lq, out) in enumerate(zip(lqs, restored, strict=True)):
            want = hqs[i].shape if bench.paired else None
            if out.dtype != np.uint8 or out.ndim != 3 or out.shape[2] != 3 or (want and out.shape != want):
                raise ValueError(f"{bench.name}/{ids[i]}: restorer returned {out.dtype} {out.shape}, "
                                 f"expected uint8 {want or '[H, W, 3]'}")
            if len(samples) < 8:
                samples.append((lq, out, hqs[i]))
        for group in _same_size_groups(restored):
            r = _to_tensor([restored[i] for i in group])
            h = _to_tensor([hqs[i] for i in group]) if bench.paired else None
            c = [caps[i] for i in group] if bench.has_captions else None
            per_image["id"].extend(ids[i] for i in group)
            for name, sc in live.items():
                v = sc.update(r, h, c)
                if v is not None:
                    per_image.setdefault(name, []).extend(v.tolist())
        for group in _same_size_groups(lqs) if in_scorers else []:  # the "Input" row: the LQ itself
            x = _to_tensor([lqs[i] for i in group])
            h = _to_tensor([hqs[i] for i in group]) if bench.paired else None
            c = [caps[i] for i in group] if bench.has_captions else None
            for sc in in_scorers.values():
                sc.update(x, h, c)
        n_done += len(ids)
        bar.set_postfix(img_per_s=f"{n_done / max(time.perf_counter() - t0, 1e-9):.2f}")
    bar.close()
    if n_done == 0:
        raise ValueError(f"benchmark {bench.name}: every image was excluded ({excluded})")
    rate = n_done / max(time.perf_counter() - t0, 1e-9)
    restored_vals = {k: (v if isinstance(v, Unavailable) else v.finish()) for k, v in scorers.items()}
    input_vals = {k: (in_scorers[k].finish() if k in in_scorers else scorers[k]) for k in scorers} if measure_input else {}
    frame = pd.DataFrame({k: v for k, v in per_image.items() if len(v) == len(per_image["id"])})
    return (BenchmarkResult(bench.name, bench.paired, len(bench.rows), excluded, restored_vals, input_vals,
                            frame, rate), samples)


def _restore(restore_fn: RestoreFn, ids: list[str], lqs: list[np.ndarray], captions: list[str] | None,
             seed: int, cache: Path | None) -> list[np.ndarray]:
    """Restore a batch, reusing cached PNGs by id (resume) and caching new ones as they are made."""
    out: list[np.ndarray | None] = [None] * len(ids)
    todo = []
    for i, id_ in enumerate(ids):
        if cache is not None and (cache / f"{id_}.png").is_file():
            out[i] = load_rgb(cache / f"{id_}.png")
        else:
            todo.append(i)
    if todo:
        made = restore_fn([lqs[i] for i in todo], [captions[i] for i in todo] if captions else None, seed)
        if len(made) != len(todo):
            raise ValueError(f"restorer returned {len(made)} images for {len(todo)} inputs")
        for i, img in zip(todo, made, strict=True):
            out[i] = np.asarray(img)
            if cache is not None and out[i].dtype == np.uint8:
                save_png(cache / f"{ids[i]}.png", out[i])
    return [o for o in out if o is not None]


def sample_grid(samples: Sequence[tuple[np.ndarray, np.ndarray, np.ndarray | None]], rows: int,
                side: int = 128) -> np.ndarray:
    """LQ | restored | HQ (grey where there is no HQ), one sample per row, each ``side`` px."""
    import cv2

    def fit(img: np.ndarray | None) -> np.ndarray:
        if img is None:
            return np.full((side, side, 3), 128, np.uint8)
        return cv2.resize(img, (side, side), interpolation=cv2.INTER_AREA)

    lines = [np.concatenate([fit(lq), fit(out), fit(hq)], 1) for lq, out, hq in samples[:rows]]
    return np.concatenate(lines, 0)


# ------------------------------------------------------------------------------------------ restorers
def identity_restore(images: list[np.ndarray], captions: Sequence[str] | None, seed: int) -> list[np.ndarray]:
    """The reference restorer that returns its input (what the "Input" row measures)."""
    return [np.array(img, copy=True) for img in images]


def load_restorer(model_dir: Path) -> RestoreFn:
    """``Restorer.from_pretrained(model_dir).restore_uint8``, or a reference restorer.

    A model folder holding ``baseline.json`` with ``{"restore": "identity"}`` selects the identity
    reference (pipeline smoke tests, and evaluating a benchmark's inputs as a model).
    """
    model_dir = Path(model_dir)
    spec = model_dir / "baseline.json"
    if spec.is_file():
        kind = json.loads(spec.read_text())["restore"]
        if kind != "identity":
            raise ValueError(f"{spec}: unknown reference restorer {kind!r} (known: 'identity')")
        return identity_restore
    try:
        from prefrestore.model.restore import Restorer
    except ImportError as exc:
        raise RuntimeError(f"cannot load {model_dir}: prefrestore.model.restore.Restorer is not available ({exc})"
                           ) from exc
    restorer = Restorer.from_pretrained(model_dir)

    def restore(images, captions, seed):
        return restorer.restore_uint8(list(images), captions=list(captions) if captions else None, seed=seed)

    return restore


# ------------------------------------------------------------------------------------------ the step
def _device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def run(params: Params, inputs: Mapping[str, Path], out: Path, *, restore_fn: RestoreFn | None = None,
        progress: bool = True) -> dict[str, Any]:
    """Evaluate ``inputs['model']`` on each benchmark under ``inputs['benchmarks']``; write reports to ``out``.

    Writes ``<bench>/table.md``, ``<bench>/table.csv``, ``<bench>/per_image.csv``, ``<bench>/grid.png``,
    ``<bench>/restored/``, ``report.md`` and ``metrics.json``; logs ``<bench>/<metric>`` to MLflow, and
    tags the run ``variant`` (fidelity/quality) when the model folder says which variant it is.
    ``restore_fn`` (tests) replaces the model's restorer. ``inputs['baseline']`` (optional) is an
    earlier evaluate output whose rows are shown next to ours.
    """
    from prefrestore.evaluation import report as eval_report

    cfg = params.section("evaluate", EvaluateConfig)
    out = Path(out)
    bench_root = Path(inputs["benchmarks"])
    missing = [b for b in cfg.benchmarks if not (bench_root / b / "manifest.parquet").is_file()]
    if missing:
        raise FileNotFoundError(f"benchmarks {missing} not found under {bench_root} (each needs manifest.parquet)")
    limits = params.section("image_limits", ImageLimits)
    benches = [dataclasses.replace(load_benchmark(bench_root / b, cfg.max_images), limits=limits)
               for b in cfg.benchmarks]
    model_dir = Path(inputs["model"])
    if (model_dir / "MLmodel").is_file():  # a registered model (downloaded MLflow folder): verify it first
        model_dir = integrity.mlflow_model_dir(model_dir)
    variant = eval_report.variant_of(model_dir)  # None: a model that is neither variant (a baseline)
    restore = restore_fn or load_restorer(model_dir)
    device = _device()
    ctx = BuildContext(device, cfg.fid_dataset_res, cfg.fid_dataset_split, cfg.lmd_resolution, cfg.arcface_size)
    metric_set = MetricSet(get_metrics(cfg.metrics), ctx, cfg.require)
    baseline = eval_report.load_baseline(Path(inputs["baseline"])) if inputs.get("baseline") else None
    cache_root = out.with_name(out.name + ".restore_cache")
    key = {"model": str(model_dir.resolve()), "seed": cfg.seed, "use_captions": cfg.use_captions}
    if cache_root.is_dir() and (not (cache_root / "key.json").is_file()
                                or json.loads((cache_root / "key.json").read_text()) != key):
        shutil.rmtree(cache_root)
    cache_root.mkdir(parents=True, exist_ok=True)
    atomic.write_json(cache_root / "key.json", key)

    results: dict[str, BenchmarkResult] = {}
    grids: dict[str, np.ndarray] = {}
    for bench in benches:
        res, samples = evaluate_folder(restore, bench, metric_set, batch_size=cfg.batch_size, seed=cfg.seed,
                                       use_captions=cfg.use_captions, restored_dir=cache_root / bench.name,
                                       progress=progress)
        results[bench.name] = res
        if cfg.grid_samples and samples:
            grids[bench.name] = sample_grid(samples, cfg.grid_samples)
    determinism = _determinism(cfg, benches, restore, metric_set)
    unavailable = metric_set.unavailable()

    with atomic.atomic_path(out) as tmp:
        tmp.mkdir(parents=True)
        for name, res in results.items():
            d = tmp / name
            d.mkdir()
            table = eval_report.benchmark_table(name, res, model_label=eval_report.variant_label(model_dir),
                                                baseline=baseline)
            (d / "table.md").write_text(eval_report.to_markdown(table))
            table.frame.to_csv(d / "table.csv", index=False)
            res.per_image.to_csv(d / "per_image.csv", index=False)
            if name in grids:
                save_png(d / "grid.png", grids[name])
            if cfg.keep_restored and (cache_root / name).is_dir():
                shutil.copytree(cache_root / name, d / "restored")
        summary = {"profile": params.profile, "model": str(model_dir), "variant": variant, "device": str(device),
                   "benchmarks": {k: v.summary() for k, v in results.items()}, "unavailable": unavailable,
                   "determinism": determinism}
        (tmp / "report.md").write_text(eval_report.full_report(results, unavailable, model_dir, baseline))
        (tmp / "metrics.json").write_text(json.dumps(summary, indent=2, sort_keys=True) + "\n")
    shutil.rmtree(cache_root, ignore_errors=True)

    flat = {f"{b}/{m}": v for b, r in results.items() for m, v in r.restored.items() if isinstance(v, float)}
    flat.update({f"{b}/input/{m}": v for b, r in results.items() for m, v in r.input.items() if isinstance(v, float)})
    flat.update({f"{b}/n_excluded": float(len(r.excluded)) for b, r in results.items()})
    tracking.log_metrics(flat)
    tracking.set_tags({f"unavailable/{k}": v[:250] for k, v in unavailable.items()})
    if variant is not None:
        tracking.set_tags({"variant": variant})
    tracking.log_artifact(out, "evaluate")
    return {"n_benchmarks": len(results), "n_unavailable": len(unavailable),
            "n_excluded": sum(len(r.excluded) for r in results.values()),
            **{k: v for k, v in flat.items() if "/input/" not in k}}


def _determinism(cfg: EvaluateConfig, benches: Sequence[Benchmark], restore: RestoreFn,
                 metric_set: MetricSet) -> dict[str, Any] | str:
    """Fig. 8: median over images of the std over ``determinism_seeds`` seeds of the preference scores."""
    if cfg.determinism_seeds == 0:
        return "off"
    from prefrestore.metrics.determinism import seed_spread

    names = [n for n in ("hpsv2", "pickscore", "clip_score") if n in cfg.metrics]
    out: dict[str, Any] = {}
    for bench in benches:
        specs = [s for s in metric_set.specs if s.name in names and applicable(s, bench)]
        scorers = {s.name: metric_set.scorer(s) for s in specs}
        live = {k: v for k, v in scorers.items() if not isinstance(v, Unavailable)}
        if not live:
            out[bench.name] = str(Unavailable("no preference scorer available (weights or captions missing)"))
            continue
        images, caps = [], []
        for _, row in bench.rows.iterrows():
            try:
                images.append(_decode(bench, row)[0])
                caps.append(str(row["caption"]) if bench.has_captions else "")
            except (BadImage, FileNotFoundError):
                continue
        x = _to_tensor(images)

        def restore_t(batch: torch.Tensor, seed: int) -> torch.Tensor:
            u8 = (batch.clamp(0, 1) * 255).round().byte().permute(0, 2, 3, 1).numpy()
            return _to_tensor(restore(list(u8), None, seed))

        def score(restored: torch.Tensor, idx: torch.Tensor, caps=caps, live=live) -> dict[str, torch.Tensor]:
            c = [caps[i] for i in idx.tolist()]
            return {k: sc.fresh().update(restored, None, c) for k, sc in live.items()}

        spread = seed_spread(score, restore_t, x, list(range(cfg.determinism_seeds)), batch_size=cfg.batch_size)
        out[bench.name] = {k: v for k, v in spread.as_dict().items() if k != "per_image_std"}
    return out
