"""The training launcher: manifests it builds (no cluster) and its create/attach/watch/clean-up logic
against a fake CustomObjectsApi."""

import dataclasses
import json
import shlex
from pathlib import Path

import pytest

from prefrestore.core.config import ConfigError, load
from prefrestore.pipeline import launcher as L


@pytest.fixture(scope="module")
def cluster() -> L.ClusterConfig:
    return L.cluster_config(load("paper"))


def _spec(kind: str = "trainjob", step: str = "stage1_1", run_id: str = "run-abc") -> L.JobSpec:
    return L.JobSpec(step=step, profile="paper", run_id=run_id,
                     inputs={"faces": "/mnt/data/w/in/faces", "captions": "/mnt/data/w/in/captions",
                             "base": "/mnt/data/w/in/base"},
                     out="/mnt/data/w/out", kind=kind)


class ApiException(Exception):
    def __init__(self, status: int) -> None:
        super().__init__(f"HTTP {status}")
        self.status = status


class FakeCustomObjects:
    """Enough of kubernetes.client.CustomObjectsApi: an in-memory store and a scripted status."""

    def __init__(self, states: list[dict] | None = None) -> None:
        self.objects: dict[str, dict] = {}
        self.states = list(states or [])  # status objects returned by successive gets
        self.calls: list[tuple[str, str]] = []

    def create_namespaced_custom_object(self, group, version, namespace, plural, body):
        name = body["metadata"]["name"]
        self.calls.append(("create", name))
        if name in self.objects:
            raise ApiException(409)
        self.objects[name] = json.loads(json.dumps(body))
        return self.objects[name]

    def get_namespaced_custom_object(self, group, version, namespace, plural, name):
        self.calls.append(("get", name))
        if name not in self.objects:
            raise ApiException(404)
        if self.states:
            self.objects[name]["status"] = self.states.pop(0)
        return self.objects[name]

    def delete_namespaced_custom_object(self, group, version, namespace, plural, name, propagation_policy):
        self.calls.append(("delete", name))
        if name not in self.objects:
            raise ApiException(404)
        del self.objects[name]


def _cond(kind: str, message: str = "") -> dict:
    return {"conditions": [{"type": "Created", "status": "True"},
                           {"type": kind, "status": "True", "message": message}]}


RUNNING = {"conditions": [{"type": "Created", "status": "True"}]}


class Clock:
    def __init__(self) -> None:
        self.t = 0.0
        self.sleeps: list[float] = []

    def __call__(self) -> float:
        return self.t

    def sleep(self, s: float) -> None:
        self.sleeps.append(s)
        self.t += s


def _launcher(api, kind: str = "trainjob") -> tuple[L.Launcher, Clock]:
    clock = Clock()
    return L.Launcher(api, kind, "prefrestore", clock=clock, sleep=clock.sleep, log=lambda m: None), clock


# ------------------------------------------------------------------------------------ manifests


def test_job_name_is_deterministic_and_dns_safe() -> None:
    a, b = L.job_name("run-1", "stage1_1"), L.job_name("run-1", "stage1_1")
    assert a == b and a != L.job_name("run-2", "stage1_1") and a != L.job_name("run-1", "stage1_2")
    assert len(a) <= 63 and a.replace("-", "").isalnum() and a.islower() and a[0].isalpha()


def test_trainjob_manifest(cluster: L.ClusterConfig) -> None:
    m = L.build_manifest(_spec("trainjob"), cluster)
    assert (m["apiVersion"], m["kind"]) == ("trainer.kubeflow.org/v1alpha1", "TrainJob")
    assert m["metadata"]["name"] == L.job_name("run-abc", "stage1_1")
    assert m["metadata"]["namespace"] == cluster.namespace
    trainer = m["spec"]["trainer"]
    training = cluster.training["stage1_1"]
    assert (trainer["numNodes"], trainer["numProcPerNode"]) == (training.nnodes, training.nproc_per_node)
    assert trainer["image"] == cluster.image
    gpu = cluster.gpu_steps["stage1_1"]
    assert trainer["resourcesPerNode"]["limits"][gpu.accelerator] == str(training.nproc_per_node)
    assert m["spec"]["runtimeRef"]["name"] == cluster.trainer_runtime
    assert m["spec"]["activeDeadlineSeconds"] == gpu.timeout_s
    (patch,) = m["spec"]["runtimePatches"]
    assert patch["manager"] == L.RUNTIME_PATCH_MANAGER
    (job,) = patch["trainingRuntimeSpec"]["template"]["spec"]["replicatedJobs"]
    assert job["name"] == "node"
    pod = job["template"]["spec"]["template"]["spec"]
    assert pod["nodeSelector"] == {cluster.pool_label: cluster.gpu_pool, cluster.gpu_product_label: gpu.product}
    assert pod["tolerations"][0]["key"] == cluster.gpu_taint.key
    claims = {v["persistentVolumeClaim"]["claimName"] for v in pod["volumes"] if "persistentVolumeClaim" in v}
    assert claims == {cluster.data_pvc, cluster.model_store_pvc}
    shm = next(v for v in pod["volumes"] if v["name"] == "shm")
    assert shm["emptyDir"]["medium"] == "Memory"
    assert pod["serviceAccountName"] == cluster.service_account


def test_torchrun_runs_the_same_entry_point_with_deepspeed(cluster: L.ClusterConfig) -> None:
    m = L.build_manifest(_spec("trainjob"), cluster)
    sh, flag, script = m["spec"]["trainer"]["command"]
    assert (sh, flag) == ("sh", "-c")
    argv = shlex.split(script)  # as sh would split it (the ${...} expansions stay as words)
    assert argv[:2] == ["exec", "torchrun"]
    assert argv[argv.index("--node-rank") + 1] == "${PET_NODE_RANK:-${RANK:-0}}"
    assert argv[argv.index("--nnodes") + 1] == "1" and argv[argv.index("--nproc-per-node") + 1] == "8"
    tail = argv[argv.index("--no-python") + 1:]
    assert tail[:4] == ["prefrestore", "stage1_1", "--profile", "paper"]
    assert {tail[i + 1] for i, t in enumerate(tail) if t == "--in"} == {
        "base=/mnt/data/w/in/base", "captions=/mnt/data/w/in/captions", "faces=/mnt/data/w/in/faces"}
    env = {e["name"]: e for e in m["spec"]["trainer"]["env"]}
    assert env["MLFLOW_TRACKING_PASSWORD"]["valueFrom"]["secretKeyRef"]["name"] == cluster.mlflow_secret
    assert "value" not in env["AWS_SECRET_ACCESS_KEY"]  # secrets only by reference


def test_the_job_carries_no_second_deepspeed_setting(cluster: L.ClusterConfig) -> None:
    """The pods run ``prefrestore <stage>``, which reads ``<stage>.deepspeed`` from params.yaml itself."""
    m = L.build_manifest(_spec("trainjob", step="stage1_1"), cluster)
    assert not any("DEEPSPEED" in e["name"] for e in m["spec"]["trainer"]["env"])


def test_pytorchjob_manifest_multi_node(cluster: L.ClusterConfig) -> None:
    two = dataclasses.replace(cluster.training["stage1_1"], launch="pytorchjob", nnodes=3)
    c = dataclasses.replace(cluster, training={**cluster.training, "stage1_1": two})
    m = L.build_manifest(_spec("pytorchjob"), c)
    assert (m["apiVersion"], m["kind"]) == ("kubeflow.org/v1", "PyTorchJob")
    reps = m["spec"]["pytorchReplicaSpecs"]
    assert reps["Master"]["replicas"] == 1 and reps["Worker"]["replicas"] == 2
    (container,) = reps["Worker"]["template"]["spec"]["containers"]
    assert container["name"] == "pytorch"  # the Training Operator requires this name
    assert "--nnodes 3" in container["command"][2]
    assert m["spec"]["nprocPerNode"] == "8"
    assert m["spec"]["runPolicy"]["activeDeadlineSeconds"] == cluster.gpu_steps["stage1_1"].timeout_s


def test_manifest_refuses_a_step_without_training_entry(cluster: L.ClusterConfig) -> None:
    with pytest.raises(ValueError, match="no cluster.training entry"):
        L.build_manifest(_spec(step="evaluate"), cluster)


def test_cluster_section_is_validated() -> None:
    tree = load("paper").tree
    bad_image = {**tree, "cluster": {**tree["cluster"], "image": "ghcr.io/prefrestore/prefrestore:latest"}}
    with pytest.raises(ConfigError, match="pinned tag"):
        L.cluster_config(type(load("paper"))("paper", bad_image))
    gpu = dict(tree["cluster"]["gpu_steps"])
    gpu["stage1_1"] = {**gpu["stage1_1"], "count": 4}  # 4 GPUs for 8 processes per node
    bad_count = {**tree, "cluster": {**tree["cluster"], "gpu_steps": gpu}}
    with pytest.raises(ConfigError, match="one process per GPU"):
        L.cluster_config(type(load("paper"))("paper", bad_count))


# ------------------------------------------------------------------------------------ create / watch


def test_run_creates_watches_and_cleans_up_on_success(cluster: L.ClusterConfig) -> None:
    api = FakeCustomObjects(states=[RUNNING, RUNNING, _cond("Complete")])
    lnch, clock = _launcher(api)
    m = L.build_manifest(_spec(), cluster)
    assert lnch.run(m, timeout_s=3600, poll_s=30, cleanup="on_success") == "succeeded"
    name = m["metadata"]["name"]
    assert api.calls == [("create", name), ("get", name), ("get", name), ("get", name), ("delete", name)]
    assert clock.sleeps == [30, 30] and api.objects == {}


def test_retried_launcher_attaches_on_409(cluster: L.ClusterConfig) -> None:
    api = FakeCustomObjects(states=[_cond("Succeeded")])
    m = L.build_manifest(_spec("pytorchjob"), cluster)
    api.objects[m["metadata"]["name"]] = json.loads(json.dumps(m))  # a previous attempt created it
    lnch, _ = _launcher(api, "pytorchjob")
    obj, attached = lnch.create_or_attach(m)
    assert attached and obj["metadata"]["name"] == m["metadata"]["name"]
    assert lnch.watch(m["metadata"]["name"], timeout_s=10, poll_s=1) == "succeeded"
    assert [c[0] for c in api.calls] == ["create", "get", "get"]  # no second job


def test_attach_refuses_a_job_of_another_run(cluster: L.ClusterConfig) -> None:
    api = FakeCustomObjects()
    m = L.build_manifest(_spec(), cluster)
    other = json.loads(json.dumps(m))
    other["metadata"]["annotations"]["prefrestore.io/run-id"] = "someone-else"
    api.objects[m["metadata"]["name"]] = other
    with pytest.raises(RuntimeError, match="belongs to run"):
        _launcher(api)[0].create_or_attach(m)


def test_failed_job_raises_with_message_and_is_kept_for_debugging(cluster: L.ClusterConfig) -> None:
    api = FakeCustomObjects(states=[RUNNING, _cond("Failed", "NCCL timeout on node 1")])
    lnch, _ = _launcher(api)
    m = L.build_manifest(_spec(), cluster)
    with pytest.raises(L.JobFailed, match="NCCL timeout"):
        lnch.run(m, timeout_s=3600, poll_s=5, cleanup="on_success")
    assert m["metadata"]["name"] in api.objects  # on_success keeps a failed job's pods and logs


def test_timeout_raises_and_always_cleanup_deletes(cluster: L.ClusterConfig) -> None:
    api = FakeCustomObjects(states=[RUNNING] * 100)
    lnch, clock = _launcher(api)
    m = L.build_manifest(_spec(), cluster)
    with pytest.raises(L.JobFailed, match="did not finish within 100 s"):
        lnch.run(m, timeout_s=100, poll_s=30, cleanup="always")
    assert clock.t >= 100 and api.objects == {}
    assert api.calls[-1] == ("delete", m["metadata"]["name"])


def test_create_error_other_than_409_propagates(cluster: L.ClusterConfig) -> None:
    class Forbidden(FakeCustomObjects):
        def create_namespaced_custom_object(self, **kw):
            raise ApiException(403)

    api = Forbidden()
    with pytest.raises(ApiException):
        _launcher(api)[0].run(L.build_manifest(_spec(), cluster), 10, 1, cleanup="never")
    assert ("get", L.job_name("run-abc", "stage1_1")) not in api.calls


def test_delete_of_a_gone_job_is_fine(cluster: L.ClusterConfig) -> None:
    api = FakeCustomObjects()
    _launcher(api)[0].delete("prefrestore-stage1-1-0000000000")
    assert api.calls == [("delete", "prefrestore-stage1-1-0000000000")]


def test_job_state_reads_both_kinds() -> None:
    assert L.job_state({}) == "running"
    assert L.job_state({"status": RUNNING}) == "running"
    assert L.job_state({"status": _cond("Complete")}) == "succeeded"
    assert L.job_state({"status": _cond("Succeeded")}) == "succeeded"
    assert L.job_state({"status": _cond("Failed")}) == "failed"
    assert L.job_state({"status": {"conditions": [{"type": "Failed", "status": "False"}]}}) == "running"


def test_run_training_copies_inputs_launches_and_copies_back(tmp_path: Path, cluster: L.ClusterConfig,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """The launcher component's runtime path with a fake API that 'trains' by writing the output."""
    from prefrestore.pipeline import kfp_runtime as pipeline_cli

    data = tmp_path / "pvc"
    monkeypatch.setattr(L, "cluster_config", lambda params: dataclasses.replace(cluster, data_mount=str(data)))
    for name in ("faces", "captions", "base"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "x.txt").write_text(name)
    seen = {}

    def fake_run_job(spec, c, api=None):
        seen["spec"] = spec
        assert Path(spec.inputs["faces"], "x.txt").read_text() == "faces"
        Path(spec.out).mkdir(parents=True)
        Path(spec.out, "metrics.json").write_text(json.dumps({"final_loss": 0.5}))
        return "succeeded"

    monkeypatch.setattr(L, "run_job", fake_run_job)
    inputs = {n: str(tmp_path / n) for n in ("faces", "captions", "base")}
    out = tmp_path / "artifact"
    summary = pipeline_cli.run_training("stage1_1", "paper", "trainjob", "run-9", inputs, str(out))
    assert summary == {"job_state": "succeeded", "final_loss": 0.5}
    assert json.loads((out / "metrics.json").read_text()) == {"final_loss": 0.5}
    assert seen["spec"].kind == "trainjob" and seen["spec"].out.startswith(str(data / "runs"))
