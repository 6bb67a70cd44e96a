"""What allocation, withdrawal and cash-out share: applying the sequencer's accepted
commands, in order, to their own copy of each certificate's state.

The core is deterministic, so a follower must reach the verdict the sequencer
reached; any disagreement is a bug (:class:`DeterminismError`), and the runner parks
the partition instead of publishing anything for it.
"""

from __future__ import annotations

import msgspec
from confluent_kafka import Message

from domain import Accepted, CertificateState, handle
from schemas.commands import AcceptedCommand
from schemas.events import Event
from schemas.payments import Settlement
from schemas.rejections import Rejection
from schemas.topics import TOPICS
from services.common.metrics import Metrics
from services.common.settings import Settings
from services.common.stage import Applied, Output

_encode = msgspec.json.Encoder().encode
_decode_accepted = msgspec.json.Decoder(AcceptedCommand).decode
MEMBERS = {t.name: t.message_types() for t in TOPICS}


class StepResult(msgspec.Struct):
    """What one command did to one stage's copy of a certificate (a struct: one per
    command in every stage, where a dataclass's construction cost ~1 us)."""

    state: CertificateState | None = None
    changed: bool = False
    accepted: AcceptedCommand | None = None
    events: list[Event] = msgspec.field(default_factory=list)
    settlements: list[Settlement] = msgspec.field(default_factory=list)
    rejection: Rejection | None = None
    duplicate: bool = False


class DeterminismError(RuntimeError):
    """A follower reached another verdict than the sequencer: never publish then."""


def follow(state: CertificateState | None, accepted: AcceptedCommand) -> StepResult:
    """Allocation, withdrawal, cash-out: apply an accepted command to this stage's copy.

    A seq at or below the row's is a replay of something already applied (the
    table and the outputs were committed together), so it has no effect.
    """
    if state is not None and accepted.seq <= state.seq:
        return StepResult(state=state, duplicate=True)
    expected = 1 if state is None else state.seq + 1
    if accepted.seq != expected:
        raise DeterminismError(
            f"{accepted.command.certificate_id}: got seq {accepted.seq}, expected {expected}")
    entropy = bytes.fromhex(accepted.draw_seed) if accepted.draw_seed else b""
    outcome = handle(state, accepted.command, entropy)
    if not isinstance(outcome, Accepted) or outcome.state.seq != accepted.seq:
        raise DeterminismError(
            f"{accepted.command.certificate_id} seq {accepted.seq}: the sequencer accepted "
            f"{accepted.command.command_id} but this stage got {outcome!r}")
    return StepResult(state=outcome.state, changed=True, events=outcome.events,
                      settlements=outcome.settlements)


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
        members = MEMBERS[self.output]
        return [x for x in (*result.events, *result.settlements) if isinstance(x, members)]

    def money_of(self, result: StepResult, mine: list) -> list:
        """What this stage counts on commission_money_minor_units_total."""
        return mine

    def apply(self, state: CertificateState | None, record: Message) -> Applied:
        accepted = _decode_accepted(record.value())
        metrics = self.metrics
        metrics.count_in(type(accepted.command).__name__)
        result = follow(state, accepted)
        if result.duplicate:
            return Applied(state, False, [])
        mine = self.select(result)
        if not mine:
            return Applied(result.state, True, [], accepted.received_ms)
        topic = self.output_topic
        metrics.count_out(topic, mine)
        metrics.count_money(self.money_of(result, mine))
        key_of = self.key_of
        outputs = [Output(topic, _encode(x), (), key_of(x)) for x in mine]
        extra = self.extra_outputs(accepted, result, mine)
        return Applied(result.state, True, outputs + extra if extra else outputs,
                       accepted.received_ms)

    def extra_outputs(self, accepted: AcceptedCommand, result: StepResult,
                      mine: list) -> list[Output]:
        """Records for another topic than the stage's own (allocation: fraud-feed)."""
        return []

    def key_of(self, message) -> bytes | None:
        """The output's key; None: the certificate's (the input's)."""
        return None
