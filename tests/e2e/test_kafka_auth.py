"""The services, the read model, the gateway and the audit on broker listeners that
need a login, as on a managed cluster: SASL (SCRAM-SHA-256) in the clear and over TLS,
and a client certificate (mutual TLS); and a wrong password stops a service instead
of leaving it waiting."""

from __future__ import annotations

import time

import pytest
import redis

from deploy.localstack import SASL_USER
from services.common.settings import KafkaAuth
from services.readmodel.projection import Keys
from tests.e2e.pipeline import SERVICES, Pipeline
from tests.e2e.test_readmodel import wait_projected
from tests.e2e.traffic import assert_outputs_as_expected, build


def _auth(stack, protocol: str, password: str | None = None) -> tuple[str, KafkaAuth]:
    listener = stack.login_listener(protocol, password)
    if listener is None:
        pytest.skip(f"Kafka comes from {stack.source}; this session cannot add a listener")
    return listener


@pytest.fixture(params=["SASL_PLAINTEXT", "SASL_SSL", "SSL"])
def login_pipeline(request, stack, names, tmp_path):
    bootstrap, auth = _auth(stack, request.param)
    p = Pipeline(bootstrap, names.prefix, tmp_path / "logs",
                 extra_env={"REDIS_URL": stack.redis_url}, kafka_auth=auth)
    try:
        yield p
    finally:
        p.stop_all()
        p.sender.close()


def send_and_check(pipeline: Pipeline, redis_url: str, seed: int):
    """Send 300 commands over 10 certificates; every output topic equals the core's and
    the read model caught up with the core's states. Returns what the core expects."""
    commands = build(10, 300, seed=seed, t0_ms=int(time.time() * 1000))
    pipeline.send(*commands)
    t = pipeline.topics
    want = assert_outputs_as_expected(pipeline, timeout_s=120)
    client = redis.Redis.from_url(redis_url)
    try:
        wait_projected(pipeline, client, Keys(t.prefix), want.states)
    finally:
        client.close()
    return want


def test_the_pipeline_runs_on_a_listener_that_needs_a_login(login_pipeline, stack):
    pipeline = login_pipeline
    pipeline.start_all()
    pipeline.start("readmodel")
    send_and_check(pipeline, stack.redis_url, seed=53)
    assert pipeline.audit().ok
    pipeline.assert_running()


def test_a_wrong_password_stops_the_service(stack, names, tmp_path):
    bootstrap, auth = _auth(stack, "SASL_PLAINTEXT")
    pipeline = Pipeline(bootstrap, names.prefix, tmp_path / "logs",
                        kafka_auth=auth)  # the test's own clients log in
    try:
        for service in SERVICES:
            pipeline.start(service, KAFKA_SASL_PASSWORD="not-the-password")
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline and any(
                p.poll() is None for p in pipeline.procs.values()):
            time.sleep(0.5)
        codes = {key[0]: p.poll() for key, p in pipeline.procs.items()}
        assert all(code not in (None, 0) for code in codes.values()), codes
        for service in SERVICES:
            log = (tmp_path / "logs" / f"{service}-0.log").read_text()
            assert f"as {SASL_USER[0]} (SCRAM-SHA-256)" in log, service  # says what to check
            # librdkafka's words for a refused SCRAM login
            assert "SASL authentication error: Authentication failed" in log, service
            assert "not-the-password" not in log, service
    finally:
        pipeline.stop_all()
        pipeline.sender.close()
