"""Smoke tests of the real infrastructure every later test relies on."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest
import redis
from kafka import KafkaProducer

from tests.integration.kafka_helpers import create_topics, read_all

ROOT = Path(__file__).resolve().parents[2]


def test_kafka_python_producer_to_faust_consumer(stack, names, tmp_path):
    topic = names.topic("smoke")
    create_topics(stack.bootstrap, [topic])
    out = tmp_path / "seen.txt"
    out.touch()
    worker = subprocess.Popen(
        [sys.executable, "-m", "tests.integration.faust_probe", stack.bootstrap, topic,
         names.group("probe"), str(out)],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
    )
    try:
        producer = KafkaProducer(bootstrap_servers=stack.bootstrap, acks="all")
        sent = [f"msg-{i}".encode() for i in range(20)]
        for i, value in enumerate(sent):
            producer.send(topic, key=f"cert-{i % 5}".encode(), value=value)
        producer.flush()
        producer.close()
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and len(out.read_bytes().splitlines()) < len(sent):
            assert worker.poll() is None, worker.stdout.read().decode(errors="replace")
            time.sleep(0.2)
        assert sorted(out.read_bytes().splitlines()) == sorted(sent)
    finally:
        worker.terminate()
        worker.wait(timeout=30)


def test_read_committed_sees_committed_and_not_aborted_transactions(stack, names):
    topic = names.topic("tx")
    create_topics(stack.bootstrap, [topic])
    producer = KafkaProducer(bootstrap_servers=stack.bootstrap,
                             transactional_id=names.group("tx-producer"))
    producer.init_transactions()
    producer.begin_transaction()
    producer.send(topic, key=b"k", value=b"committed-1")
    producer.send(topic, key=b"k", value=b"committed-2")
    producer.commit_transaction()
    producer.begin_transaction()
    producer.send(topic, key=b"k", value=b"aborted")
    producer.flush()
    producer.abort_transaction()
    producer.close()

    committed = read_all(stack.bootstrap, topic, expect=2)
    assert [r.value for r in committed] == [b"committed-1", b"committed-2"]
    everything = read_all(stack.bootstrap, topic, expect=3, isolation_level="read_uncommitted")
    assert b"aborted" in [r.value for r in everything]


def test_redis_round_trip(stack, names):
    client = redis.Redis.from_url(stack.redis_url)
    key = names.topic("key")
    client.set(key, b"\x00value")
    assert client.get(key) == b"\x00value"
    client.delete(key)
    client.close()


def test_redis_restart_keeps_acknowledged_writes(stack, names):
    if stack.redis is None:
        pytest.skip(f"Redis comes from {stack.source}; this session cannot restart it")
    client = redis.Redis.from_url(stack.redis_url)
    key = names.topic("durable")
    client.set(key, b"kept")
    client.close()
    stack.redis.stop()
    stack.redis.start()
    client = redis.Redis.from_url(stack.redis_url)
    assert client.get(key) == b"kept"
    client.close()


# The broker's restart (killed, started again by the fixture, every acknowledged write
# kept) is tested with the pipeline on it: tests/e2e/test_broker_restart.py.
