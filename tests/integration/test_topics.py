"""ensure_topics on a real broker: the commands topic carries the broker's time, also
when it existed before with the producer's (the default)."""

from __future__ import annotations

import time

import pytest
from kafka import KafkaProducer

from services.common.settings import Settings, Topics
from services.common.topics import ensure_topics
from tests.integration.kafka_helpers import create_topics, read_all

HOUR_MS = 3_600_000


def _backdated_timestamp(bootstrap: str, topic: str) -> tuple[int, int]:
    """Send one record stamped an hour ago by the producer; return (sent, read back)."""
    backdated = int(time.time() * 1000) - HOUR_MS
    producer = KafkaProducer(bootstrap_servers=bootstrap, acks="all")
    producer.send(topic, key=b"k", value=b"v", timestamp_ms=backdated)
    producer.flush()
    producer.close()
    (record,) = read_all(bootstrap, topic, expect=1, idle_s=0.2)
    return backdated, record.timestamp


@pytest.mark.parametrize("existed", [False, True])
def test_commands_get_the_brokers_time(stack, names, existed):
    settings = Settings(bootstrap=stack.bootstrap, topics=Topics(prefix=f"{names.prefix}."),
                        partitions=4)
    commands = settings.topics.commands
    if existed:
        create_topics(stack.bootstrap, [commands], partitions=4)  # CreateTime, as before
    ensure_topics(settings, [commands, settings.topics.accepted])
    backdated, seen = _backdated_timestamp(stack.bootstrap, commands)
    assert abs(seen - time.time() * 1000) < 60_000, "the producer's timestamp was kept"
    assert seen - backdated > HOUR_MS - 60_000
    # other topics keep the producer's time (outputs carry their own timestamps)
    backdated, seen = _backdated_timestamp(stack.bootstrap, settings.topics.accepted)
    assert seen == backdated


def test_a_changelog_that_is_not_compacted_stops_the_service(stack, names):
    settings = Settings(bootstrap=stack.bootstrap, topics=Topics(prefix=f"{names.prefix}."),
                        partitions=4)
    changelog = f"{names.prefix}.stage-state-changelog"
    create_topics(stack.bootstrap, [changelog], partitions=4)  # cleanup.policy=delete
    with pytest.raises(SystemExit, match="not compact"):
        ensure_topics(settings, [settings.topics.accepted], compacted=[changelog])


def test_fewer_replicas_than_the_environment_asks_for_stops_the_service(stack, names):
    settings = Settings(bootstrap=stack.bootstrap, topics=Topics(prefix=f"{names.prefix}."),
                        partitions=4)
    ensure_topics(settings, [settings.topics.accepted])  # one replica: the one broker
    wants_three = Settings(bootstrap=stack.bootstrap, topics=settings.topics, partitions=4,
                           replication_factor=3)
    with pytest.raises(SystemExit, match="1 replicas, the environment asks for 3"):
        ensure_topics(wants_three, [settings.topics.accepted])
