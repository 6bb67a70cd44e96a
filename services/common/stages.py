"""The four stages as Stage objects for the runner: each is decode, core, encode."""

from __future__ import annotations

import logging

import msgspec
from aiokafka.structs import ConsumerRecord

from domain import CertificateState, next_deadline_ms
from schemas.commands import AcceptedCommand, CheckExpiry
from schemas.topics import TOPICS
from services.common.auth import Keyring, header_dict
from services.common.metrics import Metrics
from services.common.runner import Applied, Output
from services.common.settings import Settings
from services.common.steps import Source, StepResult, follow, sequence

log = logging.getLogger("commission.stages")
_encode = msgspec.json.Encoder().encode
_decode_accepted = msgspec.json.Decoder(AcceptedCommand).decode
_MEMBERS = {t.name: t.message_types() for t in TOPICS}


def _members(base: str) -> tuple[type, ...]:
    return _MEMBERS[base]


class CirculationStage:
    """The sequencer: authenticates, validates, dedupes, extends the chain."""

    name = "circulation"

    def __init__(self, settings: Settings, keyring: Keyring, metrics: Metrics) -> None:
        self.topics = settings.topics
        self.keyring = keyring
        self.metrics = metrics
        self.max_skew_ms = settings.max_clock_skew_ms
        self.draw_key = keyring.first("draw")
        self.own = _members("certificate-events")

    def input_topic(self) -> str:
        return self.topics.commands

    def output_topics(self) -> list[str]:
        return [self.topics.accepted, self.topics.certificate_events, self.topics.rejections]

    def apply(self, state: CertificateState | None, record: ConsumerRecord) -> Applied:
        source = Source(record.topic, record.partition, record.offset, record.timestamp,
                        record.key, header_dict(record.headers))
        result = sequence(state, record.value or b"", source, self.keyring, self.max_skew_ms,
                          self.draw_key)
        outputs: list[Output] = []
        if result.accepted is not None:
            kind = type(result.accepted.command).__name__
        else:
            kind = "refused" if result.rejection is not None else "no_effect"
        self.metrics.count_in(kind)
        if result.rejection is not None:
            r = result.rejection
            self.metrics.rejections.labels(self.name, r.reason.value).inc()
            self.metrics.count_out(self.topics.rejections, [r])
            log.info("command refused", extra={
                "certificate_id": r.certificate_id, "command_id": r.command_id,
                "reason": r.reason.value, "topic": record.topic, "partition": record.partition,
                "offset": record.offset})
            outputs.append(Output(self.topics.rejections, _encode(result.rejection)))
        if result.accepted is not None:
            log.debug("command accepted", extra={
                "certificate_id": result.accepted.command.certificate_id,
                "command_id": result.accepted.command.command_id, "seq": result.accepted.seq,
                "topic": record.topic, "partition": record.partition, "offset": record.offset})
            outputs.append(Output(self.topics.accepted, _encode(result.accepted)))
            self.metrics.count_out(self.topics.accepted, [result.accepted])
            own = [e for e in result.events if isinstance(e, self.own)]
            outputs.extend(Output(self.topics.certificate_events, _encode(e)) for e in own)
            self.metrics.count_out(self.topics.certificate_events, own)
        return Applied(result.state, result.changed, outputs, received_ms=record.timestamp)


class FollowerStage:
    """Allocation, withdrawal or cash-out: applies accepted commands in order and
    publishes its own kind of effect."""

    def __init__(self, name: str, settings: Settings, metrics: Metrics, output: str) -> None:
        self.name = name
        self.topics = settings.topics
        self.metrics = metrics
        self.output = output
        self.output_topic = settings.topics.name(output)

    def input_topic(self) -> str:
        return self.topics.accepted

    def output_topics(self) -> list[str]:
        return [self.output_topic]

    def select(self, result: StepResult) -> list:
        members = _members(self.output)
        return [x for x in (*result.events, *result.settlements) if isinstance(x, members)]

    def apply(self, state: CertificateState | None, record: ConsumerRecord) -> Applied:
        accepted = _decode_accepted(record.value)
        self.metrics.count_in(type(accepted.command).__name__)
        result = follow(state, accepted)
        if result.duplicate:
            return Applied(state, False, [])
        mine = self.select(result)
        self.metrics.count_out(self.output_topic, mine)
        self.metrics.count_money(mine)
        return Applied(result.state, True, [Output(self.output_topic, _encode(x)) for x in mine],
                       received_ms=accepted.received_ms)


class WithdrawalStage(FollowerStage):
    """Publishes warnings and withdrawals; its timer sends check_expiry commands for
    certificates whose display-time deadline has passed, signed with a system key."""

    RESEND_AFTER_MS = 30_000

    def __init__(self, settings: Settings, keyring: Keyring, metrics: Metrics) -> None:
        super().__init__("withdrawal", settings, metrics, "withdrawals")
        self.key = keyring.first("system")
        self.keyring = keyring
        self.deadlines: dict[bytes, tuple[int, int]] = {}  # key -> (partition, deadline)
        self.sent: dict[bytes, tuple[int, int]] = {}  # key -> (deadline, sent at)

    def on_row(self, partition: int, key: bytes, state: CertificateState) -> None:
        deadline = next_deadline_ms(state)
        if deadline is None:
            self.deadlines.pop(key, None)
        else:
            self.deadlines[key] = (partition, deadline)

    def forget_partition(self, partition: int) -> None:
        for key in [k for k, (p, _) in self.deadlines.items() if p == partition]:
            del self.deadlines[key]
            self.sent.pop(key, None)

    def due(self, now_ms: int) -> list[tuple[str, bytes, bytes, list]]:
        out = []
        for key, (_, deadline) in self.deadlines.items():
            if deadline > now_ms:
                continue
            previous = self.sent.get(key)
            if previous and previous[0] == deadline and now_ms - previous[1] < self.RESEND_AFTER_MS:
                continue
            command = CheckExpiry(command_id=f"expire:{deadline}",
                                  certificate_id=key.decode(), at_ms=now_ms)
            body = _encode(command)
            out.append((self.topics.commands, key, body, self.keyring.sign(body, self.key)))
            self.sent[key] = (deadline, now_ms)
        return out


def circulation(settings: Settings, keyring: Keyring, metrics: Metrics) -> CirculationStage:
    return CirculationStage(settings, keyring, metrics)


def allocation(settings: Settings, keyring: Keyring, metrics: Metrics) -> FollowerStage:
    return FollowerStage("allocation", settings, metrics, "allocations")


def withdrawal(settings: Settings, keyring: Keyring, metrics: Metrics) -> WithdrawalStage:
    return WithdrawalStage(settings, keyring, metrics)


def cashout(settings: Settings, keyring: Keyring, metrics: Metrics) -> FollowerStage:
    return FollowerStage("cashout", settings, metrics, "payments")


