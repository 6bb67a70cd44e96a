"""Every illegal step is refused with a typed reason and changes nothing."""

from __future__ import annotations

import msgspec
import pytest

from domain import Accepted, Duplicate, Rejected, handle, issue_offer
from domain.draw import draw_between, entropy_for
from schemas import commands as c
from schemas.events import AcquisitionClaimable, CommissionAcquired, PoolReplenished, PoolWithdrawn
from schemas.rejections import Reason
from tests.unit.domain.scenario import CERT, DRAW_SECRET, OFFER, Scenario

pytestmark = pytest.mark.unit


def posted(**pool) -> Scenario:
    s = Scenario()
    s.setup(price_minor=10_000, budget_minor=1_000, attached_minor=100, **pool)
    return s


def test_offer_of_n_copies_is_n_certificates_with_serials():
    cmds = issue_offer(offer_id="s~kettle", command_id="issue-7", seller_id="s", name="Kettle",
                       price_minor=2_500, currency="EUR", copies=3, at_ms=0)
    assert [(x.certificate_id, x.serial, x.copies) for x in cmds] == [
        ("s~kettle-00001", 1, 3), ("s~kettle-00002", 2, 3), ("s~kettle-00003", 3, 3)]
    states = [handle(None, x).state for x in cmds]
    assert len({s.certificate_id for s in states}) == 3
    # what the core builds must pass the wire contract's validation, too
    decode = msgspec.json.Decoder(c.Command).decode
    assert [decode(msgspec.json.encode(x)) for x in cmds] == cmds


def test_unknown_certificate():
    out = handle(None, c.Circulate(command_id="x", certificate_id="nope", at_ms=0, account_id="a"))
    assert out == Rejected(Reason.UNKNOWN_CERTIFICATE, out.detail)


def test_lifecycle_refusals():
    s = Scenario()
    s.must(c.IssueCertificate, account_id="seller", offer_id=OFFER, serial=1, copies=1,
           name="n", price_minor=100, currency="USD", funder_id="f")
    assert s.refused(c.IssueCertificate, account_id="seller", offer_id=OFFER, serial=1,
                     copies=1, name="n", price_minor=100, currency="USD").reason \
        is Reason.ALREADY_ISSUED
    assert s.refused(c.PostCertificate, account_id="seller").reason is Reason.POOL_NOT_ATTACHED
    assert s.refused(c.Circulate, account_id="a").reason is Reason.NOT_POSTED
    assert s.refused(c.Purchase, account_id="b", **s.paid("p")).reason is Reason.NOT_POSTED
    pool = dict(account_id="f", funding_ref="e", budget_minor=50, currency="USD")
    assert s.refused(c.AttachPool, attached_minor=60, **pool).reason is Reason.ATTACHED_EXCEEDS_BUDGET
    assert s.refused(c.AttachPool, attached_minor=10, **{**pool, "currency": "EUR"}).reason \
        is Reason.CURRENCY_MISMATCH
    assert s.refused(c.AttachPool, attached_minor=10, acquisition=c.AcquisitionPolicy(
        amount=c.RandomAmount(min_minor=9, max_minor=3)), **pool).reason is Reason.INVALID_RANGE
    s.must(c.AttachPool, attached_minor=10, **pool)
    assert s.refused(c.AttachPool, attached_minor=10, **pool).reason is Reason.POOL_ALREADY_ATTACHED
    assert s.refused(c.PostCertificate, account_id="intruder").reason is Reason.NOT_AUTHORIZED
    assert s.refused(c.PostCertificate, account_id="seller").reason \
        is Reason.FUNDING_NOT_CONFIRMED
    s.confirm_funding(50, funding_ref="e")
    s.must(c.PostCertificate, account_id="seller")
    assert s.refused(c.PostCertificate, account_id="seller").reason is Reason.ALREADY_POSTED
    assert s.refused(c.Purchase, account_id="seller", **s.paid("p")).reason is Reason.BUYER_IS_SELLER
    s.purchase()
    assert s.refused(c.Purchase, account_id="b", **s.paid("p")).reason is Reason.CERTIFICATE_PURCHASED
    assert s.refused(c.Circulate, account_id="late").reason is Reason.CERTIFICATE_PURCHASED


def test_circulation_refusals():
    s = posted()
    s.circulate("a")
    assert s.refused(c.Circulate, account_id="a").reason is Reason.ALREADY_HOLDER
    assert s.refused(c.Circulate, account_id="b", via="stranger").reason is Reason.VIA_NOT_IN_CHAIN
    assert s.refused(c.Circulate, account_id="b", via="b").reason is Reason.VIA_NOT_IN_CHAIN
    s.circulate("b", via="a")
    s.circulate("a", via="b")  # back to a: allowed, but a gains only once
    assert s.state.pool.acquired == {"a": 100, "b": 100}
    assert s.state.circulations == 3


def test_seller_and_funder_gain_nothing_on_their_own_certificate():
    s = posted()
    s.circulate("seller")
    s.circulate("funder")
    assert s.of(CommissionAcquired) == []
    s.circulate("user")
    assert s.state.pool.acquired == {"user": 100}


def test_same_command_id_twice_has_one_effect_and_another_body_is_refused():
    s = posted()
    first = s.must(c.Circulate, command_id="share-1", account_id="a")
    again = s.send(c.Circulate, command_id="share-1", account_id="a", at_ms=first.events[0].at_ms)
    assert again == Duplicate("share-1", first_seq=first.state.seq)
    forged = s.refused(c.Circulate, command_id="share-1", account_id="b")
    assert forged.reason is Reason.DUPLICATE_CONFLICT
    assert s.state.pool.acquired == {"a": 100}


def test_acquisition_amounts_never_exceed_the_attached_amount():
    fixed = posted(acquisition=c.AcquisitionPolicy(amount=c.FixedAmount(amount_minor=500)),
                   replenish=c.ReplenishNone())
    fixed.circulate("a")
    assert fixed.state.pool.acquired == {"a": 100}
    fixed.circulate("b")  # nothing attached any more: b gains nothing, and may later
    assert fixed.state.pool.acquired == {"a": 100}

    pct = posted(acquisition=c.AcquisitionPolicy(amount=c.PercentOfAttached(basis_points=2_550)))
    pct.circulate("a")
    assert pct.state.pool.acquired == {"a": 25}  # 25.5 % of 100, rounded down


def test_random_amount_is_drawn_from_the_sequencers_secret_at_the_seq():
    policy = c.AcquisitionPolicy(amount=c.RandomAmount(min_minor=10, max_minor=90))
    amounts = []
    for command_id in ("share-xyz", "share-abc"):
        s = posted(acquisition=policy)
        out = s.must(c.Circulate, command_id=command_id, account_id="a")
        amounts.append(s.state.pool.acquired["a"])
    # seq 5 (issue, attach, confirm, post, circulate), whatever the command id
    expected = draw_between(10, 90, entropy_for(DRAW_SECRET, CERT, 5), "acquire")
    assert out.state.seq == 5
    assert amounts[0] == amounts[1] == expected
    assert 10 <= amounts[0] <= 90


def test_claim_trigger_waits_for_the_account_to_claim():
    s = posted(acquisition=c.AcquisitionPolicy(trigger="claim"))
    s.circulate("a")
    assert [e.account_id for e in s.of(AcquisitionClaimable)] == ["a"]
    assert s.state.pool.acquired == {}
    assert s.refused(c.Claim, account_id="b").reason is Reason.NOTHING_TO_CLAIM
    s.must(c.Claim, account_id="a")
    assert s.state.pool.acquired == {"a": 100}
    assert s.refused(c.Claim, account_id="a").reason is Reason.NOTHING_TO_CLAIM
    s.purchase()
    assert s.payouts() == {"a": 100}


@pytest.mark.parametrize(
    ("policy", "expected_replenishments"),
    [
        (c.ReplenishMatch(), [100, 100, 100]),
        (c.ReplenishMatch(from_second_circulation=True), [100, 100]),
        (c.ReplenishFixed(amount_minor=30), [30, 30, 30]),
        (c.ReplenishNone(), []),
    ],
)
def test_replenishment_policies(policy, expected_replenishments):
    s = posted(acquisition=c.AcquisitionPolicy(amount=c.FixedAmount(amount_minor=100)),
               replenish=policy)
    for account in ("a", "b", "c"):
        s.circulate(account)
    assert [e.amount_minor for e in s.of(PoolReplenished)] == expected_replenishments


def test_replenishment_never_goes_beyond_the_reserve():
    s = Scenario()
    s.setup(price_minor=10_000, budget_minor=250, attached_minor=100)  # reserve 150
    for account in ("a", "b", "c"):
        s.circulate(account)
    assert [e.amount_minor for e in s.of(PoolReplenished)] == [100, 50]
    assert s.state.pool.acquired == {"a": 100, "b": 100, "c": 50}
    assert s.state.pool.reserve_minor == 0 and s.state.pool.attached_minor == 0


def test_freeze_keeps_pending_payable_and_releases_the_rest():
    s = posted(thresholds=c.Thresholds(max_circulations=3, on_withdraw="freeze"))
    s.circulate("a")
    s.circulate("b")
    s.circulate("c")  # third circulation meets the threshold: c gains nothing
    assert s.of(PoolWithdrawn)[0].mode == "freeze"
    assert s.releases() == [("funder", 1_000 - 200, "withdrawal")]
    assert s.refused(c.Circulate, account_id="d").reason is Reason.POOL_WITHDRAWN
    s.purchase()
    assert s.payouts() == {"a": 100, "b": 100}


def test_clock_is_monotonic_per_certificate():
    s = posted(thresholds=c.Thresholds(max_display_s=60))
    s.advance(60_000)
    s.circulate("a")  # display time met: withdrawn, a gains nothing
    assert s.of(PoolWithdrawn)[0].threshold == "display_time"
    late = s.state.clock_ms
    # a command stamped earlier than the certificate's clock is applied at its clock
    out = s.must(c.Purchase, account_id="b", **s.paid("p"), at_ms=late - 50_000)
    assert out.events[0].at_ms == late


def test_refused_command_leaves_bytes_unchanged():
    s = posted()
    s.circulate("a")
    before = msgspec.msgpack.encode(s.state)
    for kind, fields in [(c.Circulate, {"account_id": "a"}),
                         (c.Claim, {"account_id": "a"}),
                         (c.PostCertificate, {"account_id": "seller"})]:
        assert isinstance(s.send(kind, **fields), Rejected)
    assert msgspec.msgpack.encode(s.state) == before
    assert isinstance(s.send(c.Circulate, account_id="b"), Accepted)
