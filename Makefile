# clothing-model: `make help` lists the targets. Tool versions: tools/versions.env; Python pins: *.lock files.
SHELL := bash
.SHELLFLAGS := -euo pipefail -c
.DEFAULT_GOAL := help
MAKEFLAGS += --no-print-directory

include tools/versions.env

export PATH := $(CURDIR)/.tools/bin:$(CURDIR)/.venv/bin:$(PATH)
export HELM_PLUGINS := $(CURDIR)/.tools/helm-plugins
export HELM_CACHE_HOME := $(CURDIR)/.tools/helm/cache
export HELM_CONFIG_HOME := $(CURDIR)/.tools/helm/config
export HELM_DATA_HOME := $(CURDIR)/.tools/helm/data
export CT_CONFIG_DIR := $(CURDIR)/.tools/ct
export PYTHONDONTWRITEBYTECODE := 1

PY := .venv/bin/python
CHART := charts/clothing-model
SETUP_STAMP := .tools/setup.stamp
SETUP_INPUTS := tools/versions.env tools/lib.sh tools/go-tools.sh tools/python-env.sh requirements/dev.lock \
	images/gateway/requirements.lock images/gateway/pyproject.toml model-tools/pyproject.toml

.PHONY: help
help: ## Show this help
	@awk 'BEGIN {FS = ":.*## "} /^[a-zA-Z0-9_-]+:.*## / {printf "  \033[36m%-16s\033[0m %s\n", $$1, $$2}' $(MAKEFILE_LIST)

.PHONY: setup
setup: $(SETUP_STAMP) ## Install pinned Python envs and Go tools (idempotent; caches live outside the clone)

$(SETUP_STAMP): $(SETUP_INPUTS)
	@start=$$SECONDS; bash tools/python-env.sh; echo "setup: python envs took $$((SECONDS - start)) s"
	@start=$$SECONDS; bash tools/go-tools.sh; echo "setup: go tools took $$((SECONDS - start)) s"
	@touch $@

.PHONY: demo
demo: setup ## The main job: serve the committed model, classify the pants photo through the gateway
	$(PY) -m tests.demo

.PHONY: test
test: setup lint chart-lint chart-test ## Lint everything, then run every test suite (what CI runs)
	$(PY) -m pytest

.PHONY: lint
lint: setup ## ruff (format + lint), mypy, yamllint
	ruff format --check .
	ruff check .
	mypy
	yamllint --strict .

.PHONY: chart-lint
chart-lint: setup ## helm lint --strict, ct lint, schema and docs drift checks
	helm lint --strict $(CHART)
	for f in $(CHART)/ci/*-values.yaml values/*.yaml; do helm lint --strict $(CHART) -f "$$f" >/dev/null || { echo "helm lint failed for $$f"; exit 1; }; done
	ct lint --config ct.yaml --charts $(CHART)

.PHONY: chart-test
chart-test: setup ## helm-unittest suites in charts/clothing-model/tests
	helm unittest --strict $(CHART)

.PHONY: bench
bench: setup ## Benchmarks that print numbers (not tests)
	$(PY) -m bench

.PHONY: lock
lock: ## Re-resolve the Python lock files from the *.in files (needs network)
	.tools/bin/uv pip compile requirements/dev.in --python-version $(PYTHON_MIN) --generate-hashes --no-header -q -o requirements/dev.lock
	.tools/bin/uv pip compile images/gateway/requirements.in -c requirements/dev.lock --python-version $(PYTHON_MIN) --generate-hashes --no-header -q -o images/gateway/requirements.lock
	.tools/bin/uv pip compile model-tools/requirements.in -c requirements/dev.lock --python-version $(PYTHON_MIN) --generate-hashes --no-header -q -o model-tools/requirements.lock

.PHONY: vendor-protos
vendor-protos: setup ## Re-vendor TF Serving's generated protos into the gateway (TF-free)
	$(PY) images/gateway/scripts/vendor_protos.py

.PHONY: clean
clean: ## Remove the clone's envs and tool links (caches outside the clone stay)
	rm -rf .venv .venv-gateway .tools .pytest_cache .mypy_cache .ruff_cache
