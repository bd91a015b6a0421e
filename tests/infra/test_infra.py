"""Infrastructure under test: the Dockerfile, the DeepSpeed configs and the Kubernetes manifests
(structure, strict schema round trip through the kubernetes client's models, non-root, pinned
images, secrets by reference only, least-privilege RBAC, node pools matching params.yaml)."""

import dataclasses
import json
import re
from pathlib import Path

import pytest
import yaml

from prefrestore.core.config import PROJECT_ROOT, load
from prefrestore.pipeline.launcher import cluster_config
from prefrestore.train.common import DEEPSPEED_DIR
from prefrestore.train.stage1 import Stage11Config, Stage12Config

INFRA = PROJECT_ROOT / "infra"
K8S = INFRA / "k8s"
WORKLOAD_KINDS = {"Deployment", "StatefulSet", "Job"}

# kind -> the kubernetes client model that must accept it (unknown fields fail the round trip)
MODELS = {
    "Namespace": "V1Namespace", "ServiceAccount": "V1ServiceAccount", "Role": "V1Role",
    "RoleBinding": "V1RoleBinding", "PersistentVolumeClaim": "V1PersistentVolumeClaim",
    "Service": "V1Service", "Deployment": "V1Deployment", "StatefulSet": "V1StatefulSet", "Job": "V1Job",
}


def _docs(path: Path) -> list[dict]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d is not None]


def _manifests() -> list[tuple[Path, dict]]:
    out = []
    for path in sorted(K8S.rglob("*.yaml")):
        if path.name == "kustomization.yaml":
            continue
        out += [(path, d) for d in _docs(path)]
    return out


def _base_objects() -> list[dict]:
    kust = yaml.safe_load((K8S / "base" / "kustomization.yaml").read_text())
    return [d for r in kust["resources"] for d in _docs(K8S / "base" / r)]


def _pod_specs(obj: dict) -> list[dict]:
    if obj["kind"] in WORKLOAD_KINDS:
        return [obj["spec"]["template"]["spec"]]
    return []


def _numbers_as_str(x):
    """Quantities and ports may be written as numbers or strings; compare them as strings."""
    if isinstance(x, dict):
        return {k: _numbers_as_str(v) for k, v in x.items()}
    if isinstance(x, list):
        return [_numbers_as_str(v) for v in x]
    return str(x) if isinstance(x, int | float) and not isinstance(x, bool) else x


# ------------------------------------------------------------------------------------ kustomize


def test_kustomizations_reference_existing_files() -> None:
    for kust_path in K8S.rglob("kustomization.yaml"):
        kust = yaml.safe_load(kust_path.read_text())
        assert kust["kind"] == "Kustomization"
        for entry in kust.get("resources", []) + [p["path"] for p in kust.get("patches", [])]:
            target = (kust_path.parent / entry).resolve()
            assert target.exists(), f"{kust_path}: {entry} does not exist"
            if target.is_dir():
                assert (target / "kustomization.yaml").is_file(), f"{kust_path}: {entry} has no kustomization"
    listed = {r for r in yaml.safe_load((K8S / "base" / "kustomization.yaml").read_text())["resources"]}
    present = {p.name for p in (K8S / "base").glob("*.yaml")} - {"kustomization.yaml"}
    assert listed == present, "every base manifest is in the kustomization and vice versa"


def test_every_object_has_apiversion_kind_metadata() -> None:
    objs = _manifests()
    assert len(objs) >= 15
    for path, obj in objs:
        assert {"apiVersion", "kind", "metadata"} <= set(obj), path
        assert re.fullmatch(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?", obj["metadata"]["name"]), path


@pytest.mark.parametrize("kind", sorted(MODELS))
def test_core_objects_round_trip_through_kubernetes_models(kind: str) -> None:
    """Deserialising into the client's model and back must lose nothing: no misspelt field names."""
    from kubernetes.client import ApiClient

    api = ApiClient()
    objs = [o for _, o in _manifests() if o["kind"] == kind and o["apiVersion"] in ("v1", "apps/v1", "batch/v1",
                                                                                     "rbac.authorization.k8s.io/v1")]
    assert objs, f"no {kind} in the manifests"
    for obj in objs:
        model = api._ApiClient__deserialize(obj, MODELS[kind])
        back = api.sanitize_for_serialization(model)
        assert _numbers_as_str(back) == _numbers_as_str(obj), f"{kind} {obj['metadata']['name']}"


# ------------------------------------------------------------------------------------ security


def test_workloads_run_as_non_root_and_drop_privileges() -> None:
    workloads = [o for o in _base_objects() if o["kind"] in WORKLOAD_KINDS]
    assert {o["metadata"]["name"] for o in workloads} >= {"prefrestore-mlflow", "prefrestore-postgres",
                                                          "prefrestore-minio"}
    for obj in workloads:
        (pod,) = _pod_specs(obj)
        assert pod["securityContext"]["runAsNonRoot"] is True, obj["metadata"]["name"]
        assert pod["securityContext"]["runAsUser"] > 0
        for c in pod["containers"]:
            assert c["securityContext"]["allowPrivilegeEscalation"] is False
            assert c["securityContext"]["capabilities"]["drop"] == ["ALL"]
            assert "limits" in c["resources"], f"{c['name']} has no resource limits"


def test_images_are_pinned() -> None:
    cluster = cluster_config(load("paper"))
    for obj in _base_objects():
        for pod in _pod_specs(obj):
            for c in pod["containers"]:
                name, _, tag = c["image"].rpartition(":")
                assert name and tag and tag != "latest", c["image"]
    mlflow = next(o for o in _base_objects() if o["kind"] == "Deployment" and o["metadata"]["name"] == "prefrestore-mlflow")
    assert mlflow["spec"]["template"]["spec"]["containers"][0]["image"] == cluster.image  # the one image


def test_secrets_only_by_reference() -> None:
    assert not [o for _, o in _manifests() if o["kind"] == "Secret"], "no Secret objects in git"
    secretish = re.compile(r"PASSWORD|SECRET|ACCESS_KEY|_USER$", re.I)
    for obj in _base_objects():
        for pod in _pod_specs(obj):
            for c in pod["containers"]:
                for env in c.get("env", []):
                    if secretish.search(env["name"]):
                        assert "valueFrom" in env and "secretKeyRef" in env["valueFrom"], env["name"]


def test_rbac_is_least_privilege() -> None:
    cluster = cluster_config(load("paper"))
    objs = _docs(K8S / "base" / "rbac.yaml")
    assert not [o for o in objs if o["kind"] in ("ClusterRole", "ClusterRoleBinding")], "namespace-scoped only"
    (role,) = [o for o in objs if o["kind"] == "Role"]
    allowed = {
        ("trainer.kubeflow.org", "trainjobs"): {"create", "get", "watch", "delete"},
        ("kubeflow.org", "pytorchjobs"): {"create", "get", "watch", "delete"},
        ("", "pods"): {"get", "list"},
        ("", "pods/log"): {"get", "list"},
        ("argoproj.io", "workflowtaskresults"): {"create", "patch"},
    }
    for rule in role["rules"]:
        for group in rule["apiGroups"]:
            for res in rule["resources"]:
                assert "*" not in (group, res) and "*" not in rule["verbs"]
                assert set(rule["verbs"]) <= allowed[(group, res)], (group, res, rule["verbs"])
    (binding,) = [o for o in objs if o["kind"] == "RoleBinding"]
    assert binding["roleRef"]["name"] == role["metadata"]["name"]
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": cluster.service_account,
                                    "namespace": cluster.namespace}]
    assert any(o["kind"] == "ServiceAccount" and o["metadata"]["name"] == cluster.service_account for o in objs)


# ------------------------------------------------------------------------------------ params agreement


def test_names_match_the_cluster_section() -> None:
    cluster = cluster_config(load("paper"))
    objs = _base_objects()
    kust = yaml.safe_load((K8S / "base" / "kustomization.yaml").read_text())
    assert kust["namespace"] == cluster.namespace
    pvcs = {o["metadata"]["name"] for o in objs if o["kind"] == "PersistentVolumeClaim"}
    assert pvcs == {cluster.model_store_pvc, cluster.data_pvc}
    for obj in objs:
        for pod in _pod_specs(obj):
            selector = pod.get("nodeSelector")
            if selector:  # the tracking stack runs on the CPU pool
                assert selector == cluster.cpu_node_selector()


@pytest.mark.parametrize("profile", ["paper"])
def test_gpu_node_pool_matches_pipeline_selectors_and_tolerations(profile: str) -> None:
    cluster = cluster_config(load(profile))
    pools = [o for o in _docs(K8S / "overlays" / "gpu" / "nodepools.yaml") if o["kind"] == "NodePool"]
    by_pool = {p["spec"]["template"]["metadata"]["labels"][cluster.pool_label]: p for p in pools}
    assert set(by_pool) == {cluster.cpu_pool, cluster.gpu_pool}
    gpu = by_pool[cluster.gpu_pool]["spec"]["template"]
    taint = cluster.gpu_taint
    assert gpu["spec"]["taints"] == [{"key": taint.key, "value": taint.value, "effect": taint.effect}]
    assert "taints" not in by_pool[cluster.cpu_pool]["spec"]["template"]["spec"]
    labels = gpu["metadata"]["labels"]
    for step in cluster.gpu_steps:  # every GPU pod's node selector is satisfiable by the GPU pool
        selector = cluster.gpu_node_selector(step)
        assert all(labels.get(k) == v for k, v in selector.items()), step
    per_node = max(t.nproc_per_node for t in cluster.training.values())
    assert int(by_pool[cluster.gpu_pool]["spec"]["limits"][cluster.gpu_steps["stage1_1"].accelerator]) >= per_node


# ------------------------------------------------------------------------------------ image + deepspeed


def test_dockerfile_is_pinned_non_root_with_pipeline_extra() -> None:
    text = (INFRA / "Dockerfile").read_text()
    base = re.search(r"ARG CUDA_IMAGE=(\S+)", text).group(1)
    assert re.fullmatch(r"nvidia/cuda:\d+\.\d+\.\d+-cudnn-runtime-ubuntu\d+\.\d+", base)
    froms = re.findall(r"^FROM (\S+)", text, re.M)
    assert froms and all(f == "${CUDA_IMAGE}" for f in froms)
    users = re.findall(r"^USER (\S+)", text, re.M)
    assert users and users[-1].split(":")[0] not in ("root", "0")
    assert users[-1].split(":")[0] == "1000"  # = pipelines/placement.py UID
    extras = re.search(r'pip install -e "\.\[([^\]]*)\]"', text).group(1).split(",")
    assert {"pipeline", "dist", "dreamsim"} <= set(extras)  # DreamSim is a semantic metric of the evaluate step
    assert re.search(r'^ENTRYPOINT \["prefrestore"\]', text, re.M)
    assert "torch==2.14.1" in text  # same pin as the Makefile
    for spec in re.findall(r'"([a-zA-Z0-9_.-]+[=<>~][^"]*)"', text):  # extra packages: exact pins
        assert "==" in spec, spec
    ignore = (INFRA / "Dockerfile.dockerignore").read_text().splitlines()
    assert "*" in ignore, "the build context is allow-listed"
    assert "!infra/deepspeed/" in ignore  # the trainer reads the configs beside params.yaml in the image:
    assert "WORKDIR /opt/prefrestore" in text and "COPY infra/deepspeed/ infra/deepspeed/" in text
    assert DEEPSPEED_DIR == PROJECT_ROOT / "infra" / "deepspeed"  # /opt/prefrestore/infra/deepspeed there


@pytest.mark.parametrize("stage", [1, 2])
def test_deepspeed_configs(stage: int) -> None:
    cfg = json.loads((INFRA / "deepspeed" / f"zero{stage}.json").read_text())
    assert cfg["zero_optimization"]["stage"] == stage
    assert cfg["bf16"]["enabled"] is True  # SPEC §3: released code trains in bf16
    # batch sizes are hyperparameters: they live in params.yaml and are filled in by the trainer
    for key in ("train_micro_batch_size_per_gpu", "gradient_accumulation_steps", "train_batch_size"):
        assert cfg[key] == "auto"


def test_every_configured_deepspeed_file_exists() -> None:
    for profile in ("paper", "tiny", "released"):
        for stage, cls in (("stage1_1", Stage11Config), ("stage1_2", Stage12Config)):
            zero = load(profile).section(stage, cls).deepspeed
            if zero != "none":
                assert (INFRA / "deepspeed" / f"{zero}.json").is_file()


def test_tracking_stack_admits_only_the_projects_labelled_pods() -> None:
    """MLflow and MinIO take ingress only from pods labelled part-of=prefrestore; every pod that talks to
    them carries that label: KFP step pods, both training-job kinds, the MLflow server and the bucket Job."""
    from prefrestore.pipeline import launcher as L

    objs = _base_objects()
    policies = {o["metadata"]["name"]: o["spec"] for o in objs if o["kind"] == "NetworkPolicy"}
    for name in ("prefrestore-mlflow", "prefrestore-minio"):
        (rule,) = policies[name]["ingress"]
        assert rule["from"] == [{"podSelector": {"matchLabels": L.POD_LABELS}}], name  # not {} (= every pod)
    clients = [o for o in objs if o["kind"] in WORKLOAD_KINDS
               and o["metadata"]["name"] in ("prefrestore-mlflow", "prefrestore-minio-buckets")]
    assert len(clients) == 2
    for o in clients:
        assert L.POD_LABELS.items() <= o["spec"]["template"]["metadata"]["labels"].items(), o["metadata"]["name"]
    cluster = cluster_config(load("paper"))
    spec = L.JobSpec(step="stage1_1", profile="paper", run_id="r", inputs={"faces": "/f"}, out="/o", kind="trainjob")
    trainjob = L.build_manifest(spec, cluster)
    (patch,) = trainjob["spec"]["runtimePatches"]
    pod = patch["trainingRuntimeSpec"]["template"]["spec"]["replicatedJobs"][0]["template"]["spec"]["template"]
    assert pod["metadata"]["labels"] == L.POD_LABELS
    pytorchjob = L.build_manifest(dataclasses.replace(spec, kind="pytorchjob"), cluster)
    assert pytorchjob["spec"]["pytorchReplicaSpecs"]["Master"]["template"]["metadata"]["labels"] == L.POD_LABELS
    for compiled in (PROJECT_ROOT / "pipelines" / "compiled").glob("*.yaml"):
        docs = list(yaml.safe_load_all(compiled.read_text()))
        platform = next(d for d in docs if "platforms" in d)["platforms"]["kubernetes"]["deploymentSpec"]["executors"]
        assert platform and all(e["podMetadata"]["labels"] == L.POD_LABELS for e in platform.values()), compiled.name
