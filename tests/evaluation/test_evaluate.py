"""The evaluate harness: one pass equals per-metric results, pairing rules, bad input, report layout,
resume, and the CLI on real faces."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from prefrestore.core.images import load_rgb, save_png
from prefrestore.core.weights import MissingWeights
from prefrestore.evaluation import evaluate
from prefrestore.metrics import get as get_metrics
from prefrestore.metrics import pixel
from prefrestore.metrics.base import BuildContext, Unavailable

CTX = BuildContext(torch.device("cpu"), 512, "trainval70k", 64, 128)


def make_bench(root: Path, n: int = 6, size: int = 48, paired: bool = True, captions: bool = True) -> Path:
    rng = np.random.default_rng(0)
    (root / "lq").mkdir(parents=True)
    (root / "hq").mkdir()
    rows = []
    for i in range(n):
        hq = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
        lq = np.clip(hq.astype(int) + rng.integers(-30, 30, hq.shape), 0, 255).astype(np.uint8)
        save_png(root / f"hq/{i:03d}.png", hq)
        save_png(root / f"lq/{i:03d}.png", lq)
        row = {"id": f"{i:03d}", "lq_path": f"lq/{i:03d}.png"}
        if paired:
            row["hq_path"] = f"hq/{i:03d}.png"
        if captions:
            row["caption"] = "a photography of a person"
        rows.append(row)
    pd.DataFrame(rows).to_parquet(root / "manifest.parquet")
    return root


def blur_restore(images, captions, seed):
    import cv2

    return [cv2.GaussianBlur(img, (5, 5), 1.0) for img in images]


def _metric_set(names, require=False):
    return evaluate.MetricSet(get_metrics(names), CTX, require)


def test_one_pass_equals_each_metric_computed_separately(tmp_path):
    bench = evaluate.load_benchmark(make_bench(tmp_path / "celeba_test"))
    res, _ = evaluate.evaluate_folder(blur_restore, bench, _metric_set(["psnr", "ssim", "ms_ssim"]),
                                      batch_size=4, progress=False)
    for name, fn in (("psnr", pixel.psnr), ("ssim", pixel.ssim), ("ms_ssim", pixel.ms_ssim)):
        per = []
        for _, row in bench.rows.iterrows():  # decode again, one image at a time
            out = blur_restore([load_rgb(bench.root / row["lq_path"])], None, 0)[0]
            hq = load_rgb(bench.root / row["hq_path"])
            t = evaluate._to_tensor
            per.append(fn(t([out]), t([hq])).item())
        assert res.restored[name] == pytest.approx(float(np.mean(per)), rel=1e-5)
        assert res.per_image[name].tolist() == pytest.approx(per, rel=1e-5)
        # the Input row measures the degraded input itself
        lq_vals = [fn(evaluate._to_tensor([load_rgb(bench.root / r["lq_path"])]),
                      evaluate._to_tensor([load_rgb(bench.root / r["hq_path"])])).item()
                   for _, r in bench.rows.iterrows()]
        assert res.input[name] == pytest.approx(float(np.mean(lq_vals)), rel=1e-5)


def test_unreadable_image_is_excluded_from_every_metric(tmp_path):
    root = make_bench(tmp_path / "celeba_test")
    (root / "lq/002.png").write_bytes(b"not a png")
    bench = evaluate.load_benchmark(root)
    res, _ = evaluate.evaluate_folder(evaluate.identity_restore, bench, _metric_set(["psnr", "ssim"]),
                                      batch_size=4, progress=False)
    assert list(res.excluded) == ["002"]
    assert res.per_image["id"].tolist() == ["000", "001", "003", "004", "005"]
    assert len(res.per_image["psnr"]) == len(res.per_image["ssim"]) == 5


def test_pairing_errors(tmp_path):
    root = make_bench(tmp_path / "a")
    save_png(root / "hq/001.png", np.zeros((40, 48, 3), np.uint8))  # size differs from its LQ
    bench = evaluate.load_benchmark(root)
    with pytest.raises(evaluate.PairingError, match="sizes differ"):
        evaluate.evaluate_folder(evaluate.identity_restore, bench, _metric_set(["psnr"]), batch_size=4,
                                 progress=False)
    root = make_bench(tmp_path / "b")
    m = pd.read_parquet(root / "manifest.parquet")
    m.loc[1, "hq_path"] = "hq/004.png"  # ids do not match
    m.to_parquet(root / "manifest.parquet")
    with pytest.raises(evaluate.PairingError, match="disagree"):
        evaluate.load_benchmark(root)
    m.loc[1, "hq_path"] = None  # some rows paired, others not
    m.to_parquet(root / "manifest.parquet")
    with pytest.raises(evaluate.PairingError, match="lack hq_path"):
        evaluate.load_benchmark(root)


def test_unpaired_benchmark_skips_full_reference_metrics(tmp_path):
    bench = evaluate.load_benchmark(make_bench(tmp_path / "lfw_test", paired=False, captions=False))
    assert not bench.paired
    res, _ = evaluate.evaluate_folder(evaluate.identity_restore, bench,
                                      _metric_set(["psnr", "lpips", "musiq", "fid_ffhq", "clip_score"]),
                                      batch_size=4, progress=False)
    assert set(res.restored) == {"musiq", "fid_ffhq"}  # psnr/lpips need HQ, clip_score needs captions
    assert all(isinstance(v, Unavailable) for v in res.restored.values())


def test_restorer_output_shape_is_checked(tmp_path):
    bench = evaluate.load_benchmark(make_bench(tmp_path / "celeba_test"))

    def bad(images, captions, seed):
        return [img[:10] for img in images]

    with pytest.raises(ValueError, match="restorer returned"):
        evaluate.evaluate_folder(bad, bench, _metric_set(["psnr"]), batch_size=4, progress=False)


def test_run_writes_tables_in_paper_layout_and_unavailable_cells(tmp_path, tiny_params):
    make_bench(tmp_path / "bench" / "celeba_test")
    summary = evaluate.run(tiny_params, {"model": tmp_path / "stage2", "benchmarks": tmp_path / "bench"},
                           tmp_path / "out", restore_fn=blur_restore, progress=False)
    out = tmp_path / "out"
    md = (out / "celeba_test" / "table.md").read_text()
    assert "quoted from the paper, Table II" in md and "| Input |" in md
    assert "Pref-Restore Quality (ours)" in md and "unavailable" in md
    assert "6 of 6 images evaluated, 0 excluded" in md
    table = pd.read_csv(out / "celeba_test" / "table.csv")
    assert list(table.columns[2:13]) == ["LPIPS↓", "FID(HQ)↓", "FID(FFHQ)↓", "MUSIQ↑", "CLIPIQA+↑", "MANIQA↑",
                                         "LMD↓", "Deg↓", "topiq↑", "topiq-swin↑", "DSL-FIQA↑"]
    ours = table[table["method"] == "Pref-Restore Quality (ours)"].iloc[0]
    assert ours["LPIPS↓"] == "unavailable" and float(ours["PSNR↑"]) == pytest.approx(summary["celeba_test/psnr"])
    metrics = json.loads((out / "metrics.json").read_text())
    assert "lpips" in metrics["unavailable"] and metrics["benchmarks"]["celeba_test"]["n_excluded"] == 0
    assert (out / "celeba_test" / "grid.png").is_file() and len(list((out / "celeba_test" / "restored").iterdir())) == 6
    assert not (tmp_path / "out.restore_cache").exists()


@pytest.mark.parametrize(("model", "variant"), [("stage1_2", "fidelity"), ("stage2", "quality"),
                                                ("quality", "quality"), ("identity", None)])
def test_evaluate_run_is_tagged_with_its_variant(tmp_path, tiny_params, model, variant):
    import mlflow

    from prefrestore.core import tracking

    make_bench(tmp_path / "bench" / "celeba_test", n=2)
    params = tiny_params.with_overrides({"evaluate.metrics": ["psnr"]})
    with tracking.step_run("evaluate", params) as run:
        evaluate.run(params, {"model": tmp_path / model, "benchmarks": tmp_path / "bench"}, tmp_path / "out",
                     restore_fn=evaluate.identity_restore, progress=False)
    tags = mlflow.tracking.MlflowClient().get_run(run.info.run_id).data.tags
    assert tags.get("variant") == variant  # absent for a model that is neither variant
    assert json.loads((tmp_path / "out" / "metrics.json").read_text())["variant"] == variant


def test_require_turns_missing_weights_into_an_error(tmp_path, tiny_params):
    make_bench(tmp_path / "bench" / "celeba_test")
    params = tiny_params.with_overrides({"evaluate.require": True, "evaluate.metrics": ["psnr", "lpips"]})
    with pytest.raises(MissingWeights, match="lpips"):
        evaluate.run(params, {"model": tmp_path / "m", "benchmarks": tmp_path / "bench"}, tmp_path / "out",
                     restore_fn=evaluate.identity_restore, progress=False)
    assert not (tmp_path / "out").exists()


def test_interrupted_run_resumes_from_cached_restorations(tmp_path, tiny_params):
    make_bench(tmp_path / "bench" / "celeba_test", n=8)
    params = tiny_params.with_overrides({"evaluate.metrics": ["psnr"], "evaluate.batch_size": 4})
    inputs = {"model": tmp_path / "m", "benchmarks": tmp_path / "bench"}
    calls: list[int] = []

    def flaky(images, captions, seed):
        calls.append(len(images))
        if len(calls) == 2:
            raise RuntimeError("preempted")
        return blur_restore(images, captions, seed)

    with pytest.raises(RuntimeError, match="preempted"):
        evaluate.run(params, inputs, tmp_path / "out", restore_fn=flaky, progress=False)
    calls.clear()
    resumed = evaluate.run(params, inputs, tmp_path / "out", restore_fn=blur_restore_counting(calls), progress=False)
    assert calls == [4]  # only the second batch is restored again
    clean = evaluate.run(params, inputs, tmp_path / "out2", restore_fn=blur_restore, progress=False)
    assert resumed["celeba_test/psnr"] == pytest.approx(clean["celeba_test/psnr"])


def blur_restore_counting(calls):
    def fn(images, captions, seed):
        calls.append(len(images))
        return blur_restore(images, captions, seed)

    return fn


def test_missing_benchmark_is_an_error(tmp_path, tiny_params):
    (tmp_path / "bench").mkdir()
    with pytest.raises(FileNotFoundError, match="celeba_test"):
        evaluate.run(tiny_params, {"model": tmp_path, "benchmarks": tmp_path / "bench"}, tmp_path / "out",
                     restore_fn=evaluate.identity_restore, progress=False)


def test_cli_evaluate_on_real_faces(shared_faces, tmp_path, monkeypatch):
    """`prefrestore evaluate` on ../shared faces: hq/ as a paired set (LQ synthesised), real_lq/ unpaired."""
    import cv2

    from prefrestore.cli.main import main as cli

    bench = tmp_path / "benchmarks"
    paired, unpaired = bench / "celeba_test", bench / "lfw_test"
    for d in (paired / "hq", paired / "lq", unpaired / "lq"):
        d.mkdir(parents=True)
    rows = []
    for p in sorted((shared_faces / "hq").glob("*.png"))[:3]:
        hq = cv2.resize(load_rgb(p), (128, 128), interpolation=cv2.INTER_AREA)
        lq = cv2.resize(cv2.resize(cv2.GaussianBlur(hq, (7, 7), 2.0), (32, 32)), (128, 128))
        save_png(paired / "hq" / f"{p.stem}.png", hq)
        save_png(paired / "lq" / f"{p.stem}.png", lq)
        rows.append({"id": p.stem, "lq_path": f"lq/{p.stem}.png", "hq_path": f"hq/{p.stem}.png"})
    pd.DataFrame(rows).to_parquet(paired / "manifest.parquet")
    rows = []
    for p in sorted((shared_faces / "real_lq").glob("*.png"))[:3]:
        save_png(unpaired / "lq" / f"{p.stem}.png", load_rgb(p))
        rows.append({"id": p.stem, "lq_path": f"lq/{p.stem}.png"})
    pd.DataFrame(rows).to_parquet(unpaired / "manifest.parquet")
    model = tmp_path / "identity"
    model.mkdir()
    (model / "baseline.json").write_text('{"restore": "identity"}')
    rc = cli(["evaluate", "--profile", "tiny", "--in", f"model={model}", "--in", f"benchmarks={bench}",
                   "--out", str(tmp_path / "out"), "--set", "evaluate.benchmarks=[celeba_test, lfw_test]",
                   "--set", "evaluate.metrics=[psnr, ssim, musiq, lpips]"])
    assert rc == 0
    m = json.loads((tmp_path / "out" / "metrics.json").read_text())["benchmarks"]
    assert m["celeba_test"]["restored"]["psnr"] == pytest.approx(m["celeba_test"]["input"]["psnr"])  # identity
    assert 15 < m["celeba_test"]["restored"]["psnr"] < 40
    assert set(m["lfw_test"]["restored"]) == {"musiq"} and m["lfw_test"]["restored"]["musiq"].startswith("unavailable")
    assert "quoted from the paper, Table III" in (tmp_path / "out" / "lfw_test" / "table.md").read_text()


@pytest.mark.parametrize(("stage", "variant"), [("1.2", "fidelity"), ("2", "quality"), ("1.1", None), (None, None)])
def test_variant_of_a_kfp_artifact_path_comes_from_the_training_summary(tmp_path, stage, variant):
    """KFP hands the model over as ``.../model``: the variant is read from its metrics.json ``stage``."""
    from prefrestore.evaluation import report as eval_report

    model = tmp_path / "model"
    model.mkdir()
    if stage is not None:
        (model / "metrics.json").write_text(json.dumps({"stage": stage, "steps": 3}))
    assert eval_report.variant_of(model) == variant
    (model / "metrics.json").write_text("{not json")
    assert eval_report.variant_of(model) is None


def test_benchmark_images_outside_the_served_limits_are_excluded(tmp_path, tiny_params):
    """evaluate applies image_limits (the served model's limit) on the header: a benchmark of 48 px
    images under min_side=49 excludes every one, with the reason, before any restore."""
    make_bench(tmp_path / "bench" / "celeba_test")
    calls = []
    params = tiny_params.with_overrides({"image_limits.min_side": 49})
    with pytest.raises(ValueError, match="every image was excluded.*too_small"):
        evaluate.run(params, {"model": tmp_path / "stage2", "benchmarks": tmp_path / "bench"}, tmp_path / "out",
                     restore_fn=blur_restore_counting(calls), progress=False)
    assert calls == []
    ok = evaluate.run(tiny_params.with_overrides({"image_limits.min_side": 48}),
                      {"model": tmp_path / "stage2", "benchmarks": tmp_path / "bench"}, tmp_path / "out2",
                      restore_fn=blur_restore, progress=False)
    assert ok["celeba_test/n_excluded"] == 0
