"""After the purchase (issue #13): the hold, refunds within and after it, and
certificates that end unsold. Every figure below is worked out by hand from the
rule written next to it, never read back from the core."""

from __future__ import annotations

import hashlib

import pytest

from schemas import commands as c
from schemas.events import CertificateEnded, CertificatePurchased, HoldReleased, PurchaseRefunded
from schemas.payments import BuyerRefund, Clawback
from schemas.rejections import Reason
from tests.unit.domain.scenario import Scenario

pytestmark = pytest.mark.unit

HOUR_MS = 3_600_000


def sold(*, hold_s: int = 3_600, price: int = 10_000, amounts=(100, 100), **pool) -> Scenario:
    """a and b acquire ``amounts`` (fixed per account), then the buyer pays ``price``.
    Budget 1,000, attached 300, replenished by what is acquired."""
    s = Scenario()
    accounts = ["a", "b", "c", "d"][:len(amounts)]
    s.setup(price_minor=price, budget_minor=1_000, attached_minor=300, hold_s=hold_s,
            acquisition=c.AcquisitionPolicy(amount=c.FixedAmount(amount_minor=max(amounts))),
            **pool)
    for account, amount in zip(accounts, amounts, strict=True):
        if amount != max(amounts):
            # a smaller acquisition: the attached amount is only that much then
            s.state.pool.attached_minor, s.state.pool.reserve_minor = (
                amount, s.state.pool.reserve_minor + s.state.pool.attached_minor - amount)
        s.circulate(account)
    s.purchase()
    return s


def refund(s: Scenario, amount: int, *, by: str = "seller", account: str | None = "seller",
           ref: str = "rf-1", chargeback: str | None = None):
    return s.must(c.Refund, by=by, account_id=account, amount_minor=amount, refund_ref=ref,
                  chargeback_reason=chargeback)


def chargeback(s: Scenario, amount: int, ref: str = "cb-1"):
    """The payment system reports a chargeback (the card network's reason code)."""
    return refund(s, amount, by="payment_system", account=None, ref=ref, chargeback="4837")


def of_kind(s: Scenario, kind: type) -> list[tuple[str, int]]:
    return [(x.payee_id, x.amount_minor) for x in s.settlements if isinstance(x, kind)]


# --- the hold ------------------------------------------------------------------------


def test_a_purchase_holds_payouts_and_the_price_until_the_hold_ends():
    s = sold()
    purchased = s.of(CertificatePurchased)[0]
    assert purchased.held_minor == 200 and purchased.paid_out_minor == 0
    assert purchased.held_until_ms == s.now_ms + HOUR_MS
    assert [(h.account_id, h.amount_minor) for h in purchased.held] == [("a", 100), ("b", 100)]
    # the unspent budget goes back at once: 1,000 - 200 acquired
    assert s.releases() == [("funder", 800, "purchase")]
    assert s.payouts() == {} and s.seller_payments() == []  # nothing payable yet
    s.advance(HOUR_MS - 1)
    assert s.refused(c.ReleaseHold, command_id="release:early").reason is Reason.NOTHING_DUE
    s.advance(1)
    s.must(c.ReleaseHold, command_id="release:1")
    assert s.payouts() == {"a": 100, "b": 100}
    assert s.seller_payments() == [("seller", 10_000)]
    assert s.of(HoldReleased)[0].paid_out_minor == 200
    # released once: a second release finds nothing to do
    assert s.refused(c.ReleaseHold, command_id="release:2").reason is Reason.NOTHING_DUE


def test_no_hold_pays_at_the_purchase():
    s = sold(hold_s=0)
    assert s.payouts() == {"a": 100, "b": 100}
    assert s.seller_payments() == [("seller", 10_000)]
    assert s.of(CertificatePurchased)[0].held_until_ms is None


# --- refunds within the hold -----------------------------------------------------------


def test_a_whole_refund_within_the_hold_voids_every_payout_and_returns_the_budget():
    s = sold()
    refund(s, 10_000)
    assert s.state.status == "refunded"
    assert of_kind(s, BuyerRefund) == [("buyer", 10_000)]
    # 800 at the purchase, then the 200 that was held
    assert s.releases() == [("funder", 800, "purchase"), ("funder", 200, "refund")]
    s.advance(HOUR_MS)
    assert s.refused(c.ReleaseHold, command_id="release:1").reason is Reason.NOTHING_DUE
    assert s.payouts() == {} and s.seller_payments() == []
    assert s.refused(c.Refund, by="seller", account_id="seller", amount_minor=1,
                     refund_ref="again").reason is Reason.CERTIFICATE_ENDED


def test_a_partial_refund_within_the_hold_scales_payouts_down_rounding_to_the_funder():
    # price 9, refund 3: two thirds of the price is left. a acquired 101, b 33:
    # a keeps 101 * 6 // 9 = 67 (67.33), b keeps 33 * 6 // 9 = 22; the funder gets
    # 34 + 11 = 45 back, the odd thirds included
    s = sold(price=9, amounts=(101, 33))
    refund(s, 3)
    event = s.of(PurchaseRefunded)[0]
    assert event.within_hold and not event.fully
    assert [(v.account_id, v.amount_minor) for v in event.voided] == [("a", 34), ("b", 11)]
    assert s.releases()[-1] == ("funder", 45, "refund")
    assert of_kind(s, BuyerRefund) == [("buyer", 3)]
    s.advance(HOUR_MS)
    s.must(c.ReleaseHold, command_id="release:1")
    assert s.payouts() == {"a": 67, "b": 22}
    assert s.seller_payments() == [("seller", 6)]


def test_two_partial_refunds_compose_exactly():
    # 2,500 then 2,500 of 10,000: each account keeps 100 * 5,000 // 10,000 = 50
    s = sold()
    refund(s, 2_500, ref="rf-1")
    refund(s, 2_500, by="payment_system", account=None, ref="rf-2")
    assert s.releases()[1:] == [("funder", 50, "refund"), ("funder", 50, "refund")]
    s.advance(HOUR_MS)
    s.must(c.ReleaseHold, command_id="release:1")
    assert s.payouts() == {"a": 50, "b": 50}
    assert s.seller_payments() == [("seller", 5_000)]


def test_a_tiny_refund_takes_the_proportion_from_the_accounts_together_not_a_unit_each():
    # refund 1 of 10,000: 200 * 9,999 / 10,000 = 199.98 is left of the accounts' 200,
    # so 199 in all (1 to the funder, where rounding each down took 1 from each: 2).
    # a and b are even (99.99 each); the tie goes by sha256(certificate NUL account),
    # the smaller gives the unit
    s = sold()
    order = sorted("ab", key=lambda a: hashlib.sha256(
        f"{s.state.certificate_id}\x00{a}".encode()).digest())
    gives, keeps = order
    refund(s, 1, ref="rf-1")
    event = s.of(PurchaseRefunded)[0]
    assert [(v.account_id, v.amount_minor) for v in event.voided] == [(gives, 1)]
    assert s.releases()[-1] == ("funder", 1, "refund")
    # then 4,999 more: 5,000 of 10,000 left, 50 each exactly: the one that kept 100
    # gives 50, the other 49
    refund(s, 4_999, ref="rf-2")
    event = s.of(PurchaseRefunded)[1]
    assert sorted((v.account_id, v.amount_minor) for v in event.voided) == sorted(
        [(keeps, 50), (gives, 49)])
    assert s.releases()[-1] == ("funder", 99, "refund")
    s.advance(HOUR_MS)
    s.must(c.ReleaseHold, command_id="release:1")
    assert s.payouts() == {"a": 50, "b": 50}


def test_a_row_refunded_under_the_old_rounding_gives_nothing_back_to_anyone(monkeypatch):
    # the first refund as the core applied it before domain/apportion.py: each account
    # rounded down on its own, 100 * 9,999 // 10,000 = 99 each, 2 to the funder
    s = sold()
    with monkeypatch.context() as m:
        m.setattr("domain.apportion.scaled_down", lambda kept, acquired, left, price, salt: {
            a: acquired[a] * left // price for a in kept})
        refund(s, 1, ref="rf-1")
    assert s.releases()[-1] == ("funder", 2, "refund")
    # now 1 more: 199 of 200 is the new rule's total, more than the 198 the accounts
    # kept: no account gets a unit back from the funder
    refund(s, 1, ref="rf-2")
    event = s.of(PurchaseRefunded)[1]
    assert event.voided == [] and event.released_minor == 0
    s.advance(HOUR_MS)
    s.must(c.ReleaseHold, command_id="release:1")
    assert s.payouts() == {"a": 99, "b": 99}


def test_a_declined_sybil_acquisition_does_not_turn_honest_sharers_fractions_to_the_seller():
    # the attacker's review of a highest-averages split: the seller funds its own pool,
    # a Sybil account acquires 10^9, 300 honest sharers 100 each; the seller declines
    # the Sybil's commission and refunds 1 of 10,000. Each honest share is 99.99: 300 *
    # 99.99 = 29,997 is what they keep in all, 3 go back (the split gave 300)
    s = Scenario()
    s.setup(price_minor=10_000, budget_minor=10**9 + 30_000, attached_minor=10**9,
            hold_s=3_600, funder="seller", replenish=c.ReplenishFixed(amount_minor=100))
    s.circulate("sybil")
    for i in range(300):
        s.circulate(f"s{i:03}")
    s.purchase()
    s.must(c.DeclineCommission, account_id="seller", sharer_id="sybil", reason="other")
    refund(s, 1)
    event = s.of(PurchaseRefunded)[0]
    assert [v.amount_minor for v in event.voided] == [1, 1, 1]
    assert event.released_minor == 3


# --- after the hold: locked commission, chargebacks within the window -----------------


def test_after_the_hold_the_seller_refunds_through_the_payment_system_only():
    # the price was paid out: a refund straight from the engine would pay the buyer at
    # once and leave the platform a debt on the seller's next sale, if any
    s = sold(hold_s=0)
    refused = s.refused(c.Refund, by="seller", account_id="seller", amount_minor=10_000,
                        refund_ref="rf-1")
    assert refused.reason is Reason.REFUND_AFTER_HOLD
    assert of_kind(s, BuyerRefund) == [] and s.state.refunded_minor == 0


def test_a_refund_after_the_hold_is_the_sellers_cost_alone():
    # the attack (issue #24): the seller funds its own pool, a friend buys, the seller
    # has the payment system refund in full after the hold: the sharers keep what they
    # earned, the funder gets nothing back, only the seller's payment is clawed back
    s = sold(hold_s=0)
    released_before = s.releases()
    event = refund(s, 10_000, by="payment_system", account=None).events[0]
    assert event.commission_locked and not event.chargeback and event.fully
    assert of_kind(s, Clawback) == [("seller", 10_000)]
    assert of_kind(s, BuyerRefund) == [("buyer", 10_000)]
    assert s.releases() == released_before
    assert s.state.pool.payouts == {"a": 100, "b": 100} and s.state.pool.clawed == {}
    assert s.state.status == "refunded"


def test_a_chargeback_after_the_hold_claws_back_what_was_paid():
    s = sold(hold_s=0)
    event = chargeback(s, 5_000).events[0]  # half the price: each keeps 50 of its 100
    assert event.chargeback and not event.commission_locked
    assert of_kind(s, Clawback) == [("a", 50), ("b", 50), ("seller", 5_000)]
    assert [x.of_kind for x in s.settlements if isinstance(x, Clawback)] == [
        "commission_payout", "commission_payout", "seller_payment"]
    assert s.releases()[-1] == ("funder", 100, "clawback")  # the funder is made whole
    assert of_kind(s, BuyerRefund) == [("buyer", 5_000)]
    chargeback(s, 5_000, ref="cb-2")  # the rest
    assert of_kind(s, Clawback)[3:] == [("a", 50), ("b", 50), ("seller", 5_000)]
    assert s.state.status == "refunded"
    assert s.state.pool.clawed_back_minor == 200


def test_a_chargeback_after_a_locked_refund_claws_back_only_its_own_share():
    s = sold(hold_s=0)
    refund(s, 5_000, by="payment_system", account=None)  # locked: nothing from a and b
    chargeback(s, 5_000)  # the other half charged back: a and b give back half
    assert of_kind(s, Clawback) == [("seller", 5_000), ("a", 50), ("b", 50), ("seller", 5_000)]
    assert s.state.status == "refunded"


def test_a_chargeback_after_the_window_claws_back_no_sharer():
    s = sold(hold_s=0, chargeback_window_s=3_600)
    s.advance(HOUR_MS + 1)
    event = chargeback(s, 10_000).events[0]
    assert event.chargeback and event.commission_locked
    assert of_kind(s, Clawback) == [("seller", 10_000)]


def test_a_chargeback_on_the_last_moment_of_the_window_still_counts():
    s = sold(hold_s=0, chargeback_window_s=3_600)
    s.advance(HOUR_MS)
    chargeback(s, 10_000)
    assert of_kind(s, Clawback) == [("a", 100), ("b", 100), ("seller", 10_000)]


def test_only_the_payment_system_reports_a_chargeback():
    s = sold(hold_s=0)
    refused = s.refused(c.Refund, by="seller", account_id="seller", amount_minor=1_000,
                        refund_ref="rf-x", chargeback_reason="4837")
    assert refused.reason is Reason.INVALID_FIELD
    assert of_kind(s, Clawback) == []


def test_a_refund_after_the_hold_ended_by_the_timer_is_locked_a_chargeback_claws_back():
    s = sold()
    s.advance(HOUR_MS)
    s.must(c.ReleaseHold, command_id="release:1")
    event = chargeback(s, 10_000).events[0]
    assert not event.within_hold and event.fully
    assert of_kind(s, Clawback) == [("a", 100), ("b", 100), ("seller", 10_000)]


def test_a_seller_cannot_take_the_payment_systems_reference_and_block_its_chargeback():
    # the seller refunds 1 under the reference the payment system will give its
    # chargeback (cb-1, predictable); the chargeback is not refused as a duplicate
    s = sold()
    refund(s, 1, ref="cb-1")
    chargeback(s, 9_999, ref="cb-1")
    assert s.state.status == "refunded"
    assert of_kind(s, BuyerRefund) == [("buyer", 1), ("buyer", 9_999)]
    # each party's own reference still refunds once
    t = sold()
    refund(t, 100, ref="rf-1")
    assert t.refused(c.Refund, by="seller", account_id="seller", amount_minor=100,
                     refund_ref="rf-1").reason is Reason.REFUND_REF_USED
    chargeback(t, 100, ref="cb-1")
    assert t.refused(c.Refund, by="payment_system", amount_minor=100, refund_ref="cb-1",
                     chargeback_reason="4837").reason is Reason.REFUND_REF_USED


def test_refunds_are_refused_when_they_cannot_apply():
    s = sold()
    assert s.refused(c.Refund, by="seller", account_id="a", amount_minor=1,
                     refund_ref="x").reason is Reason.NOT_AUTHORIZED
    assert s.refused(c.Refund, by="seller", account_id="seller", amount_minor=10_001,
                     refund_ref="x").reason is Reason.REFUND_EXCEEDS_PRICE
    refund(s, 9_000)
    assert s.refused(c.Refund, by="seller", account_id="seller", amount_minor=1_001,
                     refund_ref="x").reason is Reason.REFUND_EXCEEDS_PRICE
    unsold = Scenario("seller~offer-2-00001")
    unsold.setup(price_minor=100, budget_minor=10, attached_minor=10)
    assert unsold.refused(c.Refund, by="payment_system", amount_minor=1,
                          refund_ref="x").reason is Reason.NOT_PURCHASED


# --- certificates that end unsold --------------------------------------------------------


def test_the_seller_cancels_an_unsold_certificate():
    s = Scenario()
    s.setup(price_minor=10_000, budget_minor=1_000, attached_minor=300,
            acquisition=c.AcquisitionPolicy(amount=c.FixedAmount(amount_minor=100)))
    s.circulate("a")
    assert s.refused(c.CancelCertificate, account_id="a").reason is Reason.NOT_AUTHORIZED
    s.must(c.CancelCertificate, account_id="seller")
    ended = s.of(CertificateEnded)[0]
    assert ended.reason == "cancelled"
    assert [(v.account_id, v.amount_minor) for v in ended.voided] == [("a", 100)]
    assert s.releases() == [("funder", 1_000, "cancelled")]  # the whole budget
    for kind, fields in [(c.Circulate, {"account_id": "b"}),
                         (c.Purchase, {"account_id": "b", **s.paid("p")}),
                         (c.CancelCertificate, {"account_id": "seller"})]:
        assert s.refused(kind, **fields).reason is Reason.CERTIFICATE_ENDED


def unfunded(budget: int) -> Scenario:
    """Issued with a pool attached whose escrow the payment system never confirmed."""
    s = Scenario()
    s.must(c.IssueCertificate, account_id="seller", offer_id="seller~offer-1", serial=1,
           copies=1, name="Espresso machine", price_minor=10_000, currency="USD",
           funder_id="funder")
    s.must(c.AttachPool, account_id="funder", funding_ref="escrow-1", budget_minor=budget,
           attached_minor=1, currency="USD")
    return s


def test_cancelling_a_pool_never_funded_releases_nothing():
    # a pool names any budget it likes; until the payment system confirms the hold
    # there is nothing behind it to release (a release of 10^15 would ask the payment
    # system to pay that, or point at whatever escrow the funding_ref names)
    s = unfunded(10**15)
    s.must(c.CancelCertificate, account_id="seller")
    assert s.releases() == []
    assert s.of(CertificateEnded)[0].released_minor == 0


def test_a_hold_confirmed_after_the_certificate_ended_goes_back_to_the_funder_at_once():
    s = unfunded(1_000)
    s.must(c.CancelCertificate, account_id="seller")
    assert s.releases() == []
    s.confirm_funding(1_000)  # the funder paid into escrow after the seller cancelled
    assert s.releases() == [("funder", 1_000, "cancelled")]
    assert s.refused(c.ConfirmFunding, funding_ref="escrow-1", amount_minor=1_000,
                     currency="USD").reason is Reason.FUNDING_ALREADY_CONFIRMED
    assert s.releases() == [("funder", 1_000, "cancelled")]  # once


def test_a_sold_certificate_is_refunded_not_cancelled():
    s = sold()
    assert s.refused(c.CancelCertificate,
                     account_id="seller").reason is Reason.CERTIFICATE_PURCHASED


@pytest.mark.parametrize("mode", ["void", "freeze"])
def test_a_pool_closes_at_its_end_and_nothing_stays_locked(mode):
    # frozen or not, pending acquisitions of a certificate no one bought are voided
    s = Scenario()
    s.setup(price_minor=10_000, budget_minor=1_000, attached_minor=300, close_after_s=60,
            acquisition=c.AcquisitionPolicy(amount=c.FixedAmount(amount_minor=100)),
            thresholds=c.Thresholds(max_circulations=2, on_withdraw=mode))
    s.circulate("a")
    s.circulate("b")  # the second counting circulation withdraws (or freezes) the pool
    s.advance(60_000)
    assert s.refused(c.Purchase, account_id="buyer",
                     **s.paid("p")).reason is Reason.CERTIFICATE_ENDED
    s.must(c.CheckExpiry, command_id="expire:1")
    assert s.state.status == "closed"
    assert sum(amount for _, amount, _ in s.releases()) == 1_000
    ended = s.of(CertificateEnded)[0]
    assert ended.voided_minor == (100 if mode == "freeze" else 0)
    assert s.payouts() == {}
