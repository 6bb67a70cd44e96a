"""Test infrastructure: a real Kafka broker and a real Redis server for the session.

Where they come from, in this order:
1. ``KAFKA_BOOTSTRAP_SERVERS`` / ``REDIS_URL`` from the environment (an existing stack);
2. testcontainers, when a Docker engine answers;
3. otherwise the local stack (deploy/localstack.py), started by the fixture itself on
   free ports in a temporary folder and stopped at the end of the session.

Every test gets unique topic names and consumer groups (the ``names`` fixture), so
tests never see each other's messages. Markers follow folders: tests/unit -> unit,
tests/integration -> integration, tests/e2e -> e2e.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from deploy.localstack import SASL_USER, Kafka, Redis, free_port
from services.common.settings import KafkaAuth

# Modules that run after every other test of their pytest process: the replicated
# cluster's (five JVMs, three brokers killed in turn) took 374 s in CI while `make
# test`'s second process ran the unit tests beside it, ~220 s with the machine to
# itself. Order otherwise stays as collected.
RUN_LAST = ("test_cluster.py",)


def pytest_collection_modifyitems(items):
    for item in items:
        parts = Path(str(item.fspath)).parts
        for marker in ("unit", "integration", "e2e"):
            if marker in parts:
                item.add_marker(getattr(pytest.mark, marker))
    items.sort(key=lambda item: Path(str(item.fspath)).name in RUN_LAST)  # stable


def _docker_answers() -> bool:
    try:
        import docker

        docker.from_env(timeout=2).ping()
        return True
    except Exception:  # no engine, no socket, no permission: all mean "no Docker"
        return False


@dataclass
class Stack:
    """What the tests talk to; ``kafka``/``redis`` are set when this session owns them."""

    bootstrap: str
    redis_url: str
    kafka: Kafka | None = None
    redis: Redis | None = None
    source: str = "local"

    def login_listener(self, protocol: str, password: str | None = None
                       ) -> tuple[str, KafkaAuth] | None:
        """(bootstrap, how to log in) for the broker's listener that needs a login: SASL
        in the clear (SASL_PLAINTEXT) or over TLS (SASL_SSL) as SASL_USER (or with
        ``password``), or a client certificate (SSL); only on a broker this session runs."""
        kafka = self.kafka
        if kafka is None:
            return None
        if protocol == "SSL":
            cert, key = kafka.client_cert_files
            return kafka.mtls_bootstrap, KafkaAuth(
                security_protocol="SSL", ca_file=str(kafka.tls_ca_file), cert_file=str(cert),
                key_file=str(key))
        user, right = SASL_USER
        auth = KafkaAuth(security_protocol=protocol, sasl_mechanism="SCRAM-SHA-256",
                         username=user, password=password or right,
                         ca_file=str(kafka.tls_ca_file) if protocol == "SASL_SSL" else None)
        return (kafka.tls_bootstrap if protocol == "SASL_SSL" else kafka.sasl_bootstrap), auth


@pytest.fixture(scope="session")
def stack(tmp_path_factory) -> Iterator[Stack]:
    env_kafka = os.environ.get("KAFKA_BOOTSTRAP_SERVERS")
    env_redis = os.environ.get("REDIS_URL")
    if env_kafka and env_redis:
        yield Stack(env_kafka, env_redis, source="environment")
        return
    if _docker_answers():
        from testcontainers.kafka import KafkaContainer
        from testcontainers.redis import RedisContainer

        with KafkaContainer().with_kraft() as k, RedisContainer() as r:
            host, port = r.get_container_host_ip(), r.get_exposed_port(6379)
            yield Stack(k.get_bootstrap_server(), f"redis://{host}:{port}/0", source="docker")
        return
    run = tmp_path_factory.mktemp("stack")
    kafka = Kafka(run_dir=run / "kafka", port=free_port(), controller_port=free_port(),
                  sasl_port=free_port(), tls_port=free_port(), mtls_port=free_port(),
                  acl_users=("captures", "circulation", "allocation", "withdrawal", "cashout", "netting",
                             "readmodel", "payment-system",
                             "api", "audit"))
    redis = Redis(run_dir=run / "redis", port=free_port())
    kafka.start()
    redis.start()
    try:
        yield Stack(kafka.bootstrap, redis.url, kafka=kafka, redis=redis)
    finally:
        redis.stop()
        kafka.stop()


@dataclass(frozen=True)
class Names:
    prefix: str

    def topic(self, name: str) -> str:
        return f"{self.prefix}.{name}"

    def group(self, name: str) -> str:
        return f"{self.prefix}.group.{name}"


@pytest.fixture
def names(request) -> Names:
    test = request.node.name.replace("[", "-").replace("]", "")[:40]
    return Names(f"t-{test}-{uuid.uuid4().hex[:8]}")


# --- no silent skips ------------------------------------------------------------------
# With COMMISSION_FORBID_SKIPS=1 (.ci/run sets it) a skipped test fails the run unless
# tests/allowed_skips.txt names it with its reason: a test skipped in CI is a test not
# run, and must not pass unnoticed.

_SKIPPED: list[tuple[str, str]] = []


def _allowed_skips() -> dict[str, str]:
    path = Path(__file__).parent / "allowed_skips.txt"
    out = {}
    for line in path.read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            prefix, _, why = line.partition("\t")
            out[prefix] = why
    return out


def pytest_runtest_logreport(report):
    if report.skipped and not hasattr(report, "wasxfail"):
        _SKIPPED.append((report.nodeid, str(report.longrepr[-1]) if isinstance(
            report.longrepr, tuple) else str(report.longrepr)))


def pytest_sessionfinish(session, exitstatus):
    if os.environ.get("COMMISSION_FORBID_SKIPS") != "1" or not _SKIPPED:
        return
    allowed = _allowed_skips()
    refused = [(n, why) for n, why in _SKIPPED if not any(n.startswith(p) for p in allowed)]
    if refused:
        for nodeid, why in refused:
            print(f"\nSKIPPED BUT NOT ALLOWED: {nodeid}: {why}")
        print("a skipped test is a test not run: fix it, or add it with its reason to "
              "tests/allowed_skips.txt")
        session.exitstatus = 1
