"""After the purchase: the hold, refunds and clawbacks, and certificates that end
unsold (issue #13).

The money of a purchase moves in two steps. At the purchase the unspent budget goes
back to the funder at once; the acquired commission and the seller's price are
*held* until ``held_until_ms`` (purchase time + the pool's ``hold_s``), visible but
not payable. The withdrawal service's timer then sends ``release_hold`` and the
held amounts are published as payable settlements. ``hold_s = 0`` pays at once.

Refunds. ``refunded`` only grows, up to the price. The accounts' entitlements are
their acquisitions scaled by what is left of the price once the refunds that count
against commission are taken off, ``acquired * (price - commission_refunded) /
price``, each rounded up or down so that together they keep at most that total
rounded down once (domain/apportion.py: each within one unit of its exact share,
never more than it kept before); what rounding leaves goes to the funder (never
lost). Within the hold every refund counts:
the held payouts shrink to their entitlement and the difference goes back to the
funder (voided). After the hold the commission is *locked* (SPEC 9): a refund the
seller decides is the seller's cost alone (no sharer gives anything back, nothing
returns to the funder), and so is a chargeback after the pool's
``chargeback_window_s`` (from the purchase). Only a chargeback the payment system
reports within that window counts: the difference between what an account was paid
(net of earlier clawbacks) and its entitlement is *clawed back*, a debit settlement
for the payment system to offset against the account's future payouts, and the
same amount released to the funder (the platform carries the receivable, the funder
is made whole at once). So a seller who funds its own pool cannot promote for free
by refunding a friend's purchase after the hold. The seller's side is the refund
itself: out of the held price within the hold, clawed back from the seller after
it. The hold ends when ``release_hold`` is applied (at ``held_until_ms`` or a moment
after, as the timer runs): until then a refund voids.

Per certificate, after every command:
  budget: attached + reserve + pending + held + paid + released - clawed_back == budget
  price (once bought): price_held + price_paid + refunded - price_clawed == price

Ends. The seller may cancel an unsold certificate; every pool closes
``close_after_s`` after posting. Either way pending acquisitions are voided (a
commission pays for a sale; none happened, also in a frozen pool, whose freeze only
promised payment *on purchase*) and everything left of the budget goes back.
"""

from __future__ import annotations

from typing import Literal

from domain import apportion, payments, review
from domain.recorder import Recorder
from domain.state import CertificateState, Pool
from schemas.events import AccountAmount, CertificateEnded, HoldReleased, PurchaseRefunded
from schemas.payments import (
    BudgetRelease,
    BuyerRefund,
    Clawback,
    CommissionPayout,
    SellerPayment,
)

ENDED = ("refunded", "cancelled", "closed")


def close_deadline_ms(state: CertificateState) -> int | None:
    pool = state.pool
    if pool is None or pool.close_after_s is None or state.posted_at_ms is None:
        return None
    return state.posted_at_ms + pool.close_after_s * 1000


def cash_out(state: CertificateState, pool: Pool, now_ms: int, rec: Recorder
             ) -> tuple[int, int, int]:
    """On purchase: hold (or, with no hold, pay) every pending acquisition and the
    price, and release what is left of the budget at once. Returns (paid, held,
    released); with no hold, held is what fraud flags keep back."""
    commission = pool.pending_minor
    if commission:
        # pending > 0 only while nothing was voided: it is every acquisition a review
        # did not decline
        pool.payouts = {a: m for a, m in pool.acquired.items() if a not in pool.declined}
        assert sum(pool.payouts.values()) == commission, (pool.payouts, commission)
    pool.pending_minor = 0
    held = pool.hold_s > 0
    if held:
        pool.held_minor = commission
        state.price_held_minor = state.price_minor
        state.held_until_ms = now_ms + pool.hold_s * 1000
    else:
        # no hold: paid at once, but what a fraud flag keeps back stays held
        kept = review.kept_back_minor(pool)
        pool.held_minor = kept
        pool.paid_minor += commission - kept
        commission -= kept
        _pay_commission(state, pool, rec)
    released = pool.attached_minor + pool.reserve_minor
    pool.attached_minor = pool.reserve_minor = 0
    pool.released_minor += released
    rec.settle(BudgetRelease, payee_id=pool.funder_id, amount_minor=released,
               funding_ref=pool.funding_ref, currency=state.currency, reason="purchase")
    if held:
        return 0, commission, released
    _pay_seller(state, rec)
    return commission, pool.held_minor, released


def _pay_commission(state: CertificateState, pool: Pool, rec: Recorder) -> None:
    for account_id, amount in pool.payouts.items():
        if account_id in pool.flagged:
            continue  # kept back until a reviewer approves it (domain.review)
        rec.settle(CommissionPayout, payee_id=account_id, amount_minor=amount,
                   funding_ref=pool.funding_ref, currency=state.currency)


def _pay_seller(state: CertificateState, rec: Recorder) -> None:
    assert state.buyer_id is not None and state.payment_ref is not None
    amount = state.price_minor - state.refunded_minor
    rec.settle(SellerPayment, payee_id=state.seller_id, amount_minor=amount,
               funding_ref=state.payment_ref, currency=state.currency,
               payer_id=state.buyer_id, payment_ref=state.payment_ref)
    state.price_paid_minor += amount
    state.price_held_minor = 0


def release(state: CertificateState, pool: Pool, rec: Recorder) -> None:
    """The hold ended: the held commission and the price become payable, except the
    commissions a fraud flag keeps back (they stay held until reviewed)."""
    kept = review.kept_back_minor(pool)
    paid = pool.held_minor - kept
    seller = state.price_held_minor
    pool.paid_minor += paid
    pool.held_minor = kept
    state.held_until_ms = None
    _pay_commission(state, pool, rec)
    _pay_seller(state, rec)
    rec.event(HoldReleased, currency=state.currency, paid_out_minor=paid,
              seller_paid_minor=seller, kept_back_minor=kept)


def within_chargeback_window(state: CertificateState, pool: Pool | None, now_ms: int) -> bool:
    if pool is None or pool.chargeback_window_s is None or state.purchased_at_ms is None:
        return True  # rows from before the window: every chargeback claws back
    return now_ms <= state.purchased_at_ms + pool.chargeback_window_s * 1000


def refund(state: CertificateState, pool: Pool | None, amount: int,
           by: Literal["seller", "payment_system"], refund_ref: str, rec: Recorder, *,
           chargeback: bool, now_ms: int) -> None:
    """Give ``amount`` of the price back to the buyer (the caller checked it fits)."""
    price = state.price_minor
    within = state.held_until_ms is not None
    # what scales commission down: any refund within the hold, after it only a
    # chargeback within the window (else the commission is locked)
    counts = within or (chargeback and within_chargeback_window(state, pool, now_ms))
    state.refunded_minor += amount
    if counts:
        state.commission_refunded_minor += amount
    left = price - state.commission_refunded_minor
    voided: list[AccountAmount] = []
    clawed: list[AccountAmount] = []
    released = 0
    assert state.buyer_id is not None and state.payment_ref is not None
    if pool is not None and counts:
        voided_now = 0
        # what each account keeps now: its payout, less what was clawed back from it
        # if it was paid (not held, not kept back by a flag)
        kept = {account_id: amount_was if within or account_id in pool.flagged
                else amount_was - pool.clawed.get(account_id, 0)
                for account_id, amount_was in pool.payouts.items()}
        entitlements = apportion.scaled_down(kept, pool.acquired, left, price,
                                             state.certificate_id)
        for account_id, amount_was in pool.payouts.items():
            entitled = entitlements[account_id]  # never more than it keeps now
            if within or account_id in pool.flagged:
                # held (in the hold, or kept back by a flag after it): voided, not
                # clawed back: it was never paid
                less = amount_was - entitled
                if less:
                    pool.payouts[account_id] = entitled
                    voided.append(AccountAmount(account_id=account_id, amount_minor=less))
                    voided_now += less
            else:
                less = amount_was - pool.clawed.get(account_id, 0) - entitled
                if less:
                    pool.clawed[account_id] = pool.clawed.get(account_id, 0) + less
                    clawed.append(AccountAmount(account_id=account_id, amount_minor=less))
                    rec.settle(Clawback, payee_id=account_id, amount_minor=less,
                               funding_ref=pool.funding_ref, currency=state.currency,
                               refund_ref=refund_ref, of_kind="commission_payout",
                               **_against(state, account_id, CommissionPayout))
            released += less
        pool.held_minor -= voided_now
        pool.voided_minor += voided_now
        pool.clawed_back_minor += released - voided_now
        pool.released_minor += released
        rec.settle(BudgetRelease, payee_id=pool.funder_id, amount_minor=released,
                   funding_ref=pool.funding_ref, currency=state.currency,
                   reason="refund" if within else "clawback")
    if within:
        state.price_held_minor -= amount
    else:
        state.price_clawed_minor += amount
        clawed.append(AccountAmount(account_id=state.seller_id, amount_minor=amount))
        rec.settle(Clawback, payee_id=state.seller_id, amount_minor=amount,
                   funding_ref=state.payment_ref, currency=state.currency,
                   refund_ref=refund_ref, of_kind="seller_payment",
                   **_against(state, state.seller_id, SellerPayment))
    rec.settle(BuyerRefund, payee_id=state.buyer_id, amount_minor=amount,
               funding_ref=state.payment_ref, currency=state.currency,
               payment_ref=state.payment_ref, refund_ref=refund_ref)
    fully = state.refunded_minor == price
    if fully:
        state.status = "refunded"
        state.held_until_ms = None  # nothing is left to release
    rec.event(PurchaseRefunded, by=by, refund_ref=refund_ref, currency=state.currency,
              amount_minor=amount, refunded_total_minor=state.refunded_minor,
              within_hold=within, fully=fully, voided=voided, clawed_back=clawed,
              released_minor=released, chargeback=chargeback,
              commission_locked=not counts)


def _against(state: CertificateState, account_id: str, kind: type) -> dict[str, str]:
    """What a clawback from ``account_id`` is against, when not simply a debt: its
    payout of ``kind`` on this certificate if that was never paid (failed every
    attempt: ``against_parked``, the debit comes off it), or sent and not reported
    yet (``cancels``: the payment system is asked to cancel it; marked here so that
    its result decides, domain/payments.py)."""
    track = payments.last_payout(state, account_id, kind)
    if track is not None and track.status == "parked":
        return {"against_parked": track.settlement.settlement_id}
    if track is not None and track.status == "awaiting":
        track.cancel_requested = True
        return {"cancels": track.settlement.settlement_id}
    return {}


def end(state: CertificateState, reason: Literal["cancelled", "closed"], rec: Recorder) -> None:
    """Take an unsold certificate off sale: void what is pending, release the rest."""
    pool = state.pool
    voided: list[AccountAmount] = []
    released = 0
    if pool is not None:
        if pool.pending_minor:
            voided = [AccountAmount(account_id=a, amount_minor=m)
                      for a, m in pool.acquired.items() if a not in pool.declined]
        released = pool.attached_minor + pool.reserve_minor + pool.pending_minor
        pool.voided_minor += pool.pending_minor
        pool.released_minor += released
        pool.attached_minor = pool.reserve_minor = pool.pending_minor = 0
        if pool.status == "open" or pool.status == "frozen":
            pool.status = "withdrawn"
        pool.claimable.clear()
        if pool.funding_confirmed:
            rec.settle(BudgetRelease, payee_id=pool.funder_id, amount_minor=released,
                       funding_ref=pool.funding_ref, currency=state.currency, reason=reason)
        else:
            # Nothing is held behind funding_ref (an unconfirmed pool was never posted,
            # so nothing was acquired either): a release would ask the payment system
            # to pay the funder a budget it never held, any budget the pool named, or
            # point at someone else's escrow. The books count the budget released
            # (conservation), the event says nothing was; a confirmation that comes
            # after the end releases the hold then (handlers._confirm_funding).
            released = 0
    state.status = reason
    rec.event(CertificateEnded, reason=reason, currency=state.currency, voided=voided,
              voided_minor=sum(v.amount_minor for v in voided), released_minor=released)
