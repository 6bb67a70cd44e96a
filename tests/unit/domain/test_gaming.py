"""The rules a cheater meets (issue #12): each test replays an attack that worked on
the core before, and checks the honest outcome is now the only one."""

from __future__ import annotations

import hashlib

import pytest

from domain import Accepted, Duplicate, handle
from domain.draw import draw_between, entropy_for
from schemas import commands as c
from schemas.events import CertificateCirculated, FundingConfirmed, PoolWithdrawn
from schemas.rejections import Reason
from tests.unit.domain.scenario import CERT, DRAW_SECRET, OFFER, Scenario

pytestmark = pytest.mark.unit


def posted(budget_minor: int = 1_000, attached_minor: int = 100, **pool) -> Scenario:
    s = Scenario()
    s.setup(price_minor=10_000, budget_minor=budget_minor, attached_minor=attached_minor, **pool)
    return s


# --- 1. circulations that count: distinct accounts other than seller and funder ------


def test_funder_and_seller_cannot_withdraw_everyones_commission_by_circulating():
    s = posted(thresholds=c.Thresholds(max_circulations=5))
    s.circulate("a")
    s.circulate("b", via="a")
    for who in ("funder", "seller", "funder", "seller", "funder"):
        s.circulate(who)
    assert s.of(PoolWithdrawn) == []
    assert s.state.pool.status == "open"
    assert s.state.pool.acquired == {"a": 100, "b": 100}
    assert s.state.holder == "funder"  # they still move the certificate
    assert s.state.distinct_circulations == 2
    s.purchase()
    assert s.payouts() == {"a": 100, "b": 100}


def test_two_friends_alternating_count_once_each():
    s = posted(thresholds=c.Thresholds(max_circulations=5))
    s.circulate("x")
    s.circulate("y")
    for who in ("a", "b", "a", "b", "a", "b"):
        s.circulate(who)
    assert s.of(PoolWithdrawn) == []
    assert s.state.distinct_circulations == 4
    assert [e.counts for e in s.of(CertificateCirculated)] == [True] * 4 + [False] * 4
    s.circulate("z")  # the fifth distinct account meets the threshold honestly
    assert [w.threshold for w in s.of(PoolWithdrawn)] == ["circulations"]


# --- 2. only a circulation that counts replenishes ----------------------------------


def test_seller_and_funder_cannot_pump_the_reserve_into_the_attached_amount():
    s = posted(replenish=c.ReplenishFixed(amount_minor=100))
    s.circulate("a")
    for who in ("seller", "funder") * 4:
        s.circulate(who)
    s.circulate("b", via="a")
    assert s.state.pool.acquired == {"a": 100, "b": 100}
    s.purchase()
    assert s.payouts() == {"a": 100, "b": 100}
    assert s.releases() == [("funder", 800, "purchase")]


# --- 3. draws nobody can choose ---------------------------------------------------


def _gateway_command_id(account: str, idempotency_key: str) -> str:
    # what services/api/writes.py derives from a client's Idempotency-Key
    return "api-" + hashlib.sha256(f"{account}\x1f{idempotency_key}".encode()).hexdigest()[:40]


def test_a_client_choosing_idempotency_keys_learns_nothing_about_its_draw():
    policy = c.AcquisitionPolicy(amount=c.RandomAmount(min_minor=10, max_minor=90))
    s = posted(acquisition=policy)
    draws = set()
    for key in range(400):  # the old search found the maximum after 337 keys
        command = c.Circulate(command_id=_gateway_command_id("a", f"key-{key}"),
                              certificate_id=CERT, at_ms=s.now_ms, account_id="a")
        state = Scenario.copy_of(s.state)
        out = handle(state, command, entropy_for(DRAW_SECRET, CERT, state.seq + 1))
        assert isinstance(out, Accepted)
        draws.add(out.state.pool.acquired["a"])
    assert len(draws) == 1, "the draw moved with the client's key"
    # it is the sequencer's secret that decides: without it the draws are other ones
    ours = [draw_between(10, 90, entropy_for(DRAW_SECRET, CERT, q), "acquire")
            for q in range(1, 101)]
    guessed = [draw_between(10, 90, entropy_for(b"a-guess-at-the-secret", CERT, q), "acquire")
               for q in range(1, 101)]
    assert sum(a == b for a, b in zip(ours, guessed, strict=True)) < 10  # ~1/81 by chance


def test_draws_are_uniform_chi_square_over_10000():
    lo, hi, n = 10, 90, 10_000
    counts = [0] * (hi - lo + 1)
    for i in range(n):
        entropy = entropy_for(DRAW_SECRET, f"seller~o-{i:05d}", 1 + i % 7)
        counts[draw_between(lo, hi, entropy, "acquire") - lo] += 1
    expected = n / len(counts)
    chi2 = sum((k - expected) ** 2 / expected for k in counts)
    # 80 degrees of freedom: P(chi2 > 124.84) = 0.001 for a uniform draw
    assert chi2 < 124.84, chi2
    # and the statistic is not suspiciously perfect either (P(chi2 < 51.17) = 0.005)
    assert chi2 > 51.17, chi2


def test_random_replenishment_is_drawn_from_the_secret_too():
    policy = c.ReplenishRandom(min_minor=1, max_minor=50)
    amounts = set()
    for command_id in ("r-1", "r-2", "r-3"):
        s = posted(replenish=policy)
        s.must(c.Circulate, command_id=command_id, account_id="a")
        amounts.add(s.state.pool.attached_minor)
    assert len(amounts) == 1


# --- 4. funding only from whom the seller names, live only once confirmed ----------


def test_a_stranger_cannot_attach_the_pool_first():
    s = Scenario()
    s.must(c.IssueCertificate, account_id="seller", offer_id=OFFER, serial=1, copies=1,
           name="n", price_minor=10_000, currency="USD", funder_id="funder")
    stranger = s.refused(c.AttachPool, account_id="stranger", funding_ref="made-up",
                         budget_minor=1, attached_minor=1, currency="USD")
    assert stranger.reason is Reason.NOT_AUTHORIZED
    s.must(c.AttachPool, account_id="funder", funding_ref="escrow-1", budget_minor=1_000,
           attached_minor=100, currency="USD")
    assert s.state.pool.funder_id == "funder"


def test_the_seller_may_fund_its_own_certificate():
    s = Scenario()
    s.must(c.IssueCertificate, account_id="seller", offer_id=OFFER, serial=1, copies=1,
           name="n", price_minor=10_000, currency="USD")
    assert s.refused(c.AttachPool, account_id="funder", funding_ref="e", budget_minor=10,
                     attached_minor=1, currency="USD").reason is Reason.NOT_AUTHORIZED
    s.must(c.AttachPool, account_id="seller", funding_ref="e", budget_minor=10,
           attached_minor=1, currency="USD")


def test_a_pool_is_live_only_after_a_matching_escrow_confirmation():
    s = Scenario()
    s.must(c.IssueCertificate, account_id="seller", offer_id=OFFER, serial=1, copies=1,
           name="n", price_minor=10_000, currency="USD", funder_id="funder")
    assert s.refused(c.ConfirmFunding, funding_ref="escrow-1", amount_minor=1_000,
                     currency="USD").reason is Reason.POOL_NOT_ATTACHED
    s.must(c.AttachPool, account_id="funder", funding_ref="escrow-1", budget_minor=1_000,
           attached_minor=100, currency="USD")
    assert s.refused(c.PostCertificate, account_id="seller").reason \
        is Reason.FUNDING_NOT_CONFIRMED
    for wrong in (dict(funding_ref="escrow-2", amount_minor=1_000, currency="USD"),
                  dict(funding_ref="escrow-1", amount_minor=999, currency="USD"),
                  dict(funding_ref="escrow-1", amount_minor=1_000, currency="EUR")):
        assert s.refused(c.ConfirmFunding, **wrong).reason is Reason.FUNDING_MISMATCH
    s.must(c.ConfirmFunding, funding_ref="escrow-1", amount_minor=1_500, currency="USD")
    assert [e.amount_minor for e in s.of(FundingConfirmed)] == [1_500]
    assert s.refused(c.ConfirmFunding, funding_ref="escrow-1", amount_minor=1_000,
                     currency="USD").reason is Reason.FUNDING_ALREADY_CONFIRMED
    s.must(c.PostCertificate, account_id="seller")


# --- 5. offers are owned ----------------------------------------------------------


def test_another_seller_cannot_issue_copies_of_an_offer():
    s = Scenario(f"{OFFER}-00006")
    assert s.refused(c.IssueCertificate, account_id="mallory", offer_id=OFFER, serial=6,
                     copies=6, name="n", price_minor=1, currency="USD").reason \
        is Reason.OFFER_NOT_OWNED
    # nor slip a copy in under a certificate id that is not the offer's serial
    s = Scenario("seller~offer-1-00002")
    assert s.refused(c.IssueCertificate, account_id="mallory", offer_id="mallory~x", serial=1,
                     copies=1, name="n", price_minor=1, currency="USD").reason \
        is Reason.INVALID_FIELD
    # an offer id names its seller
    s = Scenario("plain-00001")
    assert s.refused(c.IssueCertificate, account_id="seller", offer_id="plain", serial=1,
                     copies=1, name="n", price_minor=1, currency="USD").reason \
        is Reason.INVALID_FIELD
    s = Scenario(f"{OFFER}-00006")
    s.must(c.IssueCertificate, account_id="seller", offer_id=OFFER, serial=6, copies=6,
           name="n", price_minor=1, currency="USD")


# --- 6. a repeat is a duplicate; every command gets a verdict ---------------------


def test_a_retry_stamped_later_is_a_duplicate_not_a_conflict():
    s = posted()
    first = s.must(c.Circulate, command_id="share-1", account_id="a")
    s.advance(5_000)
    assert s.send(c.Circulate, command_id="share-1", account_id="a") == \
        Duplicate("share-1", first.events[0].seq)
    assert s.refused(c.Circulate, command_id="share-1", account_id="a", via="seller").reason \
        is Reason.DUPLICATE_CONFLICT


def test_a_timer_check_sent_again_after_a_restart_is_a_duplicate():
    s = posted(thresholds=c.Thresholds(max_display_s=60))
    s.advance(60_000)
    s.must(c.CheckExpiry, command_id="expire:1")
    s.advance(30_000)
    assert isinstance(s.send(c.CheckExpiry, command_id="expire:1"), Duplicate)


def test_a_claim_on_an_empty_pool_is_refused_with_a_reason():
    s = posted(acquisition=c.AcquisitionPolicy(trigger="claim"), replenish=c.ReplenishNone())
    s.circulate("a")
    s.circulate("b")
    s.must(c.Claim, account_id="a")  # takes all 100: nothing left, nothing to refill
    out = s.refused(c.Claim, account_id="b")
    assert out.reason is Reason.POOL_EMPTY
    assert "b" in s.state.pool.claimable  # the claim stays open


# --- 7. no event outside its own schema ------------------------------------------


def test_a_post_whose_deadline_leaves_the_schema_is_refused():
    s = Scenario(start_ms=2**53 - 1_000)
    s.must(c.IssueCertificate, account_id="seller", offer_id=OFFER, serial=1, copies=1,
           name="n", price_minor=100, currency="USD", time_limit_s=100 * 365 * 24 * 3600)
    s.must(c.AttachPool, account_id="seller", funding_ref="e", budget_minor=10,
           attached_minor=1, currency="USD")
    s.confirm_funding(10, funding_ref="e")
    assert s.refused(c.PostCertificate, account_id="seller").reason is Reason.INVALID_FIELD


# --- 8. the depth of the chain is a policy ----------------------------------------


def test_only_the_first_levels_of_sharing_gain():
    s = posted(acquisition=c.AcquisitionPolicy(max_depth=2))
    s.circulate("a")
    s.circulate("b", via="a")
    s.circulate("c", via="b")  # level 3: circulates, gains nothing
    s.circulate("d")  # from the catalogue again: level 1
    assert [e.depth for e in s.of(CertificateCirculated)] == [1, 2, 3, 1]
    assert s.state.pool.acquired == {"a": 100, "b": 100, "d": 100}


def test_with_the_upstream_beneficiary_the_level_is_the_gaining_accounts():
    # max_depth 1: only level-1 accounts gain. Upstream, the level-1 account gains when
    # a level-2 share comes via it (the share's own level was compared before: such a
    # pool paid nobody); a share via a level-2 account pays nothing
    s = posted(acquisition=c.AcquisitionPolicy(beneficiary="upstream", max_depth=1))
    s.circulate("a")  # level 1, from the catalogue: no one upstream
    s.circulate("b", via="a")  # level 2: a (level 1) gains
    s.circulate("c", via="b")  # level 3: b is level 2, too deep
    assert s.state.pool.acquired == {"a": 100}
    assert [e.no_gain for e in s.of(CertificateCirculated)] == [
        "upstream_none", None, "too_deep"]


def test_recirculating_from_the_catalogue_does_not_raise_an_accounts_friends():
    s = posted(acquisition=c.AcquisitionPolicy(max_depth=2))
    s.circulate("a")
    s.circulate("b", via="a")
    s.circulate("c", via="b")  # level 3
    s.circulate("d")
    s.circulate("c")  # c again, from the catalogue: still level 3 for its friends
    s.circulate("e", via="c")
    assert s.state.depth["e"] == 4
    assert "e" not in s.state.pool.acquired
