"""Why the money services do not run on faust's exactly-once mode, as a test.

docs/architecture.md gives the reason from faust-streaming's source: in
``processing_guarantee="exactly_once"`` its TransactionManager derives the
transactional id from the *destination* topic's group, which only topics the app
consumes have, so a record for a topic it only writes (``payments``) leaves outside
any transaction. Here, on the real broker: such records are readable with
read_committed before the worker committed anything, and after a SIGKILL the input
is processed again and every record is published a second time. Our runner
(services/common/runner.py) makes the same kill a no-op (tests/e2e/test_crash.py).

If a faust release makes this test fail, its exactly-once mode deserves another
look; the kill test decides.
"""

from __future__ import annotations

import signal
import subprocess
import sys
from collections import Counter
from pathlib import Path

from kafka import KafkaProducer

from tests.integration.kafka_helpers import RESTARTED_WITHIN_S, create_topics, read_all

ROOT = Path(__file__).resolve().parents[2]


def test_faust_exactly_once_publishes_outside_the_transaction(stack, names, tmp_path):
    src, out = names.topic("src"), names.topic("out")
    create_topics(stack.bootstrap, [src, out], partitions=1)
    sent = [f"m{i}".encode() for i in range(5)]
    producer = KafkaProducer(bootstrap_servers=stack.bootstrap, acks="all")
    for value in sent:
        producer.send(src, value=value)
    producer.flush()
    producer.close()

    def worker(n: int) -> subprocess.Popen:
        return subprocess.Popen(
            [sys.executable, "-m", "tests.integration.faust_eos_probe", stack.bootstrap, src,
             out, names.group("eos"), str(tmp_path / f"data-{n}")],
            cwd=ROOT, stdout=(tmp_path / f"worker-{n}.log").open("wb"),
            stderr=subprocess.STDOUT)

    first = worker(1)
    try:
        # the commit interval is 120 s: nothing was committed when these are read
        seen = read_all(stack.bootstrap, out, expect=len(sent), timeout_s=90)
        assert [r.value for r in seen] == sent, "not published outside a transaction"
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait(timeout=30)

    second = worker(2)
    try:
        again = read_all(stack.bootstrap, out, expect=2 * len(sent),
                         timeout_s=RESTARTED_WITHIN_S)
        assert Counter(r.value for r in again) == {value: 2 for value in sent}
    finally:
        second.send_signal(signal.SIGKILL)  # its SIGTERM path can hang in this mode
        second.wait(timeout=30)
