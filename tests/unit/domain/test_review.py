"""Commissions that stand (issue #24): reviews during the hold, fraud flags, velocity and
account rules, each played as the attack it answers. Amounts are written from the
scenario's own numbers (budget, fixed amounts), never read back from the core."""

from __future__ import annotations

import pytest

from schemas import commands as c
from schemas.events import (
    CertificateCirculated,
    CertificatePurchased,
    CommissionAcquired,
    CommissionApproved,
    CommissionDeclined,
    CommissionFlagged,
    HoldReleased,
    PoolWithdrawn,
)
from schemas.payments import BudgetRelease, CommissionPayout
from schemas.rejections import Reason
from tests.unit.domain.scenario import Scenario
from tests.unit.domain.test_aftersale import HOUR_MS, chargeback, sold

pytestmark = pytest.mark.unit

DAY_S = 24 * 3600
OLD = c.AccountFacts(created_ms=1_600_000_000_000, verified=True)  # ~3 years before


def fresh(s: Scenario) -> c.AccountFacts:
    """An account created a moment ago, unverified: a fake one."""
    return c.AccountFacts(created_ms=s.now_ms - 1_000, verified=False)


def posted(*, budget: int = 500, per_share: int = 100, **policy) -> Scenario:
    s = Scenario()
    thresholds = policy.pop("thresholds", c.Thresholds())
    s.setup(price_minor=10_000, budget_minor=budget, attached_minor=per_share,
            hold_s=policy.pop("hold_s", 3_600), thresholds=thresholds,
            acquisition=c.AcquisitionPolicy(amount=c.FixedAmount(amount_minor=per_share),
                                            **policy))
    return s


def share(s: Scenario, account: str, facts: c.AccountFacts | None = OLD, via=None):
    return s.must(c.Circulate, account_id=account, via=via, account=facts)


def decline(s: Scenario, sharer: str, *, by: str = "seller", reviewer: bool = False,
            reason: str = "fraud", note: str | None = "a ring of new accounts"):
    return s.send(c.DeclineCommission, account_id=by, sharer_id=sharer, reason=reason,
                  note=note, reviewer=reviewer)


def released_to_funder(s: Scenario, reason: str) -> int:
    return sum(x.amount_minor for x in s.settlements
               if isinstance(x, BudgetRelease) and x.reason == reason)


# --- rule 2: review during the hold ---------------------------------------------------


def test_the_seller_declines_a_held_commission_and_it_goes_back_to_the_funder():
    s = sold(amounts=(100, 100))  # a and b hold 100 each for an hour
    outcome = decline(s, "a", reason="self_referral", note="the buyer's own account")
    declined = outcome.events[0]
    assert isinstance(declined, CommissionDeclined)
    assert (declined.sharer_id, declined.amount_minor, declined.reason, declined.note,
            declined.by_role, declined.stage) == ("a", 100, "self_referral",
                                                  "the buyer's own account", "seller", "held")
    assert released_to_funder(s, "declined") == 100
    s.advance(HOUR_MS)
    s.must(c.ReleaseHold)
    assert s.payouts() == {"b": 100}  # a is never paid


def test_a_reviewer_declines_any_sellers_commission_a_stranger_cannot():
    s = sold(amounts=(100, 100))
    assert decline(s, "a", by="mallory").reason == Reason.NOT_REVIEWER
    assert decline(s, "a", by="b").reason == Reason.NOT_REVIEWER  # another sharer
    assert decline(s, "a", by="a", reviewer=True).reason == Reason.NOT_REVIEWER  # own
    outcome = decline(s, "a", by="rita", reviewer=True)
    assert outcome.events[0].by_role == "reviewer"
    assert decline(s, "a", by="rita", reviewer=True).reason == Reason.COMMISSION_DECLINED


def test_declines_after_the_hold_are_refused_the_commission_is_locked():
    s = sold(amounts=(100, 100))
    s.advance(HOUR_MS)
    s.must(c.ReleaseHold)
    refused = s.refused(c.DeclineCommission, account_id="seller", sharer_id="a",
                        reason="fraud", reviewer=False)
    assert refused.reason == Reason.COMMISSION_PAID
    assert s.payouts() == {"a": 100, "b": 100}


def test_a_decline_before_the_purchase_voids_the_pending_acquisition():
    s = posted(budget=500, per_share=100)
    share(s, "a")
    share(s, "b")
    decline(s, "a")
    s.purchase()
    s.advance(HOUR_MS)
    s.must(c.ReleaseHold)
    assert s.payouts() == {"b": 100}
    # 500 budget: 100 declined, 300 unspent at the purchase, 100 paid to b
    assert released_to_funder(s, "declined") == 100
    assert released_to_funder(s, "purchase") == 300


def test_a_refund_in_the_hold_after_a_decline_scales_only_the_others():
    s = sold(amounts=(100, 100))  # price 10,000
    decline(s, "a")
    s.must(c.Refund, by="seller", account_id="seller", amount_minor=5_000, refund_ref="r1")
    s.advance(HOUR_MS)
    s.must(c.ReleaseHold)
    assert s.payouts() == {"b": 50}


# --- rule 3: velocity, account rules, fraud flags ---------------------------------------


def test_five_fake_accounts_cannot_drain_a_pool_within_a_minute():
    """The attack: five accounts circulate from the catalogue within 1 ms and take the
    whole budget of 500; the next honest sharer gets 0. With two acquisitions a
    minute, the burst takes 200 and the honest sharer a minute later still gains."""
    s = posted(budget=500, per_share=100, max_acquisitions_per_minute=2)
    for n in range(5):
        s.advance(1)  # 1 ms apart
        share(s, f"fake{n}")
    gained = [e.account_id for e in s.of(CommissionAcquired)]
    assert gained == ["fake0", "fake1"]
    limited = [e.account_id for e in s.of(CertificateCirculated) if e.no_gain == "velocity"]
    assert limited == ["fake2", "fake3", "fake4"]
    s.advance(60_000)
    share(s, "honest")
    assert s.of(CommissionAcquired)[-1].account_id == "honest"
    assert s.of(CommissionAcquired)[-1].amount_minor == 100


def test_fresh_accounts_neither_gain_nor_count_toward_a_threshold():
    """The attack: with max_circulations = 7 the funder's fake accounts withdraw the
    pool and void the honest sharers' acquisitions. Accounts younger than a day count
    toward nothing, so four fakes leave the honest sharers' 300 pending."""
    s = posted(budget=1_000, per_share=100, min_account_age_s=DAY_S,
               thresholds=c.Thresholds(max_circulations=7))
    for n in range(3):
        share(s, f"honest{n}")
    for n in range(4):
        share(s, f"fake{n}", fresh(s))
    share(s, "fake-unknown", None)  # nothing attested: no rule is met
    assert s.of(PoolWithdrawn) == []
    assert s.state.distinct_circulations == 3
    assert s.state.pool.pending_minor == 300
    rules = [e.no_gain for e in s.of(CertificateCirculated)][3:]
    assert rules == ["account_rules"] * 5
    assert [e.counts for e in s.of(CertificateCirculated)][3:] == [False] * 5


def test_a_verified_only_pool_ignores_unverified_accounts():
    s = posted(verified_only=True)
    share(s, "unverified", c.AccountFacts(created_ms=OLD.created_ms, verified=False))
    share(s, "verified", OLD)
    assert [e.account_id for e in s.of(CommissionAcquired)] == ["verified"]


def test_an_upstream_pool_pays_no_account_that_did_not_meet_its_rules_when_it_joined():
    # a fake account shares first (it counts for nothing), then a verified friend
    # shares via it: with the upstream beneficiary the gain would be the fake's
    s = posted(verified_only=True, beneficiary="upstream")
    share(s, "fake", fresh(s))
    share(s, "friend", OLD, via="fake")
    assert s.of(CommissionAcquired) == []
    assert [e.no_gain for e in s.of(CertificateCirculated)][-1] == "account_rules"
    # an account that met them when it joined is paid as before
    share(s, "honest", OLD)
    share(s, "next", OLD, via="honest")
    assert [(e.account_id, e.amount_minor) for e in s.of(CommissionAcquired)] == [
        ("honest", 100)]


def flagged_sale(*, hold_s: int = 3_600) -> Scenario:
    s = posted(budget=500, per_share=100, hold_s=hold_s)
    share(s, "a")
    share(s, "ring")
    s.must(c.FlagCommission, sharer_id="ring", rule="burst", detail="12 certificates a minute")
    s.purchase()
    return s


def test_a_flagged_commission_is_kept_back_when_the_hold_ends_until_a_reviewer_approves():
    s = flagged_sale()
    s.advance(HOUR_MS)
    s.must(c.ReleaseHold)
    assert s.payouts() == {"a": 100}
    assert s.of(HoldReleased)[0].kept_back_minor == 100
    # the seller cannot approve (its own fake sharers would be paid from the budget)
    assert s.refused(c.ApproveCommission, account_id="seller", sharer_id="ring",
                     reviewer=False).reason == Reason.NOT_REVIEWER
    approved = s.must(c.ApproveCommission, account_id="rita", sharer_id="ring", reviewer=True)
    assert approved.events[0] == s.of(CommissionApproved)[0]
    assert approved.events[0].paid_minor == 100
    assert s.payouts() == {"a": 100, "ring": 100}


def test_a_flagged_commission_kept_back_can_still_be_declined_after_the_hold():
    s = flagged_sale()
    s.advance(HOUR_MS)
    s.must(c.ReleaseHold)
    outcome = decline(s, "ring")
    assert outcome.events[0].stage == "held"
    assert released_to_funder(s, "declined") == 100
    assert "ring" not in s.payouts()


def test_with_no_hold_a_flagged_commission_is_kept_back_at_the_purchase():
    s = flagged_sale(hold_s=0)
    assert s.payouts() == {"a": 100}
    assert s.state.pool.held_minor == 100
    purchased = s.of(CertificatePurchased)[0]
    assert (purchased.paid_out_minor, purchased.held_minor) == (100, 100)
    assert [(h.account_id, h.amount_minor) for h in purchased.held] == [("ring", 100)]
    s.must(c.ApproveCommission, account_id="rita", sharer_id="ring", reviewer=True)
    assert s.payouts() == {"a": 100, "ring": 100}


def test_a_chargeback_voids_a_kept_back_commission_instead_of_clawing_it_back():
    s = flagged_sale()
    s.advance(HOUR_MS)
    s.must(c.ReleaseHold)
    chargeback(s, 10_000)
    claws = [(x.payee_id, x.amount_minor) for x in s.settlements
             if type(x).__name__ == "Clawback" and x.of_kind == "commission_payout"]
    assert claws == [("a", 100)]  # ring was never paid: nothing to claw back from it
    assert s.state.pool.held_minor == 0


def test_flags_and_approvals_have_one_speaker_each():
    s = flagged_sale()
    assert s.refused(c.FlagCommission, sharer_id="ring", rule="ring").reason == \
        Reason.ALREADY_FLAGGED
    assert s.refused(c.FlagCommission, sharer_id="nobody", rule="x").reason == \
        Reason.NOTHING_TO_REVIEW
    assert s.refused(c.ApproveCommission, account_id="rita", sharer_id="a",
                     reviewer=True).reason == Reason.NOT_FLAGGED
    assert s.refused(c.ApproveCommission, account_id="ring", sharer_id="ring",
                     reviewer=True).reason == Reason.NOT_REVIEWER


def test_a_flag_after_the_commission_was_paid_keeps_nothing_back_and_is_recorded():
    s = sold(amounts=(100, 100))
    s.advance(HOUR_MS)
    s.must(c.ReleaseHold)
    paid_before = s.payouts()
    outcome = s.must(c.FlagCommission, sharer_id="a", rule="ring")
    assert [(type(e), e.sharer_id, e.rule, e.paid) for e in outcome.events] == [
        (CommissionFlagged, "a", "ring", True)]
    assert outcome.settlements == []
    assert s.state.pool.flagged == {}
    assert s.payouts() == paid_before == {"a": 100, "b": 100}
    # nothing is kept back, so there is nothing to approve; only a chargeback takes
    # it back, and a decline is refused as after any hold
    assert s.refused(c.ApproveCommission, account_id="rita", sharer_id="a",
                     reviewer=True).reason == Reason.NOT_FLAGGED
    assert s.refused(c.DeclineCommission, account_id="seller", sharer_id="a",
                     reason="fraud", reviewer=False).reason == Reason.COMMISSION_PAID


def test_every_hop_says_why_it_did_not_gain():
    s = posted(budget=1_000, per_share=100, max_depth=1)
    share(s, "a")
    share(s, "b", via="a")  # level 2
    share(s, "seller")
    share(s, "a")
    assert [(e.account_id, e.no_gain) for e in s.of(CertificateCirculated)] == [
        ("a", None), ("b", "too_deep"), ("seller", "seller_or_funder"), ("a", "repeat")]
    payouts = [x for x in s.settlements if isinstance(x, CommissionPayout)]
    assert payouts == []
