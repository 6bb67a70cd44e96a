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
