# The two commands: `make run` (see it work) and `make test` (prove it works).
# Every target installs what it needs first; nothing is assumed on the machine
# beyond Python 3.11+, and apt-get for the system packages.

PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
# every Python package, the dev extras and the build backend included, pinned with
# its hashes (`make lock` writes both from pyproject.toml); the image uses the runtime one
LOCK         := requirements.lock
RUNTIME_LOCK := requirements-runtime.lock
# the scanners (checkov, bandit, pip-audit) and uv, in a virtualenv of their own
SCAN       := .venv-scan
SCAN_STAMP := $(SCAN)/.installed
SCAN_LOCK  := deploy/scan/requirements.lock

.PHONY: install scan-install lock audit-deps up down run watch audit test test-unit test-integration test-e2e bench fraud-report soak screenshots lint schemas clean

install: $(STAMP)

$(STAMP): pyproject.toml $(LOCK) deploy/install-system.sh deploy/kafka/pom.xml deploy/tools/package-lock.json deploy/keycloak.py $(wildcard deploy/keycloak/*-realm.json)
	./deploy/install-system.sh
	npm ci --prefix deploy/tools --no-audit --no-fund --loglevel=error
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --require-hashes -r $(LOCK)
	$(PY) -m pip install -q --no-deps --no-build-isolation -e .
	$(PY) -m deploy.localstack fetch
	$(PY) -m deploy.keycloak fetch
	touch $(STAMP)

scan-install: $(SCAN_STAMP)

$(SCAN_STAMP): $(SCAN_LOCK) deploy/scan/install.sh
	PYTHON=$(PYTHON) ./deploy/scan/install.sh $(SCAN) $(SCAN_LOCK)
	touch $(SCAN_STAMP)

# after changing a dependency in pyproject.toml (tests/unit/deploy/test_lock.py fails
# until the locks agree with it); setuptools is the build backend pyproject.toml names
LOCK_ARGS := --generate-hashes --python-version 3.11 --universal -q --custom-compile-command 'make lock'
lock: $(SCAN_STAMP)
	printf 'setuptools>=68\n' | $(SCAN)/bin/uv pip compile pyproject.toml - --extra dev $(LOCK_ARGS) -o $(LOCK)
	printf 'setuptools>=68\n' | $(SCAN)/bin/uv pip compile pyproject.toml - -c $(LOCK) $(LOCK_ARGS) -o $(RUNTIME_LOCK)
	$(SCAN)/bin/uv pip compile deploy/scan/requirements.in $(LOCK_ARGS) -o $(SCAN_LOCK)

# known vulnerabilities in the locked packages (PyPI's advisories); says so plainly
# and passes when the advisory source cannot be reached
audit-deps: $(SCAN_STAMP)
	$(SCAN)/bin/python deploy/scan/audit_deps.py $(LOCK)

# BROKERS=3: a 3-broker KRaft cluster (replication factor 3, min.insync.replicas 2)
BROKERS ?= 1
up: install
	$(PY) -m deploy.localstack up --brokers $(BROKERS)

down:
	@if [ -x $(PY) ]; then $(PY) -m deploy.localstack down; else python3 -m deploy.localstack down; fi

run: install
	$(PY) -m services.demo

TOPIC ?= payments
watch: install
	$(PY) -m services.watch $(TOPIC)

audit: install
	$(PY) -m services.audit

# Two pytest processes side by side (two cores; the broker-bound tests mostly wait on
# Kafka): BESIDE, the pure unit tests, the Keycloak test (its own Keycloak and
# stack), the OpenAPI contract test (schemathesis against the API, on that
# stack) and the fault-injection tests (mostly waiting: held rounds, transaction
# timeouts, a broker restart), in one; every other test in the other, the cluster's
# last (tests/conftest.py RUN_LAST). Each process has its own session:
# its own private Kafka + Redis on free ports, started by the stack fixture when a
# test asks for it. About 2 minutes less than one process. Both must pass; BESIDE's
# report is printed after the other's. (The faust probes kill a worker inside a
# timed window: run beside the rest, one missed its window in CI; they stay here.)
BESIDE = tests/unit tests/e2e/test_oidc_keycloak.py tests/e2e/test_api_contract.py \
	tests/e2e/test_faults.py
test: install scan-install
	@beside_log=$$(mktemp); \
	$(PY) -m pytest $(BESIDE) > $$beside_log 2>&1 & beside=$$!; \
	$(PY) -m pytest tests/integration tests/e2e \
	  $(addprefix --ignore=,$(filter-out tests/unit,$(BESIDE))); rest=$$?; \
	wait $$beside; besides=$$?; \
	echo "== $(BESIDE) (ran beside the above)"; cat $$beside_log; rm -f $$beside_log; \
	if [ $$rest -eq 5 ] || [ $$besides -eq 5 ]; then exit 5; fi; \
	if [ $$rest -ne 0 ]; then exit $$rest; fi; exit $$besides

test-unit: install scan-install
	$(PY) -m pytest tests/unit

test-integration: install
	$(PY) -m pytest tests/integration

test-e2e: install
	$(PY) -m pytest tests/e2e

bench: install
	./deploy/install-system.sh bench
	$(PY) -m benchmarks.core
	$(PY) -m benchmarks.pipeline
	$(PY) -m benchmarks.readmodel --write

# the fraud stage's rules on 100,000 commands of honest traffic and seeded fraud:
# false positives and negatives per rule, CPU per command (docs/benchmarks.md, Fraud)
fraud-report: install
	$(PY) -m benchmarks.fraud --commands 100000

# not in CI: 100 SIGKILLs, broker restarts, a worker added and removed, during
# 100,000 commands; then the core comparison and the audit (docs/soak.md)
soak: install
	$(PY) -m tests.soak --brokers $(BROKERS) $(SOAK_ARGS)

# the browser test, keeping its screenshots in docs/screenshots (shown in the README)
screenshots: install
	SCREENSHOTS=1 $(PY) -m pytest tests/e2e/test_browser.py -q

lint: install
	$(PY) -m ruff check domain schemas services deploy tests benchmarks

schemas: install
	$(PY) -m schemas.generate

clean: down
	rm -rf run $(VENV) $(SCAN)
