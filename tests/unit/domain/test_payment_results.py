"""The payment system's results (issue #13, rule 4): settled, failed and published
again with the next attempt, parked after the last; and every result that cannot
apply refused with its reason, changing nothing."""

from __future__ import annotations

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from domain.payments import MAX_ATTEMPTS
from schemas import commands as c
from schemas.events import PaymentReported
from schemas.payments import CommissionPayout
from schemas.rejections import Reason
from tests.unit.domain.scenario import Scenario

pytestmark = pytest.mark.unit


def paid() -> Scenario:
    """a and b acquire 100 each; bought with no hold: four settlements published
    (two payouts, the budget release, the seller's payment)."""
    s = Scenario()
    s.setup(price_minor=10_000, budget_minor=1_000, attached_minor=300,
            acquisition=c.AcquisitionPolicy(amount=c.FixedAmount(amount_minor=100)))
    s.circulate("a")
    s.circulate("b")
    s.purchase()
    assert len(s.settlements) == 4
    return s


def report(s: Scenario, settlement_id: str, attempt: int, result: str, **extra):
    return s.send(c.ReportPayment, command_id=f"result:{settlement_id}:{attempt}",
                  settlement_id=settlement_id, attempt=attempt, result=result, **extra)


def payout_to(s: Scenario, account: str) -> CommissionPayout:
    return next(x for x in s.settlements if isinstance(x, CommissionPayout)
                and x.payee_id == account)


def test_a_settled_result_is_recorded_once():
    s = paid()
    sid = payout_to(s, "a").settlement_id
    report(s, sid, 1, "settled")
    assert [(e.outcome, e.payee_id, e.amount_minor) for e in s.of(PaymentReported)] == [
        ("settled", "a", 100)]
    assert report(s, sid, 1, "settled").command_id == f"result:{sid}:1"  # a Duplicate
    assert s.refused(c.ReportPayment, command_id=f"result:{sid}:1", settlement_id=sid,
                     attempt=1, result="failed").reason is Reason.DUPLICATE_CONFLICT
    assert s.refused(c.ReportPayment, command_id=f"result:{sid}:2", settlement_id=sid,
                     attempt=2, result="failed").reason is Reason.PAYMENT_ALREADY_SETTLED


def test_a_payout_that_fails_twice_is_published_again_then_settles():
    s = paid()
    first = payout_to(s, "a")
    report(s, first.settlement_id, 1, "failed", reason="account closed")
    report(s, first.settlement_id, 2, "failed", reason="timeout")
    again = [x for x in s.settlements if x.settlement_id == first.settlement_id]
    # the same settlement, the same id and amount, the next attempt each time
    assert [x.attempt for x in again] == [1, 2, 3]
    assert {(x.payee_id, x.amount_minor, x.command_id) for x in again} == {
        ("a", 100, first.command_id)}
    report(s, first.settlement_id, 3, "settled")
    assert [e.outcome for e in s.of(PaymentReported)] == ["retried", "retried", "settled"]


def test_a_payout_that_fails_every_attempt_is_parked():
    s = paid()
    sid = payout_to(s, "b").settlement_id
    for attempt in range(1, MAX_ATTEMPTS + 1):
        report(s, sid, attempt, "failed", reason="no such account")
    assert s.of(PaymentReported)[-1].outcome == "parked"
    assert len([x for x in s.settlements if x.settlement_id == sid]) == MAX_ATTEMPTS
    assert s.refused(c.ReportPayment, command_id=f"result:{sid}:{MAX_ATTEMPTS + 1}",
                     settlement_id=sid, attempt=MAX_ATTEMPTS + 1,
                     result="settled").reason is Reason.PAYMENT_PARKED


def test_results_that_cannot_apply_are_refused():
    s = paid()
    sid = payout_to(s, "a").settlement_id
    unknown = "0" * 32
    assert s.refused(c.ReportPayment, command_id=f"result:{unknown}:1", settlement_id=unknown,
                     attempt=1, result="settled").reason is Reason.UNKNOWN_SETTLEMENT
    assert s.refused(c.ReportPayment, command_id=f"result:{sid}:2", settlement_id=sid,
                     attempt=2, result="settled").reason is Reason.STALE_ATTEMPT
    assert s.refused(c.ReportPayment, command_id="my-own-id", settlement_id=sid,
                     attempt=1, result="settled").reason is Reason.INVALID_FIELD


@settings(max_examples=200, deadline=None)
@given(st.data())
def test_any_sequence_of_results_publishes_each_attempt_once(data):
    s = paid()
    ids = [x.settlement_id for x in s.settlements]
    chargeback_at = data.draw(st.integers(0, 25))
    for step in range(data.draw(st.integers(0, 25))):
        if step == chargeback_at:  # payouts still awaiting are asked to be cancelled
            s.must(c.Refund, by="payment_system", amount_minor=5_000, refund_ref="cb",
                   chargeback_reason="4837")
        sid = data.draw(st.sampled_from(ids))
        attempt = data.draw(st.integers(1, MAX_ATTEMPTS + 1))
        report(s, sid, attempt, data.draw(st.sampled_from(["settled", "failed", "cancelled"])))
    for sid in ids:
        attempts = [x.attempt for x in s.settlements if x.settlement_id == sid]
        assert attempts == list(range(1, len(attempts) + 1))  # each once, in order
        assert len(attempts) <= MAX_ATTEMPTS
        outcomes = [e.outcome for e in s.of(PaymentReported) if e.settlement_id == sid]
        assert outcomes.count("settled") + outcomes.count("parked") <= 1
        assert outcomes.count("retried") == len(attempts) - 1
        if "parked" in outcomes:
            assert len(attempts) == MAX_ATTEMPTS
        # cancelled once at most, ends it, and only when a chargeback asked for it
        assert outcomes.count("settled") + outcomes.count("parked") + outcomes.count(
            "cancelled") <= 1
        if "cancelled" in outcomes:
            asked = [x for x in s.settlements if getattr(x, "cancels", None) == sid]
            again = [x for x in s.settlements if getattr(x, "reissue_of", None) == sid]
            assert asked and len(again) == 1 and again[0].amount_minor == attempts_of(s, sid)


def attempts_of(s: Scenario, sid: str) -> int:
    """The amount of settlement ``sid`` (every attempt carries the same)."""
    (amount,) = {x.amount_minor for x in s.settlements if x.settlement_id == sid}
    return amount


def test_a_chargeback_on_a_parked_payout_comes_off_that_payout_not_the_account():
    """#24: a clawback takes back only what was paid. a's payout failed every attempt
    (parked, never paid); a chargeback of half the price debits a against that parked
    payout, and the netting stage records no debt for it; b was paid, so its clawback is
    a debt recovered from its later payouts."""
    from domain.netting import net
    from schemas.payments import Clawback

    s = paid()
    parked = payout_to(s, "a").settlement_id
    for attempt in range(1, MAX_ATTEMPTS + 1):
        report(s, parked, attempt, "failed", reason="account closed")
    report(s, payout_to(s, "b").settlement_id, 1, "settled")
    s.must(c.Refund, by="payment_system", amount_minor=5_000, refund_ref="cb-1",
           chargeback_reason="4837")
    claws = {x.payee_id: x for x in s.settlements if isinstance(x, Clawback)
             and x.of_kind == "commission_payout"}
    assert (claws["a"].amount_minor, claws["a"].against_parked) == (50, parked)
    assert (claws["b"].amount_minor, claws["b"].against_parked) == (50, None)
    ledger_a, _ = net(None, claws["a"])
    ledger_b, _ = net(None, claws["b"])
    assert ledger_a.outstanding.get("USD", 0) == 0  # a owes nothing it never received
    assert ledger_b.outstanding["USD"] == 50


def chargeback_while_sent() -> tuple[Scenario, CommissionPayout]:
    """a's payout (100) is sent and has no result yet when a chargeback of half the
    price comes: a is to give back 50."""
    s = paid()
    sent = payout_to(s, "a")
    s.must(c.Refund, by="payment_system", amount_minor=5_000, refund_ref="cb-1",
           chargeback_reason="4837")
    return s, sent


def test_a_chargeback_asks_the_payment_system_to_cancel_a_payout_it_has_not_reported():
    """#24: an unpaid payout is cancelled instead of clawed back, and the payment system
    is told: the clawback names the payout in ``cancels``. Reported cancelled, it is
    sent again (same payee, same gross, ``reissue_of``), and netting takes the
    chargeback's 50 from that very payout: a is paid 50 in all and owes nothing."""
    from domain.netting import replay
    from schemas.payments import Clawback

    s, sent = chargeback_while_sent()
    claw = next(x for x in s.settlements if isinstance(x, Clawback) and x.payee_id == "a")
    assert (claw.amount_minor, claw.cancels, claw.against_parked) == (50, sent.settlement_id,
                                                                     None)
    report(s, sent.settlement_id, 1, "cancelled")
    again = s.settlements[-1]
    assert isinstance(again, CommissionPayout)
    assert (again.payee_id, again.amount_minor, again.reissue_of, again.attempt) == (
        "a", 100, sent.settlement_id, 1)
    assert again.settlement_id != sent.settlement_id
    (e,) = [e for e in s.of(PaymentReported) if e.settlement_id == sent.settlement_id]
    assert (e.outcome, e.reissued_as) == ("cancelled", again.settlement_id)
    ledgers, published = replay([x for x in s.settlements if x.payee_id == "a"])
    paid_to_a = {x.settlement_id: x.amount_minor for x in published
                 if isinstance(x, CommissionPayout)}
    assert paid_to_a[again.settlement_id] == 50  # 100 gross, 50 offset: the chargeback
    assert ledgers["a"].outstanding["USD"] == 0
    # the cancelled payout is done: no result for it is taken any more
    assert report(s, sent.settlement_id, 1, "settled").reason is Reason.DUPLICATE_CONFLICT
    assert s.refused(c.ReportPayment, command_id=f"result:{sent.settlement_id}:2",
                     settlement_id=sent.settlement_id, attempt=2,
                     result="settled").reason is Reason.PAYMENT_CANCELLED
    # and the reissue is an ordinary payout: settled once
    report(s, again.settlement_id, 1, "settled")
    assert s.of(PaymentReported)[-1].outcome == "settled"


def test_a_cancel_that_comes_too_late_leaves_the_debit_standing():
    """The payment system had executed a's payout: it reports it settled; nothing is
    sent again and the 50 is a debt recovered from a's later payouts."""
    from domain.netting import replay

    s, sent = chargeback_while_sent()
    report(s, sent.settlement_id, 1, "settled")
    assert not any(getattr(x, "reissue_of", None) for x in s.settlements)
    ledgers, _ = replay([x for x in s.settlements if x.payee_id == "a"])
    assert ledgers["a"].outstanding["USD"] == 50


def test_a_failed_payout_a_chargeback_asked_to_cancel_is_sent_again_netted_not_retried():
    """A failure means it was not executed either: sent again as a new payout from
    which the debit is recovered (a retry of the old one would pay the gross)."""
    s, sent = chargeback_while_sent()
    report(s, sent.settlement_id, 1, "failed", reason="account closed")
    again = s.settlements[-1]
    assert (again.reissue_of, again.attempt) == (sent.settlement_id, 1)
    assert [x.attempt for x in s.settlements if x.settlement_id == sent.settlement_id] == [1]
    assert s.of(PaymentReported)[-1].outcome == "cancelled"


def test_cancelled_is_refused_for_a_payout_no_chargeback_asked_to_cancel():
    s = paid()
    sid = payout_to(s, "a").settlement_id
    assert s.refused(c.ReportPayment, command_id=f"result:{sid}:1", settlement_id=sid,
                     attempt=1, result="cancelled").reason is Reason.NOT_CANCELLING


def test_a_reissue_gives_back_the_offset_the_cancelled_payout_took():
    """a owed 30 from an earlier certificate: its payout of 100 was netted to 70. Then
    a chargeback (50) cancels it: the reissue is netted against 30 + 50 = 80 and pays
    20; a got 20 for 100 earned, less 30 and 50 owed."""
    from domain.netting import net
    from schemas.payments import Clawback

    s, sent = chargeback_while_sent()
    claw = next(x for x in s.settlements if isinstance(x, Clawback) and x.payee_id == "a")
    old_debt = msgspec.structs.replace(claw, settlement_id="d" * 32, amount_minor=30,
                                       cancels=None, certificate_id="other")
    ledger, _ = net(None, old_debt)
    ledger, first = net(ledger, sent)
    assert (first.amount_minor, first.offset_minor) == (70, 30)
    ledger, _ = net(ledger, claw)
    report(s, sent.settlement_id, 1, "cancelled")
    ledger, second = net(ledger, s.settlements[-1])
    assert (second.amount_minor, second.offset_minor, second.gross_minor) == (20, 80, 100)
    assert ledger.outstanding["USD"] == 0 and ledger.recovered["USD"] == 80
