"""The captures stage, below the Kafka adapter: what the payment system says is
forwarded once and only when it is its word; records are stand-ins with the
accessors the stage reads."""

from __future__ import annotations

import msgspec
import pytest

from schemas import commands as c
from schemas.rejections import Rejection
from services.captures.stage import MAX_FORWARD_BYTES, CapturesStage
from services.common.auth import DEV_KEYS, DEV_PAYMENTS_PRIVATE, Keyring
from services.common.metrics import Metrics
from services.common.settings import Settings

T = 1_700_000_000_000
ENGINE = Keyring({k: v for k, v in Keyring.parse(DEV_KEYS).keys.items()
                  if v.scope == "payments"})
PAYER = Keyring.parse(DEV_PAYMENTS_PRIVATE)
encode = msgspec.json.encode


class Record:
    def __init__(self, value: bytes, key: bytes, headers, ts: int = T) -> None:
        self._value, self._key, self._headers, self._ts = value, key, headers, ts

    def value(self) -> bytes:
        return self._value

    def key(self) -> bytes:
        return self._key

    def headers(self):
        return self._headers

    def timestamp(self) -> tuple[int, int]:
        return (2, self._ts)

    def topic(self) -> str:
        return "payment-results"

    def partition(self) -> int:
        return 0

    def offset(self) -> int:
        return 7


STAGE = CapturesStage(Settings(), ENGINE, Metrics("captures-test"))


def capture(cert: str = "s~o-00001", ref: str = "pay-1") -> c.Purchase:
    return c.Purchase(command_id=f"capture:{ref}", certificate_id=cert, at_ms=T,
                      account_id="bea", seller_id="s", payment_ref=ref, captured_minor=100,
                      currency="EUR")


def record(command: c.Command, key: bytes | None = None, signer: Keyring = PAYER,
           ts: int = T) -> Record:
    body = encode(command)
    headers = signer.sign(body, signer.signing_key("payments")) if signer else []
    if key is None:
        key = (f"s/{command.payment_ref}" if isinstance(command, c.Purchase)
               else f"/escrow/{command.funding_ref}" if isinstance(command, c.ConfirmFunding)
               else command.certificate_id).encode()
    return Record(body, key, headers, ts)


def reason(applied) -> str:
    [out] = applied.outputs
    return msgspec.json.decode(out.value, type=Rejection).reason.value


def test_a_capture_is_admitted_once_per_seller_and_reference():
    first = STAGE.apply(None, record(capture()))
    assert first.changed and [o.topic for o in first.outputs] == ["commands"]
    assert first.outputs[0].key == b"s~o-00001"  # on to its certificate's partition
    retry = STAGE.apply(first.state, record(capture()))
    assert [o.topic for o in retry.outputs] == ["commands"]  # the sequencer: a duplicate
    other = STAGE.apply(first.state, record(capture(cert="s~o-00002")))
    assert reason(other) == "payment_ref_used" and not other.changed


@pytest.mark.parametrize(("make", "why"), [
    (lambda: record(capture(), signer=None), "unsigned"),
    (lambda: record(capture(), key=b"s~o-00001"), "key_mismatch"),
    (lambda: record(capture(), ts=T + 11 * 60_000), "stale"),
    (lambda: Record(b'{"type":"report_payment","pad":"' + b"x" * MAX_FORWARD_BYTES + b'"}',
                    b"c", []), "too_large"),
])
def test_what_is_not_the_payment_systems_word_is_refused_not_forwarded(make, why):
    applied = STAGE.apply(None, make())
    assert reason(applied) == why and not applied.changed


def test_one_escrow_hold_backs_one_pool():
    # the funder attaches pools under one funding reference to two certificates: the
    # payment system's second confirmation of that hold is refused, not forwarded
    confirm = c.ConfirmFunding(command_id="cf-1", certificate_id="s~o-00001", at_ms=T,
                               funding_ref="esc", amount_minor=50, currency="EUR")
    first = STAGE.apply(None, record(confirm))
    assert first.changed and first.outputs[0].key == b"s~o-00001"
    again = STAGE.apply(first.state, record(msgspec.structs.replace(
        confirm, command_id="cf-2", certificate_id="s~o-00002")))
    assert reason(again) == "funding_ref_used" and not again.changed
    assert reason(STAGE.apply(None, record(confirm, key=b"s~o-00001"))) == "key_mismatch"


def test_its_other_messages_are_checked_and_passed_on_unchanged():
    result = c.ReportPayment(command_id=f"result:{'a' * 64}:1", certificate_id="s~o-00001",
                             at_ms=T, settlement_id="a" * 64, attempt=1, result="settled")
    rec = record(result)
    applied = STAGE.apply(None, rec)
    [out] = applied.outputs
    assert (out.topic, out.value, list(out.headers), out.key) == (
        "commands", rec.value(), rec.headers(), None)  # None: the record's own key
    forged = record(result, signer=None)
    assert reason(STAGE.apply(None, forged)) == "unsigned"
