"""A record that fails the same way on every attempt parks its partition, visibly,
and the stage keeps running the others (issue #15, "poison loops").

Two poison records are written straight to partition 0 of ``accepted`` (as a buggy
or foreign writer would): bytes that are not an accepted command, and one that skips
sequence numbers (a determinism error). Every follower parks partition 0: it is
counted, shown by the gauge and by /readyz, and nothing of it is published; the
certificates of the other partitions are settled exactly as the core computes.
"""

from __future__ import annotations

import json
import time

import msgspec
from kafka import KafkaProducer
from kafka.partitioner.default import murmur2

from deploy.localstack import free_port
from schemas.commands import AcceptedCommand, Circulate
from services.common.metrics import scrape, total
from tests.e2e.http import get
from tests.e2e.pipeline import SERVICES
from tests.e2e.traffic import assert_outputs_as_expected, build

FOLLOWERS = ("allocation", "withdrawal", "cashout")  # the readers of accepted


def partition_of(key: str, partitions: int) -> int:
    return (murmur2(key.encode()) & 0x7FFFFFFF) % partitions


def test_a_poison_record_parks_its_partition_and_the_others_run(pipeline):
    t = pipeline.topics
    n = pipeline.settings.partitions
    producer = KafkaProducer(bootstrap_servers=pipeline.settings.bootstrap)
    bogus = AcceptedCommand(seq=7, received_ms=0, command=Circulate(
        command_id="ghost", certificate_id="seller~ghost-00001", at_ms=0, account_id="x"))
    producer.send(t.accepted, key=b"seller~ghost-00001", partition=0, value=b"not json")
    producer.send(t.accepted, key=b"seller~ghost-00001", partition=0,
                  value=msgspec.json.encode(bogus))
    producer.flush()
    producer.close()

    ports = {service: free_port() for service in SERVICES}
    for service in SERVICES:
        pipeline.start(service, metrics_port=ports[service])
    commands = build(16, 600, seed=83, t0_ms=int(time.time() * 1000))
    elsewhere = [x for x in commands if partition_of(x.certificate_id, n) != 0]
    assert len({x.certificate_id for x in elsewhere}) >= 8
    assert len(elsewhere) < len(commands)  # some certificates are on the parked partition
    pipeline.send(*commands)

    # the certificates elsewhere: every output as the core computes it
    assert_outputs_as_expected(pipeline, timeout_s=90,
                               keep=lambda cid: partition_of(cid, n) != 0 and "ghost" not in cid)
    # the parked partition's: nothing from the stages that parked it (circulation
    # reads commands, not accepted: it parks nothing)
    for base in ("allocations", "withdrawals", "settlements", "payments"):
        on_parked = [r for r in pipeline.read(t.name(base))
                     if partition_of(json.loads(r)["certificate_id"], n) == 0]
        assert not on_parked, f"{base}: published for the parked partition"
    for service in FOLLOWERS:
        samples = scrape(ports[service])
        assert total(samples, "commission_partition_parked", partition="0") == 1, service
        assert total(samples, "commission_determinism_errors_total") == 1, service
        status, body = get(ports[service], "/readyz")
        assert status == 503 and list(body["parked"]) == ["0"], (service, body)
        assert "offset 0" in body["parked"]["0"]  # the first poison record stopped it
    assert get(ports["circulation"], "/readyz")[0] == 200
    pipeline.assert_running()
