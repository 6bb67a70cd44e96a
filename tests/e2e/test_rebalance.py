"""Two workers of each follower service share the partitions; one of each is
stopped and started again mid-stream. Outputs stay exactly what the core computes."""

from __future__ import annotations

import signal
import time
from collections import Counter

from tests.e2e.traffic import build, expect


def test_second_worker_leaves_and_rejoins_mid_stream(pipeline):
    commands = build(60, 3_000, seed=23, t0_ms=int(time.time() * 1000))
    expected = expect(commands)
    pipeline.start_all()
    for service in ("allocation", "withdrawal", "cashout"):
        pipeline.start(service, instance=1)
    done = pipeline.feed_in_background(commands, every=200, pause_s=0.4)
    time.sleep(3)
    for service in ("allocation", "withdrawal", "cashout"):
        pipeline.signal(service, instance=1, sig=signal.SIGTERM)  # a clean leave
    time.sleep(2)
    for service in ("allocation", "withdrawal", "cashout"):
        pipeline.start(service, instance=1)
    assert done.wait(120)

    for base, want in expected.topics.items():
        got = Counter(pipeline.wait_for(pipeline.topics.name(base), sum(want.values()), 300))
        assert got == want, base
    # both workers did part of the work
    for service in ("allocation", "cashout"):
        for instance in (0, 1):
            log = (pipeline.logs / f"{service}-{instance}.log").read_text()
            assert "restored" in log, f"{service}-{instance} never owned a partition"
    pipeline.assert_running()
    assert pipeline.audit().ok
