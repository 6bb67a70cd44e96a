"""After the purchase, on the real pipeline (issue #13): a hold the withdrawal timer
ends, refunds within and after the hold, a seller's cancellation, a pool that closes
by time, and the payment system's results arriving on ``payment-results`` (a payout
that fails twice and then settles, a seller payment that fails every attempt and is
parked, a chargeback that cancels a payout not executed yet). Every amount is worked
out by hand: budget 1,000 of which 300 attached, 100 to each sharer, price 10,000."""

from __future__ import annotations

import time
from collections import Counter

import msgspec

from domain.payments import MAX_ATTEMPTS
from schemas import commands as c
from schemas.events import CertificateEnded, Event, PaymentReported, PurchaseRefunded
from schemas.payments import (
    BudgetRelease,
    Clawback,
    CommissionPayout,
    SellerPayment,
    Settlement,
)
from tests.e2e.certificates import cert_id, paid, setup

decode_event = msgspec.json.Decoder(Event).decode
decode_settlement = msgspec.json.Decoder(Settlement).decode


def certificate(name: str, t: int, **pool) -> tuple[str, list[c.Command]]:
    cid = cert_id(name)
    return cid, [*setup(cid, t, price_minor=10_000, budget_minor=1_000, attached_minor=300,
                        acquisition=c.AcquisitionPolicy(amount=c.FixedAmount(amount_minor=100)),
                        **pool),
                 c.Circulate(command_id=f"{cid}-s1", certificate_id=cid, at_ms=t,
                             account_id="ann")]


def buy(cid: str, t: int) -> c.Purchase:
    return c.Purchase(command_id=f"{cid}-buy", certificate_id=cid, at_ms=t, account_id="bea",
                      **paid(cid, 10_000))


def refund(cid: str, t: int, n: int, amount: int, by: str,
           chargeback: str | None = None) -> c.Refund:
    return c.Refund(command_id=f"{cid}-rf{n}", certificate_id=cid, at_ms=t, by=by,
                    account_id="seller" if by == "seller" else None, amount_minor=amount,
                    refund_ref=f"rf-{cid}-{n}", chargeback_reason=chargeback)


def report(pipeline, s: Settlement, attempt: int, result: str) -> None:
    """The payment system's result, signed with its key, on payment-results."""
    command = c.ReportPayment(command_id=f"result:{s.settlement_id}:{attempt}",
                              certificate_id=s.certificate_id, at_ms=int(time.time() * 1000),
                              settlement_id=s.settlement_id, attempt=attempt, result=result,
                              reason=None if result == "settled" else "bank said no")
    pipeline.sender.send(command, topic=pipeline.topics.payment_results)
    pipeline.sender.flush()


def settlements_until(pipeline, done, timeout_s: float = 60) -> list[Settlement]:
    deadline = time.monotonic() + timeout_s
    while True:
        got = [decode_settlement(r) for r in pipeline.read(pipeline.topics.payments)]
        if done(got):
            return got
        pipeline.assert_running()
        assert time.monotonic() < deadline, [(type(s).__name__, s.certificate_id) for s in got]
        time.sleep(0.5)


def of(settlements, cid: str) -> Counter:
    return Counter((type(s).__name__, s.payee_id, s.amount_minor, s.attempt)
                   for s in settlements if s.certificate_id == cid)


def test_holds_refunds_ends_and_payment_results_on_the_pipeline(pipeline):
    pipeline.start_all()
    t = int(time.time() * 1000)
    held, held_cmds = certificate("held", t, hold_s=2)
    refunded, refunded_cmds = certificate("refunded", t)  # the default 14-day hold
    clawed, clawed_cmds = certificate("clawed", t, hold_s=0)
    # another seller and sharer: their debts and payouts stay apart from the others'
    locked = cert_id("locked", seller="sam")
    locked_cmds = [*setup(locked, t, price_minor=10_000, budget_minor=1_000, attached_minor=300,
                          hold_s=0, acquisition=c.AcquisitionPolicy(
                              amount=c.FixedAmount(amount_minor=100))),
                   c.Circulate(command_id=f"{locked}-s1", certificate_id=locked, at_ms=t,
                               account_id="lia")]
    cancelled, cancelled_cmds = certificate("cancelled", t)
    closing, closing_cmds = certificate("closing", t, close_after_s=2)
    pipeline.send(
        *held_cmds,
        *refunded_cmds, buy(refunded, t), refund(refunded, t, 1, 4_000, "payment_system"),
        refund(refunded, t, 2, 6_000, "seller"),
        *clawed_cmds, buy(clawed, t), refund(clawed, t, 1, 5_000, "payment_system", "4837"),
        # a seller's refund after the hold: the commission is locked (issue #24)
        *locked_cmds, buy(locked, t),
        # after the hold the seller's refund goes through the payment system
        c.Refund(command_id=f"{locked}-rf1", certificate_id=locked, at_ms=t,
                 by="payment_system", amount_minor=10_000, refund_ref=f"rf-{locked}"),
        *cancelled_cmds, c.CancelCertificate(command_id=f"{cancelled}-cancel",
                                             certificate_id=cancelled, at_ms=t,
                                             account_id="seller"),
        *closing_cmds)

    # `clawed` is charged back after its hold (none): ann and the seller owe what they
    # were paid of it; then `held` is bought, and its payouts recover those debts first
    settlements_until(pipeline, lambda got: sum(isinstance(s, Clawback) for s in got) == 3)
    pipeline.send(buy(held, t))
    # the hold: nothing payable at the purchase, then the timer's release pays
    got = settlements_until(pipeline, lambda got: any(
        isinstance(s, CommissionPayout) and s.certificate_id == held for s in got))
    assert of(got, held) == Counter({("BudgetRelease", "funder", 900, 1): 1,
                                     ("CommissionPayout", "ann", 50, 1): 1,
                                     ("SellerPayment", "seller", 5_000, 1): 1})
    # ... with the gross and the offset on each: 100 less ann's 50, 10,000 less 5,000
    assert sorted((s.payee_id, s.gross_minor, s.offset_minor, s.amount_minor) for s in got
                  if isinstance(s, (CommissionPayout, SellerPayment))
                  and s.certificate_id == held) == [("ann", 100, 50, 50),
                                                    ("seller", 10_000, 5_000, 5_000)]
    release = next(s for s in got if isinstance(s, CommissionPayout) and s.certificate_id == held)
    purchase = next(s for s in got if isinstance(s, BudgetRelease) and s.certificate_id == held)
    assert release.at_ms - purchase.at_ms >= 2_000  # not before the hold ended

    # within the hold: 40 % then 60 % back to the buyer; ann's held 100 becomes 60, then
    # 0; every minor unit of the budget goes back to the funder
    assert of(got, refunded) == Counter({("BudgetRelease", "funder", 900, 1): 1,
                                         ("BudgetRelease", "funder", 40, 1): 1,
                                         ("BudgetRelease", "funder", 60, 1): 1,
                                         ("BuyerRefund", "bea", 4_000, 1): 1,
                                         ("BuyerRefund", "bea", 6_000, 1): 1})
    # after the hold (none here): paid, then half charged back: clawed back from ann
    # and the seller
    assert of(got, clawed) == Counter({("CommissionPayout", "ann", 100, 1): 1,
                                       ("BudgetRelease", "funder", 900, 1): 1,
                                       ("SellerPayment", "seller", 10_000, 1): 1,
                                       ("Clawback", "ann", 50, 1): 1,
                                       ("Clawback", "seller", 5_000, 1): 1,
                                       ("BudgetRelease", "funder", 50, 1): 1,
                                       ("BuyerRefund", "bea", 5_000, 1): 1})
    assert sorted(s.of_kind for s in got if isinstance(s, Clawback)
                  and s.certificate_id == clawed) == ["commission_payout", "seller_payment"]
    # `locked` was refunded in full after its hold: lia keeps her 100, the
    # funder gets nothing more back, the seller pays the buyer's refund
    assert of(got, locked) == Counter({("CommissionPayout", "lia", 100, 1): 1,
                                       ("BudgetRelease", "funder", 900, 1): 1,
                                       ("SellerPayment", "sam", 10_000, 1): 1,
                                       ("Clawback", "sam", 10_000, 1): 1,
                                       ("BuyerRefund", "bea", 10_000, 1): 1})
    assert of(got, cancelled) == Counter({("BudgetRelease", "funder", 1_000, 1): 1})
    got = settlements_until(pipeline, lambda got: any(
        isinstance(s, BudgetRelease) and s.certificate_id == closing for s in got))
    # ann's pending 100 is voided at the end: the whole budget goes back
    assert of(got, closing) == Counter({("BudgetRelease", "funder", 1_000, 1): 1})
    # (certificates on different partitions: compared without their order)
    assert sorted((s.certificate_id, s.reason) for s in got if isinstance(s, BudgetRelease)
                  and s.certificate_id in (cancelled, closing)) == sorted(
        [(cancelled, "cancelled"), (closing, "closed")])

    # payment results: ann's payout fails twice, then settles; the seller's payment
    # fails every attempt and is parked
    seller = next(s for s in got if isinstance(s, SellerPayment) and s.certificate_id == held)
    for attempt in (1, 2, 3):
        report(pipeline, release, attempt, "settled" if attempt == 3 else "failed")
        report(pipeline, seller, attempt, "failed")
        settlements_until(pipeline, lambda got, n=attempt: sum(
            s.settlement_id in (release.settlement_id, seller.settlement_id)
            for s in got) == 2 * min(n + 1, MAX_ATTEMPTS))
    deadline = time.monotonic() + 60
    while True:  # the third results are decided after the last attempt is published
        events = [decode_event(r) for r in pipeline.read(pipeline.topics.certificate_events)]
        reported = [(e.payee_id, e.attempt, e.outcome) for e in events
                    if isinstance(e, PaymentReported)]
        if len(reported) >= 6 or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert reported == [("ann", 1, "retried"), ("seller", 1, "retried"),
                        ("ann", 2, "retried"), ("seller", 2, "retried"),
                        ("ann", 3, "settled"), ("seller", 3, "parked")]
    got = [decode_settlement(r) for r in pipeline.read(pipeline.topics.payments)]
    assert of(got, held)[("CommissionPayout", "ann", 50, 3)] == 1  # attempt 3, once, as net
    assert [s.attempt for s in got if s.settlement_id == seller.settlement_id] == [1, 2, 3]

    refunds = [e for e in events if isinstance(e, PurchaseRefunded)]
    assert [(e.within_hold, e.fully) for e in refunds if e.certificate_id == refunded] == [
        (True, False), (True, True)]
    assert [(e.within_hold, e.fully) for e in refunds if e.certificate_id == clawed] == [
        (False, False)]
    assert sorted((e.certificate_id, e.reason) for e in events
                  if isinstance(e, CertificateEnded)) == sorted(
        [(cancelled, "cancelled"), (closing, "closed")])

    # a chargeback while the payouts await their results (issue #24): each clawback
    # asks the payment system to cancel the payout it names; cyd's is reported
    # cancelled and sent again, netted: 100 gross less the 50 charged back, from that
    # very payout; the seller's had gone out (settled): its 5,000 stays a debt
    sent = cert_id("sent")
    pipeline.send(*setup(sent, t, price_minor=10_000, budget_minor=1_000, attached_minor=300,
                         hold_s=0, acquisition=c.AcquisitionPolicy(
                             amount=c.FixedAmount(amount_minor=100))),
                  c.Circulate(command_id=f"{sent}-s1", certificate_id=sent, at_ms=t,
                              account_id="cyd"),
                  buy(sent, t), refund(sent, t, 1, 5_000, "payment_system", "4837"))
    got = settlements_until(pipeline, lambda got: any(
        isinstance(s, Clawback) and s.certificate_id == sent for s in got))
    first = {type(s): s for s in got if s.certificate_id == sent
             and isinstance(s, (CommissionPayout, SellerPayment))}
    claws = {s.of_kind: s for s in got if isinstance(s, Clawback) and s.certificate_id == sent}
    assert claws["commission_payout"].cancels == first[CommissionPayout].settlement_id
    assert claws["seller_payment"].cancels == first[SellerPayment].settlement_id
    report(pipeline, first[CommissionPayout], 1, "cancelled")
    report(pipeline, first[SellerPayment], 1, "settled")
    got = settlements_until(pipeline, lambda got: any(
        s.certificate_id == sent and getattr(s, "reissue_of", None) for s in got))
    again = [s for s in got if s.certificate_id == sent and getattr(s, "reissue_of", None)]
    assert [(type(s), s.payee_id, s.gross_minor, s.offset_minor, s.amount_minor, s.reissue_of)
            for s in again] == [(CommissionPayout, "cyd", 100, 50, 50,
                                 first[CommissionPayout].settlement_id)]
    report(pipeline, again[0], 1, "settled")
    deadline = time.monotonic() + 60
    while True:
        outcomes = {(e.settlement_id, e.outcome) for e in map(
            decode_event, pipeline.read(pipeline.topics.certificate_events))
            if isinstance(e, PaymentReported) and e.certificate_id == sent}
        if len(outcomes) >= 3 or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert outcomes == {(first[CommissionPayout].settlement_id, "cancelled"),
                        (first[SellerPayment].settlement_id, "settled"),
                        (again[0].settlement_id, "settled")}

    report_ = pipeline.audit()
    assert report_.ok, report_.problems
    pipeline.assert_running()
