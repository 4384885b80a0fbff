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
PYTHON_STAMP := .tools/python-env.stamp
PYTHON_INPUTS := tools/versions.env tools/lib.sh tools/python-env.sh requirements/dev.lock requirements/kserve-sdk.lock \
	images/gateway/requirements.lock images/gateway/pyproject.toml model-tools/pyproject.toml \
	model-interface/pyproject.toml
GO_STAMP := .tools/go-tools.stamp
GO_INPUTS := tools/versions.env tools/lib.sh tools/go-tools.sh $(wildcard tools/go/go.* tools/go/*/*.go)

.PHONY: help
help: ## Show this help
	@awk 'BEGIN {FS = ":.*## "} /^[a-zA-Z0-9_-]+:.*## / {printf "  \033[36m%-16s\033[0m %s\n", $$1, $$2}' $(MAKEFILE_LIST)

.PHONY: setup
setup: python-env go-tools ## Install pinned Python envs and Go tools (idempotent; caches live outside the clone)

.PHONY: python-env
python-env: $(PYTHON_STAMP) ## Only the Python envs (.venv, .venv-gateway, .venv-kserve-sdk)

$(PYTHON_STAMP): $(PYTHON_INPUTS)
	@start=$$SECONDS; bash tools/python-env.sh; echo "setup: python envs took $$((SECONDS - start)) s"
	@touch $@

.PHONY: go-tools
go-tools: $(GO_STAMP) ## Only the Go-built chart tools (helm 3 and 4, ct, helm-docs, helm-unittest, promtool, pss-check)

$(GO_STAMP): $(GO_INPUTS)
	@start=$$SECONDS; bash tools/go-tools.sh; echo "setup: go tools took $$((SECONDS - start)) s"
	@touch $@

.PHONY: demo
demo: python-env ## The main job: serve the committed model, classify the pants photo through the gateway
	$(PY) tools/demo.py

.PHONY: test
test: setup ## Lint everything, then run every test suite (what CI runs)
	@# The Kubernetes build (minutes when cold, CPU-bound) beside the checks (mostly one core), then the tests.
	$(MAKE) -j2 --output-sync=target cluster-bin lint chart-lint chart-test
	$(PY) -m pytest --ignore=tests/chart

.PHONY: lint
lint: python-env ## ruff (format + lint), mypy, yamllint
	ruff format --check .
	ruff check .
	mypy
	yamllint --strict .

.PHONY: chart-lint
chart-lint: setup ## ct lint: helm lint --strict per ci/ values file, yamllint, Chart.yaml schema
	ct lint --config ct.yaml --charts $(CHART)

.PHONY: chart-test
chart-test: setup ## helm-unittest suites, then tests/chart (renders validated for k8s 1.29-1.34, Helm 4 parity, Pod Security, docs drift)
	helm unittest --strict $(CHART)
	$(PY) -m pytest tests/chart

.PHONY: chart-schema
chart-schema: go-tools ## Regenerate the chart's values.schema.json from values.yaml's `# @schema` annotations
	cd $(CHART) && helm-values-schema-json

.PHONY: cluster-bin
cluster-bin: ## Build etcd + Kubernetes components (one multi-call binary, cached by version)
	bash tools/cluster/build.sh

.PHONY: apiserver-up
apiserver-up: cluster-bin ## Start etcd, kube-apiserver, controller-manager, scheduler on loopback
	bash tools/cluster/apiserver-up.sh

.PHONY: apiserver-down
apiserver-down: ## Stop the control plane and remove its state
	bash tools/cluster/apiserver-down.sh

.PHONY: cluster-up
cluster-up: cluster-bin python-env ## Single-node cluster on this machine (root): control plane + containerd, kubelet, kube-proxy, CoreDNS, kube-router, images
	bash tools/cluster/cluster-up.sh

.PHONY: cluster-down
cluster-down: ## Stop the single-node cluster; verifies no process, mount, netns, veth or iptables rule is left
	bash tools/cluster/cluster-down.sh

.PHONY: cluster-images
cluster-images: python-env ## Build the local cluster's OCI images (pause, gateway, model server) without Docker, cached
	bash tools/cluster/images.sh

.PHONY: e2e
e2e: setup cluster-bin ## On real pods: install, helm test, upgrade, load spread, faults, many models, uninstall (root)
	bash tests/cluster/e2e.sh

.PHONY: bench
bench: python-env ## Benchmarks that print numbers (not tests)
	$(PY) -m bench

.PHONY: bench-models
bench-models: python-env ## One gateway serving 1 and 50 models: start-up, readiness, worker RSS, latency per model
	$(PY) -m bench.models

.PHONY: bench-traffic
bench-traffic: python-env ## The gateway under real traffic: slow image hosts, tarpits, overload (beside the book's gateway)
	$(PY) -m bench.traffic

.PHONY: lock
lock: ## Re-resolve the Python lock files from the *.in files (needs network)
	.tools/bin/uv pip compile requirements/dev.in --python-version $(PYTHON_MIN) --generate-hashes --no-header -q -o requirements/dev.lock
	.tools/bin/uv pip compile images/gateway/requirements.in -c requirements/dev.lock --python-version $(PYTHON_MIN) --generate-hashes --no-header -q -o images/gateway/requirements.lock
	.tools/bin/uv pip compile model-tools/requirements.in -c requirements/dev.lock --python-version $(PYTHON_MIN) --generate-hashes --no-header -q -o model-tools/requirements.lock
	.tools/bin/uv pip compile requirements/kserve-sdk.in --python-version $(PYTHON_MIN) --generate-hashes --no-header -q -o requirements/kserve-sdk.lock

.PHONY: vendor-protos
vendor-protos: python-env ## Re-vendor TF Serving's generated protos into model-interface (TF-free)
	$(PY) model-interface/scripts/vendor_protos.py

.PHONY: clean
clean: ## Remove the clone's envs and tool links (caches outside the clone stay)
	rm -rf .venv .venv-gateway .venv-kserve-sdk .tools .pytest_cache .mypy_cache .ruff_cache
