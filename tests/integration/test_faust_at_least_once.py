"""Why a stage cannot be a faust agent with a faust table in at-least-once mode, as a
test: the issue's first sketch (dedupe by a sequence number kept in the table row)
is not enough on its own, whichever write comes first.

The agent's output and its table write (the changelog record) are two separate
sends, and the input offset is committed later still. A SIGKILL between the two:

- output first: the restarted worker finds the table without the record, applies it
  again and publishes the output a second time (a settlement paid twice);
- table first: the restarted worker finds the record applied and skips it, so its
  output is never published (a settlement lost).

faust's exactly-once mode does not close the gap for a stage that writes a topic it
does not consume (test_faust_exactly_once.py). Our runner puts the outputs, the
changelog rows and the input offsets in one Kafka transaction
(services/common/runner.py); tests/e2e/test_crash.py kills it at random moments.
"""

from __future__ import annotations

import signal
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
from kafka import KafkaProducer

from tests.integration.faust_table_probe import STEP_S
from tests.integration.kafka_helpers import RESTARTED_WITHIN_S, create_topics, read_all

ROOT = Path(__file__).resolve().parents[2]
SENT = ["c1:1", "c1:2"]


def _setup(stack, names, order):
    src, out = names.topic("src"), names.topic("out")
    group = names.group(order)
    # the table's changelog too, so that a reader can wait on it before faust starts
    create_topics(stack.bootstrap, [src, out, f"{group}-applied-changelog"], partitions=1)
    producer = KafkaProducer(bootstrap_servers=stack.bootstrap, acks="all")
    for value in SENT:
        producer.send(src, key=b"c1", value=value.encode())
    producer.flush()
    producer.close()
    return src, out, group


def _worker(stack, tmp_path, src, out, group, order, n, step_s=STEP_S) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "tests.integration.faust_table_probe", stack.bootstrap, src,
         out, group, str(tmp_path / f"data-{n}"), order, str(step_s)],
        cwd=ROOT, stdout=(tmp_path / f"worker-{n}.log").open("wb"), stderr=subprocess.STDOUT)


def _kill(process: subprocess.Popen) -> None:
    process.send_signal(signal.SIGKILL)
    process.wait(timeout=30)


@pytest.mark.parametrize("order", ["send-first", "table-first"])
def test_faust_table_dedupe_is_not_exactly_once(stack, names, tmp_path, order):
    src, out, group = _setup(stack, names, order)
    # what the worker wrote first for the first record is the sign that the kill
    # lands between its two writes (the agent then waits STEP_S before the second)
    first_write = out if order == "send-first" else f"{group}-applied-changelog"
    first = _worker(stack, tmp_path, src, out, group, order, 1)
    try:
        seen = read_all(stack.bootstrap, first_write, expect=1, timeout_s=90,
                        isolation_level="read_uncommitted", idle_s=0.2)
        assert len(seen) == 1, f"the first worker wrote nothing to {first_write}"
    finally:
        _kill(first)
    # in the window: the first record's first write is there and nothing after it
    # (a kill that came late would leave the second record's table write too, with
    # the first output still in the dead worker's buffer: then the checks below
    # would fail for the wrong reason)
    assert len(read_all(stack.bootstrap, first_write, expect=1, idle_s=0.5,
                        isolation_level="read_uncommitted")) == 1, "the kill missed the window"
    assert [r.value.decode() for r in read_all(stack.bootstrap, out, expect=0, idle_s=0.5)] \
        == (SENT[:1] if order == "send-first" else []), "the kill missed the window"

    # the second worker is not killed: it needs no window between its two writes
    second = _worker(stack, tmp_path, src, out, group, order, 2, step_s=0)
    try:
        if order == "send-first":
            again = read_all(stack.bootstrap, out, expect=len(SENT) + 1,
                             timeout_s=RESTARTED_WITHIN_S)
            assert Counter(r.value.decode() for r in again) == {"c1:1": 2, "c1:2": 1}
        else:
            # the last record's output comes after the first one's would have
            after = read_all(stack.bootstrap, out, expect=len(SENT) - 1,
                             timeout_s=RESTARTED_WITHIN_S)
            assert [r.value.decode() for r in after] == ["c1:2"]
    finally:
        _kill(second)
