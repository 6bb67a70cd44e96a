"""The demo's own Kafka client on a real broker: a burst of the payment system's
results, signed as batches, is delivered whole to ``payment-results``, whose records
the broker bounds at 256 KiB a batch (services/common/topics.py). Before its producer
kept its batches below that, `make run` at 1,000/s lost ~1,700-9,700 results a run
to MSG_SIZE_TOO_LARGE, and their settlements waited for results that never came."""

from __future__ import annotations

import time

from schemas.commands import ReportPayment
from services.common.auth import BATCH_PROOF_HEADER, DEV_KEYS, Keyring, header_dict
from services.common.settings import Settings, Topics
from services.common.topics import ensure_topics
from services.demo.clients import FastSender
from tests.integration.kafka_helpers import read_all


def test_a_burst_of_batch_signed_results_is_delivered_whole(stack, names):
    settings = Settings(bootstrap=stack.bootstrap, topics=Topics(prefix=f"{names.prefix}."),
                        partitions=4)
    topic = settings.topics.payment_results
    ensure_topics(settings, [topic])
    now = int(time.time() * 1000)
    # what the demo's payment system sends after two fetches of 1,000 settlements
    results = [ReportPayment(command_id=f"result:{names.prefix}-{i}:1",
                             certificate_id=f"seller-{i % 7}~offer-{i}-1", at_ms=now,
                             settlement_id=f"{names.prefix}-{i}", attempt=1, result="settled")
               for i in range(2_000)]
    payer = FastSender(settings, Keyring.parse(DEV_KEYS))
    try:
        payer.send_batch(results, topic=topic)
        payer.flush()
        assert payer.failed == 0
    finally:
        payer.close()
    records = read_all(stack.bootstrap, topic, expect=len(results), timeout_s=60)
    assert len(records) == len(results)
    engine = Keyring.parse(DEV_KEYS).for_engine()
    for record in records:
        headers = header_dict(record.headers)
        assert BATCH_PROOF_HEADER in headers
        assert engine.verify(record.value, headers).scope == "payments"
