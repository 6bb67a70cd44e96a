"""The circulation service: the sequencer.

Consumes ``commands`` (signed, keyed by certificate id); authenticates, validates,
deduplicates and decides each command with the core, in order per certificate;
publishes the verdict: ``accepted`` (the command with its sequence number and, when
the pool draws, the entropy from the secret draw key) for the other stages, its own
facts on ``certificate-events``, and every refusal on ``rejections`` with a reason.
It is the only stage that reads raw input, so it is the only one that refuses.
"""

from __future__ import annotations

import logging

import msgspec
from confluent_kafka import Message

from domain import CertificateState
from schemas.commands import (
    ApproveCommission,
    Circulate,
    Claim,
    DeclineCommission,
    FlagCommission,
)
from schemas.events import (
    CommissionAcquired,
    CommissionApproved,
    CommissionDeclined,
    CommissionFlagged,
)
from services.circulation.intake import sequence
from services.common.auth import Keyring
from services.common.follower import MEMBERS
from services.common.metrics import Metrics
from services.common.rejection import Source
from services.common.settings import Settings
from services.common.stage import Applied, Output

log = logging.getLogger("commission.circulation")
_encode = msgspec.json.Encoder().encode


class CirculationStage:
    """The sequencer: authenticates, validates, dedupes, extends the chain."""

    name = "circulation"

    def __init__(self, settings: Settings, keyring: Keyring, metrics: Metrics) -> None:
        self.topics = settings.topics
        self.keyring = keyring
        self.metrics = metrics
        self.max_skew_ms = settings.max_clock_skew_ms
        self.draw_key = keyring.first("draw")
        self.own = MEMBERS["certificate-events"]
        self.accepted = settings.topics.accepted
        self.events = settings.topics.certificate_events
        self.rejections = settings.topics.rejections

    def input_topic(self) -> str:
        return self.topics.commands

    def output_topics(self) -> list[str]:
        return [self.accepted, self.events, self.rejections]

    def apply(self, state: CertificateState | None, record: Message) -> Applied:
        source = Source.of(record)
        result = sequence(state, record.value() or b"", source, self.keyring, self.max_skew_ms,
                          self.draw_key)
        metrics = self.metrics
        accepted = result.accepted
        if accepted is not None:
            if log.isEnabledFor(logging.DEBUG):  # not even the dict, per command, otherwise
                log.debug("command accepted", extra={
                    "certificate_id": accepted.command.certificate_id,
                    "command_id": accepted.command.command_id, "seq": accepted.seq,
                    "topic": record.topic(), "partition": record.partition(),
                    "offset": record.offset()})
            kind = type(accepted.command)
            metrics.count_in(kind.__name__)
            if kind in _SELLER_COUNTED:
                _count_for_seller(metrics, result.state, result.events)
            own = [e for e in result.events if isinstance(e, self.own)]
            metrics.count_out(self.accepted, [accepted])
            metrics.count_out(self.events, own)
            outputs = [Output(self.accepted, _encode(accepted))]
            outputs += [Output(self.events, _encode(e)) for e in own]
            return Applied(result.state, result.changed, outputs, received_ms=source.timestamp_ms)
        r = result.rejection
        if r is None:
            metrics.count_in("no_effect")
            return Applied(result.state, result.changed, [], received_ms=source.timestamp_ms)
        metrics.count_in("refused")
        metrics.count_rejection(r.reason.value)
        metrics.count_out(self.rejections, [r])
        log.info("command refused", extra={
            "certificate_id": r.certificate_id, "command_id": r.command_id,
            "reason": r.reason.value, "topic": record.topic(), "partition": record.partition(),
            "offset": record.offset()})
        return Applied(result.state, result.changed, [Output(self.rejections, _encode(r))],
                       received_ms=source.timestamp_ms)


def build(settings: Settings, keyring: Keyring, metrics: Metrics) -> CirculationStage:
    return CirculationStage(settings, keyring, metrics)


# commands after which a seller's commissions are counted (the metric behind the
# decline-rate alert): the ones that acquire, and the reviews
_SELLER_COUNTED = frozenset({Circulate, Claim, DeclineCommission, FlagCommission,
                             ApproveCommission})
_SELLER_OUTCOMES = {CommissionAcquired: "acquired", CommissionDeclined: "declined",
                    CommissionFlagged: "flagged", CommissionApproved: "approved"}


def _count_for_seller(metrics, state, events) -> None:
    for event in events:
        outcome = _SELLER_OUTCOMES.get(type(event))
        if outcome is not None:
            metrics.count_seller(state.seller_id, outcome)
