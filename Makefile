# order-saga: a choreographed checkout saga over RabbitMQ. `make help` lists the targets.

SHELL := /bin/bash
PY := .venv/bin/python
# The whole dependency tree, pinned with hashes: `make lock` writes these from pyproject.toml.
LOCK := requirements.lock
DEV_LOCK := requirements-dev.lock
UV := uv==0.13.8
# Valid on any platform Python 3.11 runs on (the Linux image included); the runtime lock takes the
# dev lock's versions, so that the image runs what the tests ran.
UV_COMPILE := --quiet pyproject.toml --universal --generate-hashes --custom-compile-command 'make lock'
VENV_STAMP := .venv/.installed-$(shell cat pyproject.toml $(wildcard $(DEV_LOCK)) | sha1sum | cut -c1-12)

# Servers the tests use: local ones by default; unset them to let testcontainers start some.
export SAGA_TEST_POSTGRES_URL ?= postgresql+psycopg://postgres@127.0.0.1:5432/postgres
export SAGA_TEST_AMQP_URL ?= amqp://guest:guest@127.0.0.1:5672/
export SAGA_TEST_RABBITMQ_API ?= http://guest:guest@127.0.0.1:15672

.DEFAULT_GOAL := help
.PHONY: help install lock servers up down status migrate test test-unit test-fast lint demo check trace dlq redrive bench screenshot asyncapi prometheus prometheus-install token

help: ## List the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-18s %s\n", $$1, $$2}'

install: $(VENV_STAMP) ## Create .venv from requirements-dev.lock, then install the project in it

# pip check fails the install when the lock misses or contradicts what pyproject.toml asks for.
$(VENV_STAMP): pyproject.toml $(DEV_LOCK)
	test -x $(PY) || python3 -m venv .venv
	$(PY) -m pip install --quiet --disable-pip-version-check -r $(DEV_LOCK)
	$(PY) -m pip install --quiet --disable-pip-version-check --no-deps -e .
	$(PY) -m pip check || { echo "$(DEV_LOCK) does not match pyproject.toml: run make lock"; exit 1; }
	rm -f .venv/.installed-* && touch $@

lock: ## Regenerate requirements.lock and requirements-dev.lock from pyproject.toml (ARGS="--upgrade")
	test -x $(PY) || python3 -m venv .venv
	$(PY) -m pip install --quiet --disable-pip-version-check '$(UV)'
	.venv/bin/uv pip compile $(UV_COMPILE) --extra dev $(ARGS) -o $(DEV_LOCK)
	.venv/bin/uv pip compile $(UV_COMPILE) --constraint $(DEV_LOCK) -o $(LOCK)

servers: install ## Make sure local PostgreSQL and RabbitMQ (with its management UI) are running
	$(PY) -m tools.servers

up: servers ## Start the four services in the background (only those not running); logs in .run/logs; TRACES=1: spans in .run/traces
	$(if $(TRACES),TRACES_DIR=$(CURDIR)/.run/traces) $(PY) -m tools.services up

down: ## Stop the services started by `make up`
	@test -x $(PY) && $(PY) -m tools.services down || true

status: install ## Show which services run and are ready
	$(PY) -m tools.services status

migrate: servers ## Apply every service's migrations, as its own role (services also do it on start)
	$(PY) -m tools.provision --migrate

# pytest keeps the modules it rewrites for its assertions (the plugins' and the tests', about 330)
# as bytecode only where Python may write bytecode: with PYTHONDONTWRITEBYTECODE set (as here, and
# in many CI images), every pytest process rewrote and compiled them again, about 3 s of CPU each.
test test-unit test-fast test-faults test-cluster soak: export PYTHONDONTWRITEBYTECODE :=

# The suite on four workers (pytest-xdist), one test file per worker at a time, the longest files
# first (tests/conftest.py): a serial run mostly waits for sagas, faults and servers; four workers
# keep both cores busy.
PARALLEL := -n 4 --dist loadfile --no-loadscope-reorder

# In one step: the fault suite, the cluster suite, the benchmark in miniature and the backlog test
# each take a worker of their own from the start (tests/conftest.py), the rest share the workers
# as they come free. Two steps (the fault suite and the benchmark after the rest) were needed while
# two cores did not carry them beside the cluster suite and the e2e load; since the harness's
# requests share one TLS context and its services fork preloaded, they do.
test: servers prometheus-install ## Run the whole suite against real servers
	$(PY) -m pytest -q $(PARALLEL)

test-unit: install ## Unit tests only (no servers)
	$(PY) -m pytest -q tests/unit

test-fast: servers ## Unit and integration tests, no e2e and no faults: the inner loop (~1 min here, four workers)
	$(PY) -m pytest -q $(PARALLEL) tests/unit tests/integration

lint: install ## ruff (lint and format check) and mypy on the shared packages
	.venv/bin/ruff check .
	.venv/bin/ruff format --check .
	.venv/bin/mypy

# The timeout scenario waits for the order deadline: 10 s rather than 30 s for the services that
# `make demo` starts (services already running keep theirs: `make down` first).
demo: export ORDER_TIMEOUT_S ?= 10
demo: up ## Play every scenario (SCENARIO=<name> for one) with timelines, then check the invariants
	$(PY) -m tools.demo $(if $(SCENARIO),--scenario $(SCENARIO))

check: install ## Check the guarantees (docs/spec.md §7) on the running services (WAIT=<s> to wait until at rest)
	$(PY) -m tools.check $(if $(WAIT),--wait $(WAIT))

token: install ## Print a token for curl: make token SUB=<customer> [SCOPE=admin] (the key of make up's services)
	@test -n "$(SUB)" || { echo "usage: make token SUB=<customer id> [SCOPE=admin]"; exit 2; }
	@$(PY) -m tools.tokens $(SUB) $(if $(filter admin,$(SCOPE)),--admin)

trace: install ## One saga hop by hop: make trace ORDER=<order id> [FORMAT=mermaid|spans]
	@test -n "$(ORDER)" || { echo "usage: make trace ORDER=<order id> [FORMAT=mermaid|spans]"; exit 2; }
	@$(PY) -m tools.trace $(ORDER) $(if $(FORMAT),--format $(FORMAT))

dlq: install ## List dead-lettered messages: why they died, how often, their ids (QUEUE=<q>.dlq for one)
	$(PY) -m tools.dlq list $(if $(QUEUE),--queue $(QUEUE))

redrive: install ## Re-publish dead-lettered messages with their original ids (QUEUE=<q>.dlq for one)
	$(PY) -m tools.dlq redrive $(if $(QUEUE),--queue $(QUEUE))

asyncapi: install ## Regenerate docs/asyncapi.yaml (AsyncAPI 3.0) from the manifests and contracts
	$(PY) -m tools.asyncapi

# Debian's package (Grafana and Jaeger have none here: docker compose runs those, deploy/).
SUDO := $(if $(filter 0,$(shell id -u)),,sudo)
APT_INSTALL := $(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends
prometheus-install: ## Install the Prometheus server (Debian package prometheus) if it is missing
	@command -v prometheus >/dev/null || { echo "installing Prometheus (apt-get install prometheus)"; \
		$(APT_INSTALL) prometheus || { $(SUDO) apt-get update && $(APT_INSTALL) prometheus; }; }

prometheus: up prometheus-install ## Run Prometheus (on :9090 if free) scraping make up's services and RabbitMQ, until Ctrl-C
	$(PY) -m tools.prometheus $(ARGS)

screenshot: up prometheus-install ## Retake docs/management-ui.png and docs/prometheus.png (PAGE=management|prometheus for one); needs chromium
	$(PY) -c "import playwright" 2>/dev/null || $(PY) -m pip install --quiet --disable-pip-version-check -e '.[screenshot]'
	$(PY) -m tools.screenshot $(PAGE)

.PHONY: test-faults
test-faults: servers ## The fault tests but the cluster suite, one after another, each printing its figures (~4 min)
	$(PY) -m pytest -q -s --ignore=tests/faults/test_cluster.py tests/faults

.PHONY: cluster-up cluster-down test-cluster
cluster-up: install ## Start three clustered RabbitMQ nodes behind haproxy (:5680) and a PostgreSQL server per service (:5441-5444); needs root
	$(PY) -m harness.cluster up

cluster-down: ## Stop the cluster of `make cluster-up` and remove its data
	@test -x $(PY) && $(PY) -m harness.cluster down || true

test-cluster: install ## The cluster fault suite alone (~4 min, on a cluster of its own; `make test` runs it too)
	$(PY) -m pytest -q -s tests/faults/test_cluster.py

# Not part of `make test`: half an hour. RATE: orders/s (half what `make bench` sustains), MINUTES.
.PHONY: soak
soak: servers ## Soak (30 min at 13 orders/s): resources sampled every 30 s must stay flat, guarantees hold; result in .run/soak
	SAGA_SOAK=1 SAGA_SOAK_S=$$(( $(or $(MINUTES),30) * 60 )) SAGA_SOAK_RATE=$(or $(RATE),13) $(PY) -m pytest -q -s -p no:cacheprovider tests/soak

bench: servers ## Benchmark the saga beside raw baselines, on its own services and PostgreSQL (< 4 min); ARGS="--step-duration 30 …", PROFILE=1 adds py-spy
	$(PY) -m tools.bench $(if $(PROFILE),--profile .run/bench/profile) $(ARGS)
