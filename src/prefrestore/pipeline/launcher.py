"""Multi-node training launcher: a Kubeflow ``TrainJob`` or ``PyTorchJob`` per training stage.

A KFP launcher task (a small CPU pod) calls :func:`run_job`: it builds the job manifest
(:func:`build_manifest`), creates it with the Kubernetes ``CustomObjectsApi`` under a deterministic
name (hash of the pipeline run id and the step, so a retried launcher attaches to its own job on
409 instead of starting a second one), polls it to ``Complete``/``Failed`` within the step's
deadline, and deletes it afterwards according to the stage's ``cleanup`` policy (also when the
launcher itself fails or is killed). Every node runs the same image and entry point as the rest of
the pipeline: ``torchrun ... --no-python prefrestore <stage> --profile P --in ... --out ...``,
and the stage reads its own DeepSpeed setting (``stage1_x.deepspeed``, the one home of it) from the
same ``params.yaml`` (SPEC §3: the released code trains stage 1 with ZeRO-1, bf16, 8 GPUs).

The ``cluster`` section of ``params.yaml`` (:class:`ClusterConfig`) is also what the pipelines read
for node pools, taints, accelerators, volumes, secrets, deadlines and retries. ``kubernetes`` is
imported lazily: this module is importable without it.
"""

from __future__ import annotations

import dataclasses
import hashlib
import re
import shlex
import signal
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any, Literal

from prefrestore.core.config import Params, check_range
from prefrestore.pipeline import steps

JobKind = Literal["trainjob", "pytorchjob"]
POD_LABELS = {"app.kubernetes.io/part-of": "prefrestore"}  # infra/k8s/base/networkpolicy.yaml admits these pods
RUNTIME_PATCH_MANAGER = "prefrestore.io/launcher"  # owner of the TrainJob's runtimePatches entry

# (group, version, plural, kind) of each job kind's custom resource
CRDS: dict[str, tuple[str, str, str, str]] = {
    "trainjob": ("trainer.kubeflow.org", "v1alpha1", "trainjobs", "TrainJob"),
    "pytorchjob": ("kubeflow.org", "v1", "pytorchjobs", "PyTorchJob"),
}


# ---------------------------------------------------------------------------------------------
# params.yaml `cluster` section
# ---------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Taint:
    key: str  # taint key on the GPU nodes
    value: str  # taint value
    effect: Literal["NoSchedule", "PreferNoSchedule", "NoExecute"]  # taint effect


@dataclasses.dataclass(frozen=True)
class PodSize:
    cpu: str  # CPU request/limit of the pod
    memory: str  # memory request/limit of the pod
    timeout_s: int  # pod deadline (activeDeadlineSeconds)
    retries: int  # KFP retries of a failed task

    def __post_init__(self) -> None:
        check_range("timeout_s", self.timeout_s, 60, 30 * 24 * 3600)
        check_range("retries", self.retries, 0, 10)


@dataclasses.dataclass(frozen=True)
class GpuStep(PodSize):
    accelerator: str  # extended resource name, e.g. nvidia.com/gpu
    count: int  # accelerators per pod (per node for a launched training job)
    product: str  # value of cluster.gpu_product_label the pod is pinned to

    def __post_init__(self) -> None:
        super().__post_init__()
        check_range("count", self.count, 1, 16)


@dataclasses.dataclass(frozen=True)
class Training:
    launch: Literal["inline", "trainjob", "pytorchjob"]  # inline: inside the KFP pod
    nnodes: int  # nodes of the launched job
    nproc_per_node: int  # torchrun processes (= GPUs) per node
    cleanup: Literal["always", "on_success", "never"]  # delete the job when it ends

    def __post_init__(self) -> None:
        check_range("nnodes", self.nnodes, 1, 512)
        check_range("nproc_per_node", self.nproc_per_node, 1, 16)
        if self.launch == "inline" and self.nnodes * self.nproc_per_node != 1:
            raise ValueError("launch=inline runs one process in the KFP pod: nnodes and nproc_per_node must be 1")


@dataclasses.dataclass(frozen=True)
class ClusterConfig:
    image: str  # the one container image of every step
    kubernetes_version: str  # Kubernetes API version the manifests are validated against
    namespace: str  # namespace of pods, jobs, PVCs and secrets
    service_account: str  # the pipeline pods' service account
    pool_label: str  # node label key that names a node pool
    cpu_pool: str  # pool_label value of the CPU pool
    gpu_pool: str  # pool_label value of the GPU pool
    gpu_taint: Taint  # taint of the GPU nodes, tolerated by GPU pods
    gpu_product_label: str  # node label naming the GPU model
    model_store_pvc: str  # PVC of staged pretrained weights
    model_store_mount: str  # its mount path
    data_pvc: str  # RWX PVC shared by launchers and training pods
    data_mount: str  # its mount path
    shm_size: str  # size of the memory-backed /dev/shm of GPU pods
    mlflow_secret: str  # Secret: tracking_uri, username, password
    storage_secret: str  # Secret: endpoint_url, access_key_id, secret_access_key
    retry_backoff: str  # first retry delay (KFP duration string)
    cpu_step: PodSize  # CPU steps' pod size, deadline, retries
    gpu_steps: Mapping[str, GpuStep]  # per GPU step
    training: Mapping[str, Training]  # per training stage
    trainer_runtime: str  # ClusterTrainingRuntime of TrainJobs
    job_poll_s: int  # seconds between polls of a launched job

    def __post_init__(self) -> None:
        if ":" not in self.image.rsplit("/", 1)[-1] or self.image.endswith(":latest"):
            raise ValueError(f"image '{self.image}' must carry a pinned tag (not latest)")
        gpu = {s.name for s in steps.STEPS if s.gpu}
        if set(self.gpu_steps) != gpu:
            raise ValueError(f"gpu_steps must list exactly the GPU steps {sorted(gpu)}, got {sorted(self.gpu_steps)}")
        unknown = set(self.training) - gpu
        if unknown:
            raise ValueError(f"training lists non-GPU or unknown steps {sorted(unknown)}")
        for name, t in self.training.items():
            if t.launch != "inline" and self.gpu_steps[name].count != t.nproc_per_node:
                raise ValueError(f"{name}: gpu_steps.count ({self.gpu_steps[name].count}) must equal "
                                 f"training.nproc_per_node ({t.nproc_per_node}): one process per GPU")
        check_range("job_poll_s", self.job_poll_s, 1, 3600)
        if not re.fullmatch(r"\d+(s|m|h)", self.retry_backoff):
            raise ValueError(f"retry_backoff '{self.retry_backoff}' must look like 60s, 5m or 1h")

    def gpu_node_selector(self, step: str) -> dict[str, str]:
        return {self.pool_label: self.gpu_pool, self.gpu_product_label: self.gpu_steps[step].product}

    def cpu_node_selector(self) -> dict[str, str]:
        return {self.pool_label: self.cpu_pool}

    def env(self) -> dict[str, str]:
        """Plain environment of every pod: offline weights from the model store, no hub access."""
        store = self.model_store_mount
        return {
            "PREFRESTORE_ORCHESTRATOR": "kfp",
            "PREFRESTORE_MODEL_STORE": f"{store}/store",
            "HF_HOME": f"{store}/hf",
            "TORCH_HOME": f"{store}/torch",
            "HF_HUB_OFFLINE": "1",
            "TRANSFORMERS_OFFLINE": "1",
        }

    def secret_env(self) -> dict[str, dict[str, str]]:
        """Secret name -> {secret key: environment variable} for MLflow and the object store."""
        return {
            self.mlflow_secret: {
                "tracking_uri": "MLFLOW_TRACKING_URI",
                "username": "MLFLOW_TRACKING_USERNAME",
                "password": "MLFLOW_TRACKING_PASSWORD",
            },
            self.storage_secret: {
                "endpoint_url": "MLFLOW_S3_ENDPOINT_URL",
                "access_key_id": "AWS_ACCESS_KEY_ID",
                "secret_access_key": "AWS_SECRET_ACCESS_KEY",
            },
        }


def cluster_config(params: Params) -> ClusterConfig:
    return params.section("cluster", ClusterConfig)


# ---------------------------------------------------------------------------------------------
# the manifest
# ---------------------------------------------------------------------------------------------


def job_name(run_id: str, step: str) -> str:
    """Deterministic DNS-1035 name: the same run and step always give the same job."""
    digest = hashlib.sha256(f"{run_id}/{step}".encode()).hexdigest()[:10]
    return f"prefrestore-{step.replace('_', '-')}-{digest}"


@dataclasses.dataclass(frozen=True)
class JobSpec:
    """One launched training stage: what to run and where."""

    step: str  # the training step, e.g. stage1_1
    profile: str  # params.yaml profile baked into the image
    run_id: str  # the pipeline run id (the job name derives from it)
    inputs: Mapping[str, str]  # step input name -> path on the shared data PVC
    out: str  # output directory on the shared data PVC
    kind: JobKind  # trainjob (Kubeflow Trainer v2) or pytorchjob (Training Operator v1)


def torchrun_command(spec: JobSpec, training: Training) -> list[str]:
    """``sh -c 'exec torchrun ... --no-python prefrestore <step> ...'`` for every node.

    Node rank and rendezvous come from the operator's environment (``PET_*`` from Trainer v2 and
    from the Training Operator, ``RANK``/``MASTER_ADDR`` as a fallback).
    """
    step_argv = ["prefrestore", spec.step, "--profile", spec.profile, "--out", spec.out]
    for name in sorted(spec.inputs):
        step_argv += ["--in", f"{name}={spec.inputs[name]}"]
    script = (
        f"exec torchrun --nnodes {training.nnodes} --nproc-per-node {training.nproc_per_node}"
        ' --node-rank "${PET_NODE_RANK:-${RANK:-0}}"'
        ' --master-addr "${PET_MASTER_ADDR:-${MASTER_ADDR:-localhost}}"'
        ' --master-port "${PET_MASTER_PORT:-${MASTER_PORT:-29500}}"'
        f" --no-python {shlex.join(step_argv)}"
    )
    return ["sh", "-c", script]


def _pod_parts(spec: JobSpec, cluster: ClusterConfig) -> dict[str, Any]:
    gpu = cluster.gpu_steps[spec.step]
    env = dict(cluster.env())
    env_list: list[dict[str, Any]] = [{"name": k, "value": v} for k, v in sorted(env.items())]
    for secret, keys in cluster.secret_env().items():
        for key, var in keys.items():
            env_list.append({"name": var, "valueFrom": {"secretKeyRef": {"name": secret, "key": key}}})
    taint = cluster.gpu_taint
    return {
        "env": env_list,
        "resources": {
            "requests": {"cpu": gpu.cpu, "memory": gpu.memory, gpu.accelerator: str(gpu.count)},
            "limits": {"cpu": gpu.cpu, "memory": gpu.memory, gpu.accelerator: str(gpu.count)},
        },
        "nodeSelector": cluster.gpu_node_selector(spec.step),
        "tolerations": [{"key": taint.key, "operator": "Equal", "value": taint.value, "effect": taint.effect}],
        "volumes": [
            {"name": "data", "persistentVolumeClaim": {"claimName": cluster.data_pvc}},
            {"name": "model-store", "persistentVolumeClaim": {"claimName": cluster.model_store_pvc,
                                                              "readOnly": True}},
            {"name": "shm", "emptyDir": {"medium": "Memory", "sizeLimit": cluster.shm_size}},
        ],
        "volumeMounts": [
            {"name": "data", "mountPath": cluster.data_mount},
            {"name": "model-store", "mountPath": cluster.model_store_mount, "readOnly": True},
            {"name": "shm", "mountPath": "/dev/shm"},
        ],
        "securityContext": {"runAsNonRoot": True, "allowPrivilegeEscalation": False,
                            "capabilities": {"drop": ["ALL"]}, "seccompProfile": {"type": "RuntimeDefault"}},
    }


def build_manifest(spec: JobSpec, cluster: ClusterConfig) -> dict[str, Any]:
    """The custom resource of one launched training stage (plain dict, ready for the API)."""
    if spec.step not in cluster.training:
        raise ValueError(f"step '{spec.step}' has no cluster.training entry; launchable: {sorted(cluster.training)}")
    training = cluster.training[spec.step]
    group, version, _, kind = CRDS[spec.kind]
    parts = _pod_parts(spec, cluster)
    command = torchrun_command(spec, training)
    timeout = cluster.gpu_steps[spec.step].timeout_s
    metadata = {
        "name": job_name(spec.run_id, spec.step),
        "namespace": cluster.namespace,
        "labels": {**POD_LABELS, "prefrestore.io/step": spec.step},
        "annotations": {"prefrestore.io/run-id": spec.run_id, "prefrestore.io/profile": spec.profile},
    }
    container = {
        "image": cluster.image,
        "command": command,
        "env": parts["env"],
        "resources": parts["resources"],
        "volumeMounts": parts["volumeMounts"],
        "securityContext": parts["securityContext"],
    }
    pod_spec = {
        "serviceAccountName": cluster.service_account,
        "nodeSelector": parts["nodeSelector"],
        "tolerations": parts["tolerations"],
        "volumes": parts["volumes"],
    }
    if spec.kind == "trainjob":
        body_spec: dict[str, Any] = {
            "runtimeRef": {"name": cluster.trainer_runtime, "apiGroup": group, "kind": "ClusterTrainingRuntime"},
            "trainer": {
                "image": container["image"],
                "command": container["command"],
                "env": container["env"],
                "numNodes": training.nnodes,
                "numProcPerNode": training.nproc_per_node,
                "resourcesPerNode": container["resources"],
            },
            "activeDeadlineSeconds": timeout,
            # Trainer v2.3: the pod placement and volumes are a patch of the runtime's "node" job
            "runtimePatches": [{
                "manager": RUNTIME_PATCH_MANAGER,
                "trainingRuntimeSpec": {"template": {"spec": {"replicatedJobs": [{
                    "name": "node",
                    "template": {"spec": {"template": {"metadata": {"labels": dict(POD_LABELS)}, "spec": {
                        **pod_spec,
                        "containers": [{"name": "node", "volumeMounts": container["volumeMounts"],
                                        "securityContext": container["securityContext"]}],
                    }}}},
                }]}}},
            }],
        }
    else:
        def replica(n: int) -> dict[str, Any]:
            return {
                "replicas": n,
                "restartPolicy": "OnFailure",
                "template": {"metadata": {"labels": dict(POD_LABELS)},
                             "spec": {**pod_spec, "containers": [{"name": "pytorch", **container}]}},
            }

        replicas = {"Master": replica(1)}
        if training.nnodes > 1:
            replicas["Worker"] = replica(training.nnodes - 1)
        body_spec = {
            "nprocPerNode": str(training.nproc_per_node),
            "runPolicy": {"cleanPodPolicy": "None", "activeDeadlineSeconds": timeout, "backoffLimit": 3},
            "pytorchReplicaSpecs": replicas,
        }
    return {"apiVersion": f"{group}/{version}", "kind": kind, "metadata": metadata, "spec": body_spec}


# ---------------------------------------------------------------------------------------------
# create / attach / watch / clean up
# ---------------------------------------------------------------------------------------------


class JobFailed(RuntimeError):
    """The launched job reported Failed, or did not finish within its deadline."""


def job_state(obj: Mapping[str, Any]) -> str:
    """'succeeded', 'failed' or 'running' from a TrainJob's or PyTorchJob's status conditions."""
    conditions = (obj.get("status") or {}).get("conditions") or []  # a new object has no status yet
    true = {c.get("type") for c in conditions if str(c.get("status")) == "True"}
    if true & {"Failed"}:
        return "failed"
    if true & {"Complete", "Succeeded"}:
        return "succeeded"
    return "running"


def _is_status(exc: BaseException, code: int) -> bool:
    return getattr(exc, "status", None) == code


@contextmanager
def _sigterm_as_exit() -> Iterator[None]:
    """A killed launcher pod (KFP deadline) still runs its clean-up: SIGTERM raises SystemExit."""
    def _exit(signum: int, frame: Any) -> None:
        raise SystemExit(128 + signum)

    try:
        old = signal.signal(signal.SIGTERM, _exit)
    except ValueError:  # not the main thread
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, old)


class Launcher:
    """Create-or-attach, watch and clean up one job through a ``CustomObjectsApi``-like object."""

    def __init__(self, api: Any, kind: JobKind, namespace: str,
                 clock: Callable[[], float] = time.monotonic, sleep: Callable[[float], None] = time.sleep,
                 log: Callable[[str], None] = print) -> None:
        self.api, self.namespace, self.clock, self.sleep, self.log = api, namespace, clock, sleep, log
        self.group, self.version, self.plural, _ = CRDS[kind]

    def _call(self, fn: str, **kw: Any) -> Any:
        return getattr(self.api, fn)(group=self.group, version=self.version, namespace=self.namespace,
                                     plural=self.plural, **kw)

    def create_or_attach(self, manifest: Mapping[str, Any]) -> tuple[dict[str, Any], bool]:
        """Create the job; on 409 attach to the existing one of the same name. Returns (obj, attached)."""
        name = manifest["metadata"]["name"]
        try:
            return self._call("create_namespaced_custom_object", body=dict(manifest)), False
        except Exception as exc:
            if not _is_status(exc, 409):
                raise
        existing = self._call("get_namespaced_custom_object", name=name)
        want = manifest["metadata"]["annotations"]["prefrestore.io/run-id"]
        have = (existing.get("metadata", {}).get("annotations") or {}).get("prefrestore.io/run-id")
        if have != want:
            raise RuntimeError(f"job {name} exists but belongs to run {have!r}, not {want!r}; refusing to attach")
        self.log(f"attached to existing job {name}")
        return existing, True

    def watch(self, name: str, timeout_s: float, poll_s: float) -> str:
        """Poll until the job succeeds ('succeeded') or fails (:class:`JobFailed`), or time runs out."""
        deadline = self.clock() + timeout_s
        last = None
        while True:
            obj = self._call("get_namespaced_custom_object", name=name)
            state = job_state(obj)
            if state != last:
                self.log(f"job {name}: {state}")
                last = state
            if state == "succeeded":
                return state
            if state == "failed":
                msgs = [c.get("message", "") for c in obj.get("status", {}).get("conditions", [])
                        if c.get("type") == "Failed"]
                raise JobFailed(f"job {name} failed: {'; '.join(m for m in msgs if m) or 'no message'}")
            if self.clock() >= deadline:
                raise JobFailed(f"job {name} did not finish within {timeout_s:.0f} s")
            self.sleep(poll_s)

    def delete(self, name: str) -> None:
        try:
            self._call("delete_namespaced_custom_object", name=name, propagation_policy="Foreground")
            self.log(f"deleted job {name}")
        except Exception as exc:
            if not _is_status(exc, 404):
                raise

    def run(self, manifest: Mapping[str, Any], timeout_s: float, poll_s: float,
            cleanup: Literal["always", "on_success", "never"]) -> str:
        """Create or attach, watch, then delete per ``cleanup`` (in an exit handler, on every path)."""
        name = manifest["metadata"]["name"]
        ok = False
        with _sigterm_as_exit():
            try:
                self.create_or_attach(manifest)
                state = self.watch(name, timeout_s, poll_s)
                ok = True
                return state
            finally:
                if cleanup == "always" or (cleanup == "on_success" and ok):
                    self.delete(name)


def kubernetes_api() -> Any:
    """A ``CustomObjectsApi`` from the in-cluster service account, or ~/.kube/config outside."""
    from kubernetes import client, config

    try:
        config.load_incluster_config()
    except config.ConfigException:
        config.load_kube_config()
    return client.CustomObjectsApi()


def run_job(spec: JobSpec, cluster: ClusterConfig, api: Any | None = None) -> str:
    """Launch ``spec`` on the cluster and block until it ends; 'succeeded' or :class:`JobFailed`."""
    manifest = build_manifest(spec, cluster)
    launcher = Launcher(api if api is not None else kubernetes_api(), spec.kind, cluster.namespace)
    return launcher.run(manifest, timeout_s=cluster.gpu_steps[spec.step].timeout_s,
                        poll_s=cluster.job_poll_s, cleanup=cluster.training[spec.step].cleanup)
