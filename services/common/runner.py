"""The stage runner: consume, apply, and publish exactly once, with Kafka transactions.

Why not faust's ``processing_guarantee="exactly_once"``: in faust-streaming 0.15.3
its TransactionManager sends to a topic outside the app's topic groups without a
transactional id when the consumer has no metadata for it (so `payments` could
leave outside the transaction), and the aiokafka driver logs rather than raises
failed begin/commit calls (see ../shared/NOTES.md for the open issues). Money
cannot rest on that, so each stage runs this loop on aiokafka (faust's own driver).

For every batch of records from one input partition ``p``, in ONE transaction of
the producer whose transactional id is ``{group}-{p}``:

  1. apply each record to the certificate's state (the table row), in order;
  2. send the outputs, to partition ``p`` of every output topic (all topics are
     co-partitioned: same key, same partition count, so one certificate's messages
     stay in one partition everywhere and keep their order);
  3. send the new table rows to the compacted changelog topic, partition ``p``;
  4. send the input offset (last + 1) to the transaction for the consumer group;
  5. commit.

Either all of it becomes visible to ``read_committed`` readers or none of it does.
A crash anywhere before 5 aborts everything; the input is consumed again from the
committed offset, and the table is rebuilt from the committed changelog, so the
replay recomputes exactly what was lost. A rebalance moves partition ``p`` with its
transactional id: the new owner's ``init_transactions`` fences the old one (whose
commit then fails and whose open transaction is aborted) before it restores the
table. Any failure inside a batch stops the process (crash-only): the in-memory
table may be ahead of what was committed, and a restart is the one way back that
is always right.

Limits: at most ``MAX_BATCH_RECORDS`` records per transaction; a transaction stays
open no longer than one batch (``commit_interval_s`` bounds the wait for records).
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from typing import Protocol

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRebalanceListener, TopicPartition
from aiokafka.errors import KafkaConnectionError
from aiokafka.producer import sender as _aiokafka_sender
from aiokafka.structs import ConsumerRecord

from domain import CertificateState
from services.common.metrics import Metrics
from services.common.rows import RowStore
from services.common.settings import Settings
from services.common.topics import ensure_topics

log = logging.getLogger("commission.runner")

MAX_BATCH_RECORDS = 500
FETCH_MAX_WAIT_MS = 500
TXN_RETRY_BACKOFF_MS = 5
# The first AddPartitionsToTxn of a transaction that follows a commit on the same
# transactional id is answered CONCURRENT_TRANSACTIONS until the broker has written
# the previous commit's markers (a few ms), and aiokafka then waits a hard-coded
# 20 ms (KAFKA-5477), whatever retry_backoff_ms says. Each partition runs its
# transactions back to back, so that wait was in nearly every one: measured on an
# idle broker, 20 records + offsets + commit took p50 26.6 ms, 9.4 ms at 5 ms,
# 3.8 ms at 1 ms. tests/unit/services/test_runner_knobs.py checks the knob is there.
TXN_CONCURRENT_BACKOFF_MS = 2
_aiokafka_sender.BACKOFF_OVERRIDE = TXN_CONCURRENT_BACKOFF_MS / 1000
RESTORE_TIMEOUT_S = 120.0


@dataclass(frozen=True)
class Output:
    topic: str
    value: bytes
    headers: tuple[tuple[str, bytes], ...] = ()


@dataclass
class Applied:
    """What a stage made of one record."""

    state: CertificateState | None
    changed: bool
    outputs: list[Output]
    received_ms: int | None = None  # for end-to-end latency, when outputs were published


class Stage(Protocol):
    name: str

    def input_topic(self) -> str: ...

    def output_topics(self) -> list[str]: ...

    def apply(self, state: CertificateState | None, record: ConsumerRecord) -> Applied: ...


class TickingStage(Stage, Protocol):
    def due(self, now_ms: int) -> list[tuple[str, bytes, bytes, list]]:
        """Commands to send now: (topic, key, value, headers)."""


class Fatal(RuntimeError):
    """Stop the process: the table may be ahead of what is committed."""


class Table:
    """Certificate states of the partitions this worker owns, keyed by certificate id."""

    def __init__(self) -> None:
        self.partitions: dict[int, RowStore] = {}

    def __len__(self) -> int:
        return sum(len(store.rows) for store in self.partitions.values())


class StageRunner:
    def __init__(self, stage: Stage, settings: Settings, metrics: Metrics) -> None:
        self.stage = stage
        self.settings = settings
        self.metrics = metrics
        self.group = f"{settings.group_prefix}-{stage.name}"
        self.changelog = f"{settings.topics.prefix}{self.group}-state-changelog"
        self.table = Table()
        self.producers: dict[int, AIOKafkaProducer] = {}
        self.lock = asyncio.Lock()
        self.consumer: AIOKafkaConsumer | None = None
        self.plain_producer: AIOKafkaProducer | None = None
        self.assigned_event = asyncio.Event()
        self.last_loop_monotonic = time.monotonic()
        self.failure: BaseException | None = None  # from the rebalance listener
        self.assignments = 0  # rebalances so far: records fetched before one are stale

    # --- lifecycle ------------------------------------------------------------------

    async def run(self, stop: asyncio.Event) -> None:
        self.plain_producer = AIOKafkaProducer(
            bootstrap_servers=self.settings.bootstrap, acks="all", enable_idempotence=True,
            client_id=f"{self.group}-plain", **self.settings.kafka_auth.aiokafka())
        await self._connect(self.plain_producer)
        topics = [self.stage.input_topic(), *self.stage.output_topics()]
        ensure_topics(self.settings, topics, compacted=[self.changelog])
        self.consumer = AIOKafkaConsumer(
            bootstrap_servers=self.settings.bootstrap, group_id=self.group,
            enable_auto_commit=False, auto_offset_reset="earliest",
            isolation_level="read_committed", max_poll_records=MAX_BATCH_RECORDS,
            client_id=f"{self.group}-consumer",
            # a fetch waits at most this long for committed records: a latency floor
            fetch_max_wait_ms=FETCH_MAX_WAIT_MS,
            **self.settings.kafka_auth.aiokafka(),
        )
        await self.consumer.start()
        self.consumer.subscribe([self.stage.input_topic()], listener=_Listener(self))
        ticker = asyncio.create_task(self._tick_loop(stop)) if hasattr(self.stage, "due") else None
        try:
            while not stop.is_set():
                self.last_loop_monotonic = time.monotonic()
                batch, fetched_in = await self._next_batch()
                if self.failure is not None:
                    raise Fatal(f"taking over partitions failed: {self.failure}")
                if batch:
                    # Partitions are independent (own producer, own table partition,
                    # own transaction), so their transactions run concurrently; the
                    # records of one partition are still applied in order.
                    async with self.lock:
                        if fetched_in != self.assignments:
                            continue  # a rebalance came in between: see _next_batch
                        await asyncio.gather(*(self._process(tp, records)
                                               for tp, records in batch.items()))
                await self._update_gauges()
        finally:
            if ticker is not None:
                ticker.cancel()
            await self._shutdown()

    async def _connect(self, producer: AIOKafkaProducer) -> None:
        """The first connection, with a message that names what to check: aiokafka gives
        up at once on a refused login (kafka-python's admin client would retry for 30 s)."""
        auth = self.settings.kafka_auth
        try:
            await producer.start()
        except KafkaConnectionError as exc:
            login = f" as {auth.username} ({auth.sasl_mechanism})" if auth.sasl else ""
            raise Fatal(f"cannot connect to Kafka at {self.settings.bootstrap} over "
                        f"{auth.security_protocol}{login}: {exc}; check the address, the "
                        f"login and the broker's log") from exc

    async def _next_batch(self) -> tuple[dict[TopicPartition, list[ConsumerRecord]], int]:
        """Records for the next round of transactions: wait up to commit_interval_s
        for the first ones, then up to batch_linger_ms more to fill the batch. Fewer,
        fuller transactions cost the broker less: on a small machine that is what
        keeps latency low under load.

        Also returns the assignment they were fetched in. Records fetched before a
        rebalance must not be applied after it: the partition restarts from its
        committed offset, so they would be consumed twice, and a command refused the
        first time would be decided again against a later state (seen after a broker
        restart: one circulation accepted that the core refuses). Records fetched
        before the latest rebalance are dropped here, and the caller drops the batch
        if one comes in before it holds the lock; the consumer fetches them again."""
        consumer = self.consumer
        batch = await consumer.getmany(timeout_ms=int(self.settings.commit_interval_s * 1000),
                                       max_records=MAX_BATCH_RECORDS)
        fetched_in = self.assignments
        linger_s = self.settings.batch_linger_ms / 1000
        if not batch or linger_s <= 0:
            return batch, fetched_in
        deadline = time.monotonic() + linger_s
        count = sum(len(r) for r in batch.values())
        while count < MAX_BATCH_RECORDS:
            left_ms = int((deadline - time.monotonic()) * 1000)
            if left_ms <= 0:
                break
            more = await consumer.getmany(timeout_ms=left_ms,
                                          max_records=MAX_BATCH_RECORDS - count)
            if self.assignments != fetched_in:
                batch, fetched_in = {}, self.assignments
                count = 0
            for tp, records in more.items():
                batch.setdefault(tp, []).extend(records)
                count += len(records)
        return batch, fetched_in

    async def _shutdown(self) -> None:
        async with self.lock:
            if self.consumer is not None:
                await self.consumer.stop()
            for producer in self.producers.values():
                await producer.stop()
            self.producers.clear()
            if self.plain_producer is not None:
                await self.plain_producer.stop()

    # --- the transaction per batch ----------------------------------------------------

    async def _process(self, tp: TopicPartition, records: list[ConsumerRecord]) -> None:
        """One transaction for a batch of one partition. Called with self.lock held."""
        producer = self.producers.get(tp.partition)
        if producer is None:
            return  # revoked while fetched: the new owner processes these records
        p = tp.partition
        started = time.perf_counter()
        try:
            await producer.begin_transaction()
            store = self.table.partitions[p]
            touched: dict[bytes, CertificateState] = {}
            sends = []
            latencies = []
            step_seconds: list[float] = []
            for record in records:
                key = record.key
                step_started = time.perf_counter()
                applied = self.stage.apply(
                    None if key is None else store.rows.get(key), record)
                step_seconds.append(time.perf_counter() - step_started)
                if applied.changed and applied.state is not None:
                    store.rows[key] = applied.state
                    touched[key] = applied.state
                for out in applied.outputs:
                    sends.append(await producer.send(
                        out.topic, key=key, value=out.value, partition=p,
                        headers=list(out.headers) or None))
                if applied.outputs and applied.received_ms is not None:
                    latencies.append(applied.received_ms)
            for key, state in touched.items():
                # the row's head and only the segments that changed (services/common/rows.py)
                for row_key, value in store.changes(key, state):
                    sends.append(await producer.send(
                        self.changelog, key=row_key, value=value, partition=p))
            await asyncio.gather(*sends)
            await producer.send_offsets_to_transaction(
                {tp: records[-1].offset + 1}, self.group)
            await producer.commit_transaction()
        except Exception as exc:
            log.critical("transaction failed; stopping (a restart restores the table)",
                         extra={"topic": tp.topic, "partition": p,
                                "offset": records[0].offset}, exc_info=True)
            raise Fatal(str(exc)) from exc
        done = time.time()
        self.metrics.transaction.labels(self.stage.name).observe(
            time.perf_counter() - started)
        processing = self.metrics.processing.labels(self.stage.name)
        for seconds in step_seconds:
            processing.observe(seconds)
        for received_ms in latencies:
            self.metrics.end_to_end.labels(self.stage.name).observe(
                max(0.0, done - received_ms / 1000))
        for key, state in touched.items():
            self.on_row(p, key, state)

    def on_row(self, partition: int, key: bytes, state: CertificateState) -> None:
        hook = getattr(self.stage, "on_row", None)
        if hook is not None:
            hook(partition, key, state)

    async def _update_gauges(self) -> None:
        self.metrics.table_rows.labels(self.stage.name).set(len(self.table))
        consumer = self.consumer
        for tp in consumer.assignment():
            high = consumer.highwater(tp)  # includes transaction markers: lag >= 0, ~1 idle
            if high is not None:
                position = await consumer.position(tp)
                self.metrics.lag.labels(self.stage.name, tp.topic, str(tp.partition)).set(
                    max(0, high - position))

    # --- the timer (withdrawal) -------------------------------------------------------

    async def _tick_loop(self, stop: asyncio.Event) -> None:
        stage: TickingStage = self.stage  # type: ignore[assignment]
        while not stop.is_set():
            await asyncio.sleep(self.settings.timer_interval_s)
            async with self.lock:
                # Only the partitions this worker owns are in the table: one worker
                # acts on a certificate. A duplicate after a rebalance is harmless:
                # the command id is deterministic and the core applies it once.
                due = stage.due(int(time.time() * 1000))
                for topic, key, value, headers in due:
                    await self.plain_producer.send(topic, key=key, value=value, headers=headers)
                    self.metrics.timer_commands.labels(self.stage.name).inc()
            if due:
                await self.plain_producer.flush()

    # --- rebalances -------------------------------------------------------------------

    async def revoke(self, revoked: set[TopicPartition]) -> None:
        async with self.lock:
            self.assignments += 1
            for tp in revoked:
                producer = self.producers.pop(tp.partition, None)
                if producer is not None:
                    await producer.stop()
                self.table.partitions.pop(tp.partition, None)
                try:
                    self.metrics.lag.remove(self.stage.name, tp.topic, str(tp.partition))
                except KeyError:
                    pass  # never measured
                forget = getattr(self.stage, "forget_partition", None)
                if forget is not None:
                    forget(tp.partition)

    async def assign(self, assigned: set[TopicPartition]) -> None:
        async with self.lock:
            self.assignments += 1
            fresh = sorted(tp.partition for tp in assigned if tp.partition not in self.producers)
            for p in fresh:
                # Starting the producer runs init_transactions: it fences any previous
                # owner of this partition and aborts its open transaction, so the
                # changelog read below ends at a committed state.
                producer = AIOKafkaProducer(
                    bootstrap_servers=self.settings.bootstrap,
                    transactional_id=f"{self.group}-{p}", enable_idempotence=True, acks="all",
                    client_id=f"{self.group}-{p}",
                    # the broker answers CONCURRENT_TRANSACTIONS while the previous
                    # commit's markers are written; retry soon, not after 100 ms
                    retry_backoff_ms=TXN_RETRY_BACKOFF_MS, **self.settings.kafka_auth.aiokafka())
                await producer.start()
                self.producers[p] = producer
            if fresh:
                await self._restore(fresh)
            self.assigned_event.set()

    async def _restore(self, partitions: list[int]) -> None:
        started = time.monotonic()
        reader = AIOKafkaConsumer(bootstrap_servers=self.settings.bootstrap,
                                  enable_auto_commit=False, isolation_level="read_committed",
                                  client_id=f"{self.group}-restore",
                                  **self.settings.kafka_auth.aiokafka())
        await reader.start()
        try:
            tps = [TopicPartition(self.changelog, p) for p in partitions]
            reader.assign(tps)
            await reader.seek_to_beginning(*tps)
            end = await reader.end_offsets(tps)
            records: dict[int, dict[bytes, bytes | None]] = {p: {} for p in partitions}
            remaining = {tp for tp in tps if end[tp] > 0}
            while remaining:
                if time.monotonic() - started > RESTORE_TIMEOUT_S:
                    raise Fatal(f"restoring {self.changelog} took over {RESTORE_TIMEOUT_S}s")
                batch = await reader.getmany(timeout_ms=500, max_records=5000)
                for tp, fetched in batch.items():
                    last = records[tp.partition]
                    for record in fetched:
                        last[record.key] = record.value
                for tp in list(remaining):
                    if await reader.position(tp) >= end[tp]:
                        remaining.discard(tp)
        finally:
            await reader.stop()
        for p in partitions:
            store = RowStore()
            store.restore({k: v for k, v in records[p].items() if v is not None})
            self.table.partitions[p] = store
            for key, state in store.rows.items():
                self.on_row(p, key, state)
        log.info(f"restored {sum(len(self.table.partitions[p].rows) for p in partitions)} rows "
                 f"of partitions {partitions} in {time.monotonic() - started:.2f}s")


class _Listener(ConsumerRebalanceListener):
    def __init__(self, runner: StageRunner) -> None:
        self.runner = runner

    async def on_partitions_revoked(self, revoked):
        await self.runner.revoke(set(revoked))

    async def on_partitions_assigned(self, assigned):
        # aiokafka logs and swallows a listener's exception; keep it for the loop to
        # raise, so that a worker whose table could not be restored stops
        try:
            await self.runner.assign(set(assigned))
        except Exception as exc:
            log.critical("taking over partitions failed", exc_info=True)
            self.runner.failure = exc
