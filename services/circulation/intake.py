"""The sequencer's intake, without Kafka: authenticate, decode, validate, call the
core, and say what to publish.

Raw signed command bytes become either an :class:`AcceptedCommand` (plus the
sequencer's own events) or a :class:`Rejection` with a reason. The other stages
apply the accepted commands with ``services.common.follower.follow``, which must
reach the same verdict.
"""

from __future__ import annotations

import msgspec

from domain import Accepted, CertificateState, Duplicate, Rejected, handle
from domain.draw import entropy_at
from schemas.commands import COMMAND_VERSION, AcceptedCommand, Command
from schemas.rejections import Reason
from services.common.auth import AuthError, Key, Keyring, signer_scope
from services.common.follower import StepResult
from services.common.rejection import Source, reject

_decode_command = msgspec.json.Decoder(Command).decode
_decode_any = msgspec.json.Decoder().decode
# the longest what the payment system says may wait (in the captures stage) before
# the sequencer sees it; beyond it, a replay
PAYMENT_SYSTEM_MAX_DELAY_MS = 7 * 24 * 3600 * 1000


def _validation_reason(raw: bytes, error: msgspec.ValidationError) -> tuple[Reason, str]:
    try:
        body = _decode_any(raw)
    except (msgspec.DecodeError, RecursionError):
        return Reason.UNDECODABLE, "the command is not valid JSON"
    if isinstance(body, dict) and body.get("v", COMMAND_VERSION) != COMMAND_VERSION:
        return Reason.UNSUPPORTED_VERSION, f"schema version {body.get('v')!r} is not supported"
    text = str(error)
    if "_minor" in text and ("Expected `int`" in text or ">=" in text or "<=" in text):
        return Reason.AMOUNT_OUT_OF_RANGE, text
    return Reason.INVALID_FIELD, text


def decode(raw: bytes, source: Source, keyring: Keyring, max_skew_ms: int
           ) -> Command | StepResult:
    """Authenticate, then decode and validate. The signature is checked first: an
    unauthenticated sender learns nothing about what the decoder thinks.

    Whatever the bytes are, the answer is a command or a rejection: an error while
    reading them (deep nesting that exhausts the stack, anything unforeseen) is the
    record's rejection, never the stage's crash, so no record can stop the pipeline.
    (What the core then does with a valid command is deterministic: an error there
    is a bug and parks the partition, services/common/runner.py.)"""
    try:
        key = keyring.verify(raw, source.headers)
        command = _decode_command(raw)
    except AuthError as err:
        return reject(raw, source, err.reason, err.detail)
    except msgspec.ValidationError as err:
        reason, detail = _validation_reason(raw, err)
        return reject(raw, source, reason, detail)
    except (msgspec.DecodeError, RecursionError):
        return reject(raw, source, Reason.UNDECODABLE, "the command is not valid JSON")
    except Exception as err:  # noqa: BLE001 - any input's verdict is a rejection
        return reject(raw, source, Reason.UNPROCESSABLE,
                      f"the record could not be read: {type(err).__name__}")
    if command.v != COMMAND_VERSION:
        return reject(raw, source, Reason.UNSUPPORTED_VERSION,
                      f"schema version {command.v} is not supported", command)
    if source.key is None or source.key.decode("utf-8", "replace") != command.certificate_id:
        return reject(raw, source, Reason.KEY_MISMATCH,
                      "the Kafka key must be the command's certificate id", command)
    if key.scope != signer_scope(command):
        return reject(raw, source, Reason.NOT_AUTHORIZED,
                      f"a {key.scope} key cannot sign this command", command)
    # What the payment system says was checked against the time payment-results
    # received it (the captures stage); here it may arrive much later, after an outage
    # of that stage, and must not be refused for the wait: only a replay older than
    # PAYMENT_SYSTEM_MAX_DELAY_MS is (each is also applied once by its ids).
    limit = PAYMENT_SYSTEM_MAX_DELAY_MS if key.scope == "payments" else max_skew_ms
    if abs(source.timestamp_ms - command.at_ms) > limit:
        return reject(raw, source, Reason.STALE,
                      "at_ms is too far from the time the broker received the command", command)
    return command


def sequence(state: CertificateState | None, raw: bytes, source: Source, keyring: Keyring,
             max_skew_ms: int, draw_key: Key) -> StepResult:
    """The circulation stage: one raw command in, a verdict out.

    When the pool may draw a random amount, the entropy comes from ``draw_key``'s
    secret and the seq the command would get (domain.draw); it travels on the
    accepted record so the other stages apply the same amounts without the secret."""
    decoded = decode(raw, source, keyring, max_skew_ms)
    if isinstance(decoded, StepResult):
        return decoded
    # The engine's clock is the broker's: the time `commands` appended the record
    # (LogAppendTime, checked at start), never the signer's. A signer's ``at_ms``
    # only has to be within max_skew_ms of it (else ``stale``); a gateway with a
    # fast clock can no longer end a time limit or a hold early, nor a slow one
    # buy after a deadline. The accepted record carries this time, so every stage
    # applies the command at the same moment.
    command = msgspec.structs.replace(decoded, at_ms=source.timestamp_ms)
    entropy = entropy_at(draw_key.secret, state, command.certificate_id)
    outcome = handle(state, command, entropy)
    if isinstance(outcome, Rejected):
        return reject(raw, source, outcome.reason, outcome.detail, command)
    if isinstance(outcome, Duplicate):
        # every repeat gets its verdict, the timer's too (it may fire twice before its
        # first command comes back accepted): a duplicate, with the first outcome
        first = "" if outcome.first_seq is None else f" (accepted as seq {outcome.first_seq})"
        result = reject(raw, source, Reason.DUPLICATE,
                        f"this command id was applied already{first}; it has no second effect",
                        command)
        assert result.rejection is not None
        result.rejection = msgspec.structs.replace(result.rejection, first_seq=outcome.first_seq)
        result.duplicate = True
        return result
    assert isinstance(outcome, Accepted) and outcome.events
    return StepResult(
        state=outcome.state, changed=True,
        accepted=AcceptedCommand(
            seq=outcome.state.seq, received_ms=source.timestamp_ms, command=command,
            draw_key_id=draw_key.key_id if entropy else None,
            draw_seed=entropy.hex() if entropy else None),
        events=outcome.events, settlements=outcome.settlements,
    )


