# tfserve-bench: export, deploy and benchmark TensorFlow image models behind TF Serving.
# Every target runs in .venv, created and filled on first use (idempotent; quick once installed).

SHELL := /bin/bash
PYTHON_BASE ?= python3
VENV := .venv
PY := $(VENV)/bin/python
TFSB := $(VENV)/bin/tfsb
STAMP := $(VENV)/.installed
# optional C helpers of the embedded server; without a C compiler it runs their pure-Python twins
NATIVE := build/native/libskeleton.so
READY := $(STAMP) $(NATIVE)
SPEC ?= specs/mobilenet_v2.yaml
export TF_CPP_MIN_LOG_LEVEL ?= 2
# RESULTS_DB=postgresql://user@host/db: where bench, capacity and tune record their results (and history reads)
ifdef RESULTS_DB
export TFSB_RESULTS_DB := $(RESULTS_DB)
endif

.DEFAULT_GOAL := help
.PHONY: help venv export inspect test test-unit test-integration test-docker test-fast test-costs screenshots schema docs docs-serve perf perf-harness perf-generator perf-cost reliability serve bench capacity tune lifecycle compare history worker demo deploy down status ui compose k8s clean

help: ## list the targets, by audience
	@awk 'BEGIN {FS = ":.*?## "} /^##@ / {printf "\n%s\n", substr($$0, 5)} /^[a-zA-Z0-9_-]+:.*?## / {printf "  make %-17s %s\n", $$1, $$2}' $(MAKEFILE_LIST)

$(STAMP): requirements.lock pyproject.toml
	@test -x $(PY) || $(PYTHON_BASE) -m venv $(VENV)
	@echo "installing Python dependencies into $(VENV) (first run takes a few minutes)"
	@$(PY) -m tfsb.install requirements.lock
	@$(PY) -c "import setuptools" 2>/dev/null || $(PY) -m pip install --quiet --disable-pip-version-check "setuptools>=64"
	@$(PY) -m pip install --quiet --disable-pip-version-check --no-deps --no-build-isolation -e .
	@touch $(STAMP)

$(NATIVE): server/skeleton.c server/native.py | $(STAMP)
	@$(PY) -m server.native

# the load arguments bench, capacity and tune share (distributed load included)
LOAD_ARGS = $(strip $(if $(DURATION),--duration $(DURATION)) $(if $(MAX_DURATION),--max-duration $(MAX_DURATION)) \
	  $(if $(WARMUP),--warmup $(WARMUP)) \
	  $(if $(PROTOCOLS),--protocols $(PROTOCOLS)) $(if $(PAYLOADS),--payloads $(PAYLOADS)) \
	  $(if $(ARRIVAL),--arrival $(ARRIVAL)) $(if $(MAX_IN_FLIGHT),--max-in-flight $(MAX_IN_FLIGHT)) \
	  $(if $(SLO),--slo $(SLO)) $(if $(SLO_CONFIDENCE),--slo-confidence $(SLO_CONFIDENCE)) \
	  $(if $(BACKEND),--backend $(BACKEND)) $(if $(WORKERS),--workers $(WORKERS)) \
	  $(if $(REMOTE_WORKERS),--remote-workers $(REMOTE_WORKERS)) $(if $(MASTER_BIND),--master-bind $(MASTER_BIND)) \
	  $(if $(MASTER_PORT),--master-port $(MASTER_PORT)) $(if $(TARGET_HOST),--target-host $(TARGET_HOST)))

##@ Use the harness

bench: $(READY) ## benchmark SPEC over REST and gRPC (USERS=1,4,16 or MODE=open RATES=10,20 DURATION= MAX_DURATION= WORKERS= FLOOR=1 PROFILE=1)
	$(TFSB) bench --spec $(SPEC) $(strip $(LOAD_ARGS) $(if $(USERS),--users $(USERS)) \
	  $(if $(MODE),--mode $(MODE)) $(if $(RATES),--rates $(RATES)) $(if $(FLOOR),--floor $(FLOOR)) \
	  $(if $(PROFILE),--profile))

capacity: $(READY) ## highest rate within a latency SLO per protocol x payload: make capacity SLO=p99:100ms [PRECISION=5%] [SLO_CONFIDENCE=0.99] [PROFILE=1]
	$(TFSB) capacity --spec $(SPEC) $(LOAD_ARGS) $(if $(PRECISION),--precision $(PRECISION)) $(if $(PROFILE),--profile)

tune: $(READY) ## best TF Serving config under an SLO: make tune SLO=p99:200ms [BUDGET=20m] [STRATEGY=quick|grid]
	$(TFSB) tune --spec $(SPEC) $(LOAD_ARGS) $(if $(PRECISION),--precision $(PRECISION)) \
	  $(if $(BUDGET),--budget $(BUDGET)) $(if $(STRATEGY),--strategy $(STRATEGY))

compare: $(READY) ## B against A with 95% intervals and verdicts: make compare A=reports/m/<ts1> B=reports/m/<ts2> [FAIL_ON=p99:+10%]
	@test -n "$(A)" -a -n "$(B)" || { echo "usage: make compare A=<report dir> B=<report dir> [FAIL_ON=p99:+10%] [MIN_EFFECT=5%] [OUTPUT=DIR]"; exit 2; }
	$(TFSB) compare $(A) $(B) $(if $(FAIL_ON),--fail-on $(FAIL_ON)) $(if $(MIN_EFFECT),--min-effect $(MIN_EFFECT)) \
	  $(if $(OUTPUT),--output $(OUTPUT))

lifecycle: $(READY) ## cold start, version swap under load, density [PARTS=cold_start,swap,density] [REPEATS=3] [RATE=20|50%] [MAX_MODELS=4] [MEMORY_LIMIT=2GiB] [SWAP_COMPARE='num_load_threads=4;warmup=false']
	$(TFSB) lifecycle --spec $(SPEC) $(strip $(if $(PARTS),--parts $(PARTS)) $(if $(REPEATS),--repeats $(REPEATS)) \
	  $(if $(FIRST_REQUESTS),--first-requests $(FIRST_REQUESTS)) $(if $(RATE),--rate $(RATE)) \
	  $(if $(MAX_MODELS),--max-models $(MAX_MODELS)) $(if $(MEMORY_LIMIT),--memory-limit $(MEMORY_LIMIT)) \
	  $(if $(SWAP_COMPARE),--swap-compare '$(SWAP_COMPARE)') \
	  $(if $(BACKEND),--backend $(BACKEND)) $(if $(OUTPUT_DIR),--output-dir $(OUTPUT_DIR)))

history: $(READY) ## the recorded bench, capacity, tune and lifecycle results of SPEC's model (table and plot) [RESULTS_DB=URL]
	$(TFSB) history --spec $(SPEC) $(if $(RESULTS_DB),--db $(RESULTS_DB))

export: $(READY) ## export the model of SPEC (default specs/mobilenet_v2.yaml) as a new version
	$(TFSB) export --spec $(SPEC)

inspect: $(READY) ## describe a SavedModel: make inspect DIR=models/<name>/<version>
	@test -n "$(DIR)" || { echo "usage: make inspect DIR=<SavedModel directory>"; exit 2; }
	$(TFSB) inspect $(DIR)

deploy: $(READY) ## serve SPEC's model (BACKEND=embedded|docker IMAGE=cpu|gpu|cpu-optimized|embedded) until AVAILABLE
	$(TFSB) deploy up --spec $(SPEC) $(if $(BACKEND),--backend $(BACKEND)) $(if $(IMAGE),--image $(IMAGE))

down: $(READY) ## stop what make deploy started for SPEC
	$(TFSB) deploy down --spec $(SPEC) $(if $(BACKEND),--backend $(BACKEND))

status: $(READY) ## is SPEC's model running and AVAILABLE?
	$(TFSB) deploy status --spec $(SPEC) $(if $(BACKEND),--backend $(BACKEND))

serve: $(READY) ## run the embedded server on SPEC's exported versions: make serve SPEC=specs/digits_cnn.yaml
	@$(PY) -c "from spec.loader import load_spec; s = load_spec('$(SPEC)'); print(s.name, s.model_dir, s.serving.grpc_port, s.serving.rest_port)" > .serve.args || { rm -f .serve.args; exit 2; }
	@read name dir grpc rest < .serve.args; rm -f .serve.args; \
	  test -d "$$dir" || { echo "no export at $$dir: run make export SPEC=$(SPEC) first"; exit 2; }; \
	  exec $(TFSB) serve --port=$$grpc --rest_api_port=$$rest --model_name=$$name --model_base_path=$$dir

demo: $(READY) ## a page to try SPEC's model on a photo over REST and gRPC: http://127.0.0.1:8080 (PORT=)
	$(TFSB) demo --spec $(SPEC) $(if $(PORT),--port $(PORT)) $(if $(BACKEND),--backend $(BACKEND))

ui: deploy ## Locust web UI on http://127.0.0.1:8089 against the deployed model of SPEC
	$(VENV)/bin/locust -f loadtests/locustfile.py --web-host 127.0.0.1 --web-port 8089 --class-picker --spec $(SPEC)

worker: $(READY) ## a load generator for another machine's bench: make worker MASTER=<host> [MASTER_PORT=5557]
	@test -n "$(MASTER)" || { echo "usage: make worker MASTER=<bench machine address> [MASTER_PORT=5557]"; exit 2; }
	$(TFSB) worker --master-host $(MASTER) --master-port $(or $(MASTER_PORT),5557)

compose: $(READY) ## render docker-compose.yaml (and its build context) for SPEC into .run/<model>-<port>/compose/
	$(TFSB) deploy compose --spec $(SPEC) $(if $(IMAGE),--image $(IMAGE))

k8s: $(READY) ## render Kubernetes manifests (Deployment, Service, HPA) for SPEC into .run/<model>-<port>/k8s/
	$(TFSB) deploy k8s --spec $(SPEC) $(if $(IMAGE),--image $(IMAGE))

clean: ## remove exported models, reports, caches and our docker containers and images (keeps .venv)
	-@test ! -x $(TFSB) || $(TFSB) deploy clean --spec $(SPEC) 2>/dev/null || true
	rm -rf models reports .pytest_cache
	find . -name __pycache__ -not -path './.venv/*' -prune -exec rm -rf {} +

##@ Develop it

venv: $(READY) ## create .venv, install the pinned dependencies and build the C helpers

# tests that wait run TEST_WORKERS at a time (pytest-xdist), then those that measure load run alone (tests/tiers.py)
TEST_WORKERS ?= 2

test: $(READY) ## run the whole test suite (unit, integration, docker) in its two tiers
	TEST_WORKERS=$(TEST_WORKERS) $(PY) -m tests.tiers $(PYTEST_ARGS)

test-unit: $(READY) ## the unit tests: fast, nothing exported, no server started
	TEST_WORKERS=$(TEST_WORKERS) $(PY) -m tests.tiers tests/unit $(PYTEST_ARGS)

test-integration: $(READY) ## the integration tests: real exports and servers on free loopback ports
	TEST_WORKERS=$(TEST_WORKERS) $(PY) -m tests.tiers tests/integration $(PYTEST_ARGS)

test-docker: $(READY) ## the Docker tests: a real engine (dockerd), offline stand-in images under tags of our own
	TEST_WORKERS=$(TEST_WORKERS) $(PY) -m tests.tiers tests/docker $(PYTEST_ARGS)

test-fast: test-unit ## the unit tests (its name before test-unit)

test-costs: $(READY) ## the whole suite, recording each file's first-tier seconds into tests/costs.json (their start order)
	TFSB_TEST_COSTS=tests/costs.json TEST_WORKERS=$(TEST_WORKERS) $(PY) -m tests.tiers $(PYTEST_ARGS)

screenshots: $(READY) ## refresh docs/demo.png: the demo page test in headless Chromium, its screenshot kept
	TFSB_REFRESH_SCREENSHOTS=1 $(PY) -m pytest tests/integration/test_demo.py -k upload_a_photo $(PYTEST_ARGS)

schema: $(READY) ## regenerate specs/spec.schema.json from spec/schema.py
	$(PY) -m spec.jsonschema specs/spec.schema.json

# no --quiet: it hides warnings from strict mode, and a broken link then builds (mkdocs issue 4126)
docs: $(READY) ## build the documentation site into build/site (strict: a broken link or a missing page fails)
	NO_MKDOCS_2_WARNING=1 $(VENV)/bin/mkdocs build --strict
	@echo "site: build/site/index.html (make docs-serve serves it on http://127.0.0.1:8000)"

docs-serve: $(READY) ## serve the documentation site on http://127.0.0.1:8000, rebuilt as files change (PORT=)
	@$(PY) -m tfsb.freeport $(or $(PORT),8000) docs-serve
	NO_MKDOCS_2_WARNING=1 $(VENV)/bin/mkdocs serve --strict --dev-addr 127.0.0.1:$(or $(PORT),8000)

##@ Measure the harness itself

perf: $(READY) ## server performance targets (overhead, REST decoding, batching); prints measured ratios
	$(PY) -m benchmarks.perf --spec $(SPEC)

perf-harness: $(READY) ## show that gRPC users run concurrently (10 users, 50 ms server: >= 150 req/s)
	$(PY) -m benchmarks.grpc_concurrency

perf-generator: $(READY) ## one Locust process's open-loop headroom against its closed-loop throughput (goal >= 0.8x)
	$(PY) -m benchmarks.generator

perf-cost: $(READY) ## what the harness adds: our users against wrk (REST) and h2load (gRPC), fast model and MobileNetV2
	@command -v wrk >/dev/null && command -v h2load >/dev/null || { echo "needs wrk and h2load: apt-get install wrk nghttp2-client"; exit 2; }
	$(PY) -m benchmarks.harness_cost

reliability: $(READY) ## the server under load and faults (hot swap, corrupt version, SIGTERM, overload, soak SOAK=600)
	$(PY) -m benchmarks.reliability $(if $(SOAK),--soak $(SOAK))
