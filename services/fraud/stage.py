"""The fraud stage: watches acquisitions across certificates and flags suspicious ones.

Consumes ``fraud-feed`` (the allocation stage's :class:`~services.fraud.rules.Seen`
records, keyed by account and by the hour the account was created:
services/fraud/rules.py says why) and keeps one row per key. It never blocks the
hot path: what it finds it sends as ``flag_commission`` commands to ``commands``,
keyed by the certificate id, signed with its ``fraud`` key (the only key it holds),
inside the round's transaction with its rows and position, so a flag is sent once;
its id is one per (certificate, sharer, rule), so any repeat is a ``duplicate``. A
flagged commission is kept back at the end of the hold until a reviewer approves or
someone declines it (domain/review.py).

Settings (environment; the defaults are in rules.Thresholds):
``COMMISSION_FRAUD_VELOCITY_PER_MINUTE``, ``COMMISSION_FRAUD_FRESH_S``,
``COMMISSION_FRAUD_BURST_WINDOW_S``, ``COMMISSION_FRAUD_BURST_MIN``,
``COMMISSION_FRAUD_RING_MIN``.
"""

from __future__ import annotations

import dataclasses
import os
import time

import msgspec
from confluent_kafka import Message

from schemas.commands import FlagCommission
from services.common.auth import Keyring
from services.common.metrics import Metrics
from services.common.rows import WholeRowStore
from services.common.settings import Settings
from services.common.stage import Applied, Output
from services.fraud import rules
from services.fraud.rules import Flag, Row, Seen, Thresholds

_decode_seen = msgspec.msgpack.Decoder(Seen).decode
_encode_seen = msgspec.msgpack.Encoder().encode
_encode = msgspec.json.Encoder().encode


def thresholds_from_env(env: dict[str, str] | None = None) -> Thresholds:
    env = os.environ if env is None else env
    given = {}
    for f in dataclasses.fields(Thresholds):
        raw = env.get(f"COMMISSION_FRAUD_{f.name.upper()}")
        if raw:
            given[f.name] = int(raw)
    return Thresholds(**given)


def feed_outputs(topic: str, seen: Seen) -> list[Output]:
    """The allocation stage's records for one acquisition (one per rule row)."""
    value = _encode_seen(seen)
    return [Output(topic, value, (), key) for key in rules.feed_keys(seen)]


class FraudStage:
    name = "fraud"

    def __init__(self, settings: Settings, keyring: Keyring, metrics: Metrics,
                 thresholds: Thresholds | None = None) -> None:
        self.topics = settings.topics
        self.metrics = metrics
        self.thresholds = thresholds or thresholds_from_env()
        self.keyring = keyring
        self.key = keyring.signing_key("fraud")
        self.flags = metrics.fraud_flags
        for rule in rules.RULES:
            self.flags.labels("fraud", rule)
        # counted when the round commits, like every other counter (Metrics.publish),
        # and forgotten with a parked partition's or an aborted round's work
        self._found: dict[int, list[str]] = {}
        publish, drop = metrics.publish, metrics.drop

        def publish_flags() -> None:
            publish()
            for found in self._found.values():
                for rule in found:
                    self.flags.labels("fraud", rule).inc()
            self._found.clear()

        def drop_flags(partition: int | None = None) -> None:
            drop(partition)
            if partition is None:
                self._found.clear()
            else:
                self._found.pop(partition, None)

        metrics.publish, metrics.drop = publish_flags, drop_flags

    def input_topic(self) -> str:
        return self.topics.fraud_feed

    def output_topics(self) -> list[str]:
        return [self.topics.commands]

    @staticmethod
    def row_store() -> WholeRowStore:
        return WholeRowStore(Row)

    @staticmethod
    def flag_command(flag: Flag, now_ms: int) -> FlagCommission:
        return FlagCommission(command_id=rules.command_id(flag),
                              certificate_id=flag.certificate_id, at_ms=now_ms,
                              sharer_id=flag.sharer_id, rule=flag.rule, detail=flag.detail)

    def signed(self, command: FlagCommission) -> Output:
        body = _encode(command)
        return Output(self.topics.commands, body, tuple(self.keyring.sign(body, self.key)),
                      command.certificate_id.encode())

    def apply(self, row: Row | None, record: Message) -> Applied:
        seen = _decode_seen(record.value())
        self.metrics.count_in("Seen")
        after, changed, flags = rules.apply(row, record.key(), seen, self.thresholds)
        if not flags:
            return Applied(after, changed, [])
        # the sequencer refuses a command stamped far from the broker's clock: now
        now_ms = int(time.time() * 1000)
        commands = [self.flag_command(f, now_ms) for f in flags]
        self._found.setdefault(record.partition(), []).extend(f.rule for f in flags)
        self.metrics.count_out(self.topics.commands, commands)
        return Applied(after, changed, [self.signed(c) for c in commands])


def build(settings: Settings, keyring: Keyring, metrics: Metrics) -> FraudStage:
    return FraudStage(settings, keyring, metrics)
