"""The broker is killed and restarted while traffic flows: services that lose a
transaction stop and are restarted (as a supervisor would), and the outputs are
still exactly what the core computes."""

from __future__ import annotations

import threading
import time
from collections import Counter

import pytest

from tests.e2e.traffic import accepted_of, assert_outputs_as_expected, build, expect


def test_broker_crash_mid_stream(pipeline, stack):
    if stack.kafka is None:
        pytest.skip(f"Kafka comes from {stack.source}; this session cannot restart it")
    commands = build(40, 2_000, seed=31, t0_ms=int(time.time() * 1000))
    expected = expect(commands)
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
    deadline = time.monotonic() + 300
    restarted: Counter = Counter()
    done = False
    while not done and time.monotonic() < deadline:
        for key in pipeline.restart_exited():
            restarted[key] += 1
        got = Counter(pipeline.read(pipeline.topics.payments))
        done = sent.is_set() and sum(got.values()) >= sum(
            expected.topics["settlements"].values())  # netting publishes each one
        time.sleep(1)
    assert sent.is_set()
    print(f"restarted: {restarted}")  # shown with a failure
    # every output as the core computes it, and the sequencer's verdicts too: each
    # accepted once, at its seq; each refusal once
    assert_outputs_as_expected(pipeline, expected, timeout_s=120)
    t = pipeline.topics
    assert accepted_of(pipeline.wait_for(t.accepted, sum(expected.accepted.values()))) \
        == expected.accepted, restarted
    assert pipeline.audit().ok
