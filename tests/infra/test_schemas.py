"""The manifests against the real schemas and policies (``pipelines/validate.py``, also ``make lint``):
kubernetes-validate, the Kubeflow Trainer / Training Operator models, hadolint and checkov pass on
what is committed, and each of them fails on a mutated copy."""

from __future__ import annotations

import copy
import shutil
from pathlib import Path

import pytest
import yaml

from pipelines import validate
from prefrestore.core.config import PROJECT_ROOT, load
from prefrestore.pipeline.launcher import cluster_config

VERSION = cluster_config(load("paper")).kubernetes_version


def test_the_readme_states_the_validated_kubernetes_version() -> None:
    assert f"Kubernetes {VERSION.rsplit('.', 1)[0]}" in (validate.INFRA / "README.md").read_text()


def test_every_core_resource_is_valid_at_the_stated_version() -> None:
    problems, skipped = validate.check_core(validate.INFRA / "k8s", VERSION)
    assert problems == []
    assert all("karpenter.sh/v1" in s for s in skipped)  # CRDs only; every built-in kind was validated
    kinds = {o["kind"] for _, o in validate.manifest_docs(validate.INFRA / "k8s") if validate.is_core(o)}
    assert {"Deployment", "StatefulSet", "Job", "Service", "Role", "NetworkPolicy"} <= kinds


def test_kubernetes_validate_fails_a_broken_deployment() -> None:
    (deploy,) = [o for _, o in validate.manifest_docs(validate.INFRA / "k8s") if o["kind"] == "Deployment"]
    broken = copy.deepcopy(deploy)
    broken["spec"]["template"]["spec"]["containerz"] = broken["spec"]["template"]["spec"].pop("containers")
    assert validate.k8s_errors(broken, VERSION)
    broken = copy.deepcopy(deploy)
    broken["spec"]["replicas"] = "two"
    assert any("replicas" in e for e in validate.k8s_errors(broken, VERSION))


def test_every_launched_job_matches_the_kubeflow_models() -> None:
    labels = [label for p in validate.PROFILES for label, _ in validate.launcher_manifests(p)]
    assert {label.split("/")[1] for label in labels} == {"stage1_1", "stage1_2", "stage2"}
    assert {label.split("/")[2] for label in labels} == {"trainjob", "pytorchjob"}
    assert validate.check_jobs() == []


@pytest.mark.parametrize("kind", ["trainjob", "pytorchjob"])
def test_the_kubeflow_models_fail_a_broken_job(kind: str) -> None:
    manifest = next(m for label, m in validate.launcher_manifests("paper") if label.endswith(kind))
    misspelt, wrong_type = copy.deepcopy(manifest), copy.deepcopy(manifest)
    if kind == "trainjob":
        # the Trainer v2.0 field the launcher used to write: v2.3 has runtimePatches instead
        misspelt["spec"]["podTemplateOverrides"] = [{"targetJobs": [{"name": "node"}]}]
        wrong_type["spec"]["trainer"]["numNodes"] = "1"
    else:
        misspelt["spec"]["nprocsPerNode"] = misspelt["spec"].pop("nprocPerNode")
        wrong_type["spec"]["runPolicy"]["backoffLimit"] = "three"
    assert any(e.endswith("not a field of the schema") and ("podTemplateOverrides" in e or "nprocsPerNode" in e)
               for e in validate.job_errors(misspelt))
    assert validate.job_errors(wrong_type)


def test_hadolint_passes_the_dockerfile_and_fails_a_broken_one(tmp_path: Path) -> None:
    config = validate.INFRA / ".hadolint.yaml"
    assert validate.hadolint_errors(validate.INFRA / "Dockerfile", config) == []
    broken = tmp_path / "Dockerfile"
    text = (validate.INFRA / "Dockerfile").read_text()
    broken.write_text(text.replace("USER 1000:1000", "USER root\nRUN cd /tmp && pip install requests"))
    problems = " ".join(validate.hadolint_errors(broken, config))
    assert "DL3003" in problems and "DL3013" in problems  # cd in RUN, unpinned pip package


def test_checkov_passes_infra_and_fails_a_privileged_copy(tmp_path: Path) -> None:
    assert validate.checkov_errors(PROJECT_ROOT) == []
    shutil.copytree(validate.INFRA, tmp_path / "infra")
    path = tmp_path / "infra" / "k8s" / "base" / "mlflow.yaml"
    docs = list(yaml.safe_load_all(path.read_text()))
    deploy = next(d for d in docs if d["kind"] == "Deployment")
    deploy["spec"]["template"]["spec"]["containers"][0]["securityContext"]["privileged"] = True
    deploy["spec"]["template"]["spec"]["hostNetwork"] = True
    path.write_text(yaml.safe_dump_all(docs))
    problems = " ".join(validate.checkov_errors(tmp_path))
    assert "CKV_K8S_16" in problems and "CKV_K8S_19" in problems  # privileged container, host network
