# order-saga: a choreographed checkout saga over RabbitMQ. `make help` lists the targets.

SHELL := /bin/bash
PY := .venv/bin/python
VENV_STAMP := .venv/.installed-$(shell sha1sum pyproject.toml | cut -c1-12)

# Servers the tests use: local ones by default; unset them to let testcontainers start some.
export SAGA_TEST_POSTGRES_URL ?= postgresql+psycopg://postgres@127.0.0.1:5432/postgres
export SAGA_TEST_AMQP_URL ?= amqp://guest:guest@127.0.0.1:5672/
export SAGA_TEST_RABBITMQ_API ?= http://guest:guest@127.0.0.1:15672

.DEFAULT_GOAL := help
.PHONY: help install servers up down status migrate test test-unit test-integration test-e2e lint demo check trace dlq redrive bench

help: ## List the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-18s %s\n", $$1, $$2}'

install: $(VENV_STAMP) ## Create .venv and install the project with its dev tools

$(VENV_STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv .venv
	$(PY) -m pip install --quiet --disable-pip-version-check -e '.[dev]'
	rm -f .venv/.installed-* && touch $@

servers: install ## Make sure local PostgreSQL and RabbitMQ (with its management UI) are running
	$(PY) -m tools.servers

up: servers ## Start the four services in the background (only those not running); logs in .run/logs
	$(PY) -m tools.services up

down: ## Stop the services started by `make up`
	@test -x $(PY) && $(PY) -m tools.services down || true

status: install ## Show which services run and are ready
	$(PY) -m tools.services status

migrate: servers ## Apply every service's migrations (services also do it on start)
	$(PY) -c "from tools.services import create_databases, SERVICES; create_databases(list(SERVICES))"
	for s in order_service inventory_service payment_service notification_service; do $(PY) -m $$s migrate || exit 1; done

test: servers ## Run the whole suite: unit, integration and e2e, against real servers
	$(PY) -m pytest -q

test-unit: install ## Unit tests only (no servers)
	$(PY) -m pytest -q tests/unit

lint: install ## ruff (lint and format check) and mypy on the shared packages
	.venv/bin/ruff check .
	.venv/bin/ruff format --check .
	.venv/bin/mypy

demo: up ## Place orders that complete, run out of stock and run short of money; print how each ended
	$(PY) -m tools.demo $(if $(SCENARIO),--scenario $(SCENARIO))
