"""Where and how a task runs on the cluster: node pool, accelerators, volumes, secrets, limits.

Everything comes from the ``cluster`` section of ``params.yaml`` (``prefrestore.pipeline.launcher.ClusterConfig``);
the node-pool labels and taints here are the ones ``infra/k8s/overlays/gpu`` gives the nodes.
"""

from __future__ import annotations

from typing import Any

from prefrestore.pipeline.launcher import POD_LABELS, ClusterConfig, PodSize

UID = 1000  # the non-root user of infra/Dockerfile
LAUNCH_MARGIN_S = 3600  # a launcher pod outlives its job's deadline by this much


def _common(task: Any, cluster: ClusterConfig, size: PodSize, timeout_s: int, caching: bool) -> None:
    from kfp import kubernetes

    for name, value in cluster.env().items():
        task.set_env_variable(name, value)
    for secret, keys in cluster.secret_env().items():
        kubernetes.use_secret_as_env(task, secret_name=secret, secret_key_to_env=keys)
    task.set_cpu_request(size.cpu).set_cpu_limit(size.cpu)
    task.set_memory_request(size.memory).set_memory_limit(size.memory)
    task.set_retry(size.retries, backoff_duration=cluster.retry_backoff, backoff_factor=2.0)
    task.set_caching_options(caching)
    kubernetes.set_timeout(task, timeout_s)
    kubernetes.set_security_context(task, run_as_user=UID, run_as_group=UID, run_as_non_root=True)
    for key, value in POD_LABELS.items():  # the label infra/k8s/base/networkpolicy.yaml admits to MLflow/MinIO
        kubernetes.add_pod_label(task, key, value)


def on_cpu(task: Any, cluster: ClusterConfig, caching: bool) -> Any:
    """A CPU step: the CPU pool, the CPU pod size."""
    from kfp import kubernetes

    _common(task, cluster, cluster.cpu_step, cluster.cpu_step.timeout_s, caching)
    for key, value in cluster.cpu_node_selector().items():
        kubernetes.add_node_selector(task, key, value)
    return task


def on_gpu(task: Any, step: str, cluster: ClusterConfig, caching: bool) -> Any:
    """A GPU step: accelerators, GPU pool + GPU model, taint toleration, model store, /dev/shm in RAM."""
    from kfp import kubernetes

    gpu = cluster.gpu_steps[step]
    _common(task, cluster, gpu, gpu.timeout_s, caching)
    task.set_accelerator_type(gpu.accelerator).set_accelerator_limit(gpu.count)
    for key, value in cluster.gpu_node_selector(step).items():
        kubernetes.add_node_selector(task, key, value)
    taint = cluster.gpu_taint
    kubernetes.add_toleration(task, key=taint.key, operator="Equal", value=taint.value, effect=taint.effect)
    kubernetes.mount_pvc(task, pvc_name=cluster.model_store_pvc, mount_path=cluster.model_store_mount)
    kubernetes.empty_dir_mount(task, volume_name="shm", mount_path="/dev/shm", medium="Memory",
                               size_limit=cluster.shm_size)
    return task


def training(task: Any, step: str, cluster: ClusterConfig) -> Any:
    """A training stage: a GPU pod when inline, else a CPU launcher pod with the shared data PVC."""
    from kfp import kubernetes

    if cluster.training[step].launch == "inline":
        return on_gpu(task, step, cluster, caching=False)
    _common(task, cluster, cluster.cpu_step, cluster.gpu_steps[step].timeout_s + LAUNCH_MARGIN_S, False)
    task.set_retry(cluster.gpu_steps[step].retries, backoff_duration=cluster.retry_backoff, backoff_factor=2.0)
    for key, value in cluster.cpu_node_selector().items():
        kubernetes.add_node_selector(task, key, value)
    kubernetes.mount_pvc(task, pvc_name=cluster.data_pvc, mount_path=cluster.data_mount)
    return task


def step_task(task: Any, step: str, gpu: bool, cluster: ClusterConfig, caching: bool) -> Any:
    task.set_display_name(step)
    return on_gpu(task, step, cluster, caching) if gpu else on_cpu(task, cluster, caching)
