"""faust's Kafka consumer, reading only committed records.

faust consumes with ``read_uncommitted`` unless ``processing_guarantee`` is
``exactly_once`` (``_create_worker_consumer`` in faust's aiokafka driver), and that
mode does transactions of its own that the read model does not need (and hangs on
shutdown here: "Not in the middle of a transaction"). Reading uncommitted
``accepted`` records is not safe for a projection: a record of an aborted
transaction is produced again only if the circulation service, reprocessing the
same command from its committed state, decides the same way. That fails when the
key that signed the command was removed, or the rules changed with a deploy,
between the two attempts: the page would show a circulation that never happened,
and the next command of that certificate would stop the read model on a sequence
mismatch. tests/e2e/test_readmodel.py checks that an aborted record is not projected.

The one change: the worker consumer is built as faust builds it in exactly-once
mode (``read_committed``), everything else (commits, lag, highwaters) stays in
at-least-once mode. faust decides the isolation level from the consumer's
``in_transaction`` flag while it builds the aiokafka consumer, so the flag is set for
that call only.
"""

from __future__ import annotations

from typing import Any

import faust
from faust.transport.drivers import aiokafka as faust_aiokafka


class _ConsumerThread(faust_aiokafka.AIOKafkaConsumerThread):
    def _create_worker_consumer(self, transport: Any) -> Any:
        flag = self.consumer.in_transaction
        self.consumer.in_transaction = True
        try:
            return super()._create_worker_consumer(transport)
        finally:
            self.consumer.in_transaction = flag


class _Consumer(faust_aiokafka.Consumer):
    def _new_consumer_thread(self) -> _ConsumerThread:
        return _ConsumerThread(self, loop=self.loop, beacon=self.beacon)


class _Transport(faust_aiokafka.Transport):
    Consumer = _Consumer


class CommittedApp(faust.App):
    """A faust app whose agents see only records of committed transactions."""

    def _new_transport(self) -> Any:
        return _Transport(self.conf.broker_consumer, self)
