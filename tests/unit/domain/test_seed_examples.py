"""The seed's examples 1, 2, 3 and 6, with the seed's own numbers where it gives them.

Amounts are in cents (USD). Where the seed gives no figure (examples 1 and 2) the
figures are chosen here and every expected amount is worked out by hand in the test.
"""

from __future__ import annotations

import pytest

from schemas import commands as c
from schemas.events import (
    CertificateCirculated,
    CommissionAcquired,
    PoolReplenished,
    PoolWithdrawn,
    WithdrawalWarned,
)
from schemas.rejections import Reason
from tests.unit.domain.scenario import DAY_MS, Scenario

pytestmark = pytest.mark.unit


def test_example_1_circulation_links_feed_acquires_and_tops_up_then_purchase_pays():
    # Price 1,000.00; budget 100.00 with 10.00 attached; each account takes 2.00.
    s = Scenario()
    s.setup(price_minor=100_000, budget_minor=10_000, attached_minor=1_000,
            acquisition=c.AcquisitionPolicy(amount=c.FixedAmount(amount_minor=200)))

    s.circulate("alice")
    moved = s.of(CertificateCirculated)[-1]
    assert (moved.account_id, moved.previous_holder) == ("alice", None)
    assert s.state.holder == "alice"
    # S12/[40]: the attached amount is increased by what was acquired: stays 10.00.
    assert [(e.account_id, e.amount_minor) for e in s.of(CommissionAcquired)] == [("alice", 200)]
    assert [e.amount_minor for e in s.of(PoolReplenished)] == [200]
    assert s.state.pool.attached_minor == 1_000
    assert s.state.pool.reserve_minor == 9_000 - 200

    s.circulate("bob", via="alice")
    assert s.state.holder == "bob"
    assert s.state.pool.attached_minor == 1_000

    s.purchase("carol")
    assert s.payouts() == {"alice": 200, "bob": 200}
    # what is left of the budget goes back to the funder: 100.00 - 4.00
    assert s.releases() == [("funder", 9_600, "purchase")]
    assert s.seller_payments() == [("seller", 100_000)]
    assert sum(s.payouts().values()) + sum(r[1] for r in s.releases()) == 10_000


def test_example_2_upstream_account_gains_when_next_account_circulates():
    # The first account gains when a second account circulates from its feed.
    s = Scenario()
    s.setup(price_minor=50_000, budget_minor=3_000, attached_minor=500,
            acquisition=c.AcquisitionPolicy(beneficiary="upstream"))

    first = s.circulate("first")
    assert not [e for e in first.events if isinstance(e, CommissionAcquired)]

    second = s.circulate("second", via="first")
    moved = [e for e in second.events if isinstance(e, CertificateCirculated)][0]
    # [71]: unlinked from the first account's feed, linked to the second's.
    assert (moved.previous_holder, moved.account_id) == ("first", "second")
    gained = [(e.account_id, e.amount_minor) for e in second.events
              if isinstance(e, CommissionAcquired)]
    assert gained == [("first", 500)]
    # "the increased amount equals the amount acquired ... to maintain the amount same"
    assert s.state.pool.attached_minor == 500

    s.circulate("third", via="second")
    s.purchase()
    assert s.payouts() == {"first": 500, "second": 500}
    assert s.releases() == [("funder", 2_000, "purchase")]


def _example_3(**thresholds) -> Scenario:
    # Price 2,000.00 with a 1,000.00 budget, 100.00 attached; each takes it all.
    s = Scenario()
    s.setup(price_minor=200_000, budget_minor=100_000, attached_minor=10_000,
            thresholds=c.Thresholds(**thresholds))
    return s


def test_example_3_purchase_below_thresholds_cashes_both_accounts():
    s = _example_3(max_circulations=11, max_cumulative_minor=50_001, max_display_s=10 * 86400)
    s.circulate("first")
    s.circulate("second", via="first")
    s.purchase()
    assert s.payouts() == {"first": 10_000, "second": 10_000}
    assert s.releases() == [("funder", 80_000, "purchase")]
    assert s.seller_payments() == [("seller", 200_000)]


def test_example_3_withdrawn_after_more_than_10_circulations():
    s = _example_3(max_circulations=11)  # "greater than 10 times"
    for i in range(1, 11):
        s.circulate(f"acct-{i}")
    assert not s.of(PoolWithdrawn)
    # warned once, at 80 %: the 9th circulation (9 >= 0.8 * 11)
    warnings = s.of(WithdrawalWarned)
    assert [(w.threshold, w.value, w.limit) for w in warnings] == [("circulations", 9, 11)]

    eleventh = s.circulate("acct-11")
    assert [type(e).__name__ for e in eleventh.events] == ["CertificateCirculated", "PoolWithdrawn"]
    withdrawn = s.of(PoolWithdrawn)[0]
    assert withdrawn.threshold == "circulations" and withdrawn.mode == "void"
    assert withdrawn.voided_minor == 10 * 10_000
    # everything goes back to the funder; nothing is paid on purchase
    assert s.releases() == [("funder", 100_000, "withdrawal")]
    s.refused(c.Circulate, account_id="acct-12")
    s.purchase()
    assert s.payouts() == {}
    assert s.seller_payments() == [("seller", 200_000)]


def test_example_3_withdrawn_when_cumulative_goes_above_500():
    s = _example_3(max_cumulative_minor=50_001)  # "greater than 500 dollars"
    for i in range(1, 6):
        s.circulate(f"acct-{i}")  # 5 x 100.00 = exactly 500.00: not above
    assert not s.of(PoolWithdrawn)
    # 80 % of 500.01 is 400.008: 400.00 is just short, so the warning comes at 500.00
    assert [(w.threshold, w.value) for w in s.of(WithdrawalWarned)] == [("cumulative", 50_000)]
    s.circulate("acct-6")  # 600.00 > 500.00
    withdrawn = s.of(PoolWithdrawn)[0]
    assert (withdrawn.threshold, withdrawn.voided_minor) == ("cumulative", 60_000)
    s.purchase()
    assert s.payouts() == {}
    assert s.releases() == [("funder", 100_000, "withdrawal")]


def test_example_3_withdrawn_at_10_percent_of_the_price():
    s = _example_3(max_cumulative_bp_of_price=1_000)  # 10 % of 2,000.00 = 200.00
    s.circulate("first")  # 100.00
    assert not s.of(PoolWithdrawn)
    s.circulate("second")  # 200.00 >= 10 % of the price
    assert s.of(PoolWithdrawn)[0].threshold == "cumulative"
    s.purchase()
    assert s.payouts() == {}


def test_example_3_withdrawn_after_10_days_on_display_at_purchase():
    s = _example_3(max_display_s=10 * 86400)
    s.circulate("first")
    s.circulate("second", via="first")
    s.advance(10 * DAY_MS)  # no timer ran: the purchase itself checks (S37)
    s.purchase()
    assert s.of(PoolWithdrawn)[0].threshold == "display_time"
    assert s.payouts() == {}
    assert s.releases() == [("funder", 100_000, "withdrawal")]


def test_example_6_time_limit_expires_by_timer_and_commission_is_not_cashed():
    # [125]: the certificate has a time limit; when it expires the pool is withdrawn.
    s = Scenario()
    s.setup(price_minor=30_000, budget_minor=5_000, attached_minor=1_000,
            time_limit_s=10 * 86400)
    s.circulate("first")
    s.advance(8 * DAY_MS - 1)
    # nothing due yet: refused, no effect
    assert s.refused(c.CheckExpiry).reason is Reason.NOTHING_DUE
    s.advance(1)
    warned = s.must(c.CheckExpiry)
    assert [(w.threshold, w.value, w.limit) for w in warned.events] == [
        ("display_time", 8 * DAY_MS, 10 * DAY_MS)]
    s.advance(2 * DAY_MS - 1)
    s.circulate("second")  # still inside the limit: gains
    assert s.state.pool.acquired == {"first": 1_000, "second": 1_000}
    s.advance(1)
    expired = s.must(c.CheckExpiry)
    assert [type(e).__name__ for e in expired.events] == ["PoolWithdrawn"]
    assert s.releases() == [("funder", 5_000, "withdrawal")]
    rejected = s.refused(c.Circulate, account_id="third")
    assert rejected.reason is Reason.POOL_WITHDRAWN
    s.purchase()
    assert s.payouts() == {}
    assert s.seller_payments() == [("seller", 30_000)]
