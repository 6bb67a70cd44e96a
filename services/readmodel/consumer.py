"""The read model's loop: one consumer reads ``accepted``, ``rejections`` and
``payments`` (only committed records) and projects each batch it gets in one Redis
round trip (services/readmodel/store.py). Two batches overlap: while Redis runs one batch's
script (and its fsync), the next is fetched and planned on the states that script
will leave (store.plan); it is sent once the one before is answered, and dropped
(with a seek back to the positions in Redis) if that one was not written. A batch is
whatever the consumer holds at that moment, up to MAX_RECORDS: small when the read
model keeps up (low latency), large when it has fallen behind (each certificate's
page and state written once for more commands).

``payments`` (the netting stage's output) is read for one fact the certificates'
commands do not carry: what each commission payout paid net of the payee's
clawbacks (gross, offset, net), for the sharer's earnings (issue #24). Its records
are keyed by certificate but written under the payee's account
(projection.project_payment); a payout's amounts are the same at every attempt, so
the write is idempotent and needs no sequence guard, and its partitions' positions
are stored with the rest, in the same script.

Where it resumes: each partition's next offset is stored in Redis by the same script
that writes the batch's projections, so a SIGKILL at any moment leaves Redis with
projections and positions that agree, and a restart re-reads nothing projected
already. When a partition is assigned, the consumer seeks to that position; with none
(Redis is new, flushed or lost its data) it starts at the partition's beginning: the
rebuild. The group's committed offset is sent after the batches (at most once a
second under load, and whenever the consumer runs out of records) for lag and tools;
it never decides where to resume (Redis may have lost the last second of writes that
the group had committed already).
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import time

import msgspec
from aiokafka import AIOKafkaConsumer, ConsumerRebalanceListener, TopicPartition
from aiokafka.errors import CommitFailedError, KafkaError
from prometheus_client import Counter, Histogram

from schemas.commands import AcceptedCommand
from schemas.payments import Settlement
from schemas.rejections import Rejection
from services.common.metrics import ReadModelMetrics
from services.common.settings import Settings
from services.readmodel.progress import Progress
from services.readmodel.store import Behind, ReadModelStore, StalePlan

log = logging.getLogger("commission.readmodel")
_decode = msgspec.json.Decoder(AcceptedCommand).decode
_decode_rejection = msgspec.json.Decoder(Rejection).decode
_decode_settlement = msgspec.json.Decoder(Settlement).decode
# a batch: at most this many records (tests make it smaller, for a rebuild in many
# batches); flat out a batch of 2,000 writes each certificate's state and page once
# for the ~150 certificates in it (store.py), so bigger batches cost less a record
MAX_RECORDS = int(os.environ.get("COMMISSION_READMODEL_MAX_RECORDS", "2000"))
# how long the broker may hold a fetch with nothing new under the last stable offset
FETCH_WAIT_MS = int(os.environ.get("COMMISSION_READMODEL_FETCH_WAIT_MS", "500"))
COMMIT_EVERY_S = 1.0


class Projector(ConsumerRebalanceListener):
    def __init__(self, settings: Settings, store: ReadModelStore, metrics: ReadModelMetrics,
                 group: str, kill_after: int = 0) -> None:
        self.settings = settings
        self.store = store
        self.metrics = metrics
        self.group = group
        self.accepted = settings.topics.accepted
        self.payments = settings.topics.payments
        self.topics = (settings.topics.accepted, settings.topics.rejections, self.payments)
        self.consumer: AIOKafkaConsumer | None = None
        self.rebalancing = True  # until the first assignment
        self.kill_after = kill_after  # tests: SIGKILL after the batch reaching this many
        self.projected = 0
        self.pending: dict[TopicPartition, int] = {}  # projected, not committed to the group
        self.committed: dict[TopicPartition, int] = {}
        self.at: dict[TopicPartition, int] = {}  # where the projections stand
        self.progress = Progress(metrics.registry)
        for outcome in ("projected", "skipped"):  # both series exist from the start, at 0
            metrics.commands.labels(outcome)
        self.last_commit = time.monotonic()
        self.inflight: asyncio.Future | None = None  # the batch whose script runs
        # its refusals, positions and records of ``payments``
        self.inflight_batch: tuple[int, dict, int] = (0, {}, 0)
        # where a batch's time goes (docs/benchmarks.md): its size, Redis's answer to
        # its script (the run and the fsync), and how long the loop waited for that
        self.batch_records = Histogram(
            "commission_readmodel_batch_records", "Records in each batch projected.",
            buckets=(1, 10, 50, 100, 250, 500, 1000, 2000), registry=metrics.registry)
        self.script_seconds = Histogram(
            "commission_readmodel_script_seconds", "From sending a batch's script to "
            "Redis's answer (the script and its fsync).",
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0), registry=metrics.registry)
        self.waited = Counter(
            "commission_readmodel_redis_wait_seconds", "Time the loop waited for Redis's "
            "answer to a batch with nothing else to do (the next batch planned, or none).",
            registry=metrics.registry)

    # --- the group ---------------------------------------------------------------------
    async def on_partitions_revoked(self, revoked) -> None:
        self.rebalancing = True
        await self.commit()  # best effort: lag figures; Redis holds the positions

    async def on_partitions_assigned(self, assigned) -> None:
        await self.seek_to_stored(list(assigned))
        self.rebalancing = False

    async def seek_to_stored(self, tps: list[TopicPartition]) -> None:
        """Seek each partition to the position stored in Redis; none: its beginning."""
        consumer = self.consumer
        assert consumer is not None
        self.store.forget()
        self.pending = {tp: o for tp, o in self.pending.items() if tp not in tps}
        stored = await self.store.positions([(tp.topic, tp.partition) for tp in tps])
        fresh = []
        for tp in tps:
            offset = stored[(tp.topic, tp.partition)]
            if offset is None:
                fresh.append(tp)
            else:
                consumer.seek(tp, offset)
        for tp in tps:
            if stored[(tp.topic, tp.partition)] is not None:
                self.at[tp] = stored[(tp.topic, tp.partition)]
        if fresh:
            await consumer.seek_to_beginning(*fresh)
            self.at.update(await consumer.beginning_offsets(fresh))
            self.progress.rebuild(len(fresh))
        log.info("resuming from the positions in Redis",
                 extra={"positions": {f"{tp.topic}:{tp.partition}":
                                      stored[(tp.topic, tp.partition)] for tp in tps}})

    async def commit(self) -> None:
        consumer = self.consumer
        if consumer is None or not self.pending:
            return
        assigned = consumer.assignment()
        offsets = {tp: o for tp, o in self.pending.items() if tp in assigned}
        self.pending = {}
        self.last_commit = time.monotonic()
        if not offsets:
            return
        try:
            await consumer.commit(offsets)
        except (CommitFailedError, KafkaError) as exc:  # a rebalance: the next one will do
            log.info("group offsets not committed", extra={"error": repr(exc)})
        else:
            self.committed.update(offsets)

    # --- the loop ----------------------------------------------------------------------
    async def run(self) -> None:
        s = self.settings
        self.consumer = consumer = AIOKafkaConsumer(
            bootstrap_servers=s.bootstrap, group_id=self.group,
            # a restarted worker (same slot) takes its partitions back without waiting
            # for the killed one's session to time out
            group_instance_id=f"{self.group}-{s.instance}",
            enable_auto_commit=False, isolation_level="read_committed",
            auto_offset_reset="earliest", session_timeout_ms=10_000,
            heartbeat_interval_ms=3_000, max_poll_records=MAX_RECORDS,
            fetch_max_wait_ms=FETCH_WAIT_MS,
            client_id=f"{self.group}-{s.instance}", **s.kafka_auth.aiokafka())
        consumer.subscribe(list(self.topics), listener=self)
        await consumer.start()
        try:
            while True:
                # while a batch's script runs in Redis, the next batch is fetched and
                # planned (Python's work overlaps Redis's script and fsync); a batch is
                # what the consumer holds, never waited for to fill
                batch = await consumer.getmany(timeout_ms=0 if self.inflight else 500,
                                               max_records=MAX_RECORDS)
                if batch:
                    await self.project(batch)
                    if time.monotonic() - self.last_commit >= COMMIT_EVERY_S:
                        await self.commit()
                elif self.inflight is not None:
                    await self.settle()
                else:
                    await self.commit_positions()
                await self.report()
        finally:
            if self.inflight is not None:
                await self.settle()
            await self.commit()
            await consumer.stop()

    async def commit_positions(self) -> None:
        """Out of records: commit the consumer's positions (past the transaction
        markers after the last record, so committed offsets meet the end offsets)."""
        consumer = self.consumer
        assert consumer is not None
        if self.rebalancing:
            return
        for tp in consumer.assignment():
            try:
                position = await consumer.position(tp)
            except KafkaError:
                continue
            self.at[tp] = position
            if position != self.committed.get(tp):
                self.pending[tp] = position
        await self.commit()

    async def report(self) -> None:
        """Progress: records behind the partitions' ends, in the log, the metrics and
        Redis (for the pages)."""
        consumer = self.consumer
        assert consumer is not None
        behind, known = 0, True
        for tp in consumer.assignment():
            end = consumer.last_stable_offset(tp)  # None until its first fetch
            at = self.at.get(tp)
            if end is None or at is None:
                known = False
            else:
                behind += max(0, end - at)
        update = self.progress.tick(behind, known)
        if update is not None:
            try:
                await self.store.publish_progress(update)
            except Exception:  # the pages lose a hint, not a projection
                log.info("progress not written to Redis", exc_info=True)

    async def project(self, batch) -> None:
        """Plan ``batch`` while the previous one's script runs, then wait for that one
        and send this one's."""
        accepted, rejections, payments, positions = [], [], [], {}
        for tp, records in batch.items():
            if not records:
                continue
            if tp.topic == self.accepted:
                accepted += [(_decode(r.value), r.timestamp) for r in records]
            elif tp.topic == self.payments:
                payments += [_decode_settlement(r.value) for r in records]
            else:
                rejections += [_decode_rejection(r.value) for r in records]
            positions[(tp.topic, tp.partition)] = records[-1].offset + 1
        try:
            plan = await self.store.plan(accepted, rejections, positions, payments)
        except (Behind, StalePlan) as exc:
            if self.inflight is not None:
                await self.settle()
            await self.behind(exc)
            return
        if self.inflight is not None and not await self.settle():
            return  # the batch before failed and the consumer sought back: drop this one
        self.inflight = asyncio.ensure_future(self.timed(plan))
        self.inflight_batch = (len(rejections), positions, len(payments))
        self.batch_records.observe(len(accepted) + len(rejections) + len(payments))

    async def timed(self, plan):
        started = time.perf_counter()
        try:
            return await self.store.execute(plan)
        finally:
            self.script_seconds.observe(time.perf_counter() - started)

    async def behind(self, exc: Exception) -> None:
        log.warning("Redis is behind this worker (%s): resuming from its positions", exc,
                    extra={"error": str(exc)})
        await self.seek_to_stored(list(self.consumer.assignment()))

    async def settle(self) -> bool:
        """Wait for the batch in Redis, then count it; False when it was not written
        (Redis behind: the consumer seeks back to the positions in Redis)."""
        task, self.inflight = self.inflight, None
        assert task is not None
        rejected, positions, payouts = self.inflight_batch
        started = time.perf_counter()
        try:
            done = await task
        except (Behind, StalePlan) as exc:
            await self.behind(exc)
            return False
        except Exception:
            # a batch that cannot be projected stops the worker, so that it is read
            # again, rather than being passed over
            log.critical("projection failed; stopping", exc_info=True)
            os._exit(75)
        self.waited.inc(time.perf_counter() - started)
        m = self.metrics
        now = time.time()
        m.commands.labels("projected").inc(len(done.accepted_ms))
        if done.skipped:
            m.commands.labels("skipped").inc(done.skipped)
        if rejected:
            m.rejections.inc(rejected)
        observe = m.trail.observe
        for ms in done.accepted_ms:
            observe(max(0.0, now - ms / 1000))
        for (topic, partition), offset in positions.items():
            self.pending[TopicPartition(topic, partition)] = offset
            tp = TopicPartition(topic, partition)
            try:  # past a transaction marker after the last record, once fetched
                self.at[tp] = max(offset, await self.consumer.position(tp))
            except Exception:  # revoked meanwhile: what the batch says
                self.at[tp] = offset
        self.progress.projected(len(done.accepted_ms) + rejected + payouts)
        self.projected += len(done.accepted_ms)
        if self.kill_after and self.projected >= self.kill_after:
            # tests: the batch is in Redis, its offsets are not committed to the group;
            # where a rebuild stands is (what the pages show of one cut short)
            self.progress.due = True
            await self.report()
            os.kill(os.getpid(), signal.SIGKILL)
        await asyncio.sleep(0)  # let the web server answer between batches
        return True
