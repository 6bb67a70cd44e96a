# The two commands: `make run` (see it work) and `make test` (prove it works).
# Every target installs what it needs first; nothing is assumed on the machine
# beyond Python 3.11+, and apt-get for the system packages.

PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: install up down run watch audit test test-unit test-integration test-e2e bench soak screenshots lint schemas clean

install: $(STAMP)

$(STAMP): pyproject.toml deploy/install-system.sh deploy/kafka/pom.xml deploy/tools/package-lock.json
	./deploy/install-system.sh
	npm ci --prefix deploy/tools --no-audit --no-fund --loglevel=error
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev]'
	$(PY) -m deploy.localstack fetch
	touch $(STAMP)

up: install
	$(PY) -m deploy.localstack up

down:
	@if [ -x $(PY) ]; then $(PY) -m deploy.localstack down; else python3 -m deploy.localstack down; fi

run: install
	$(PY) -m services.demo

TOPIC ?= payments
watch: install
	$(PY) -m services.watch $(TOPIC)

audit: install
	$(PY) -m services.audit

test: install
	$(PY) -m pytest tests

test-unit: install
	$(PY) -m pytest tests/unit

test-integration: install
	$(PY) -m pytest tests/integration

test-e2e: install
	$(PY) -m pytest tests/e2e

bench: install
	./deploy/install-system.sh bench
	$(PY) -m benchmarks.core
	$(PY) -m benchmarks.pipeline

# not in CI: 100 SIGKILLs, broker restarts, a worker added and removed, during
# 100,000 commands; then the core comparison and the audit (docs/soak.md)
soak: install
	$(PY) -m tests.soak $(SOAK_ARGS)

# the browser test, keeping its screenshots in docs/screenshots (shown in the README)
screenshots: install
	SCREENSHOTS=1 $(PY) -m pytest tests/e2e/test_browser.py -q

lint: install
	$(PY) -m ruff check domain schemas services deploy tests benchmarks

schemas: install
	$(PY) -m schemas.generate

clean: down
	rm -rf run $(VENV)
