"""Small, bounded helpers over kafka-python for tests: create topics, read until."""

from __future__ import annotations

import time

from kafka import KafkaConsumer
from kafka.admin import KafkaAdminClient, NewTopic


def create_topics(bootstrap: str, names: list[str], partitions: int = 4) -> None:
    admin = KafkaAdminClient(bootstrap_servers=bootstrap, client_id="tests")
    try:
        admin.create_topics([NewTopic(n, partitions, 1) for n in names])
    finally:
        admin.close()


# How long a faust worker started again after a SIGKILL may take to publish: it waits
# for the killed member's session to end, rejoins and restores its tables. On a slow
# day of this machine (the domain core benchmark at 42,727 circulations/s against
# 73,368 the day before) it did not publish within 60-90 s in two CI runs; the tests
# return as soon as what they wait for is there, so only a failure waits this long.
RESTARTED_WITHIN_S = 180.0


def read_all(bootstrap: str, topic: str, *, expect: int, timeout_s: float = 30.0,
             isolation_level: str = "read_committed", idle_s: float = 1.0) -> list:
    """Read from the beginning until ``expect`` records arrived and then ``idle_s``
    passed with nothing more (so extra records are seen, not hidden), or time out."""
    consumer = KafkaConsumer(
        topic, bootstrap_servers=bootstrap, auto_offset_reset="earliest",
        enable_auto_commit=False, isolation_level=isolation_level, group_id=None,
        consumer_timeout_ms=int(idle_s * 1000),
    )
    records = []
    deadline = time.monotonic() + timeout_s
    try:
        while time.monotonic() < deadline:
            batch = consumer.poll(timeout_ms=200)
            fresh = [r for part in batch.values() for r in part]
            records.extend(fresh)
            if len(records) >= expect and not fresh:
                quiet_until = time.monotonic() + idle_s
                while time.monotonic() < quiet_until:
                    more = consumer.poll(timeout_ms=200)
                    records.extend(r for part in more.values() for r in part)
                break
    finally:
        consumer.close()
    return records
