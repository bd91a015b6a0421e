"""The Kubeflow pipelines: they compile, the committed YAML is fresh, they agree with the step table
and dvc.yaml, GPU tasks are placed and limited as params.yaml's `cluster` section says, and the
cache key follows the code. The kfp.local runs are tests/pipeline/test_kfp_local.py.
"""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

pytest.importorskip("kfp")


import components  # noqa: E402
from pipelines import cli as pipelines_cli  # noqa: E402
from prefrestore.core.config import PROJECT_ROOT, load  # noqa: E402
from prefrestore.pipeline import (
    kfp_runtime,  # noqa: E402
    steps,
)
from prefrestore.pipeline.launcher import cluster_config  # noqa: E402

TRAINING = ("stage1_1", "stage1_2", "stage2")


def _load(path: Path) -> dict:
    """A compiled package: the pipeline spec, then (second YAML document) the platform spec."""
    spec, *rest = yaml.safe_load_all(path.read_text())
    for doc in rest:
        spec.update(doc)
    return spec


def _compiled(name: str, profile: str) -> dict:
    return _load(PROJECT_ROOT / "pipelines" / "compiled" / f"{name}-{profile}.yaml")


def _all_tasks(spec: dict) -> dict[str, dict]:
    """Every task of a compiled pipeline (root DAG and nested loop/condition DAGs), by task name."""
    out = dict(spec["root"]["dag"]["tasks"])
    for comp in spec["components"].values():
        out.update(comp.get("dag", {}).get("tasks", {}))
    return out


STEP_KEYS = {s.name.replace("_", "-"): s.name for s in steps.STEPS}


def _step_of(task_name: str) -> str | None:
    """The step a task runs: `stage1-1` -> stage1_1, `evaluate-2` -> evaluate, `merge-reports` -> None."""
    if task_name in STEP_KEYS:
        return STEP_KEYS[task_name]
    base, _, n = task_name.rpartition("-")
    return STEP_KEYS.get(base) if n.isdigit() else None


def _executor(spec: dict, task: dict) -> tuple[dict, dict]:
    comp = spec["components"][task["componentRef"]["name"]]
    label = comp["executorLabel"]
    k8s = spec.get("platforms", {}).get("kubernetes", {}).get("deploymentSpec", {}).get("executors", {})
    return spec["deploymentSpec"]["executors"][label]["container"], k8s.get(label, {})


# ------------------------------------------------------------------------------------ compile + freshness


def test_committed_compiled_yaml_is_fresh(tmp_path: Path) -> None:
    for profile in pipelines_cli.COMPILED_PROFILES:
        for path in pipelines_cli.compile_pipelines(profile, tmp_path):
            committed = pipelines_cli.COMPILED_DIR / path.name
            assert committed.is_file(), f"{committed} missing: run `prefrestore-pipeline compile --profile {profile}`"
            assert path.read_text() == committed.read_text(), (
                f"{committed.name} is stale: run `prefrestore-pipeline compile --profile {profile}`")


def test_cli_compile_writes_both_pipelines(tmp_path: Path) -> None:
    assert pipelines_cli.main(["compile", "--profile", "tiny", "--out", str(tmp_path)]) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["evaluation-tiny.yaml", "training-tiny.yaml"]
    spec = _load(tmp_path / "training-tiny.yaml")
    assert spec["root"]["inputDefinitions"]["parameters"]["profile"]["defaultValue"] == "tiny"


def test_library_does_not_import_kfp_dvc_or_kubernetes() -> None:
    code = ("import sys, prefrestore.cli.main, prefrestore.pipeline.demo, prefrestore.pipeline.launcher, prefrestore.pipeline.kfp_runtime; "
            "bad = [m for m in sys.modules if m.split('.')[0] in ('kfp', 'dvc', 'kubernetes', 'components', 'pipelines')]; "
            "assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], check=True)


# ------------------------------------------------------------------------------------ agreement


def test_components_match_the_step_table() -> None:
    comps = components.build("example.com/prefrestore:test")
    for step in steps.STEPS:
        spec = comps.step(step.name).component_spec
        artifacts = {k: v for k, v in spec.inputs.items() if not v.type.startswith(("String", "Boolean"))}
        assert set(artifacts) == set(step.inputs) | set(step.optional_inputs), step.name
        for name in step.optional_inputs:
            assert artifacts[name].optional, f"{step.name}.{name} must be optional"
        for name in step.inputs:
            assert not artifacts[name].optional, f"{step.name}.{name} must be required"
        assert "profile" in spec.inputs
    assert comps.register.component_spec.outputs["Output"].type == "Boolean"  # `promoted`


def _dvc_inputs(cmd: str) -> set[str]:
    return {tok.split("=", 1)[0] for prev, tok in zip(cmd.split(), cmd.split()[1:], strict=False) if prev == "--in"}


def test_kfp_dvc_and_step_table_agree() -> None:
    """Same step names, same inputs; DVC stages declare exactly the step's params sections."""
    spec = _compiled("training", "paper")
    tasks = _all_tasks(spec)
    assert {_step_of(n) for n in tasks} - {None} == set(steps.BY_NAME)
    for name, task in tasks.items():
        step_name = _step_of(name)
        if step_name is None:
            continue
        step = steps.BY_NAME[step_name]
        wired = set(task.get("inputs", {}).get("artifacts", {}))
        assert set(step.inputs) <= wired <= set(step.inputs) | set(step.optional_inputs), name

    dvc_file = PROJECT_ROOT / "dvc.yaml"
    if not dvc_file.is_file():
        pytest.skip("dvc.yaml not written yet: KFP checked against the step table only")
    stages = yaml.safe_load(dvc_file.read_text())["stages"]
    assert set(stages) == set(steps.BY_NAME)
    for name, stage in stages.items():
        step = steps.BY_NAME[name]
        body = stage.get("do", stage)  # foreach stages keep their command under `do`
        ins = _dvc_inputs(body["cmd"])
        assert set(step.inputs) <= ins <= set(step.inputs) | set(step.optional_inputs), name
        sections = {p.removeprefix("defaults.") for p in body["params"] if p.startswith("defaults.")}
        assert sections == set(step.sections), name


# ------------------------------------------------------------------------------------ placement


@pytest.mark.parametrize("profile", pipelines_cli.COMPILED_PROFILES)
def test_tasks_are_placed_as_the_cluster_section_says(profile: str) -> None:
    cluster = cluster_config(load(profile))
    spec = _compiled("training", profile)
    tasks = _all_tasks(spec)
    by_step: dict[str | None, list[dict]] = {}
    for name, task in tasks.items():
        by_step.setdefault(_step_of(name), []).append(task)
    for step in steps.STEPS:
        assert step.name in by_step, f"no task for {step.name}"
        for task in by_step[step.name]:
            container, k8s = _executor(spec, task)
            secrets = {s["secretName"] for s in k8s.get("secretAsEnv", [])}
            assert secrets == {cluster.mlflow_secret, cluster.storage_secret}, step.name
            assert k8s["securityContext"]["runAsNonRoot"] is True
            assert container["image"] == cluster.image
            launched = step.name in cluster.training and cluster.training[step.name].launch != "inline"
            retries = cluster.gpu_steps[step.name].retries if step.gpu else cluster.cpu_step.retries
            assert task["retryPolicy"]["maxRetryCount"] == retries, step.name
            assert task.get("cachingOptions", {}).get("enableCache", False) is (
                step.name in ("caption", "validate", "degrade", "evaluate")), step.name
            if step.gpu and not launched:
                gpu = cluster.gpu_steps[step.name]
                acc = container["resources"]["accelerator"]
                assert (acc["resourceType"], int(acc["resourceCount"])) == (gpu.accelerator, gpu.count)
                assert k8s["nodeSelector"]["labels"] == cluster.gpu_node_selector(step.name)
                (tol,) = k8s["tolerations"]
                taint = cluster.gpu_taint
                assert (tol["key"], tol["value"], tol["effect"]) == (taint.key, taint.value, taint.effect)
                assert [m["constant"] for m in k8s["pvcMount"]] == [cluster.model_store_pvc]
                assert k8s["emptyDirMounts"] == [{"medium": "Memory", "mountPath": "/dev/shm",
                                                  "sizeLimit": cluster.shm_size, "volumeName": "shm"}]
                assert int(k8s["activeDeadlineSeconds"]) == gpu.timeout_s
            else:
                assert "accelerator" not in container.get("resources", {}), step.name
                assert k8s["nodeSelector"]["labels"] == cluster.cpu_node_selector()
                assert "tolerations" not in k8s
            if launched:  # a CPU launcher pod with the shared data volume, outliving the job deadline
                assert [m["constant"] for m in k8s["pvcMount"]] == [cluster.data_pvc]
                assert int(k8s["activeDeadlineSeconds"]) > cluster.gpu_steps[step.name].timeout_s


def test_paper_launches_training_as_trainjobs_tiny_runs_inline() -> None:
    for profile, launch in (("paper", "trainjob"), ("tiny", "inline")):
        tasks = _all_tasks(_compiled("training", profile))
        for stage in TRAINING:
            params = tasks[stage.replace("_", "-")]["inputs"]["parameters"]
            assert params["launch"]["runtimeValue"]["constant"] == launch
            assert params["run_id"]["runtimeValue"]["constant"] == "{{$.pipeline_job_uuid}}"


def test_fanout_and_gated_promotion_structure() -> None:
    spec = _compiled("training", "paper")
    root = spec["root"]["dag"]["tasks"]
    loops = [t for t in root.values() if "parameterIterator" in t]
    (loop,) = loops
    assert loop["parameterIterator"]["items"]["inputParameter"].endswith("list-benchmarks-Output")
    loop_tasks = spec["components"][loop["componentRef"]["name"]]["dag"]["tasks"]
    models = sorted(t["inputs"]["artifacts"]["model"]["componentInputArtifact"] for t in loop_tasks.values())
    assert models == ["pipelinechannel--stage1-2-model", "pipelinechannel--stage2-model"]
    merge = root["merge-reports"]
    assert {a["taskOutputArtifact"]["producerTask"] for a in merge["inputs"]["artifacts"].values()} == {
        loop["taskInfo"]["name"]}
    (cond,) = [t for t in root.values() if "triggerPolicy" in t]
    assert "register-Output" in cond["triggerPolicy"]["condition"]
    cond_tasks = spec["components"][cond["componentRef"]["name"]]["dag"]["tasks"]
    assert list(cond_tasks) == ["promote"]
    assert "promote" not in root


def test_evaluation_pipeline_imports_a_model_and_fans_out() -> None:
    spec = _compiled("evaluation", "paper")
    params = spec["root"]["inputDefinitions"]["parameters"]
    assert {"model_uri", "benchmarks_uri", "variant", "profile"} <= set(params)
    tasks = _all_tasks(spec)
    assert {"importer", "importer-2", "list-benchmarks", "evaluate", "merge-variant-reports"} <= set(tasks)


# ------------------------------------------------------------------------------------ merge / release


def _eval_part(root: Path, bench: str, value: float) -> Path:
    d = root / bench
    (d / bench).mkdir(parents=True)
    (d / bench / "table.md").write_text(f"| {bench} |\n")
    (d / "report.md").write_text(f"# {bench}\n")
    (d / "metrics.json").write_text(json.dumps({"profile": "tiny", "benchmarks": {bench: {"psnr": value}}}))
    return d


def test_merge_reports_builds_register_layout(tmp_path: Path) -> None:
    a, b = _eval_part(tmp_path / "a", "celeba_test", 20.0), _eval_part(tmp_path / "b", "lfw_test", 21.0)
    q = _eval_part(tmp_path / "q", "celeba_test", 25.0)
    counts = kfp_runtime.merge_reports([("fidelity", str(a)), ("fidelity", str(b)), ("quality", str(q))],
                                        str(tmp_path / "reports"))
    assert counts == {"fidelity": 2, "quality": 1}
    merged = json.loads((tmp_path / "reports" / "eval_fidelity" / "metrics.json").read_text())
    assert merged == {"profile": "tiny", "benchmarks": {"celeba_test": {"psnr": 20.0}, "lfw_test": {"psnr": 21.0}}}
    assert (tmp_path / "reports" / "eval_fidelity" / "lfw_test" / "table.md").is_file()
    report = (tmp_path / "reports" / "eval_fidelity" / "report.md").read_text()
    assert "# celeba_test" in report and "# lfw_test" in report


def test_merge_reports_refuses_conflicts_and_leaves_nothing(tmp_path: Path) -> None:
    a, b = _eval_part(tmp_path / "a", "celeba_test", 20.0), _eval_part(tmp_path / "b", "celeba_test", 99.0)
    with pytest.raises(ValueError, match="conflicting values"):
        kfp_runtime.merge_reports([("fidelity", str(a)), ("fidelity", str(b))], str(tmp_path / "reports"))
    assert not (tmp_path / "reports").exists()


def test_publish_release_copies_and_points_latest(tmp_path: Path) -> None:
    for v in ("fidelity", "quality"):
        (tmp_path / v).mkdir()
        (tmp_path / v / "config.json").write_text(v)
    (tmp_path / "decision").mkdir()
    (tmp_path / "decision" / "decision.json").write_text("{}")
    models = {v: str(tmp_path / v) for v in ("fidelity", "quality")}
    ptr = kfp_runtime.publish_release("run-7", models, str(tmp_path / "decision"), str(tmp_path / "rel"))
    assert json.loads((tmp_path / "rel" / "latest.json").read_text())["run_id"] == "run-7"
    assert (tmp_path / "rel" / "run-7" / "quality" / "config.json").read_text() == "quality"
    assert ptr["path"] == str(tmp_path / "rel" / "run-7")


def test_run_component_rejects_bad_inputs(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="missing inputs"):
        kfp_runtime.run_component("degrade", "tiny", {}, str(tmp_path / "out"))
    with pytest.raises(FileNotFoundError, match="does not exist"):
        kfp_runtime.run_component("degrade", "tiny", {"faces": str(tmp_path / "nope")}, str(tmp_path / "out"))
    assert not (tmp_path / "out").exists()


# ------------------------------------------------------------------------------- cache key follows code


def test_kfp_cache_key_follows_the_image_digest(tmp_path: Path) -> None:
    """The library code lives in the image, so the image reference is what ties a cached task to its
    code: two digests give every step executor a different image, and submit refuses a tag image
    while caching is on (before it contacts any host)."""
    from kfp import compiler

    specs = []
    for digest in ("a" * 64, "b" * 64):
        image = f"ghcr.io/prefrestore/prefrestore@sha256:{digest}"
        path = tmp_path / f"{digest[0]}.yaml"
        compiler.Compiler().compile(pipelines_cli.pipeline_func("training", "tiny", image), str(path))
        executors = _load(path)["deploymentSpec"]["executors"]
        assert executors and {e["container"]["image"] for e in executors.values()} == {image}
        specs.append(executors)
    assert specs[0].keys() == specs[1].keys()

    with pytest.raises(SystemExit, match="is a tag, so KFP's cache would reuse results"):
        pipelines_cli.main(["submit", "--profile", "tiny", "--host", "http://127.0.0.1:9"])
    pipelines_cli.check_cacheable("ghcr.io/x/y:1.0", caching=False)
    pipelines_cli.check_cacheable("ghcr.io/x/y@sha256:" + "c" * 64, caching=True)
