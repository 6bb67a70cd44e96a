"""The circulation stage's intake, below the Kafka adapter: authentication and the
mapping of every bad input to its reason."""

from __future__ import annotations

import base64
import hashlib

import msgspec
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from domain import handle
from domain.draw import MissingEntropy
from schemas import commands as c
from schemas.rejections import Reason
from services.circulation.intake import sequence
from services.common.auth import DEV_KEYS, DEV_PAYMENTS_PRIVATE, Key, Keyring, signer_scope
from services.common.follower import DeterminismError, StepResult, follow
from services.common.rejection import Source
from services.common.rows import WholeRowStore  # noqa: F401 - the captures stage's rows
from tests.e2e.certificates import cert_id, setup

SEED = base64.b64encode(b"p" * 32).decode()
PAY_PUBLIC = base64.b64encode(Ed25519PrivateKey.from_private_bytes(b"p" * 32).public_key()
                              .public_bytes(Encoding.Raw, PublicFormat.Raw)).decode()
# the engine holds the payment system's public key; the payment system its private one
KEYS = Keyring.parse("gw:gateway:0123456789abcdef-gw,sys:system:0123456789abcdef-sys,"
                     f"pay:payments:ed25519-public:{PAY_PUBLIC},draw:draw:0123456789abcdef-draw")
PAYER = Keyring.parse(f"pay:payments:ed25519-private:{SEED}")
CERT = "s~o-00001"
T = 1_700_000_000_000
encode = msgspec.json.encode


def source(body: bytes, key: bytes | None = CERT.encode(), signer: Key | None = KEYS.keys["gw"],
           ts: int = T, headers: dict | None = None) -> Source:
    if headers is None:
        headers = dict(KEYS.sign(body, signer)) if signer else {}
    return Source("commands", 0, 42, ts, key, headers)


def run(body: bytes, state=None, **kw) -> StepResult:
    return sequence(state, body, source(body, **kw), KEYS, max_skew_ms=60_000,
                    draw_key=KEYS.keys["draw"])


ISSUE = c.IssueCertificate(command_id="i1", certificate_id=CERT, at_ms=T, account_id="s",
                           offer_id="s~o", serial=1, copies=1, name="n", price_minor=100,
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
        ({"signer": PAYER.keys["pay"]}, Reason.NOT_AUTHORIZED),
        ({"signer": KEYS.keys["draw"]}, Reason.NOT_AUTHORIZED),
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
        (encode({"type": "circulate", "v": 2, "command_id": "x", "certificate_id": CERT,
                 "at_ms": T, "account_id": "a"}), Reason.UNSUPPORTED_VERSION),
        (encode({"type": "circulate", "command_id": "x", "certificate_id": CERT,
                 "at_ms": T}), Reason.INVALID_FIELD),
        (encode({"type": "attach_pool", "command_id": "x", "certificate_id": CERT,
                 "at_ms": T, "account_id": "f", "funding_ref": "r", "budget_minor": 2**70,
                 "attached_minor": 1, "currency": "EUR"}), Reason.AMOUNT_OUT_OF_RANGE),
    ],
)
def test_contract_refusals(body, reason):
    assert run(body).rejection.reason is reason


def test_timer_commands_need_a_system_key():
    state = handle(None, ISSUE).state
    tick = encode(c.CheckExpiry(command_id="expire:1", certificate_id=CERT, at_ms=T))
    assert run(tick, state).rejection.reason is Reason.NOT_AUTHORIZED
    quiet = run(tick, state, signer=KEYS.keys["sys"])
    # nothing due: a verdict all the same, and no effect
    assert quiet.rejection.reason is Reason.NOTHING_DUE and not quiet.changed


def _attached_and_its_confirmation():
    """A certificate with an attached pool, and the escrow confirmation it waits for."""
    state = handle(None, msgspec.structs.replace(ISSUE, funder_id="f")).state
    attach = c.AttachPool(command_id="a1", certificate_id=CERT, at_ms=T, account_id="f",
                          funding_ref="esc", budget_minor=50, attached_minor=5, currency="EUR")
    state = run(encode(attach), state).state
    return state, encode(c.ConfirmFunding(command_id="cf", certificate_id=CERT, at_ms=T,
                                          funding_ref="esc", amount_minor=50, currency="EUR"))


def test_funding_confirmations_need_a_payments_key():
    state, confirm = _attached_and_its_confirmation()
    # a user (through the gateway) cannot say the escrow is there
    assert run(confirm, state).rejection.reason is Reason.NOT_AUTHORIZED
    assert not state.pool.funding_confirmed
    assert run(confirm, state, signer=PAYER.keys["pay"]).accepted.seq == 3


def test_draws_travel_on_the_accepted_record_and_followers_need_no_secret():
    state = handle(None, msgspec.structs.replace(ISSUE, funder_id="f")).state
    follower = follow(None, c.AcceptedCommand(seq=1, received_ms=T, command=msgspec.structs
                                              .replace(ISSUE, funder_id="f"))).state
    policy = c.AcquisitionPolicy(amount=c.RandomAmount(min_minor=1, max_minor=40))
    commands = [
        (c.AttachPool(command_id="a1", certificate_id=CERT, at_ms=T, account_id="f",
                      funding_ref="esc", budget_minor=50, attached_minor=40, currency="EUR",
                      acquisition=policy), "gw"),
        (c.ConfirmFunding(command_id="cf", certificate_id=CERT, at_ms=T, funding_ref="esc",
                          amount_minor=50, currency="EUR"), "pay"),
        (c.PostCertificate(command_id="p", certificate_id=CERT, at_ms=T, account_id="s"), "gw"),
        (c.Circulate(command_id="x", certificate_id=CERT, at_ms=T, account_id="a"), "gw"),
    ]
    for command, signer in commands:
        result = run(encode(command), state, signer=(PAYER if signer == "pay" else KEYS).keys[signer])
        state, accepted = result.state, result.accepted
        # the attach itself draws nothing; every command after it may
        drew = not isinstance(command, c.AttachPool)
        assert (accepted.draw_key_id == "draw") is drew
        assert (accepted.draw_seed is not None and len(accepted.draw_seed) == 64) is drew
        before = msgspec.msgpack.decode(msgspec.msgpack.encode(follower), type=type(follower))
        follower = follow(follower, accepted).state
    assert follower.pool.acquired == state.pool.acquired
    assert 1 <= state.pool.acquired["a"] <= 40
    # without the seed a follower refuses to apply it rather than guess a draw
    with pytest.raises(MissingEntropy):
        follow(before, msgspec.structs.replace(accepted, draw_seed=None, draw_key_id=None))


def test_exact_replay_is_refused_as_duplicate_and_changes_nothing():
    state = handle(None, ISSUE).state
    before = msgspec.msgpack.encode(state)
    result = run(encode(ISSUE), state)
    assert result.rejection.reason is Reason.DUPLICATE and result.duplicate
    assert result.rejection.first_seq == 1  # the first outcome: accepted as seq 1
    assert msgspec.msgpack.encode(state) == before


def test_a_retry_stamped_later_by_the_gateway_is_a_duplicate_not_a_conflict():
    state = handle(None, ISSUE).state
    retry = msgspec.structs.replace(ISSUE, at_ms=T + 3_000)
    result = run(encode(retry), state, ts=T + 3_000)
    assert result.rejection.reason is Reason.DUPLICATE and result.rejection.first_seq == 1


def test_followers_apply_in_sequence_and_detect_disagreement():
    accepted = run(encode(ISSUE)).accepted
    state = follow(None, accepted).state
    assert follow(state, accepted).duplicate  # a replay of seq 1
    post = c.PostCertificate(command_id="p", certificate_id=CERT, at_ms=T, account_id="s")
    bogus = c.AcceptedCommand(seq=2, received_ms=T, command=post)  # refused by the core
    with pytest.raises(DeterminismError):
        follow(state, bogus)
    gap = c.AcceptedCommand(seq=5, received_ms=T, command=post)
    with pytest.raises(DeterminismError):
        follow(state, gap)


def test_counters_that_have_not_moved_are_there_at_zero():
    # a panel or alert over a counter that never moved shows 0, not "No data"
    from prometheus_client import generate_latest

    from services.common.metrics import Metrics
    text = generate_latest(Metrics("circulation").registry).decode()
    for line in ('commission_determinism_errors_total{service="circulation"} 0.0',
                 'commission_rounds_aborted_total{service="circulation"} 0.0',
                 'commission_rejections_total{reason="bad_signature",service="circulation"} 0.0',
                 'commission_rejections_total{reason="payment_parked",service="circulation"} 0.0'):
        assert line in text, line


def _signed_run(commands: list[c.Command], broker_ms: int, state=None):
    """Each command signed with the key its kind needs, appended at ``broker_ms``."""
    results = []
    for command in commands:
        body = encode(command)
        key = (PAYER if signer_scope(command) == "payments" else KEYS).key_for(command)
        result = sequence(state, body, source(body, key=command.certificate_id.encode(),
                                              signer=key, ts=broker_ms), KEYS,
                          max_skew_ms=600_000, draw_key=KEYS.keys["draw"])
        state = result.state if result.changed else state
        results.append(result)
    return state, results


@pytest.mark.parametrize("signer_ahead_ms", [0, 540_000])
def test_the_clock_is_the_brokers_so_a_fast_signer_cannot_end_a_hold_or_a_time_limit_early(
        signer_ahead_ms):
    cert = cert_id("clock")
    t = T + signer_ahead_ms  # what the signers stamp: up to 9 minutes ahead, accepted
    commands = [*setup(cert, t, price_minor=1_000, budget_minor=500, attached_minor=100,
                       time_limit_s=300, hold_s=300),
                c.Circulate(command_id="s1", certificate_id=cert, at_ms=t, account_id="ann")]
    state, results = _signed_run(commands, broker_ms=T)
    assert all(r.rejection is None for r in results)
    # every command happened when the broker appended it, whatever its stamp said
    assert {r.accepted.command.at_ms for r in results} == {T} and state.clock_ms == T
    # 9 minutes ahead, the time limit (5 minutes) would be over: it is not, at T + 1 s
    _, [early] = _signed_run([c.CheckExpiry(command_id="x1", certificate_id=cert, at_ms=t + 1_000)],
                             broker_ms=T + 1_000, state=state)
    assert early.rejection is not None and early.rejection.reason == Reason.NOTHING_DUE
    buy = c.Purchase(command_id="b1", certificate_id=cert, at_ms=t + 1_000, account_id="bea",
                     seller_id="seller", payment_ref="p1", captured_minor=1_000, currency="EUR")
    state, _ = _signed_run([buy], broker_ms=T + 1_000, state=state)
    assert state.held_until_ms == T + 1_000 + 300_000
    # nor is the hold: a release stamped after its end, appended before it, is refused
    release = c.ReleaseHold(command_id="r1", certificate_id=cert, at_ms=t + 2_000)
    _, [refused] = _signed_run([release], broker_ms=T + 2_000, state=state)
    assert refused.rejection is not None and refused.accepted is None
    # ... and accepted once the broker's time is past it
    _, [released] = _signed_run([release], broker_ms=T + 1_000 + 300_000, state=state)
    assert released.rejection is None and released.accepted is not None


# --- trust boundaries (issue #22) ------------------------------------------------------


def test_the_payment_systems_key_is_public_only_in_the_engine():
    # a shared secret for the payment system would let the engine forge its word
    with pytest.raises(ValueError, match="must be Ed25519"):
        Keyring.parse("pay:payments:0123456789abcdef-pay")
    # an engine service refuses to hold the payment system's private key
    with pytest.raises(SystemExit, match="private"):
        Keyring.parse(f"{DEV_KEYS},{DEV_PAYMENTS_PRIVATE}").for_engine()
    assert Keyring.parse(DEV_KEYS).for_engine().first("payments").kind == "ed25519-public"
    # a public key verifies, it cannot sign
    with pytest.raises(ValueError, match="public"):
        Keyring.sign(b"x", KEYS.keys["pay"])


def test_a_confirmation_signed_with_another_ed25519_key_under_its_id_is_refused():
    state, confirm = _attached_and_its_confirmation()
    other = Key("pay", "payments", b"q" * 32, "ed25519-private")
    assert run(confirm, state, signer=other).rejection.reason is Reason.BAD_SIGNATURE
    assert not state.pool.funding_confirmed


def _posted(price: int = 1_000) -> object:
    state = None
    for command in setup(CERT, T, price_minor=price, budget_minor=500, attached_minor=100):
        state = handle(state, msgspec.structs.replace(command, certificate_id=CERT)).state
    return state


def _capture(**overrides) -> c.Purchase:
    fields = {"command_id": "capture:p1", "certificate_id": CERT, "at_ms": T,
              "account_id": "bea", "seller_id": "s", "payment_ref": "p1",
              "captured_minor": 1_000, "currency": "EUR"} | overrides
    return c.Purchase(**fields)


def test_a_purchase_is_the_payment_systems_word_not_the_buyers():
    state = _posted()
    # a logged-in buyer's purchase (signed by the gateway) is refused: nothing held
    refused = run(encode(_capture()), state)
    assert refused.rejection.reason is Reason.NOT_AUTHORIZED and not refused.changed
    assert state.status == "posted"
    accepted = run(encode(_capture()), state, signer=PAYER.keys["pay"])
    assert accepted.rejection is None and accepted.state.status == "purchased"


@pytest.mark.parametrize(("overrides", "reason"), [
    ({"captured_minor": 999}, Reason.PAYMENT_BELOW_PRICE),
    ({"currency": "USD"}, Reason.PAYMENT_CURRENCY_MISMATCH),
    ({"seller_id": "mallory"}, Reason.PAYMENT_SELLER_MISMATCH),
])
def test_a_capture_that_does_not_pay_this_certificate_is_refused(overrides, reason):
    state = _posted()
    result = run(encode(_capture(**overrides)), state, signer=PAYER.keys["pay"])
    assert result.rejection.reason is reason and not result.changed
    assert state.status == "posted" and state.buyer_id is None


def test_a_refund_reference_refunds_once_whatever_command_id_carries_it():
    state = run(encode(_capture()), _posted(), signer=PAYER.keys["pay"]).state
    first = c.Refund(command_id="rf1", certificate_id=CERT, at_ms=T, by="seller", account_id="s",
                     amount_minor=100, refund_ref="ref-1")
    state = run(encode(first), state).state
    again = msgspec.structs.replace(first, command_id="rf2")
    result = run(encode(again), state)
    assert result.rejection.reason is Reason.REFUND_REF_USED and not result.changed
    assert state.refunded_minor == 100


def test_a_huge_record_gets_a_small_rejection_with_the_digest_of_the_whole():
    body = b'{"type":"circulate","pad":"' + b"x" * 800_000 + b'"}'
    result = run(body, signer=None)
    r = result.rejection
    assert r.reason is Reason.UNSIGNED
    assert r.original == body[:4096] and r.original_size == len(body)
    assert r.original_sha256 == hashlib.sha256(body).hexdigest()
    assert len(encode(r)) < 8_000  # base64 of 4 KiB and the rest


@pytest.mark.parametrize("depth", [10_000, 200_000])
def test_deep_nesting_is_a_rejection_not_a_crash(depth):
    body = b'{"type":"circulate","x":' + b"[" * depth + b"]" * depth + b"}"
    assert run(body).rejection.reason is Reason.UNDECODABLE


def test_a_timers_repeat_gets_a_duplicate_verdict_like_any_other():
    # every command gets exactly one verdict, the timer's too (issue #24, "Also")
    cert = cert_id("timer-repeat")
    commands = [*setup(cert, T, price_minor=1_000, budget_minor=500, attached_minor=100,
                       hold_s=60),
                c.Purchase(command_id="b1", certificate_id=cert, at_ms=T, account_id="bea",
                           seller_id="seller", payment_ref="p1", captured_minor=1_000,
                           currency="EUR")]
    state, _ = _signed_run(commands, broker_ms=T)
    release = c.ReleaseHold(command_id=f"release:{T + 60_000}", certificate_id=cert,
                            at_ms=T + 60_000)
    state, [first] = _signed_run([release], broker_ms=T + 60_000, state=state)
    assert first.accepted is not None
    _, [again] = _signed_run([release], broker_ms=T + 61_000, state=state)
    assert again.rejection.reason is Reason.DUPLICATE and again.duplicate
    assert again.rejection.first_seq == first.accepted.seq and not again.changed
