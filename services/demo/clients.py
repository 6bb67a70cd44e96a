"""The demo's own Kafka clients: its users' and its payment system's, on librdkafka.

`make run` plays the world around the engine as well as running it: the users
(through the gateway's signed commands) and the payment system (escrow confirmations,
captures, payment results). On the gateway's kafka-python client those parts took
30-40 % of a core at 1,000 commands/s, on a machine whose two cores the engine needs
(docs/benchmarks.md, "make run at DEMO_RATE=1000"), as the load generator found
before it (benchmarks/generator.py). The records are CommandSender's, byte for byte
(keys, bodies, signatures, the topic order): only the client is C.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator

from confluent_kafka import OFFSET_END, Consumer, KafkaError, Message, Producer
from confluent_kafka import TopicPartition as KafkaPartition

from services.common.auth import Keyring
from services.common.settings import Settings
from services.common.topics import PRODUCER_BATCH_BYTES
from services.gateway import CommandSender

log = logging.getLogger("commission.demo")


class FastSender(CommandSender):
    """CommandSender's records on a librdkafka producer."""

    def __init__(self, settings: Settings, keyring: Keyring) -> None:
        self.failed = 0  # records the broker did not take (after librdkafka's retries)
        self._lock = threading.Lock()
        super().__init__(settings, keyring)

    def _connect(self, settings: Settings) -> Producer:
        return Producer({"bootstrap.servers": settings.bootstrap,
                         "enable.idempotence": True, "acks": "all", "linger.ms": 5,
                         # the Java client's partitioner, as kafka-python's and the
                         # stages': one certificate, one partition, whoever writes
                         # (librdkafka's default hashes otherwise)
                         "partitioner": "murmur2_random",
                         # below what the broker takes of a batch on the payment system's
                         # topic (services/common/topics.py): librdkafka's 1 MB default
                         # lost whole bursts of results to MSG_SIZE_TOO_LARGE
                         "batch.size": PRODUCER_BATCH_BYTES,
                         "client.id": "commission-demo",
                         **settings.kafka_auth.librdkafka()})

    def _delivered(self, error: KafkaError | None, message: Message) -> None:
        if error is not None:
            with self._lock:
                self.failed += 1
            log.warning(f"a demo command was not delivered to {message.topic()}: {error}")

    def _produce(self, topic: str, key: bytes | None, body: bytes,
                 headers: list[tuple[str, bytes]], timestamp_ms: int | None) -> None:
        self.producer.produce(topic, body, key, headers=headers or None,
                              timestamp=timestamp_ms or 0, on_delivery=self._delivered)
        self.producer.poll(0)  # serve delivery reports

    def flush(self) -> None:
        left = self.producer.flush(60)
        if left:
            raise RuntimeError(f"{left} demo commands not delivered within 60 s")

    def close(self) -> None:
        self.flush()
        self.producer = None  # librdkafka's client ends with its last reference, quietly


def committed_batches(settings: Settings, topics: tuple[str, ...],
                      stopping: threading.Event) -> Iterator[list[Message]]:
    """The records committed to ``topics`` from now on, as fetched (at most 1,000 at a
    time), until ``stopping`` is set."""
    consumer = Consumer({"bootstrap.servers": settings.bootstrap,
                         "group.id": "commission-demo-tally",  # never commits
                         "enable.auto.commit": False, "isolation.level": "read_committed",
                         **settings.kafka_auth.librdkafka()})
    try:
        consumer.assign([KafkaPartition(topic, p, OFFSET_END) for topic in topics
                         for p in range(settings.partitions)])
        while not stopping.is_set():
            batch = [record for record in consumer.consume(1000, 0.3) if record.error() is None]
            if batch:
                yield batch
    finally:
        consumer.close()
