# Pref-Restore developer commands. `make help` lists them.
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
STAMP := $(VENV)/.installed
# checkov pins packages the project cannot share (packaging, networkx): it gets its own venv
TOOLS := $(VENV)/tools

.PHONY: help setup demo test test-all test-kfp lint format bench clean

help:  ## list the commands
	@grep -E '^[a-zA-Z_-]+:.*?## ' $(MAKEFILE_LIST) | awk 'BEGIN {FS = ":.*?## "}; {printf "  make %-10s %s\n", $$1, $$2}'

$(STAMP): pyproject.toml setup.py src/prefrestore/data/degrade/_kernels.c
	test -x $(PY) || python3 -m venv $(VENV)
	$(PIP) install -q --upgrade pip 'setuptools<82' wheel
	$(PIP) install -q torch==2.14.1 torchvision==0.29.1
	DS_BUILD_OPS=0 $(PIP) install -q --no-build-isolation 'deepspeed==0.19.8'
	$(PIP) install -q -e '.[pipeline,dev,dist]'
	test -x $(TOOLS)/bin/python || $(PY) -m venv $(TOOLS)
	$(TOOLS)/bin/pip install -q 'checkov==3.3.30'
	touch $(STAMP)

setup: $(STAMP)  ## create .venv (package + pipeline, dev and dist extras) and .venv/tools (checkov)

demo: setup  ## run the whole pipeline on the tiny profile (embedded SQLite MLflow)
	OMP_NUM_THREADS=$${OMP_NUM_THREADS:-1} $(VENV)/bin/prefrestore demo

test: setup  ## run the test suite (slow and GPU tests excluded); under CI=true also the kfp.local pipeline job
	OMP_NUM_THREADS=$${OMP_NUM_THREADS:-1} $(VENV)/bin/pytest -q
	@if [ "$${CI:-}" = "true" ]; then $(MAKE) --no-print-directory test-kfp; fi

test-all: setup  ## run every test, slow ones included
	$(VENV)/bin/pytest -q -m "not gpu"

test-kfp: setup  ## the training pipeline through kfp.local with the real tiny steps (slow: 14 min on 2 shared cores)
	OMP_NUM_THREADS=$${OMP_NUM_THREADS:-1} $(VENV)/bin/pytest -q -m slow tests/pipeline/test_kfp_local.py::test_local_run_tiny_real_steps

lint: setup  ## ruff, the import contracts, and the manifests vs the Kubernetes/Kubeflow schemas, hadolint, checkov
	$(VENV)/bin/ruff check .
	$(VENV)/bin/lint-imports
	$(PY) -m pipelines.validate

format: setup  ## ruff format + fix
	$(VENV)/bin/ruff check --fix .

bench: setup  ## run the CPU benchmarks (commands and results in benchmarks/RESULTS.md)
	OMP_NUM_THREADS=1 $(PY) benchmarks/bench_degrade.py --profile paper released_defaults released --n 100 --n-ref 20 --runs 3 --size 512 --batch 16 --device cpu
	OMP_NUM_THREADS=1 $(PY) benchmarks/bench_evaluate.py --images 16 --size 512
	OMP_NUM_THREADS=1 $(PY) benchmarks/bench_caption.py --images 32 --batch-sizes 1 2 4 8 16 --threads 1
	OMP_NUM_THREADS=1 $(PY) benchmarks/bench_model.py --profile tiny --batch 4 --threads 1
	OMP_NUM_THREADS=1 $(PY) benchmarks/bench_train.py --profile tiny --batch 16 --steps 10
	OMP_NUM_THREADS=1 $(PY) benchmarks/bench_rollout.py --profile tiny --threads 1 --dtypes fp32 amp bf16

clean:  ## remove pipeline outputs (not the venv)
	rm -rf data/faces data/validation data/captions data/pairs data/benchmarks models reports mlflow.db mlartifacts
