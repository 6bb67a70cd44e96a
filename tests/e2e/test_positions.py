"""Where a stage resumes is the position committed with its table, never the group's
offset alone (issue #15's reproduction).

One partition; a circulation is refused (``not_posted``) before the certificate is
posted. With the stage stopped, its group's offset is moved back before the refused
command, or deleted: on restart the stage resumes at its table's position, so the
refused command is not decided again (against a posted certificate it would be
accepted: an extra hop, paid). A group offset *ahead* of the table stops the stage
with a clear error instead of skipping records.
"""

from __future__ import annotations

import signal
import time
from collections import Counter

import msgspec
import pytest
from confluent_kafka import (
    ConsumerGroupTopicPartitions,
    KafkaError,
    KafkaException,
    TopicPartition,
)
from confluent_kafka.admin import AdminClient

from schemas import commands as c
from schemas.commands import AcceptedCommand
from schemas.rejections import Rejection
from tests.e2e.certificates import cert_id, setup
from tests.e2e.pipeline import Pipeline

decode_rejection = msgspec.json.Decoder(Rejection).decode
decode_accepted = msgspec.json.Decoder(AcceptedCommand).decode


@pytest.fixture
def one_partition(stack, names, tmp_path):
    p = Pipeline(stack.bootstrap, names.prefix, tmp_path / "logs", partitions=1)
    try:
        yield p
    finally:
        p.stop_all()
        p.sender.close()


def first_steps(pipeline: Pipeline) -> str:
    """Issue, attach, confirm, a circulation refused as not posted, post."""
    cid = cert_id("positions")
    t = int(time.time() * 1000)
    issue, attach, confirm, post = setup(cid, t, price_minor=5_000, budget_minor=1_000,
                                         attached_minor=100)
    early = c.Circulate(command_id="early", certificate_id=cid, at_ms=t, account_id="ann")
    pipeline.start("circulation")
    pipeline.send(issue, attach, confirm, early, post)
    pipeline.wait_for(pipeline.topics.accepted, 4)
    [refused] = [decode_rejection(r) for r in pipeline.wait_for(pipeline.topics.rejections, 1)]
    assert (refused.command_id, refused.reason.value) == ("early", "not_posted")
    pipeline.signal("circulation", sig=signal.SIGTERM)
    return cid


def admin(pipeline: Pipeline) -> AdminClient:
    return AdminClient({"bootstrap.servers": pipeline.settings.bootstrap})


def group(pipeline: Pipeline) -> str:
    return f"{pipeline.settings.group_prefix}-circulation"


def when_the_group_is_empty(call) -> None:
    """A stopped worker is a static member (group.instance.id) until its session
    times out (10 s): the group is not empty before, as an operator would see."""
    deadline = time.monotonic() + 60
    while True:
        try:
            for future in call().values():
                result = future.result(30)
                for tp in getattr(result, "topic_partitions", None) or []:
                    if tp.error is not None:
                        raise KafkaException(tp.error)
            return
        except KafkaException as exc:
            busy = (KafkaError.NON_EMPTY_GROUP, KafkaError.UNKNOWN_MEMBER_ID)
            if exc.args[0].code() not in busy or time.monotonic() > deadline:
                raise
            time.sleep(1)


def move_offset(pipeline: Pipeline, offset: int) -> None:
    request = ConsumerGroupTopicPartitions(
        group(pipeline), [TopicPartition(pipeline.topics.commands, 0, offset)])
    client = admin(pipeline)  # kept alive until the futures resolve
    when_the_group_is_empty(lambda: client.alter_consumer_group_offsets([request]))


def delete_group(pipeline: Pipeline) -> None:
    client = admin(pipeline)
    when_the_group_is_empty(lambda: client.delete_consumer_groups([group(pipeline)]))


def verdicts(pipeline: Pipeline, accepted: int) -> tuple[Counter, Counter]:
    t = pipeline.topics
    got = Counter(decode_accepted(r).command.command_id
                  for r in pipeline.wait_for(t.accepted, accepted))
    refused = Counter((r.command_id, r.reason.value)
                      for r in map(decode_rejection, pipeline.read(t.rejections)))
    return got, refused


@pytest.mark.parametrize("tamper", ["moved_back", "deleted"])
def test_a_stage_resumes_at_its_tables_position_not_the_groups_offset(one_partition, tamper):
    pipeline = one_partition
    cid = first_steps(pipeline)
    if tamper == "moved_back":
        move_offset(pipeline, 3)  # the refused circulation is at offset 3
    else:
        delete_group(pipeline)
    pipeline.start("circulation")
    late = c.Circulate(command_id="late", certificate_id=cid, at_ms=int(time.time() * 1000),
                       account_id="bob")
    pipeline.send(late)
    accepted, refused = verdicts(pipeline, 5)
    time.sleep(2)  # anything decided twice would have come out by now
    accepted, refused = verdicts(pipeline, 5)
    assert accepted == Counter({f"{cid}-issue": 1, f"{cid}-attach": 1, f"{cid}-confirm": 1,
                                f"{cid}-post": 1, "late": 1})
    assert refused == Counter({("early", "not_posted"): 1})
    pipeline.assert_running()


def test_a_group_offset_ahead_of_the_table_stops_the_stage(one_partition):
    pipeline = one_partition
    cid = first_steps(pipeline)
    t = int(time.time() * 1000)
    pipeline.send(c.Circulate(command_id="unseen", certificate_id=cid, at_ms=t,
                              account_id="cat"))
    move_offset(pipeline, 6)  # past "unseen" (offset 5), which the table never applied
    proc = pipeline.start("circulation")
    assert proc.wait(60) == 75
    log = (pipeline.logs / "circulation-0.log").read_text()
    assert "ahead of the table's position 5" in log
    # nothing was skipped or published
    accepted, refused = verdicts(pipeline, 4)
    assert "unseen" not in accepted and sum(accepted.values()) == 4
