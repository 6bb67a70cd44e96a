"""Wire contracts: strict commands, tolerant payments, committed schema files fresh."""

from __future__ import annotations

import msgspec
import pytest

from schemas import generate
from schemas.commands import Circulate, Command
from schemas.payments import CommissionPayout, Settlement

pytestmark = pytest.mark.unit

decode_command = msgspec.json.Decoder(Command).decode


def test_committed_schema_files_are_fresh():
    assert generate.stale_files() == [], "run `make schemas` and commit the result"


def circulate(**overrides) -> bytes:
    body = {"type": "circulate", "command_id": "c1", "certificate_id": "cert-1",
            "at_ms": 1, "account_id": "alice"}
    body.update(overrides)
    return msgspec.json.encode(body)


def test_a_good_command_decodes():
    assert decode_command(circulate(via="bob")) == Circulate(
        command_id="c1", certificate_id="cert-1", at_ms=1, account_id="alice", via="bob")


@pytest.mark.parametrize(
    ("body", "fragment"),
    [
        (circulate(unexpected=1), "unknown field"),
        (circulate(account_id=""), "length"),
        (circulate(account_id="a b"), "matching regex"),
        (circulate(at_ms=-5), ">= 0"),
        (circulate(type="teleport"), "Invalid value 'teleport'"),
        (b'{"type":"purchase","command_id":"c","certificate_id":"x","at_ms":1,'
         b'"account_id":"b","payment_ref":"p","price_minor":-1}', "unknown field"),
        (b'{"type":"attach_pool","command_id":"c","certificate_id":"x","at_ms":1,'
         b'"account_id":"f","funding_ref":"r","budget_minor":-10,"attached_minor":1,'
         b'"currency":"EUR"}', ">= 1"),
        (b'{"type":"attach_pool","command_id":"c","certificate_id":"x","at_ms":1,'
         b'"account_id":"f","funding_ref":"r","budget_minor":10000000000000000,'
         b'"attached_minor":1,"currency":"EUR"}', "<= 1000000000000000"),
        (b'{"type":"attach_pool","command_id":"c","certificate_id":"x","at_ms":1,'
         b'"account_id":"f","funding_ref":"r","budget_minor":1.5,'
         b'"attached_minor":1,"currency":"EUR"}', "Expected `int`"),
        (b'{"type":"attach_pool","command_id":"c","certificate_id":"x","at_ms":1,'
         b'"account_id":"f","funding_ref":"r","budget_minor":10,'
         b'"attached_minor":1,"currency":"eur"}', "matching regex"),
        (b"\xff\xfe not json", "malformed"),
    ],
)
def test_bad_commands_are_refused_by_the_decoder(body, fragment):
    with pytest.raises(msgspec.DecodeError) as err:
        decode_command(body)
    assert fragment in str(err.value)


def test_older_payment_consumers_ignore_fields_added_later():
    newer = {"type": "commission_payout", "v": 1, "settlement_id": "ab" * 16,
             "certificate_id": "cert-1", "command_id": "c9", "seq": 4, "at_ms": 10,
             "funding_ref": "esc", "currency": "EUR", "amount_minor": 250, "payee_id": "alice",
             "tax_region": "EU", "memo": {"nested": [1, 2]}}
    decoded = msgspec.json.Decoder(Settlement).decode(msgspec.json.encode(newer))
    assert isinstance(decoded, CommissionPayout)
    assert (decoded.payee_id, decoded.amount_minor, decoded.currency) == ("alice", 250, "EUR")


def test_every_command_and_settlement_names_its_version():
    for union in (Command, Settlement):
        for kind in union.__args__:
            assert "v" in kind.__struct_fields__, kind


def test_every_event_and_settlement_kind_has_a_topic():
    # an event no topic carries is recorded by the core and published by no one
    from schemas.events import EVENT_TYPES
    from schemas.payments import SETTLEMENT_TYPES
    from schemas.topics import TOPICS
    carried = {t for spec in TOPICS for t in spec.message_types()}
    assert [t.__name__ for t in (*EVENT_TYPES, *SETTLEMENT_TYPES) if t not in carried] == []
