"""The circulation stage's intake, below the Kafka adapter: authentication and the
mapping of every bad input to its reason."""

from __future__ import annotations

import msgspec
import pytest

from domain import handle
from schemas import commands as c
from schemas.rejections import Reason
from services.common.auth import Key, Keyring
from services.common.steps import DeterminismError, Source, StepResult, follow, sequence

KEYS = Keyring.parse("gw:gateway:0123456789abcdef-gw,sys:system:0123456789abcdef-sys")
T = 1_700_000_000_000
encode = msgspec.json.encode


def source(body: bytes, key: bytes | None = b"cert-1", signer: Key | None = KEYS.keys["gw"],
           ts: int = T, headers: dict | None = None) -> Source:
    if headers is None:
        headers = dict(KEYS.sign(body, signer)) if signer else {}
    return Source("commands", 0, 42, ts, key, headers)


def run(body: bytes, state=None, **kw) -> StepResult:
    return sequence(state, body, source(body, **kw), KEYS, max_skew_ms=60_000)


ISSUE = c.IssueCertificate(command_id="i1", certificate_id="cert-1", at_ms=T, account_id="s",
                           offer_id="o", serial=1, copies=1, name="n", price_minor=100,
                           currency="EUR")


def test_keyring_rejects_weak_or_unknown_configuration():
    with pytest.raises(ValueError):
        Keyring.parse("k:gateway:short")
    with pytest.raises(ValueError):
        Keyring.parse("k:admin:0123456789abcdef0")
    assert "0123456789abcdef-gw" not in repr(KEYS)


def test_a_signed_command_is_accepted_and_sequenced():
    result = run(encode(ISSUE))
    assert result.rejection is None and result.changed
    assert (result.accepted.seq, result.accepted.command) == (1, ISSUE)
    assert result.accepted.received_ms == T


@pytest.mark.parametrize(
    ("kwargs", "reason"),
    [
        ({"signer": None}, Reason.UNSIGNED),
        ({"headers": {"key-id": b"nobody", "signature": b"00"}}, Reason.UNKNOWN_KEY),
        ({"signer": Key("gw", "gateway", b"forged-forged-forged")}, Reason.BAD_SIGNATURE),
        ({"signer": KEYS.keys["sys"]}, Reason.NOT_AUTHORIZED),
        ({"key": b"cert-2"}, Reason.KEY_MISMATCH),
        ({"key": None}, Reason.KEY_MISMATCH),
        ({"ts": T + 61_000}, Reason.STALE),
    ],
)
def test_transport_and_authentication_refusals(kwargs, reason):
    result = run(encode(ISSUE), **kwargs)
    assert result.rejection.reason is reason
    assert result.state is None and not result.changed and result.accepted is None
    assert result.rejection.original == encode(ISSUE)
    assert (result.rejection.source_topic, result.rejection.source_offset) == ("commands", 42)


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (b"{not json", Reason.UNDECODABLE),
        (encode({"type": "circulate", "v": 2, "command_id": "x", "certificate_id": "cert-1",
                 "at_ms": T, "account_id": "a"}), Reason.UNSUPPORTED_VERSION),
        (encode({"type": "circulate", "command_id": "x", "certificate_id": "cert-1",
                 "at_ms": T}), Reason.INVALID_FIELD),
        (encode({"type": "attach_pool", "command_id": "x", "certificate_id": "cert-1",
                 "at_ms": T, "account_id": "f", "funding_ref": "r", "budget_minor": 2**70,
                 "attached_minor": 1, "currency": "EUR"}), Reason.AMOUNT_OUT_OF_RANGE),
    ],
)
def test_contract_refusals(body, reason):
    assert run(body).rejection.reason is reason


def test_timer_commands_need_a_system_key_and_their_replays_are_silent():
    state = handle(None, ISSUE).state
    tick = encode(c.CheckExpiry(command_id="expire:1", certificate_id="cert-1", at_ms=T))
    assert run(tick, state).rejection.reason is Reason.NOT_AUTHORIZED
    quiet = run(tick, state, signer=KEYS.keys["sys"])
    assert quiet.rejection is None and not quiet.changed  # nothing due: no effect


def test_exact_replay_is_refused_as_duplicate_and_changes_nothing():
    state = handle(None, ISSUE).state
    before = msgspec.msgpack.encode(state)
    result = run(encode(ISSUE), state)
    assert result.rejection.reason is Reason.DUPLICATE and result.duplicate
    assert msgspec.msgpack.encode(state) == before


def test_followers_apply_in_sequence_and_detect_disagreement():
    accepted = run(encode(ISSUE)).accepted
    state = follow(None, accepted).state
    assert follow(state, accepted).duplicate  # a replay of seq 1
    post = c.PostCertificate(command_id="p", certificate_id="cert-1", at_ms=T, account_id="s")
    bogus = c.AcceptedCommand(seq=2, received_ms=T, command=post)  # refused by the core
    with pytest.raises(DeterminismError):
        follow(state, bogus)
    gap = c.AcceptedCommand(seq=5, received_ms=T, command=post)
    with pytest.raises(DeterminismError):
        follow(state, gap)
