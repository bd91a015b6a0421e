"""The pipelines run end to end with kfp.local: the DAG (fan-out over benchmarks, merge, gated
promotion) with stand-in step components of the *same interfaces* (checked here), and, slow, the
real tiny steps (`make test-kfp`, which CI runs as a separate job).
"""

# no `from __future__ import annotations`: KFP reads the fake components' annotations at definition time
import dataclasses
import json
import sys
from pathlib import Path

import pytest

pytest.importorskip("kfp")

from kfp import dsl  # noqa: E402
from kfp.dsl import Artifact, Dataset, Input, Metrics, Model, Output  # noqa: E402

import components  # noqa: E402
from pipelines import cli as pipelines_cli  # noqa: E402
from prefrestore.core.config import load  # noqa: E402
from prefrestore.pipeline import (
    steps,
)
from prefrestore.pipeline.launcher import cluster_config  # noqa: E402

TRAINING = ("stage1_1", "stage1_2", "stage2")


# ------------------------------------------------------------------------------------ kfp.local wiring
# Stand-ins for the step components: same signatures as components/steps.py (checked below); each
# records which model it was given ("lineage") so the test can follow artifacts through the DAG.


def fake_ingest(profile: str, source: str, faces: Output[Dataset], summary: Output[Metrics]):
    import os
    from pathlib import Path

    os.makedirs(faces.path)
    Path(faces.path, "lineage").write_text("faces")
    summary.log_metric("n", 3.0)


def fake_validate(profile: str, faces: Input[Dataset], report: Output[Artifact], summary: Output[Metrics],
                  captions: Input[Dataset] = None):
    import os

    assert captions is not None, "validate must see the captions"
    os.makedirs(report.path)


def fake_caption(profile: str, faces: Input[Dataset], captions: Output[Dataset], summary: Output[Metrics]):
    import os

    os.makedirs(captions.path)


def fake_degrade(profile: str, faces: Input[Dataset], pairs: Output[Dataset], summary: Output[Metrics]):
    import os

    for b in ("celeba_test", "lfw_test", "wider_test", "webphoto_test", "celebchild_test"):
        os.makedirs(os.path.join(pairs.path, "benchmarks", b))


def fake_bootstrap(profile: str, faces: Input[Dataset], captions: Input[Dataset], model: Output[Model],
                   summary: Output[Metrics]):
    import os
    from pathlib import Path

    os.makedirs(model.path)
    Path(model.path, "lineage").write_text("bootstrap")


def fake_stage1_1(profile: str, launch: str, run_id: str, faces: Input[Dataset], captions: Input[Dataset],
                  base: Input[Model], model: Output[Model], summary: Output[Metrics]):
    import os
    from pathlib import Path

    assert launch == "inline"
    os.makedirs(model.path)
    Path(model.path, "lineage").write_text(Path(base.path, "lineage").read_text() + ">s11")


def fake_stage1_2(profile: str, launch: str, run_id: str, faces: Input[Dataset], captions: Input[Dataset],
                  base: Input[Model], model: Output[Model], summary: Output[Metrics]):
    import os
    from pathlib import Path

    os.makedirs(model.path)
    Path(model.path, "lineage").write_text(Path(base.path, "lineage").read_text() + ">s12")


def fake_stage2(profile: str, launch: str, run_id: str, faces: Input[Dataset], captions: Input[Dataset],
                base: Input[Model], model: Output[Model], summary: Output[Metrics]):
    import os
    from pathlib import Path

    os.makedirs(model.path)
    Path(model.path, "lineage").write_text(Path(base.path, "lineage").read_text() + ">s2")


def fake_evaluate(profile: str, benchmark: str, subdir: str, model: Input[Model], benchmarks: Input[Dataset],
                  report: Output[Artifact], summary: Output[Metrics], baseline: Input[Model] = None):
    import json
    import os
    from pathlib import Path

    assert os.path.isdir(os.path.join(benchmarks.path, subdir, benchmark))
    lineage = Path(model.path, "lineage").read_text()
    os.makedirs(os.path.join(report.path, benchmark))
    with open(os.path.join(report.path, "metrics.json"), "w") as fh:
        json.dump({"model": lineage, "benchmarks": {benchmark: {"score": 1.0}}}, fh)
    Path(report.path, "report.md").write_text(f"# {benchmark}\n")


def fake_register(profile: str, fidelity: Input[Model], quality: Input[Model], reports: Input[Artifact],
                  decision: Output[Artifact], summary: Output[Metrics]) -> bool:
    import json
    import os

    seen = {}
    for variant in ("fidelity", "quality"):
        with open(os.path.join(reports.path, f"eval_{variant}", "metrics.json")) as fh:
            seen[variant] = json.load(fh)
    os.makedirs(decision.path)
    with open(os.path.join(decision.path, "decision.json"), "w") as fh:
        json.dump(seen, fh)
    return os.environ["FAKE_PROMOTE"] == "1"


def _fake_components() -> components.Components:
    real = components.build("example.com/prefrestore:test")
    mod = sys.modules[__name__]
    fakes = {}
    for name in components.STEP_COMPONENTS:
        fn = getattr(mod, f"fake_{name}")
        fakes[name] = dsl.component(fn, base_image="example.com/prefrestore:test", install_kfp_package=False)
    return dataclasses.replace(real, **fakes)


def test_fakes_have_the_real_interfaces() -> None:
    real = components.build("example.com/prefrestore:test")
    fake = _fake_components()
    for name in components.STEP_COMPONENTS:
        r, f = real.step(name).component_spec, fake.step(name).component_spec
        assert r.inputs == f.inputs and r.outputs == f.outputs, name


@pytest.mark.parametrize(("promote", "profile"), [(True, "paper"), (False, "tiny")])
def test_local_run_wires_fanout_merge_and_gate(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                               promote: bool, profile: str) -> None:
    from kfp import local

    from pipelines import training

    monkeypatch.setenv("FAKE_PROMOTE", "1" if promote else "0")
    local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=str(tmp_path / "root"))
    pipeline = training.build(cluster_config(load("tiny")), "tiny", comps=_fake_components())
    release = tmp_path / "releases"
    pipeline(profile=profile, release_root=str(release))  # paper: five benchmarks to fan out over

    if not promote:
        assert not release.exists()
        return
    latest = json.loads((release / "latest.json").read_text())
    run = Path(latest["path"])
    assert (run / "fidelity" / "lineage").read_text() == "bootstrap>s11>s12"
    assert (run / "quality" / "lineage").read_text() == "bootstrap>s11>s12>s2"
    seen = json.loads((run / "decision" / "decision.json").read_text())
    names = sorted(load("paper").tree["evaluate"]["benchmarks"])
    for variant, lineage in (("fidelity", "bootstrap>s11>s12"), ("quality", "bootstrap>s11>s12>s2")):
        assert sorted(seen[variant]["benchmarks"]) == names  # every fan-out branch reached the merge
        assert seen[variant]["model"] == lineage  # each evaluation saw its own model


# ------------------------------------------------------------------------------------ the real thing


def _all_steps_importable() -> bool:
    try:
        for step in steps.STEPS:
            step.load()
    except ImportError:
        return False
    return True


@pytest.mark.slow
def test_local_run_tiny_real_steps(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The whole training pipeline on the tiny profile with the real steps (kfp.local, CPU)."""
    if not _all_steps_importable():
        pytest.skip("not every step module exists yet")
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    pipelines_cli.run_local("tiny", tmp_path / "root", {"release_root": str(tmp_path / "releases")})
    runs = list((tmp_path / "root").iterdir())
    assert runs, "kfp.local wrote no run"
    decision = next((tmp_path / "root").rglob("register/decision/decision.json"))
    assert set(json.loads(decision.read_text())) == {"fidelity", "quality"}


REAL_DATA_STEPS = ("ingest", "caption", "validate", "degrade")


@pytest.mark.slow
def test_local_run_real_data_steps(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Tiny profile through kfp.local with the real data steps (ingest, caption, validate, degrade) and
    stand-ins for the model steps: the real components' artifact paths, overrides and summaries work."""
    from kfp import local

    from pipelines import training

    monkeypatch.setenv("FAKE_PROMOTE", "1")
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    real = components.build("example.com/prefrestore:test")
    comps = dataclasses.replace(_fake_components(), **{n: real.step(n) for n in REAL_DATA_STEPS})
    local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=str(tmp_path / "root"))
    training.build(cluster_config(load("tiny")), "tiny", comps=comps)(release_root=str(tmp_path / "rel"))
    latest = json.loads((tmp_path / "rel" / "latest.json").read_text())
    seen = json.loads((Path(latest["path"]) / "decision" / "decision.json").read_text())
    assert sorted(seen["quality"]["benchmarks"]) == list(load("tiny").tree["evaluate"]["benchmarks"])
    (run,) = (tmp_path / "root").iterdir()
    assert (run / "ingest" / "faces" / "manifest.parquet").is_file()
    assert (run / "degrade" / "pairs" / "benchmarks").is_dir()
    metrics = json.loads((run / "ingest" / "executor_output.json").read_text())
    assert metrics["artifacts"]["summary"]["artifacts"][0]["metadata"], "ingest's summary reached KFP Metrics"
