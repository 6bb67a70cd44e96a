"""The hop limit: plain confluent-kafka (librdkafka) exactly-once copying, no runner.

    python -m benchmarks.limit ROLE     # ROLE: circulation|allocation|withdrawal|cashout

The same topology as the pipeline (commands -> accepted, then accepted -> one output
topic each for the three followers), each hop the leanest exactly-once loop
librdkafka allows: consume a batch, produce each record's value unchanged to the same
partition of the output topic, add the offsets with the group metadata (KIP-447),
commit. No state, no changelog, no decoding. `make bench` measures the runner and
the pipeline against this, on the same broker.

It serves the two counters the benchmark reads (messages in and out) on METRICS_PORT,
counted per batch.
"""

from __future__ import annotations

import os
import signal
import sys
import threading

from confluent_kafka import Consumer, Producer, TopicPartition
from prometheus_client import CollectorRegistry, Counter, start_http_server

from services.common.settings import Settings
from services.common.topics import ensure_topics

ROUTES = {
    "circulation": ("commands", "accepted"),
    "allocation": ("accepted", "allocations"),
    "withdrawal": ("accepted", "withdrawals"),
    "cashout": ("accepted", "payments"),
}
BATCH = 2_000


def main() -> None:
    role = sys.argv[1]
    settings = Settings.from_env()
    source, target = (settings.topics.name(t) for t in ROUTES[role])
    ensure_topics(settings, [source, target])
    registry = CollectorRegistry()
    counted_in = Counter("commission_messages_in_total", "", ["service", "type"],
                         registry=registry).labels(role, "raw")
    counted_out = Counter("commission_messages_out_total", "", ["service", "topic", "type"],
                          registry=registry).labels(role, target, "raw")
    if settings.metrics_port:
        start_http_server(settings.metrics_port, addr="127.0.0.1", registry=registry)
    group = f"{settings.group_prefix}-{role}"
    conf = {"bootstrap.servers": settings.bootstrap, **settings.kafka_auth.librdkafka()}
    producer = Producer({**conf, "transactional.id": f"{group}-{os.getpid()}",
                         "linger.ms": 5, "queue.buffering.max.messages": 1_000_000})
    producer.init_transactions(60)
    consumer = Consumer({**conf, "group.id": group, "enable.auto.commit": False,
                         "isolation.level": "read_committed", "auto.offset.reset": "earliest",
                         "fetch.wait.max.ms": 100})
    consumer.subscribe([source])
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    while not stop.is_set():
        # as the runner does: the first record that arrives, then every one already
        # fetched (consume(BATCH, t) alone returns only when BATCH records are there
        # or t passed, which held the last rounds of every hop for t)
        records = consumer.consume(1, settings.commit_interval_s)
        if records:
            records += consumer.consume(BATCH - 1, 0)
        records = [r for r in records if r.error() is None]
        if not records:
            continue
        producer.begin_transaction()
        offsets: dict[int, int] = {}
        for r in records:
            producer.produce(target, r.value(), r.key(), partition=r.partition())
            offsets[r.partition()] = r.offset() + 1
        producer.send_offsets_to_transaction(
            [TopicPartition(source, p, o) for p, o in offsets.items()],
            consumer.consumer_group_metadata())
        producer.commit_transaction()
        counted_in.inc(len(records))
        counted_out.inc(len(records))
    consumer.close()


if __name__ == "__main__":
    main()
