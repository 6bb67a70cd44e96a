"""The broker is killed and restarted while traffic flows: services that lose a
transaction stop and are restarted (as a supervisor would), and the outputs are
still exactly what the core computes. It is also the test of the fixture's broker
restart (Kafka.kill then start on the same data): the outputs of the first half,
acknowledged before the kill, are read after it."""

from __future__ import annotations

import threading
import time

import pytest

from tests.e2e.traffic import assert_outputs_as_expected, build


def test_broker_crash_mid_stream(pipeline, stack):
    if stack.kafka is None:
        pytest.skip(f"Kafka comes from {stack.source}; this session cannot restart it")
    commands = build(40, 2_000, seed=31, t0_ms=int(time.time() * 1000))
    pipeline.start_all()
    first, rest = commands[:1_000], commands[1_000:]
    pipeline.send(*first)
    time.sleep(2)  # mid-stream: the services are working through the first half

    stack.kafka.kill()
    time.sleep(1)
    stack.kafka.start()

    sent = threading.Event()

    def feed() -> None:
        # the producer retries until the broker answers again
        pipeline.send(*rest)
        sent.set()

    threading.Thread(target=feed, daemon=True).start()
    # the test plays the supervisor: a stage that exits (75) while the broker is away
    # is started again, as Kubernetes would
    pipeline.supervised = True
    deadline = time.monotonic() + 300
    while not sent.is_set() and time.monotonic() < deadline:
        pipeline.assert_running()
        time.sleep(1)
    assert sent.is_set()
    # every output as the core computes it from what the pipeline received, the
    # sequencer's verdicts too: each accepted once, at its seq; each refusal once
    assert_outputs_as_expected(pipeline, timeout_s=300)
    assert pipeline.audit().ok
