"""Scale-out: two workers of every service share the partitions; one of each is
stopped mid-stream (the other takes over its partitions) and started again later.
Work spreads across both, and the outputs stay exactly what the core computes.

The workers are static members (group.instance.id, so that a restart moves nothing):
a stopped one does not leave its group, and its partitions wait for its session
(10 s) to end before the other takes them over; the test waits for that takeover."""

from __future__ import annotations

import signal
import time

from deploy.localstack import free_port
from services.common.metrics import scrape, total
from tests.e2e.pipeline import SERVICES
from tests.e2e.traffic import assert_outputs_as_expected, build


def consumed(port: int) -> float:
    try:
        metrics = scrape(port)
    except OSError:
        return 0.0  # not serving yet
    return total(metrics, "commission_messages_in_total")


def owned(port: int) -> set[str]:
    """The input partitions a worker has owned (its lag gauge, from its first assignment
    of each)."""
    try:
        metrics = scrape(port)
    except OSError:
        return set()
    return {s.labels["partition"] for s in metrics if s.name == "commission_consumer_lag_messages"}


def test_second_worker_leaves_and_rejoins_mid_stream(pipeline):
    commands = build(60, 3_000, seed=23, t0_ms=int(time.time() * 1000))
    ports = {(s, i): free_port() for s in SERVICES for i in (0, 1)}
    pipeline.via_captures = True  # the captures stage gets work to share too
    for (service, instance), port in ports.items():
        pipeline.start(service, instance=instance, metrics_port=port)
    done = pipeline.feed_in_background(commands, every=200, pause_s=0.4)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and not all(consumed(p) > 0 for p in ports.values()):
        time.sleep(0.5)
    spread = {key: consumed(port) for key, port in ports.items()}
    assert all(n > 0 for n in spread.values()), f"a worker got no work: {spread}"
    every = {str(p) for p in range(pipeline.settings.partitions)}
    assert all(owned(ports[s, 0]) != every for s in SERVICES), "instance 1 owned nothing"
    for service in SERVICES:
        pipeline.signal(service, instance=1, sig=signal.SIGTERM)
    deadline = time.monotonic() + 45
    while (alone := [s for s in SERVICES if owned(ports[s, 0]) != every]):
        assert time.monotonic() < deadline, f"not taken over by instance 0: {alone}"
        time.sleep(0.5)
    for service in SERVICES:
        pipeline.start(service, instance=1)
    assert done.wait(120)

    assert_outputs_as_expected(pipeline, timeout_s=300)
    pipeline.assert_running()
    assert pipeline.audit().ok
