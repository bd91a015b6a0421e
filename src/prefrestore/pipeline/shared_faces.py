"""Evaluate the trained variants on the workplace's real faces, without copying them into the project.

``../shared/data/faces`` (beside the checkout; ``$PREFRESTORE_SHARED_FACES`` overrides it) holds a
few licensed real faces: ``hq/`` aligned high-quality faces and ``real_lq/`` real-world degraded
faces with no ground truth. Its README forbids copying them into the project, so everything made
from them lives in a work folder OUTSIDE the checkout (``$PREFRESTORE_SHARED_WORK``, default
``~/.cache/prefrestore/shared_faces``):

- ``shared_hq``: a paired benchmark. Each HQ face is centre-cropped and resized to
  ``data.resolution`` (:func:`prefrestore.core.images.fit_square`), then degraded with Eq. 16 at the
  benchmark seed, as the synthetic CelebA-Test set is (:func:`prefrestore.data.degrade.step.synthesize_benchmark`).
- ``shared_real_lq``: an unpaired benchmark of the real LQ faces, resized the same way
  (:func:`benchmarks_data.register_benchmark`).

Each variant's model (``fidelity``: stage 1.2, ``quality``: stage 2) is then evaluated on both by
the ``evaluate`` step, in this process, inside an MLflow parent run, with sample grids and the
copies of the restored faces switched off (``evaluate.grid_samples: 0``, ``keep_restored: false``),
so that no face imagery reaches the MLflow artifact store (inside the checkout by default): only
numbers and tables do.
Unreadable inputs are counted and listed in ``inputs.json``, never dropped silently. A re-run
with the same models, faces and params reuses the previous results.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from prefrestore.core import atomic, images
from prefrestore.core.config import PROJECT_ROOT, Params, as_dict
from prefrestore.data import benchmarks as benchmarks_data
from prefrestore.data.degrade.direct import DegradeConfig
from prefrestore.data.ingest import DataConfig, IngestConfig

log = logging.getLogger(__name__)

FACES_ENV = "PREFRESTORE_SHARED_FACES"
WORK_ENV = "PREFRESTORE_SHARED_WORK"
PAIRED, UNPAIRED = "shared_hq", "shared_real_lq"
KEY_FILE = "key.json"


def faces_dir() -> Path | None:
    """The shared faces folder when it is present (``hq/`` and ``real_lq/``), else None."""
    root = Path(os.environ.get(FACES_ENV) or PROJECT_ROOT.parent / "shared" / "data" / "faces")
    return root if (root / "hq").is_dir() and (root / "real_lq").is_dir() else None


def work_dir() -> Path:
    """Where the derived benchmarks and reports go; refuses a folder inside the checkout."""
    work = Path(os.environ.get(WORK_ENV) or Path.home() / ".cache" / "prefrestore" / "shared_faces").resolve()
    if work == PROJECT_ROOT.resolve() or PROJECT_ROOT.resolve() in work.parents:
        raise ValueError(f"{WORK_ENV}={work} is inside the project; the shared faces must not be copied into it")
    return work


def _resized(src: Path, dest: Path, resolution: int, max_aspect: float) -> dict[str, Any]:
    """Every image of ``src`` centre-cropped and resized to ``resolution`` as PNG in ``dest``."""
    paths = benchmarks_data.list_images(src)
    done, bad = [], []
    with atomic.atomic_path(dest) as tmp:
        tmp.mkdir(parents=True, exist_ok=True)
        for sample_id, path in zip(benchmarks_data.unique_ids(paths), paths, strict=True):
            try:
                img = images.fit_square(images.load_rgb(path), resolution, max_aspect)
            except images.BadImage as exc:
                bad.append({"file": path.name, "reason": exc.reason, "detail": exc.detail})
                continue
            images.save_png(tmp / f"{sample_id}.png", img)
            done.append(sample_id)
    if bad:
        log.warning("shared faces: %d of %d images in %s are unusable and left out: %s", len(bad), len(paths), src, bad)
    return {"source": str(src), "used": len(done), "unusable": bad}


def build_benchmarks(faces: Path, work: Path, params: Params) -> Path:
    """``work/benchmarks/{shared_hq, shared_real_lq}`` from ``faces`` (module doc); returns the root."""
    from prefrestore.data.degrade.step import synthesize_benchmark

    res = params.section("data", DataConfig).resolution
    aspect = params.section("ingest", IngestConfig).max_aspect
    root = work / "benchmarks"
    report = {
        "hq": _resized(faces / "hq", work / "inputs" / f"hq_{res}", res, aspect),
        "real_lq": _resized(faces / "real_lq", work / "inputs" / f"real_lq_{res}", res, aspect),
    }
    atomic.write_json(work / "inputs.json", report)
    synthesize_benchmark(PAIRED, work / "inputs" / f"hq_{res}", root, params.section("degrade", DegradeConfig), res)
    benchmarks_data.register_benchmark(UNPAIRED, work / "inputs" / f"real_lq_{res}", None, root)
    return root


def _tree_digest(folder: Path) -> str:
    h = hashlib.sha256()
    for p in sorted(q for q in folder.rglob("*") if q.is_file()):
        h.update(str(p.relative_to(folder)).encode())
        h.update(p.read_bytes())
    return h.hexdigest()


def _key(model: Path, faces_digest: str, params: Params) -> str:
    sections = {s: as_dict(params.section(s, cls)) for s, cls in
                (("data", DataConfig), ("degrade", DegradeConfig), ("ingest", IngestConfig))}
    blob = json.dumps({"model": _tree_digest(model), "faces": faces_digest, "params": sections,
                       "evaluate": params.tree["evaluate"]}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()


def summary_lines(results: Mapping[str, Mapping[str, Any]]) -> list[str]:
    """One line per variant: its PSNR/SSIM on ``shared_hq`` against the degraded input's, and the
    unpaired set's count of unavailable metrics."""
    lines = []
    for variant, s in results.items():
        shown = [m for m in ("psnr", "ssim", "ms_ssim") if isinstance(s.get(f"{PAIRED}/{m}"), float)]
        got = ", ".join(f"{m} {s[f'{PAIRED}/{m}']:.4g} (input {s.get(f'{PAIRED}/input/{m}', float('nan')):.4g})"
                        for m in shown)
        lines.append(f"  {variant} on ../shared faces: {PAIRED} {got or 'n/a'}; {UNPAIRED}: no-reference metrics only "
                     f"({int(s.get('n_unavailable', 0))} metrics unavailable here){' (reused)' if s.get('reused') else ''}")
    return lines


def evaluate_variants(models: Mapping[str, Path], params: Params, faces: Path | None = None,
                      work: Path | None = None) -> dict[str, dict[str, Any]]:
    """Evaluate each ``{variant: model_dir}`` on the two shared benchmarks; ``{variant: summary}``.

    The evaluate step's outputs go to ``work/eval_<variant>``; its MLflow runs nest under one parent
    run. Empty when the shared faces are absent.
    """
    from prefrestore.core import tracking
    from prefrestore.pipeline import steps

    faces = faces or faces_dir()
    if faces is None:
        return {}
    work = work or work_dir()
    evaluate = steps.get("evaluate")
    run_params = params.with_overrides({"evaluate.benchmarks": [PAIRED, UNPAIRED], "evaluate.max_images": None,
                                        "evaluate.grid_samples": 0, "evaluate.keep_restored": False})
    faces_digest = _tree_digest(faces)
    keys = {v: _key(Path(m), faces_digest, run_params) for v, m in models.items()}
    out: dict[str, dict[str, Any]] = {}
    todo = {}
    for variant, model in models.items():
        key_path = work / f"eval_{variant}" / KEY_FILE
        saved = json.loads(key_path.read_text()) if key_path.is_file() else {}
        if saved.get("key") == keys[variant]:
            out[variant] = {**saved["summary"], "reused": True}
        else:
            todo[variant] = Path(model)
    if not todo:
        return out
    bench = build_benchmarks(faces, work, run_params)
    with tracking.pipeline_run(params.profile, "shared_faces", run_name="shared-faces evaluation"):
        for variant, model in todo.items():
            dest = work / f"eval_{variant}"
            summary = steps.execute(evaluate, run_params, {"model": model, "benchmarks": bench}, dest)
            paired = json.loads((dest / "metrics.json").read_text())["benchmarks"][PAIRED]["input"]
            summary.update({f"{PAIRED}/input/{k}": v for k, v in paired.items() if isinstance(v, float)})
            atomic.write_json(dest / KEY_FILE, {"key": keys[variant], "summary": summary})
            out[variant] = summary
    return out
