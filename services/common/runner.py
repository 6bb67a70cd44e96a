"""The stage runner: consume, apply and publish exactly once, in Kafka transactions.

One transactional producer per worker process (``{group}-{instance}``) and one
consumer in the stage's group, both librdkafka (confluent-kafka). A round is:

  1. fetch up to ``MAX_BATCH_RECORDS`` records of the partitions this worker owns
     (the first that arrives, every one already fetched, a short linger);
  2. apply them, in order per partition, to the table (rows keyed by certificate
     id, one store per partition), collecting the outputs; while nothing was
     published yet, fetch and apply more, for up to ``commit_interval_s``; and
     until ``commit_spacing_ms`` after the previous commit (0 by default);
  3. in ONE transaction: the outputs (to the same partition of every output topic:
     all topics are co-partitioned, so a certificate's messages keep their order),
     the changed rows and the *position* of every partition of the round (input
     topic, partition, next offset; also when every record was refused) to the
     compacted changelog, and the input offsets with the consumer's group metadata
     (KIP-447);
  4. commit.

Why the position is in the changelog (eventsourcing's tracking records): the table
and the place to resume from must come from the same committed transaction. The
group's committed offset is still sent, for lag and tools, but never decides where a
worker resumes: a worker that takes a partition over first waits until no
transaction of the previous owner is pending on it (``committed()`` with
require_stable, which librdkafka sends in read_committed mode), then restores rows
and position together from the changelog (read_committed) and starts there. Records
below the position are skipped and counted. docs/architecture.md lists every way the
two could disagree and why none can now.

Zombies are fenced by the group generation: a worker that lost its partitions
cannot add offsets to a transaction, so its transaction aborts, outputs and rows
with it. A worker restarted under the same instance id aborts what its predecessor
left open at init_transactions.

Crash-only: any failure of a transaction stops the process (exit 75); the in-memory
table may be ahead of what was committed, and a restart restores it. A record that
fails the same way on every attempt (a determinism error, an undecodable accepted
record, any error a record raises in a stage) does not stop the worker: its
partition is *parked* (paused, counted, logged, shown in readiness and an alert) and
the other partitions keep running. (The sequencer turns whatever raw input it cannot
read into a rejection first: services/circulation/intake.py.)

Limits: ``MAX_BATCH_RECORDS`` records per fetch, ``MAX_ROUND_RECORDS`` per round; a
transaction stays open no longer than one round; ``TXN_TIMEOUT_MS`` bounds how long a
vanished worker's open transaction can hold back read_committed readers.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from dataclasses import dataclass, field

import msgspec
from confluent_kafka import (
    OFFSET_BEGINNING,
    Consumer,
    KafkaError,
    KafkaException,
    Message,
    Producer,
    TopicPartition,
)

from services.common.faults import Faults
from services.common.metrics import Metrics, observe_many
from services.common.rows import POSITION_KEY, RowStore
from services.common.settings import Settings
from services.common.stage import Stage
from services.common.topics import PRODUCER_BATCH_BYTES, ensure_topics

log = logging.getLogger("commission.runner")
_librdkafka_log = logging.getLogger("librdkafka")

MAX_BATCH_RECORDS = 2_000  # per fetch
# per round: a round that accumulates (no outputs yet, or commit spacing) commits at
# this many records at the latest, to bound the transaction and what a kill loses
MAX_ROUND_RECORDS = 10_000
# A vanished worker's open transaction holds back read_committed readers (the next
# stage, the restore of its partitions) until the coordinator aborts it.
TXN_TIMEOUT_MS = 10_000
# The longest gap between a stage's attempts to reach a broker that went away.
# librdkafka's default grows to 10 s: after a single broker came back, the stages of
# tests/e2e/test_faults.py's broker restarts sat idle for it (one run: 82 s for a
# test that took 33 s with 1 s). With 1 s, every client of every stage tried the
# brokers that were down every second, and in one run the short-replicas test's probe
# write to the one broker left of a cluster timed out (-192) instead of being refused
# NOT_ENOUGH_REPLICAS (it passed with 3 s and with the default). Single runs on a
# noisy machine: 3 s is a middle, not a measured optimum.
RECONNECT_MAX_MS = 3_000
INIT_TIMEOUT_S = 60.0
# A restore that makes no progress for this long stops the worker (the broker is
# gone); a long restore that progresses is fine, and reports as it goes.
RESTORE_STALL_S = 60.0
RESTORE_REPORT_S = 5.0
GAUGES_INTERVAL_S = 1.0
# A transaction step (init, sending the offsets, commit, abort) that cannot complete
# returns after this long with a retriable timeout, and is called again to resume:
# meanwhile the worker shows it is blocked (_Blocked) instead of hanging unseen.
STEP_WAIT_S = 5.0
BLOCKED_REPORT_S = 10.0
# A step whose call has not returned this long after its own timeout is hung inside
# librdkafka: send_offsets_to_transaction ignores its timeout and never returns when
# the group coordinator's broker died and left the metadata (librdkafka issues
# #5456 and #5511, open in 2.12; seen in tests/e2e/test_cluster.py). The watchdog
# ends the process (exit 75, crash-only: the open transaction commits nothing, and
# the restarted worker's init_transactions aborts it).
STEP_HANG_S = 6.0
EXIT_RESTART = 75
# a producer failing with these was fenced: by another holder of its transactional
# id, or by the coordinator aborting a transaction open past its timeout (_recoverable)
FENCED = (KafkaError._FENCED, KafkaError.PRODUCER_FENCED, KafkaError.INVALID_PRODUCER_EPOCH)


class Position(msgspec.Struct, array_like=True, frozen=True):
    """Where a partition's table stands in its input: the next offset to apply."""

    topic: str
    partition: int
    offset: int


_encode_position = msgspec.msgpack.Encoder().encode
_decode_position = msgspec.msgpack.Decoder(Position).decode


class Fatal(RuntimeError):
    """Stop the process: the table may be ahead of what is committed."""


class Poison(RuntimeError):
    """A record this stage cannot apply, the same way on every attempt."""


@dataclass
class Blocked:
    """A transaction step that keeps timing out: the cluster cannot take the write
    (fewer in-sync replicas than min.insync.replicas: NOT_ENOUGH_REPLICAS; no leader;
    no coordinator). Shown in /readyz, the log and ``commission_commit_blocked``."""

    step: str
    since: float  # time.monotonic()
    reason: str
    reported: float = 0.0

    def info(self) -> dict:
        return {"step": self.step, "seconds": round(time.monotonic() - self.since, 1),
                "reason": self.reason}


@dataclass
class Partition:
    """One owned input partition: its rows and where it stands."""

    store: RowStore
    position: int  # next input offset to apply
    parked: str | None = None  # why, when a poison record stopped it
    rows: dict = field(init=False)

    def __post_init__(self) -> None:
        self.rows = self.store.rows


@dataclass
class _Work:
    """What a round did to one partition, not yet committed."""

    part: Partition
    touched: dict = field(default_factory=dict)  # row key -> its state now
    outputs: list = field(default_factory=list)  # (topic, key, value, headers, own key)
    received: list = field(default_factory=list)  # command times of what was published


class StageRunner:
    def __init__(self, stage: Stage, settings: Settings, metrics: Metrics) -> None:
        self.stage = stage
        self.settings = settings
        self.metrics = metrics
        self.group = f"{settings.group_prefix}-{stage.name}"
        self.input = stage.input_topic()
        self.changelog = f"{settings.topics.prefix}{self.group}-state-changelog"
        # how rows are kept in the changelog: a certificate's head and segments
        # (rows.py) unless the stage keeps another kind of row (netting: ledgers)
        self._new_store = getattr(stage, "row_store", RowStore)
        self.transactional_id = f"{self.group}-{settings.instance}"
        self.parts: dict[int, Partition] = {}
        self.parked: dict[int, str] = {}
        self.consumer: Consumer | None = None
        self.producer: Producer | None = None
        self.plain: Producer | None = None
        self.joined = threading.Event()
        self.last_loop_monotonic = time.monotonic()
        self.faults = Faults(settings.faults, fence=self._fence_myself, join=self._rival_joins)
        self._callback_error: BaseException | None = None
        self._client_error: KafkaError | None = None
        self._next_tick = 0.0
        self._next_gauges = 0.0
        self._rebalances = 0  # rebalance callbacks so far (a round never spans one)
        self._committed_at = 0.0  # time.monotonic() when the last commit ended
        self._txn_began = 0.0  # time.monotonic() when the open transaction began
        self.blocked: Blocked | None = None  # a transaction step waiting on the cluster
        self._in_step: tuple[str, float] | None = None  # (step, monotonic) of a call
        self._stop = threading.Event()
        name = stage.name
        self._skipped = metrics.skipped.labels(name)
        self._transaction = metrics.transaction.labels(name)
        self._processing = metrics.processing.labels(name)
        self._end_to_end = metrics.end_to_end.labels(name)

    # --- configuration ----------------------------------------------------------------

    def _conf(self, **extra) -> dict:
        # librdkafka's own log lines go through logging (JSON lines like the rest);
        # its errors reach _on_error. A broker that went away is tried again at least
        # every RECONNECT_MAX_MS (see there)
        return {"bootstrap.servers": self.settings.bootstrap, "logger": _librdkafka_log,
                "error_cb": self._on_error, "reconnect.backoff.max.ms": RECONNECT_MAX_MS,
                **self.settings.kafka_auth.librdkafka(), **extra}

    def _on_error(self, error: KafkaError) -> None:
        """librdkafka reports connection trouble here and retries by itself; a refused
        login or a fatal error is kept and stops the worker (see _check_login)."""
        if error.code() in (KafkaError._AUTHENTICATION, KafkaError._SSL) or error.fatal():
            self._client_error = error
        log.warning(f"kafka client: {error.str()}")

    def _producer_conf(self, **extra) -> dict:
        # murmur2_random is the Java client's partitioner (and kafka-python's): every
        # producer must put a certificate id on the same partition as the gateway does.
        # Batches stay below the input topics' bound (commands is one of the outputs of
        # the timer and of the captures stage): a batch the broker refuses as too large
        # would fail the transaction.
        return self._conf(partitioner="murmur2_random", **{"batch.size": PRODUCER_BATCH_BYTES},
                          **extra)

    # --- lifecycle --------------------------------------------------------------------

    def run(self, stop: threading.Event) -> None:
        self._stop = stop
        threading.Thread(target=self._watch_steps, name="step-watchdog", daemon=True).start()
        self.producer = self._transactional_producer()
        self._check_login()
        ensure_topics(self.settings, [self.input, *self.stage.output_topics()],
                      compacted=[self.changelog])
        self._init_transactions()
        if hasattr(self.stage, "due"):
            self.plain = Producer(self._producer_conf(**{"enable.idempotence": True, "acks": "all",
                                                "client.id": f"{self.group}-timer"}))
        self.consumer = Consumer(self._conf(**{
            "group.id": self.group, "enable.auto.commit": False,
            "isolation.level": "read_committed",
            # Only a stage with no table and no position starts at the beginning; one
            # with a position always resumes there (see _start_offset).
            "auto.offset.reset": "earliest",
            "partition.assignment.strategy": "cooperative-sticky",
            # static membership: a worker restarted under the same instance id takes
            # its partitions back at once, without a rebalance (and without the
            # session timeout the group would otherwise wait for the dead member)
            "group.instance.id": self.settings.instance,
            "client.id": f"{self.group}-{self.settings.instance}",
            "fetch.wait.max.ms": 100, "session.timeout.ms": 10_000,
            "heartbeat.interval.ms": 1_000}))
        self.consumer.subscribe([self.input], on_assign=self._on_assign,
                                on_revoke=self._on_revoke, on_lost=self._on_lost)
        try:
            while not stop.is_set():
                self.last_loop_monotonic = time.monotonic()
                batch = self._next_batch()
                if batch:
                    self._round(batch)
                self._tick()
                self._update_gauges()
        finally:
            self._shutdown()

    def _transactional_producer(self) -> Producer:
        return Producer(self._producer_conf(**{
            "transactional.id": self.transactional_id, "enable.idempotence": True,
            "acks": "all", "linger.ms": 5, "transaction.timeout.ms": TXN_TIMEOUT_MS,
            "queue.buffering.max.messages": 1_000_000,
            "client.id": self.transactional_id}))

    def _recoverable(self, error: KafkaError) -> bool:
        """Whether a failed transaction step leaves this worker able to go on: abort
        the round, restore its partitions and retry (_abort_round).

        Not fatal: if the transaction must be aborted or the error may pass. Fatal:
        the producer can do nothing more, but a new one can (_renew_producer), except
        when another worker holds the transactional id: taking it back would make two
        of them. librdkafka reports both that and the coordinator aborting a
        transaction open past its timeout (replicas short for longer than it) as
        "fenced"; a fence that comes after the timeout is taken for the latter (a
        real rival with this worker's instance id also fences its group membership,
        which ends this process: _next_batch)."""
        if not error.fatal():
            return error.txn_requires_abort() or error.retriable()
        if error.code() == KafkaError._FATAL:
            return False  # a fatal error librdkafka does not name
        if error.code() in FENCED:
            return time.monotonic() - self._txn_began >= TXN_TIMEOUT_MS / 1000
        return True

    def _renew_producer(self, error: KafkaError) -> None:
        """Replace a producer that failed fatally by a new one with the same
        transactional id, in this process.

        On a cluster losing brokers, librdkafka fails an abort that follows a failed
        AddOffsets (the coordinator's broker died) with a fatal INVALID_TXN_STATE, and
        fences a producer whose transaction the coordinator aborted at its timeout:
        that producer can do nothing more. Its open transaction commits nothing: the
        new producer's init_transactions bumps the id's epoch (the old one is fenced)
        and has the coordinator abort what it left open, waiting (blocked, shown) for
        as long as no coordinator can take it."""
        log.warning("the producer failed fatally; a new one with the same transactional id "
                    "fences it and aborts what it left open",
                    extra={"topic": self.input, "reason": error.str()})
        old = self.producer
        try:
            old.purge()  # nothing of it may still be sent (it is fenced below anyway)
        except KafkaException:
            pass
        self.producer = self._transactional_producer()
        self._init_transactions()

    def _refused(self, what: str, error: object) -> Fatal:
        auth = self.settings.kafka_auth
        login = f" as {auth.username} ({auth.sasl_mechanism})" if auth.sasl else ""
        return Fatal(f"{what} Kafka at {self.settings.bootstrap} over "
                     f"{auth.security_protocol}{login}: {error}; check the address, the login "
                     f"and the broker's log")

    def _check_login(self, timeout_s: float = 30.0) -> None:
        """Connect once before anything else, so that a refused login stops the worker
        at once with a message naming what to check (librdkafka would retry for ever)."""
        deadline = time.monotonic() + timeout_s
        while True:
            self.producer.poll(0.1)  # serves error_cb
            if self._client_error is not None:
                raise self._refused("cannot log in to", self._client_error.str())
            try:
                self.producer.list_topics(timeout=0.5)
                return
            except KafkaException as exc:
                if time.monotonic() > deadline:
                    raise self._refused("cannot reach", exc) from exc

    def _init_transactions(self) -> None:
        """init_transactions fences this id's previous incarnation and aborts what it
        left open. The first call to the broker also proves the login: name what to
        check when it fails."""
        try:
            self._until_done("init_transactions", self.producer.init_transactions,
                             any_retriable=True)
        except KafkaException as exc:
            raise self._refused("cannot start transactions on", exc) from exc

    # --- a cluster that cannot take the write: wait, show it, retry --------------------

    def _until_done(self, step: str, call, any_retriable: bool = False) -> None:
        """Call a transaction step (``call(timeout_s)``) until it completes.

        librdkafka retries what the brokers refuse for the moment by itself
        (NOT_ENOUGH_REPLICAS while fewer replicas than min.insync.replicas are in
        sync, NOT_LEADER while a leader moves, a coordinator being elected); the
        step then times out (_TIMED_OUT) and the same call resumes it (librdkafka's
        transactional API). Another retriable error ends the step (the round is
        aborted and retried, _round), except for ``any_retriable`` (init: nothing
        is open yet, the call starts over): calling send_offsets_to_transaction
        again after a coordinator's transport failure hung a worker for good in a
        failover test, and made another's abort fail INVALID_TXN_STATE.
        Nothing of the round is visible until the
        commit completes: the round waits whole, and is published whole or, if its
        records time out (message.timeout.ms = the transaction timeout), aborted
        and retried from the changelog (_abort_round). A worker that waits shows it
        (_block); a stop asked for meanwhile ends the process (the table may be ahead
        of what is committed: a restart restores it)."""
        while True:
            self._in_step = (step, time.monotonic())
            try:
                call(STEP_WAIT_S)
            except KafkaException as exc:
                self._in_step = None
                error = exc.args[0]
                if error.fatal() or error.txn_requires_abort() or not error.retriable():
                    raise
                if error.code() != KafkaError._TIMED_OUT and not any_retriable:
                    raise
                self._block(step, error)
                if self._stop.is_set():
                    raise Fatal(f"stopping while {step} waits on the cluster: "
                                f"{error.str()}") from exc
                continue
            self._in_step = None
            self._unblock()
            return

    def _watch_steps(self) -> None:
        """End the process when a transaction step's call hangs past its timeout."""
        while True:
            time.sleep(1.0)
            in_step = self._in_step
            if in_step is None:
                continue
            step, since = in_step
            if time.monotonic() - since > STEP_WAIT_S + STEP_HANG_S:
                log.critical(f"{step} has not returned {time.monotonic() - since:.0f}s after "
                             f"it was called with a {STEP_WAIT_S:.0f}s timeout (librdkafka "
                             "#5456/#5511); exiting for a restart, the open transaction "
                             "commits nothing", extra={"topic": self.input, "step": step})
                logging.shutdown()
                os._exit(EXIT_RESTART)

    def _block(self, step: str, error: KafkaError) -> None:
        now = time.monotonic()
        self.last_loop_monotonic = now  # alive (liveness), waiting on purpose
        self.metrics.commit_retries.labels(self.stage.name).inc()
        if self.blocked is None or self.blocked.step != step:
            # waiting since the first step that waited (a commit whose records timed
            # out, then its abort, is one wait on the cluster)
            since = now if self.blocked is None else self.blocked.since
            self.blocked = Blocked(step, since, self._diagnose(error))
            self.metrics.commit_blocked.labels(self.stage.name).set(1)
            log.warning(f"{step} cannot complete; waiting and retrying, nothing of the "
                        f"round is published meanwhile: {self.blocked.reason}",
                        extra={"topic": self.input, "step": step})
            self.blocked.reported = now
        elif now - self.blocked.reported >= BLOCKED_REPORT_S:
            self.blocked.reason = self._diagnose(error)
            self.blocked.reported = now
            log.warning(f"{step} still waiting after {now - self.blocked.since:.0f}s: "
                        f"{self.blocked.reason}", extra={"topic": self.input, "step": step})

    def _unblock(self) -> None:
        if self.blocked is None:
            return
        log.warning(f"{self.blocked.step} went through after "
                    f"{time.monotonic() - self.blocked.since:.1f}s of waiting",
                    extra={"topic": self.input})
        self.blocked = None
        self.metrics.commit_blocked.labels(self.stage.name).set(0)

    def _diagnose(self, error: KafkaError) -> str:
        """Why a step waits, as the cluster's metadata tells it: partitions this
        worker writes with fewer in-sync replicas than the minimum, or no leader."""
        topics = [*self.stage.output_topics(), self.changelog]
        minimum = self.settings.min_insync_replicas
        short, leaderless = [], []
        try:
            meta = self.producer.list_topics(timeout=2)
            for topic in topics:
                described = meta.topics.get(topic)
                for p, pm in sorted(described.partitions.items() if described else []):
                    if pm.leader < 0:
                        leaderless.append(f"{topic}[{p}]")
                    elif len(pm.isrs) < minimum:
                        short.append(f"{topic}[{p}] {len(pm.isrs)} of {len(pm.replicas)}")
        except KafkaException:
            pass  # no broker answers: the client's error says so
        parts = []
        if short:
            parts.append(f"NOT_ENOUGH_REPLICAS: in sync below min.insync.replicas={minimum} "
                         f"on {', '.join(short[:6])}{' ...' if len(short) > 6 else ''}")
        if leaderless:
            parts.append(f"no leader for {', '.join(leaderless[:6])}"
                         f"{' ...' if len(leaderless) > 6 else ''}")
        parts.append(f"client: {error.str()}")
        return "; ".join(parts)

    def _shutdown(self) -> None:
        if self.consumer is not None:
            try:
                self.consumer.close()
            except (KafkaException, RuntimeError):
                pass
        if self.plain is not None:
            self.plain.flush(5)

    def _consume(self, count: int, timeout_s: float) -> list[Message]:
        records = self.consumer.consume(count, timeout_s)
        if self._callback_error is not None:
            raise Fatal(f"taking over partitions failed: {self._callback_error}")
        if self._client_error is not None:
            raise Fatal(f"kafka client: {self._client_error.str()}")
        return records

    def _next_batch(self, wait_s: float | None = None) -> list[Message]:
        """Records for the next round: wait up to ``wait_s`` (commit_interval_s) for the first,
        take every record already fetched, then wait up to batch_linger_ms for more.

        Under load the records that arrive while a round commits make the next round
        (rounds grow with the load, so do the records per transaction); at a low
        rate a record waits at most the linger. librdkafka's consume(n, timeout)
        returns only when it has n records or the timeout passed, so asking it for a
        whole round at once held every paced record up to commit_interval_s in every
        stage (at 5,764 commands/s: p50 419 ms end to end; 251 ms without it)."""
        records = self._consume(1, self.settings.commit_interval_s if wait_s is None else wait_s)
        if records:
            records += self._consume(MAX_BATCH_RECORDS - 1, 0)
        linger_s = self.settings.batch_linger_ms / 1000
        if records and linger_s > 0 and len(records) < MAX_BATCH_RECORDS:
            deadline = time.monotonic() + linger_s
            while len(records) < MAX_BATCH_RECORDS:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                more = self._consume(MAX_BATCH_RECORDS - len(records), left)
                if not more:
                    break
                records += more
        for record in records:
            error = record.error()
            if error is not None and error.code() != KafkaError._PARTITION_EOF:
                # a fatal consumer error (e.g. a static member fenced after the broker
                # came back) arrives as a record error whose fatal() may be False: the
                # consumer is unusable either way, so stop for a restart
                if error.fatal() or error.code() == KafkaError._FATAL:
                    raise Fatal(f"consumer: {error}")
                log.warning(f"consumer: {error}")
        return [r for r in records if r.error() is None]

    # --- one round, one transaction -----------------------------------------------------

    def _round(self, records: list[Message]) -> None:
        """Apply records, then commit what they did in one transaction.

        A round whose records published nothing yet (withdrawal and cash-out: most
        commands) goes on applying the next records, for up to commit_interval_s,
        and commits them together: nothing waits on its outputs, and every
        transaction costs the broker and the stage ~1 ms of CPU whatever it holds.
        The first output ends the accumulation (it is what the next stage waits
        for), but not sooner than ``commit_spacing_ms`` after the previous commit
        ended (Kafka Streams' commit.interval.ms: under load, fewer and larger
        transactions; after a quiet spell a round commits at once). A round never
        spans a rebalance: a callback that ran while it accumulated ends it, and its
        offsets, sent with the generation it began in, make it abort and restore
        (_abort_round)."""
        faults = self.faults
        # The generation the records were fetched in: if the group moves on while
        # the round runs, adding the offsets fails and the round is aborted
        # (_abort_round) instead of committing work for partitions owned no longer.
        group = self.consumer.consumer_group_metadata()
        rebalances = self._rebalances
        faults.at("after_fetch")
        started = time.perf_counter()
        settings = self.settings
        opened = time.monotonic()
        # with outputs: commit at once, or commit_spacing_ms after the last commit;
        # without: once the round is commit_interval_s old (or that, if later)
        earliest = max(opened, self._committed_at + settings.commit_spacing_ms / 1000)
        patience = max(earliest, opened + settings.commit_interval_s)
        work: dict[int, _Work] = {}
        count = 0
        while True:
            self._apply_all(records, work)
            count += len(records)
            if count >= MAX_ROUND_RECORDS:
                break
            until = earliest if any(w.outputs for w in work.values()) else patience
            left = until - time.monotonic()
            if left <= 0:
                break
            records = self._next_batch(left)
            if self._rebalances != rebalances or not records:
                break
        self._processing.observe((time.perf_counter() - started) / max(count, 1))
        metrics = self.metrics
        for p in [p for p, w in work.items() if self.parts.get(p) is not w.part]:
            del work[p]  # revoked by a rebalance that ended the accumulation
            metrics.drop(p)
        if not work:
            return
        faults.at("after_apply")
        producer = self.producer
        produce = producer.produce
        began = time.perf_counter()
        try:
            self._txn_began = time.monotonic()
            producer.begin_transaction()
            latencies = []
            for p, w in work.items():
                for topic, key, value, headers, own_key in w.outputs:
                    if own_key:  # keyed otherwise than the input: its key's partition
                        produce(topic, value, key, headers=headers)
                    else:
                        produce(topic, value, key, partition=p, headers=headers)
                latencies += w.received
            faults.at("after_outputs")
            for p, w in work.items():
                store = w.part.store
                for key, state in w.touched.items():
                    # the row's head and only the segments that changed (rows.py)
                    for row_key, value in store.changes(key, state):
                        produce(self.changelog, value, row_key, partition=p)
                produce(self.changelog, _encode_position(Position(self.input, p, w.part.position)),
                        POSITION_KEY, partition=p)
            faults.at("after_changelog")
            offsets = [TopicPartition(self.input, p, w.part.position) for p, w in work.items()]
            self._until_done("send_offsets_to_transaction",
                             lambda t: producer.send_offsets_to_transaction(offsets, group, t))
            faults.at("after_offsets")
            faults.at("during_commit")
            self._until_done("commit_transaction", producer.commit_transaction)
        except KafkaException as exc:
            error = exc.args[0]
            if self._recoverable(error):
                # e.g. the group moved on while this round ran (a member joined or
                # left: ILLEGAL_GENERATION when adding the offsets), its records
                # timed out while replicas were short, or the coordinator moved
                # (a transport failure, NOT_COORDINATOR): nothing of it is
                # committed, and nothing of this worker is a zombie yet. A fatal
                # error that is not a fence only ends this producer (_renew_producer).
                self._abort_round(error)
                return
            log.critical("transaction failed; stopping (a restart restores the table)",
                         extra={"topic": self.input, "partitions": sorted(work)},
                         exc_info=True)
            raise Fatal(str(exc)) from exc
        self._committed_at = time.monotonic()
        faults.at("after_commit")
        done_ms = time.time() * 1000
        metrics.publish()
        self._transaction.observe(time.perf_counter() - began)
        observe_many(self._end_to_end, [max(0.0, done_ms - ms) / 1000 for ms in latencies])
        on_row = getattr(self.stage, "on_row", None)
        if on_row is not None:
            for p, w in work.items():
                for key, state in w.touched.items():
                    on_row(p, key, state)

    def _apply_all(self, records: list[Message], work: dict[int, _Work]) -> None:
        """Apply records to the round's work, in order per partition."""
        by_partition: dict[int, list[Message]] = {}
        for record in records:
            by_partition.setdefault(record.partition(), []).append(record)
        metrics = self.metrics
        for p, batch in by_partition.items():
            part = self.parts.get(p)
            if part is None or part.parked:
                continue  # revoked since the fetch (the new owner applies them), or parked
            w = work.get(p)
            if w is None or w.part is not part:
                w = work[p] = _Work(part)
            metrics.use(p)
            try:
                self._apply(part, batch, w)
            except Poison as poison:
                # none of the partition's round is committed: not counted either
                metrics.drop(p)
                del work[p]
                self._park(p, str(poison))

    def _apply(self, part: Partition, batch: list[Message], w: _Work) -> None:
        """Apply one partition's records in order; the outputs are only collected."""
        rows = part.rows
        apply = self.stage.apply
        touched = w.touched
        outputs = w.outputs
        received = w.received
        position = part.position
        skipped = 0
        for record in batch:
            offset = record.offset()
            if offset < position:
                skipped += 1  # applied before: the table already holds its effect
                continue
            key = record.key()
            try:
                applied = apply(None if key is None else rows.get(key), record)
            except Exception as exc:  # noqa: BLE001
                # Whatever one record does to the stage (a determinism error, a broken
                # invariant, bytes no one can read, a bug the record found), it fails
                # the same way on every attempt: a crash would restart into the same
                # record for ever. Its partition is parked, visibly; the rest go on.
                raise Poison(f"offset {offset}: {type(exc).__name__}: {exc}") from exc
            if applied.changed and applied.state is not None:
                rows[key] = applied.state
                touched[key] = applied.state
            if applied.outputs:
                for out in applied.outputs:
                    outputs.append((out.topic, out.key or key, out.value,
                                    list(out.headers) or None, out.key is not None))
                if applied.received_ms is not None:
                    received.append(applied.received_ms)
            position = offset + 1
        if skipped:
            self._skipped.inc(skipped)
        part.position = position

    def _abort_round(self, error: KafkaError) -> None:
        """Abort the round's transaction and put every owned partition back where
        the changelog says it stands: the in-memory rows and positions ran ahead of
        what is committed. Each partition is restored as on a take-over and the
        consumer seeks to its position (librdkafka drops what it fetched beyond).
        A partition the coming rebalance takes away is simply forgotten then."""
        log.warning("transaction aborted; restoring the round's partitions",
                    extra={"topic": self.input, "reason": error.str()})
        if error.fatal():
            self._renew_producer(error)
        else:
            try:
                self._until_done("abort_transaction", self.producer.abort_transaction)
            except KafkaException as exc:
                if not (exc.args[0].fatal() and self._recoverable(exc.args[0])):
                    raise Fatal(f"aborting a transaction: {exc}") from exc
                self._renew_producer(exc.args[0])
        self.metrics.drop()  # nothing of the round was published
        self.metrics.aborted_rounds.labels(self.stage.name).inc()
        owned = sorted(self.parts)
        self._forget(owned)
        try:
            starts = self._take_over(owned)
        except KafkaException as exc:
            raise Fatal(f"restoring after an aborted round: {exc}") from exc
        for p, offset in starts.items():
            try:
                self.consumer.seek(TopicPartition(self.input, p, offset))
            except KafkaException as exc:
                # no longer assigned: the revocation on the next poll forgets it
                log.info(f"{self.input}[{p}]: not seeking after the abort: {exc}")

    def _park(self, p: int, why: str) -> None:
        """Stop a partition whose record fails on every attempt; keep the others.

        The in-memory rows of the partition may hold half of the failed apply, so
        they are dropped; what was committed before stays, and a restart or a new
        owner restores it and meets the same record again (parked again, visibly)."""
        log.critical("partition parked: a record cannot be applied",
                     extra={"topic": self.input, "partition": p, "reason": why})
        self.parts.pop(p, None)
        self.parked[p] = why
        self.metrics.determinism_errors.labels(self.stage.name).inc()
        self.metrics.parked.labels(self.stage.name, str(p)).set(1)
        self.consumer.pause([TopicPartition(self.input, p)])

    def _fence_myself(self) -> None:
        """Fault injection: a second producer takes this worker's transactional id."""
        rival = Producer(self._producer_conf(**{"transactional.id": self.transactional_id}))
        rival.init_transactions(INIT_TIMEOUT_S)

    def _rival_joins(self) -> None:
        """Fault injection: another member joins the group and stays until the group
        has moved to a new generation, so this round's offsets are stale. It joins
        without a group.instance.id, so it leaves when it closes (a static member would
        hold its partitions for its whole session, 10 s, after it closed)."""
        joined = threading.Event()
        rival = Consumer(self._conf(**{
            "group.id": self.group, "partition.assignment.strategy": "cooperative-sticky",
            "session.timeout.ms": 10_000, "heartbeat.interval.ms": 1_000}))
        rival.subscribe([self.input], on_assign=lambda *_: joined.set())
        deadline = time.monotonic() + 30
        while not joined.is_set() and time.monotonic() < deadline:
            rival.poll(0.1)
        rival.close()
        log.info(f"fault: a rival member joined the group ({joined.is_set()})")

    # --- the timer (withdrawal) -------------------------------------------------------

    def _tick(self) -> None:
        due = getattr(self.stage, "due", None)
        now = time.monotonic()
        if due is None or now < self._next_tick:
            return
        self._next_tick = now + self.settings.timer_interval_s
        # Only the partitions this worker owns are in the table: one worker acts on a
        # certificate. A duplicate after a rebalance is harmless: the command id is
        # deterministic and the core applies it once.
        commands = due(int(time.time() * 1000))
        for topic, key, value, headers in commands:
            self.plain.produce(topic, value, key, headers=headers)
            self.metrics.timer_commands.labels(self.stage.name).inc()
        if commands:
            self.plain.flush(10)

    def _update_gauges(self) -> None:
        # once a second: Prometheus scrapes every few seconds, and asking librdkafka
        # for every partition's watermarks after every round cost ~60 us a round
        now = time.monotonic()
        if now < self._next_gauges:
            return
        self._next_gauges = now + GAUGES_INTERVAL_S
        self.metrics.table_rows.labels(self.stage.name).set(
            sum(len(part.rows) for part in self.parts.values()))
        # The consumer's position steps over the commit markers of transactions (the
        # table's position stops at the last record applied): without it an idle
        # partition of a transactional input would show a lag of 1 for ever.
        try:
            stepped = {tp.partition: tp.offset for tp in self.consumer.position(
                [TopicPartition(self.input, p) for p in self.parts])}
        except KafkaException:
            stepped = {}
        for p, part in self.parts.items():
            try:
                _, high = self.consumer.get_watermark_offsets(
                    TopicPartition(self.input, p), cached=True)
            except KafkaException:
                continue
            if high >= 0:
                self.metrics.lag.labels(self.stage.name, self.input, str(p)).set(
                    max(0, high - max(part.position, stepped.get(p, -1))))

    # --- rebalances ---------------------------------------------------------------------

    def _on_assign(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        """Restore the new partitions' rows and positions, then start each at its
        position. Called from inside consume(), between rounds: no transaction is
        open. Errors are kept and raised by the loop (librdkafka would log them)."""
        self._rebalances += 1
        try:
            starts = self._take_over([tp.partition for tp in partitions])
            consumer.incremental_assign(
                [TopicPartition(self.input, p, offset) for p, offset in starts.items()])
            self.joined.set()
        except BaseException as exc:  # noqa: BLE001 - re-raised by _consume
            log.critical("taking over partitions failed", exc_info=True)
            self._callback_error = exc

    def _on_revoke(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        self._rebalances += 1
        self._forget([tp.partition for tp in partitions])
        consumer.incremental_unassign(partitions)

    def _on_lost(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        self._rebalances += 1
        self._forget([tp.partition for tp in partitions])
        consumer.incremental_unassign(partitions)

    def _forget(self, partitions: list[int]) -> None:
        for p in partitions:
            self.parts.pop(p, None)
            self.parked.pop(p, None)
            # another worker reports a partition this one no longer owns
            for gauge, labels in ((self.metrics.parked, (self.stage.name, str(p))),
                                  (self.metrics.lag, (self.stage.name, self.input, str(p)))):
                try:
                    gauge.remove(*labels)
                except KeyError:
                    pass  # never measured
            forget = getattr(self.stage, "forget_partition", None)
            if forget is not None:
                forget(p)

    def _take_over(self, partitions: list[int]) -> dict[int, int]:
        if not partitions:
            return {}
        tps = [TopicPartition(self.input, p) for p in partitions]
        # With require_stable (librdkafka sends it in read_committed mode) this waits
        # until no transaction of the previous owner holds offsets of these
        # partitions: from then on the changelog below holds everything it committed.
        committed = {tp.partition: tp.offset for tp in _committed(self.consumer, tps)}
        restored = self._restore(partitions)
        starts = {}
        for p in partitions:
            store, position = restored[p]
            offset = self._start_offset(p, store, position, committed.get(p, -1001))
            self.parts[p] = Partition(store, max(offset, 0))
            # an owned partition reports 0 while it runs, not nothing (also after an
            # aborted round, which forgets and takes over its partitions again)
            self.metrics.parked.labels(self.stage.name, str(p)).set(0)
            on_row = getattr(self.stage, "on_row", None)
            if on_row is not None:
                for key, state in store.rows.items():
                    on_row(p, key, state)
            starts[p] = OFFSET_BEGINNING if offset < 0 else offset
        return starts

    def _start_offset(self, p: int, store: RowStore, position: Position | None,
                      committed: int) -> int:
        """Where partition ``p`` resumes; -1: from its beginning (a new stage)."""
        where = f"{self.input}[{p}]"
        low, high = _watermarks(self.consumer, TopicPartition(self.input, p))
        if position is None:
            if store.rows and committed < 0:
                raise Fatal(f"{where}: the changelog {self.changelog} has rows but no "
                            "position, and the group has no committed offset: cannot tell "
                            "where the table stands; refusing to guess")
            if committed >= 0:
                # a changelog written before positions were: the committed offset, once
                log.warning(f"{where}: no position in the changelog; resuming at the "
                            f"group's committed offset {committed} this once")
                offset = committed
            else:
                return -1  # nothing applied yet: the stage starts at the beginning
        else:
            if (position.topic, position.partition) != (self.input, p):
                raise Fatal(f"{where}: the changelog's position is for "
                            f"{position.topic}[{position.partition}]")
            if committed > position.offset:
                raise Fatal(f"{where}: the group's committed offset {committed} is ahead "
                            f"of the table's position {position.offset}: records between "
                            "them would be skipped; refusing to run (reset the offset or "
                            "rebuild the changelog, docs/runbook.md)")
            offset = position.offset
        if offset < low:
            raise Fatal(f"{where}: the table stands at offset {offset} but the input starts "
                        f"at {low} (retention deleted records it never applied); "
                        "refusing to skip them")
        if offset > high:
            raise Fatal(f"{where}: the table stands at offset {offset}, beyond the input's "
                        f"end {high}: this changelog belongs to other input")
        if committed >= 0 and committed < offset:
            log.info(f"{where}: resuming at the table's position {offset}; the group's "
                     f"committed offset {committed} is behind it")
        return offset

    def _restore(self, partitions: list[int]) -> dict[int, tuple[RowStore, Position | None]]:
        """Rows and position of each partition from its compacted changelog, read to
        its end (read_committed: what was committed, nothing aborted)."""
        started = time.monotonic()
        reader = Consumer(self._conf(**{
            "group.id": f"{self.group}-restore", "enable.auto.commit": False,
            "enable.partition.eof": True, "isolation.level": "read_committed",
            "client.id": f"{self.group}-{self.settings.instance}-restore"}))
        records: dict[int, dict[bytes, bytes]] = {p: {} for p in partitions}
        count = size = 0
        try:
            # an empty changelog partition has nothing to wait for (its EOF takes a
            # fetch round trip or two: ~1 s a partition, the whole start-up of a stage)
            pending = set()
            for p in partitions:
                low, high = _watermarks(reader, TopicPartition(self.changelog, p))
                if high > low:
                    pending.add(p)
            reader.assign([TopicPartition(self.changelog, p, OFFSET_BEGINNING)
                           for p in sorted(pending)])
            progressed = reported = time.monotonic()
            while pending:
                fetched = reader.consume(10_000, 0.2)
                now = time.monotonic()
                for record in fetched:
                    error = record.error()
                    if error is not None:
                        if error.code() == KafkaError._PARTITION_EOF:
                            pending.discard(record.partition())
                            continue
                        raise Fatal(f"restoring {self.changelog}: {error}")
                    value = record.value()
                    records[record.partition()][record.key()] = value
                    count += 1
                    size += len(value or b"")
                if fetched:
                    progressed = now
                elif now - progressed > RESTORE_STALL_S:
                    raise Fatal(f"restoring {self.changelog}: no progress for "
                                f"{RESTORE_STALL_S:.0f}s")
                if now - reported > RESTORE_REPORT_S:
                    reported = now
                    log.info(f"restoring {self.changelog}: {count} records, {size} bytes, "
                             f"{now - started:.1f}s, partitions left {sorted(pending)}")
        finally:
            reader.close()
        out = {}
        for p in partitions:
            raw = records[p]
            position_raw = raw.pop(POSITION_KEY, None)
            store = self._new_store()
            store.restore({k: v for k, v in raw.items() if v is not None})
            out[p] = (store, None if position_raw is None else _decode_position(position_raw))
        seconds = time.monotonic() - started
        self.metrics.restore_seconds.labels(self.stage.name).observe(seconds)
        log.info(f"restored partitions {partitions} of {self.changelog}: "
                 f"{sum(len(s.rows) for s, _ in out.values())} rows from {count} records, "
                 f"{size} bytes in {seconds:.2f}s")
        return out


_RETRIABLE = (KafkaError.NOT_LEADER_FOR_PARTITION, KafkaError.LEADER_NOT_AVAILABLE,
              KafkaError.UNKNOWN_TOPIC_OR_PART, KafkaError._TIMED_OUT, KafkaError._TRANSPORT)


def _committed(consumer: Consumer, tps: list[TopicPartition]) -> list[TopicPartition]:
    """The group's committed offsets (require_stable): the group coordinator may be
    moving (NOT_COORDINATOR, a broker failover); retried for up to INIT_TIMEOUT_S."""
    deadline = time.monotonic() + INIT_TIMEOUT_S
    while True:
        try:
            return consumer.committed(tps, timeout=max(1.0, deadline - time.monotonic()))
        except KafkaException as exc:
            if not exc.args[0].retriable() or time.monotonic() > deadline:
                raise
            time.sleep(0.5)


def _watermarks(client: Consumer, tp: TopicPartition) -> tuple[int, int]:
    """(first, end) offsets of a partition. A topic created a moment ago may have no
    leader yet, and a leader may be moving: retried for up to INIT_TIMEOUT_S."""
    deadline = time.monotonic() + INIT_TIMEOUT_S
    while True:
        try:
            return client.get_watermark_offsets(tp, timeout=10)
        except KafkaException as exc:
            if exc.args[0].code() not in _RETRIABLE or time.monotonic() > deadline:
                raise
            time.sleep(0.2)

