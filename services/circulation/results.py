"""Payment results in: ``payment-results`` -> ``commands``, at least once.

The payment system publishes its result for each settlement attempt on
``payment-results`` (keyed by certificate id, signed with a payments key). They
must be decided in order with the certificate's other commands, by the sequencer,
so this forwarder copies each record (key, value and signature headers unchanged)
to ``commands`` and commits its input offset only after the copies are acknowledged.
A copy sent twice after a crash is harmless: a result's command id is
``result:{settlement_id}:{attempt}``, the core applies it once (the second is a
``duplicate`` on ``rejections``). The signature is checked where every command's
is: by the sequencer, which also requires a payments key for results.

It runs as a thread of the circulation service (crash-only: a failure stops the
process for a restart, like the runner's).
"""

from __future__ import annotations

import logging
import threading

from confluent_kafka import Consumer, KafkaException, Producer

from services.common.settings import Settings
from services.common.topics import ensure_topics

log = logging.getLogger("commission.results")


def forward_results(settings: Settings, stop: threading.Event) -> None:
    topics = settings.topics
    ensure_topics(settings, [topics.payment_results, topics.commands])
    auth = settings.kafka_auth.librdkafka()
    group = f"{settings.group_prefix}-payment-results"
    consumer = Consumer({"bootstrap.servers": settings.bootstrap, "group.id": group,
                         "enable.auto.commit": False, "isolation.level": "read_committed",
                         "auto.offset.reset": "earliest", "client.id": group, **auth})
    producer = Producer({"bootstrap.servers": settings.bootstrap, "enable.idempotence": True,
                         "acks": "all", "linger.ms": 5, "partitioner": "murmur2_random",
                         "client.id": group, **auth})
    consumer.subscribe([topics.payment_results])
    try:
        while not stop.is_set():
            records = [r for r in consumer.consume(500, 0.5) if r.error() is None]
            if not records:
                continue
            for r in records:
                producer.produce(topics.commands, r.value(), r.key(), headers=r.headers())
            if producer.flush(30) != 0:
                raise KafkaException("payment results not acknowledged in 30 s")
            consumer.commit(asynchronous=False)
            log.info(f"forwarded {len(records)} payment results")
    finally:
        consumer.close()
