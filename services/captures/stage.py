"""The captures service: what the payment system says, into ``commands``, once.

Consumes ``payment-results``, the payment system's only topic (signed with its
Ed25519 key): escrow confirmations, captured purchases, its refunds and settlement
results. Each record goes on to ``commands``, keyed by its certificate id, where the
sequencer decides it in order with everything else that certificate receives. The
copy is exactly once: it commits with this stage's position in one transaction.

A captured purchase is keyed here by ``{seller_id}/{payment_ref}``
(schemas.commands.capture_key), so all captures of one payment reference in one
seller's program meet in one row of this stage's table: the first is admitted and
forwarded, any later one under another command id is refused ``payment_ref_used``
(a retry of the same capture goes on and the sequencer calls it a duplicate). A
payment reference cannot buy two certificates, which no stage keyed by certificate
could tell. The payment system may write only ``payment-results`` (deploy/acls.py),
so a capture reaches ``commands`` only through this register.

Every record must be the payment system's (its Ed25519 signature, the only key this
stage holds), small enough to pass on uncompressed, and stamped within the clock skew
of when ``payment-results`` appended it (LogAppendTime); anything else is refused
here with a rejection, never forwarded. What passes goes on unchanged (key, value,
signature headers) and the sequencer checks it again as every command; it does not
check its time again (the record waited here, maybe long after an outage), only that
it is the payment system's word (services/circulation/intake.py).
"""

from __future__ import annotations

import logging

import msgspec
from confluent_kafka import Message

from schemas.commands import ConfirmFunding, Purchase, capture_key, escrow_key
from schemas.rejections import Reason
from services.common.auth import AuthError, Keyring
from services.common.follower import StepResult
from services.common.metrics import Metrics
from services.common.rejection import Source, reject
from services.common.rows import WholeRowStore
from services.common.settings import Settings
from services.common.stage import Applied, Output
from services.common.topics import INPUT_MAX_MESSAGE_BYTES

log = logging.getLogger("commission.captures")
_encode = msgspec.json.Encoder().encode
# what the captures stage registers: one row per payment reference (a purchase)
# or per escrow hold (its confirmation)
_decode_registered = msgspec.json.Decoder(Purchase | ConfirmFunding).decode


class _Peek(msgspec.Struct):
    type: str = ""
    at_ms: int | None = None


_peek = msgspec.json.Decoder(_Peek).decode


class Forwarded:
    """What the metrics call a record passed on to commands."""


_FORWARDED = Forwarded()

# A record is forwarded as it came, uncompressed: the broker bounds payment-results'
# batches after compression, so a record that fits there may not fit commands. What
# is larger than any valid command can be (schemas: ~50 KB) with room for its headers
# is refused here, never re-produced (tests/e2e/test_trust.py).
MAX_FORWARD_BYTES = INPUT_MAX_MESSAGE_BYTES - 16 * 1024


class Admitted(msgspec.Struct, array_like=True, frozen=True):
    """The one capture admitted under a (seller, payment_ref), or the one escrow
    confirmation under a funding reference."""

    command_id: str
    certificate_id: str


class CapturesStage:
    name = "captures"

    def __init__(self, settings: Settings, keyring: Keyring, metrics: Metrics) -> None:
        self.topics = settings.topics
        self.keyring = keyring
        self.metrics = metrics
        self.max_skew_ms = settings.max_clock_skew_ms
        self.commands = settings.topics.commands
        self.rejections = settings.topics.rejections

    def input_topic(self) -> str:
        return self.topics.payment_results

    def output_topics(self) -> list[str]:
        return [self.commands, self.rejections]

    @staticmethod
    def row_store() -> WholeRowStore:
        return WholeRowStore(Admitted)

    def apply(self, row: Admitted | None, record: Message) -> Applied:
        """Every record is the payment system's, or refused here: too large to forward,
        not signed by it, or stamped far from when the broker appended it (the
        sequencer, which meets it later, checks the time against this)."""
        raw = record.value() or b""
        headers = record.headers() or []
        source = Source.of(record)
        verdict = self._check(row, raw, source)
        if isinstance(verdict, StepResult):
            return self._refuse(row, verdict, record)
        if isinstance(verdict, (Purchase, ConfirmFunding)):
            self.metrics.count_in(type(verdict).__name__)
            self.metrics.count_out(self.commands, [verdict])
            admitted = row or Admitted(verdict.command_id, verdict.certificate_id)
            return Applied(admitted, row is None, [Output(
                self.commands, raw, tuple(headers), key=verdict.certificate_id.encode())])
        self.metrics.count_in("forwarded")
        self.metrics.count_out(self.commands, [_FORWARDED])
        return Applied(row, False, [Output(self.commands, raw, tuple(headers))])

    def _refuse(self, row: Admitted | None, verdict: StepResult, record: Message) -> Applied:
        rejection = verdict.rejection
        if rejection is None:
            raise ValueError("a refusal without its rejection")
        self.metrics.count_in("refused")
        self.metrics.count_rejection(rejection.reason.value)
        self.metrics.count_out(self.rejections, [rejection])
        log.info("payment system record refused", extra={
            "certificate_id": rejection.certificate_id, "command_id": rejection.command_id,
            "reason": rejection.reason.value, "partition": record.partition(),
            "offset": record.offset()})
        key = (rejection.certificate_id or "").encode() or None
        return Applied(row, False, [Output(self.rejections, _encode(rejection), key=key)])

    def _check(self, row: Admitted | None, raw: bytes, source: Source
               ) -> Purchase | ConfirmFunding | StepResult | None:
        """A capture or escrow confirmation to admit, None for another record to pass
        on, or a rejection."""
        if len(raw) > MAX_FORWARD_BYTES:
            return reject(raw, source, Reason.TOO_LARGE,
                          f"{len(raw)} bytes: larger than any command ({MAX_FORWARD_BYTES})")
        try:
            self.keyring.verify(raw, source.headers)
            peek = _peek(raw)
        except AuthError as err:
            return reject(raw, source, err.reason, err.detail)
        except (msgspec.DecodeError, RecursionError):
            return None  # signed but unreadable: the sequencer says why
        except Exception as err:  # noqa: BLE001 - any input's verdict is a rejection
            return reject(raw, source, Reason.UNPROCESSABLE,
                          f"the record could not be read: {type(err).__name__}")
        if peek.at_ms is not None and abs(source.timestamp_ms - peek.at_ms) > self.max_skew_ms:
            return reject(raw, source, Reason.STALE,
                          "at_ms is too far from the time the broker received it")
        if peek.type not in ("purchase", "confirm_funding"):
            return None
        try:
            command = _decode_registered(raw)
        except (msgspec.DecodeError, RecursionError) as err:
            return reject(raw, source, Reason.INVALID_FIELD, f"not a valid {peek.type}: {err}")
        if isinstance(command, Purchase):
            key, ref = capture_key(command.seller_id, command.payment_ref), command.payment_ref
            layout, used = "{seller_id}/{payment_ref}", Reason.PAYMENT_REF_USED
        else:
            key, ref = escrow_key(command.funding_ref), command.funding_ref
            layout, used = "/escrow/{funding_ref}", Reason.FUNDING_REF_USED
        if source.key != key:
            return reject(raw, source, Reason.KEY_MISMATCH,
                          f"its Kafka key must be {layout}", command)
        if row is not None and (row.command_id, row.certificate_id) != (
                command.command_id, command.certificate_id):
            return reject(raw, source, used, f"{ref} was reported already for "
                          f"{row.certificate_id} (command {row.command_id})", command)
        return command


def build(settings: Settings, keyring: Keyring, metrics: Metrics) -> CapturesStage:
    return CapturesStage(settings, keyring, metrics)
