# tfserve-bench: export, deploy and benchmark TensorFlow image models behind TF Serving.
# Every target runs in .venv, created and filled on first use (idempotent; quick once installed).

SHELL := /bin/bash
PYTHON_BASE ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
SPEC ?= specs/mobilenet_v2.yaml
export TF_CPP_MIN_LOG_LEVEL ?= 2

.DEFAULT_GOAL := help
.PHONY: help venv export inspect test test-fast schema perf serve clean

help: ## list the targets
	@grep -E '^[a-zA-Z_-]+:.*?## ' $(MAKEFILE_LIST) | awk 'BEGIN {FS = ":.*?## "}; {printf "  make %-10s %s\n", $$1, $$2}'

$(STAMP): requirements.lock pyproject.toml
	@test -x $(PY) || $(PYTHON_BASE) -m venv $(VENV)
	@echo "installing Python dependencies into $(VENV) (first run takes a few minutes)"
	@$(PY) -m pip install --quiet --disable-pip-version-check -r requirements.lock
	@touch $(STAMP)

venv: $(STAMP) ## create .venv and install the pinned dependencies

export: $(STAMP) ## export the model of SPEC (default specs/mobilenet_v2.yaml) as a new version
	$(PY) -m exporter --spec $(SPEC)

inspect: $(STAMP) ## describe a SavedModel: make inspect DIR=models/<name>/<version>
	@test -n "$(DIR)" || { echo "usage: make inspect DIR=<SavedModel directory>"; exit 2; }
	$(PY) -m exporter inspect $(DIR)

test: $(STAMP) ## run the whole test suite (unit, integration, docker)
	$(PY) -m pytest $(PYTEST_ARGS)

test-fast: $(STAMP) ## run the fast unit tests only
	$(PY) -m pytest tests/unit $(PYTEST_ARGS)

schema: $(STAMP) ## regenerate specs/spec.schema.json from deploy/spec.py
	$(PY) -m deploy.schema specs/spec.schema.json

perf: $(STAMP) ## server performance targets (overhead, REST decoding, batching); prints measured ratios
	$(PY) -m benchmarks.perf --spec $(SPEC)

serve: $(STAMP) ## run the embedded server on SPEC's exported versions: make serve SPEC=specs/digits_cnn.yaml
	@$(PY) -c "from deploy.spec import load_spec; s = load_spec('$(SPEC)'); print(s.name, s.model_dir, s.serving.grpc_port, s.serving.rest_port)" > .serve.args || { rm -f .serve.args; exit 2; }
	@read name dir grpc rest < .serve.args; rm -f .serve.args; \
	  test -d "$$dir" || { echo "no export at $$dir: run make export SPEC=$(SPEC) first"; exit 2; }; \
	  exec $(PY) -m deploy.server --port=$$grpc --rest_api_port=$$rest --model_name=$$name --model_base_path=$$dir

clean: ## remove exported models, reports and caches (keeps .venv)
	rm -rf models reports .pytest_cache
	find . -name __pycache__ -not -path './.venv/*' -prune -exec rm -rf {} +
