"""Evaluation on ../shared/data/faces: paired from hq/, unpaired from real_lq/, all outside the project,
no face imagery in the reports or MLflow, unusable inputs counted, and a re-run reuses the results."""

from __future__ import annotations

import json
from pathlib import Path

import mlflow
import pytest

from prefrestore.core.config import PROJECT_ROOT
from prefrestore.core.images import save_png
from prefrestore.pipeline import shared_faces


def _identity(path: Path) -> Path:
    path.mkdir(parents=True)
    (path / "baseline.json").write_text('{"restore": "identity"}')
    return path


def test_faces_dir_needs_both_folders(tmp_path, monkeypatch):
    monkeypatch.setenv(shared_faces.FACES_ENV, str(tmp_path))
    (tmp_path / "hq").mkdir()
    assert shared_faces.faces_dir() is None
    (tmp_path / "real_lq").mkdir()
    assert shared_faces.faces_dir() == tmp_path


def test_work_dir_refuses_the_project(tmp_path, monkeypatch):
    monkeypatch.setenv(shared_faces.WORK_ENV, str(PROJECT_ROOT / "data" / "shared"))
    with pytest.raises(ValueError, match="inside the project"):
        shared_faces.work_dir()
    monkeypatch.setenv(shared_faces.WORK_ENV, str(tmp_path / "w"))
    assert shared_faces.work_dir() == (tmp_path / "w").resolve()


def test_evaluate_variants_on_the_shared_faces(shared_faces_copy, tiny_params, tmp_path):
    faces, n_hq, n_lq = shared_faces_copy
    models = {"fidelity": _identity(tmp_path / "m" / "stage1_2"), "quality": _identity(tmp_path / "m" / "stage2")}
    work = tmp_path / "work"
    got = shared_faces.evaluate_variants(models, tiny_params, faces, work)

    assert set(got) == {"fidelity", "quality"}
    for variant in got:
        m = json.loads((work / f"eval_{variant}" / "metrics.json").read_text())
        paired, unpaired = m["benchmarks"][shared_faces.PAIRED], m["benchmarks"][shared_faces.UNPAIRED]
        assert paired["n_images"] == n_hq and unpaired["n_images"] == n_lq - 1  # the broken file is left out...
        assert paired["paired"] and not unpaired["paired"]
        psnr = paired["restored"]["psnr"]
        assert 10 < psnr < 40 and psnr == pytest.approx(paired["input"]["psnr"])  # identity restorer
        assert set(unpaired["restored"]) and all(str(v).startswith("unavailable") for v in unpaired["restored"].values())
        assert m["variant"] == variant
        assert not list((work / f"eval_{variant}").rglob("*.png"))  # no face imagery in the reports
    bad = json.loads((work / "inputs.json").read_text())["real_lq"]["unusable"]
    assert [b["file"] for b in bad] == ["broken.png"]  # ...and counted, with its reason
    assert got["fidelity"][f"{shared_faces.PAIRED}/psnr"] == pytest.approx(
        json.loads((work / "eval_fidelity" / "metrics.json").read_text())["benchmarks"][shared_faces.PAIRED]
        ["restored"]["psnr"])

    runs = mlflow.search_runs(search_all_experiments=True, output_format="list")
    evals = [r for r in runs if r.info.run_name == "evaluate"]
    assert len(evals) == 2 and {r.data.tags["variant"] for r in evals} == {"fidelity", "quality"}
    parents = {r.data.tags.get("mlflow.parentRunId") for r in evals}
    assert len(parents) == 1 and None not in parents
    for r in evals:
        art = Path(mlflow.artifacts.download_artifacts(run_id=r.info.run_id, dst_path=str(tmp_path / r.info.run_id)))
        assert list(art.rglob("table.md")) and not list(art.rglob("*.png"))

    again = shared_faces.evaluate_variants(models, tiny_params, faces, work)  # same inputs: reused, no new runs
    assert all(s.get("reused") for s in again.values())
    assert len(mlflow.search_runs(search_all_experiments=True, output_format="list")) == len(runs)
    lines = shared_faces.summary_lines(got)
    assert len(lines) == 2 and "shared_hq" in lines[0] and "psnr " in lines[0] and "(input " in lines[0]


@pytest.fixture()
def shared_faces_copy(shared_faces, tmp_path):
    """A small copy of ../shared faces (3 HQ, 3 real LQ + one broken file) in a temp folder, for speed."""
    from prefrestore.core.images import load_rgb

    root = tmp_path / "faces"
    hq = sorted((shared_faces / "hq").glob("*.png"))[:3]
    lq = sorted((shared_faces / "real_lq").glob("*.png"))[:3]
    for sub, paths in (("hq", hq), ("real_lq", lq)):
        (root / sub).mkdir(parents=True)
        for p in paths:
            save_png(root / sub / f"{p.stem}.png", load_rgb(p)[::4, ::4])  # 128 px: quicker, still larger than 64
    (root / "real_lq" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    return root, len(hq), len(lq) + 1
