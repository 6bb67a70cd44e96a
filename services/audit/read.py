"""Read a whole topic, as committed, to the end offsets taken when reading starts
(never past them), and what lies beyond them (read_cut)."""

from __future__ import annotations

import time
from dataclasses import dataclass

from kafka import KafkaConsumer, TopicPartition
from kafka.consumer.fetcher import ConsumerRecord
from kafka.errors import KafkaTimeoutError

from domain import CertificateState
from services.common.rows import assemble
from services.common.settings import PLAINTEXT, KafkaAuth


def read_records(bootstrap: str, topic: str, timeout_s: float = 60.0,
                 auth: KafkaAuth = PLAINTEXT) -> list[ConsumerRecord]:
    return _read_range(bootstrap, topic, "read_committed", timeout_s, auth)[0]


@dataclass(frozen=True)
class Cut:
    """A topic read as committed up to its end offsets (``records``), and what lay
    beyond those offsets, committed or not, up to the high watermark taken after them
    (``beyond``). Each partition of a transaction becomes readable on its own (the
    coordinator writes one marker per partition), so a cut can hold one part of a
    transaction and not the rest: the rest is then in ``beyond`` (its records are
    written before the commit starts, so they are below the later high watermark)."""

    records: list[ConsumerRecord]
    beyond: list[bytes]


def read_cut(bootstrap: str, topic: str, timeout_s: float = 60.0,
             auth: KafkaAuth = PLAINTEXT) -> Cut:
    records, end = _read_range(bootstrap, topic, "read_committed", timeout_s, auth)
    beyond, _ = _read_range(bootstrap, topic, "read_uncommitted", timeout_s, auth, start=end)
    return Cut(records, [r.value for r in beyond if r.value is not None])


def _read_range(bootstrap: str, topic: str, isolation: str, timeout_s: float,
                auth: KafkaAuth, start: dict[int, int] | None = None
                ) -> tuple[list[ConsumerRecord], dict[int, int]]:
    """The records from ``start`` (default: the beginning) to the end offsets taken
    once the consumer is positioned, never past them, and those end offsets.

    Tried a second time with a new consumer when the brokers do not answer for the
    offsets in time: after brokers of a cluster restarted, a client can keep a dead
    connection for the whole request timeout (seen in the short-replicas test)."""
    try:
        return _read_range_once(bootstrap, topic, isolation, timeout_s, auth, start)
    except KafkaTimeoutError:
        return _read_range_once(bootstrap, topic, isolation, timeout_s, auth, start)


def _read_range_once(bootstrap: str, topic: str, isolation: str, timeout_s: float,
                     auth: KafkaAuth, start: dict[int, int] | None
                     ) -> tuple[list[ConsumerRecord], dict[int, int]]:
    consumer = KafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False,
                             isolation_level=isolation, group_id=None,
                             **auth.kafka_python())
    try:
        partitions = consumer.partitions_for_topic(topic) or set()
        tps = [TopicPartition(topic, p) for p in sorted(partitions)]
        if not tps:
            return [], {}
        consumer.assign(tps)
        if start is None:
            consumer.seek_to_beginning(*tps)
        else:
            for tp in tps:
                consumer.seek(tp, start[tp.partition])
        # with read_committed, end_offsets is the last stable offset; with
        # read_uncommitted, the high watermark
        end = consumer.end_offsets(tps)
        return drain(consumer, tps, end, timeout_s), {tp.partition: end[tp] for tp in tps}
    finally:
        consumer.close()


def drain(consumer, tps: list[TopicPartition], end: dict[TopicPartition, int],
          timeout_s: float, clock=time.monotonic) -> list[ConsumerRecord]:
    """Every record of ``tps`` from the consumer's positions up to ``end`` (never
    past it). ``timeout_s`` bounds a read that stops moving, not a long one: a topic
    with a long history (`make run` keeps its data from run to run) takes as long as
    it takes, as long as its positions move within every ``timeout_s``."""
    records: list[ConsumerRecord] = []
    deadline, was = clock() + timeout_s, None
    while True:
        at = [consumer.position(tp) for tp in tps]
        if all(position >= end[tp] for position, tp in zip(at, tps, strict=True)):
            return records
        if at != was:
            deadline, was = clock() + timeout_s, at
        elif clock() > deadline:
            topic = tps[0].topic
            raise TimeoutError(f"{topic}: not read to its end: no progress for "
                               f"{timeout_s}s ({len(records)} records read)")
        for tp, batch in consumer.poll(timeout_ms=500).items():
            # a fetch may return records past the end taken: they belong to a later
            # moment than the other partitions' ends
            records.extend(r for r in batch if r.offset < end[tp])


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
