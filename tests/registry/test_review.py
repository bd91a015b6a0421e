"""The reviewer views (prefrestore.registry.review) on a small real MLflow store (tests/helpers/review_store.py)."""


from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from helpers.review_store import BENCH, EXPERIMENT, build_review_store

from prefrestore.registry import review, review_figures, review_tables


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> dict:
    return build_review_store(tmp_path_factory.getbasetemp() / "review_store")


@pytest.fixture(scope="module")
def client(store: dict):
    return review.connect(store["uri"])


@pytest.fixture(scope="module")
def evals(client, store: dict, tmp_path_factory: pytest.TempPathFactory) -> dict:
    dst = tmp_path_factory.mktemp("review_dl")
    return {arm: review.evaluations(client, rid, dst) for arm, rid in store["runs"].items()}


def _lines(fig) -> dict[str, int]:
    """Number of plotted lines per axes title (twin axes merged into their host's title)."""
    out: dict[str, int] = {}
    for ax in fig.axes:
        title = ax.get_title() or "twin"
        out[title] = out.get(title, 0) + len(ax.get_lines())
    return out


def test_pipeline_runs_newest_first_and_by_id(client, store):
    runs = review.pipeline_runs(client, EXPERIMENT)
    # Three pipeline runs: the two arms and the registry's; newest first.
    assert len(runs) == 3 and runs["start"].is_monotonic_decreasing
    assert set(store["runs"].values()) <= set(runs["run_id"])
    assert (runs["profile"] == "tiny").all() and (runs["orchestrator"] == "test").all()
    assert len(review.pipeline_runs(client, EXPERIMENT, limit=1)) == 1
    picked = review.pipeline_runs(client, EXPERIMENT, run_ids=[store["runs"]["with caption"]])
    assert list(picked["run_id"]) == [store["runs"]["with caption"]]
    with pytest.raises(ValueError, match="not found"):
        review.pipeline_runs(client, EXPERIMENT, run_ids=["0" * 32])
    step_id = review.step_runs(client, store["runs"]["with caption"])["stage2"].info.run_id
    with pytest.raises(ValueError, match="not a pipeline run"):
        review.pipeline_runs(client, EXPERIMENT, run_ids=[step_id])
    with pytest.raises(review.NoData, match="no MLflow experiment"):
        review.pipeline_runs(client, "no-such-experiment")


def test_evaluations_split_by_variant_with_unavailable(evals):
    ev = evals["with caption"]
    assert set(ev) == {"fidelity", "quality"}
    assert ev["quality"].metrics[f"{BENCH}/psnr"] == pytest.approx(22.05)
    assert ev["fidelity"].metrics[f"{BENCH}/psnr"] == pytest.approx(21.05)
    assert ev["fidelity"].unavailable == {"lpips": "weights not staged", "dreamsim": "no weights"}
    assert ev["fidelity"].params["evaluate.use_captions"] == "True"
    assert review.logged_benchmarks(ev) == [BENCH]


def test_benchmark_table_paper_rows_then_ours(evals):
    table = review_tables.benchmark_table(BENCH, {"run A": evals["with caption"]["fidelity"],
                                           "run A ": evals["with caption"]["quality"]})
    quoted = table[table["source"] == "quoted from the paper, Table II"]
    assert list(quoted["method"])[-1] == "Pref-Restore Quality" and len(quoted) == 10
    assert quoted.set_index("method").loc["GFPGAN", "LPIPS↓"] == pytest.approx(0.4315)
    ours = table[table["source"].str.startswith("ours")]
    assert list(ours["method"]) == ["Input (degraded)", "Pref-Restore Fidelity", "Input (degraded)",
                                    "Pref-Restore Quality"]
    fid = ours.iloc[1]
    assert fid["PSNR↑"] == pytest.approx(21.05)
    assert fid["LPIPS↓"] == review.UNAVAILABLE  # logged as unavailable: never a number
    assert fid["LMD↓"] == review.NOT_MEASURED  # not logged at all
    assert ours.iloc[0]["PSNR↑"] == pytest.approx(19.0) and ours.iloc[0]["SSIM↑"] == review.NOT_MEASURED
    # Paper column order first, then our extra metrics; the n_excluded bookkeeping is not a column.
    assert list(table.columns[2:13]) == [review_tables._metric_label(m) for m in review_tables.paper_tables.PAIRED_COLUMNS]
    assert "n_excluded" not in table.columns
    with pytest.raises(review.NoData, match="lfw_test"):
        review_tables.benchmark_table("lfw_test", {"run A": evals["with caption"]["fidelity"]})


def test_preference_table_viii(evals):
    ev = evals["without caption"]
    table = review_tables.preference_table(BENCH, ev["fidelity"], ev["quality"])
    assert list(table["model"]) == ["PrefRestore-Base (Stage 1)", "PrefRestore-RL (Stage 2)",
                                    "Stage 1 (fidelity)", "Stage 2 (quality)"]
    hps = table.columns[2]
    assert hps.startswith("HPS")
    assert list(table[hps]) == [22.28, 30.22, 20.0, 21.0]
    assert table.iloc[3, 4] == review.NOT_MEASURED  # PickScore was not logged


def test_caption_settings_pair_and_table_vii(client, store, evals):
    settings = pd.DataFrame([review.caption_setting(client, store["runs"][a]) for a in ("with caption",
                                                                                       "without caption")])
    assert list(settings["arm"]) == ["with caption", "without caption"]
    assert list(settings["p_txt"]) == [0.95, 0.0] and list(settings["use_captions"]) == [True, False]
    assert review.caption_pair(settings) == (store["runs"]["with caption"], store["runs"]["without caption"])
    with pytest.raises(review.NoData, match="without caption"):
        review.caption_pair(settings.iloc[:1])

    table = review_tables.caption_ablation(BENCH, evals["with caption"]["fidelity"], evals["without caption"]["fidelity"])
    assert list(table.index) == ["ClipScore-I↑", "ClipScore-T↑", "DreamSim↑"]
    row = table.loc["ClipScore-I↑"]
    assert row["base model (ours)"] == pytest.approx(0.70) and row["+caption (ours)"] == pytest.approx(0.75)
    assert row["improvement (ours)"] == pytest.approx(0.05)
    assert row["improvement (paper)"] == pytest.approx(0.0758)
    assert table.loc["DreamSim↑", "+caption (ours)"] == review.UNAVAILABLE
    assert table.loc["DreamSim↑", "improvement (ours)"] == review.NOT_MEASURED


def test_stage1_curve_fig3(client, store):
    steps_ = review.step_runs(client, store["runs"]["with caption"])
    curves = review_figures.stage1_curves(client, steps_)
    psnr = curves[curves["key"] == "val/psnr_restored"].sort_values("global_step")
    # Stage 1.2 continues after stage 1.1's last step (20): 10, 20 | 45, 70.
    assert list(psnr["global_step"]) == [10, 20, 45, 70] and list(psnr["stage"]) == ["stage1_1"] * 2 + ["stage1_2"] * 2
    fig = review_figures.plot_stage1({"A": curves})
    lines = _lines(fig)
    assert lines["PSNR↑"] == 2 + 1 and lines["SSIM↑"] == 2 + 1  # restored, input, stage boundary
    fid_ax = fig.axes[0]
    assert "unavailable" in fid_ax.texts[0].get_text()  # val/fid_hq_available = 0: said, not drawn
    with pytest.raises(review.NoData, match="val/"):
        review_figures.stage1_curves(client, {})


def test_reward_curves_fig6_and_heldout_fig9(client, store):
    stage2 = {a: review.step_runs(client, rid)["stage2"] for a, rid in store["runs"].items()}
    fig6 = review_figures.reward_curves(client, stage2)
    assert len(fig6.axes) == 4  # one host + one twin axis per run
    host = fig6.axes[0]
    total = host.get_lines()[0]
    assert list(total.get_xdata()) == [1, 2, 3] and list(total.get_ydata()) == pytest.approx([1.1, 1.2, 1.3])
    legend = [t.get_text() for t in host.get_legend().get_texts()]
    assert legend == ["total reward", "psnr", "ssim"]

    fig9 = review_figures.heldout_curves(client, stage2)
    ax = fig9.axes[0]
    assert ax.get_title() == "heldout/reward_total"
    assert len(ax.get_lines()) == 4  # each run's curve and its dashed epoch-0 line
    base = [ln for ln in ax.get_lines() if ln.get_linestyle() == "--"]
    assert sorted(float(ln.get_ydata()[0]) for ln in base) == pytest.approx([1.0, 1.05])
    with pytest.raises(review.NoData, match="reward/total_mean"):
        review_figures.reward_curves(client, {"x": None})
    assert isinstance(review.view("Fig. 9", review_figures.heldout_curves, client, {}), review.Absent)


def test_determinism_fig8(client, store, tmp_path):
    stage2 = review.step_runs(client, store["runs"]["with caption"])["stage2"]
    spreads = review.determinism_spreads(client, stage2, tmp_path)
    assert set(spreads) == {"stage 1", "stage 2"} and set(spreads["stage 1"]) == {"hpsv2", "pickscore", "sum"}
    assert len(spreads["stage 1"]["sum"]) == 6
    fig = review_figures.determinism_boxplot(spreads)
    assert [ax.get_title().split("\n")[0] for ax in fig.axes] == ["hpsv2", "pickscore", "sum"]
    expect = float(np.median(spreads["stage 2"]["sum"]))
    assert f"{expect:.4g}" in fig.axes[2].get_title()

    table = review_tables.determinism_table({"A": stage2})
    summed = table[(table["run"] == "A") & (table["score"] == "sum")].iloc[0]
    assert summed["before"] == pytest.approx(stage2.data.metrics["determinism/median_std_before"])
    assert summed["after"] < summed["before"]  # the fixture's stage 2 is less noisy
    assert table.iloc[-1]["before"] == 0.032 and table.iloc[-1]["ratio after/before"] == pytest.approx(0.5)
    assert set(table["score"]) == {"sum", "hpsv2", "pickscore"}
    with pytest.raises(review.NoData, match="stage2"):
        review.determinism_spreads(client, None, tmp_path)
    step1 = review.step_runs(client, store["runs"]["with caption"])["stage1_1"]
    with pytest.raises(review.NoData, match="determinism.json"):
        review.determinism_spreads(client, step1, tmp_path)


def test_registry_aliases_with_gate_reasons(client, store):
    table = review.registry_aliases(client, [store["models"]["fidelity"], store["models"]["quality"], "absent"])
    by = {(r.model, r.alias): r for r in table.itertuples()}
    fid = store["models"]["fidelity"]
    assert by[(fid, "champion")].version == 1 and by[(fid, "champion")].outcome == "champion"
    challenger = by[(fid, "challenger")]
    assert challenger.version == 2 and challenger.decision == "fail" and challenger.outcome == "rejected"
    assert "vs champion v1: FAIL" in challenger.reasons and "celeba_test/psnr" in challenger.reasons
    assert "floors only: pass" in by[(fid, "champion")].reasons
    qual = store["models"]["quality"]
    assert by[(qual, "champion")].version == 2 and by[(qual, "champion")].decision == "pass"
    assert json.loads(by[(qual, "champion")].eval_summary)["celeba_test/psnr"] == 19.5
    assert table[table["model"] == "absent"]["decision"].tolist() == ["not registered"]


def test_sample_grids_download_every_producer(client, store, evals, tmp_path):
    steps_ = review.step_runs(client, store["runs"]["with caption"])
    items = review_figures.sample_grids(client, steps_, evals["with caption"], tmp_path)
    titles = [t for t, _ in items]
    assert titles[0] == "stage1_1: validation/step-00000020.png"  # the newest grid of each stage
    assert titles[1] == "stage1_2: validation/step-00000050.png"
    assert "stage2: determinism/determinism_boxplot.png" in titles
    assert sum(t.startswith("evaluate") and t.endswith(f"{BENCH}/grid.png") for t in titles) == 2
    assert all(p.is_file() for _, p in items)
    fig = review_figures.image_grid(items[:2])
    assert len(fig.axes) == 2 and fig.axes[0].get_images()[0].get_array().shape == (16, 24, 3)
    with pytest.raises(review.NoData):
        review_figures.sample_grids(client, {}, {}, tmp_path)


def test_absent_view_says_why():
    absent = review.view("Table VII", review.caption_pair, pd.DataFrame(columns=["arm", "run_id"]))
    assert isinstance(absent, review.Absent)
    assert "Table VII: no data" in str(absent) and "with caption" in absent._repr_markdown_()
    assert review.view("x", lambda: 3) == 3
