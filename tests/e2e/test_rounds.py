"""How rounds are cut, seen on the broker: one transaction marker per partition a
committed round wrote to.

By default a round with outputs commits at once (the lowest latency): commands that
arrive 100 ms apart are committed one transaction each. With
``COMMISSION_COMMIT_SPACING_MS`` (Kafka Streams' commit.interval.ms) a stage commits
no sooner than that after its previous commit, so the same commands share one
transaction; and a command after a quiet spell is committed at once.
"""

from __future__ import annotations

import time

import pytest
from confluent_kafka import Consumer, TopicPartition

from tests.e2e.certificates import cert_id, setup
from tests.e2e.pipeline import Pipeline

SENT = 20
SPACING_S = 0.1  # 2 s for all of them: inside 3 s of spacing


def end_offset(pipeline: Pipeline, topic: str) -> int:
    consumer = Consumer({"bootstrap.servers": pipeline.settings.bootstrap,
                         "group.id": "rounds-watermarks", "enable.auto.commit": False})
    try:
        return consumer.get_watermark_offsets(TopicPartition(topic, 0), timeout=10)[1]
    finally:
        consumer.close()


def markers_on_accepted(pipeline: Pipeline) -> int:
    """Control records on the one partition of ``accepted``: its end offset minus
    the records a read_committed reader gets (nothing is aborted in this test)."""
    topic = pipeline.topics.accepted
    return end_offset(pipeline, topic) - len(pipeline.read(topic))


@pytest.mark.parametrize("spacing_ms", [0, 3000])
def test_commit_spacing_makes_fewer_larger_transactions(stack, names, tmp_path, spacing_ms):
    pipeline = Pipeline(stack.bootstrap, names.prefix, tmp_path / "logs", partitions=1)
    try:
        pipeline.start("circulation", COMMISSION_COMMIT_SPACING_MS=str(spacing_ms))
        t = int(time.time() * 1000)

        def issue(name: str):
            return setup(cert_id(name), t, price_minor=5_000, budget_minor=1_000,
                         attached_minor=100)[0]

        pipeline.send(issue("rounds-first"))
        pipeline.wait_for(pipeline.topics.accepted, 1)  # joined, restored, one round done
        before = markers_on_accepted(pipeline)
        for i in range(SENT):
            pipeline.send(issue(f"rounds-{i}"))
            time.sleep(SPACING_S)
        pipeline.wait_for(pipeline.topics.accepted, 1 + SENT)
        transactions = markers_on_accepted(pipeline) - before
        if spacing_ms:
            # the 20 arrive within 2 s, less than the spacing: one round, or two if the
            # spacing after the warm-up's commit ran out while they arrived
            assert 1 <= transactions <= 2, transactions
            # after a quiet spell longer than the spacing, a command commits at once
            time.sleep(spacing_ms / 1000 + 0.5)
            sent = time.monotonic()
            pipeline.send(issue("rounds-after-quiet"))
            pipeline.wait_for(pipeline.topics.accepted, 2 + SENT)
            assert time.monotonic() - sent < spacing_ms / 1000, "a quiet stage waited"
        else:
            # one round each, unless slow commits let a few queue up together
            assert transactions >= SENT // 2, transactions
    finally:
        pipeline.stop_all()
        pipeline.sender.close()
