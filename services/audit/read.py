"""Read a whole topic, as committed, to the end offsets taken when reading starts."""

from __future__ import annotations

import time

from kafka import KafkaConsumer, TopicPartition
from kafka.consumer.fetcher import ConsumerRecord

from domain import CertificateState
from services.common.rows import assemble
from services.common.settings import PLAINTEXT, KafkaAuth


def read_records(bootstrap: str, topic: str, timeout_s: float = 60.0,
                 auth: KafkaAuth = PLAINTEXT) -> list[ConsumerRecord]:
    consumer = KafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False,
                             isolation_level="read_committed", group_id=None,
                             **auth.kafka_python())
    try:
        partitions = consumer.partitions_for_topic(topic) or set()
        tps = [TopicPartition(topic, p) for p in sorted(partitions)]
        if not tps:
            return []
        consumer.assign(tps)
        consumer.seek_to_beginning(*tps)
        # with read_committed, end_offsets is the last stable offset
        end = consumer.end_offsets(tps)
        records: list[ConsumerRecord] = []
        deadline = time.monotonic() + timeout_s
        while any(consumer.position(tp) < end[tp] for tp in tps):
            if time.monotonic() > deadline:
                raise TimeoutError(f"{topic}: not read to its end within {timeout_s}s")
            for batch in consumer.poll(timeout_ms=500).values():
                records.extend(batch)
        return records
    finally:
        consumer.close()


def read_topic(bootstrap: str, topic: str, timeout_s: float = 60.0,
               auth: KafkaAuth = PLAINTEXT) -> list[bytes]:
    return [r.value for r in read_records(bootstrap, topic, timeout_s, auth)]


def read_table(bootstrap: str, topic: str, timeout_s: float = 60.0) -> dict[bytes, bytes]:
    """The last value of every key of a (compacted) changelog topic."""
    rows: dict[bytes, bytes] = {}
    for r in read_records(bootstrap, topic, timeout_s):
        if r.value is None:
            rows.pop(r.key, None)
        else:
            rows[r.key] = r.value
    return rows


def read_rows(bootstrap: str, changelog: str, timeout_s: float = 60.0
              ) -> dict[str, CertificateState]:
    """A stage's committed table, from its changelog (see services/common/rows.py)."""
    return {k.decode(): v for k, v in assemble(read_table(bootstrap, changelog, timeout_s)).items()}
