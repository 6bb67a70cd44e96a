"""Commissions under review: declines, fraud flags and approvals (issue #24, rules 2-3).

A commission can be taken back by a review only while it is not paid:

* *pending* (acquired, the certificate not bought yet), or
* *held* (bought, the hold not ended), or
* *kept back*: the fraud stage flagged it, so when the hold ended (or at once, with no
  hold) it stayed in ``held_minor`` instead of being paid. It waits there until a
  reviewer approves it (paid then) or someone declines it.

A decline voids the commission back to the funder (a ``budget_release`` with reason
``declined``) and says why; the seller or a reviewer may decline, no one their own.
Only a reviewer approves: a seller approving its own fake sharers would pay them out
of the funder's budget. After the hold a paid commission is locked: only a chargeback
within the pool's window takes it back (domain.aftersale).

Who is a reviewer is the gateway's word (``reviewer`` on the command, from the
account's roles); who may flag is the fraud stage's key (services.common.auth).
"""

from __future__ import annotations

from domain.recorder import Recorder
from domain.state import CertificateState, Pool
from schemas.commands import ApproveCommission, DeclineCommission, FlagCommission
from schemas.events import CommissionApproved, CommissionDeclined, CommissionFlagged
from schemas.payments import BudgetRelease, CommissionPayout

BEFORE_PURCHASE = ("issued", "posted")


class ReviewRefused(Exception):
    """Raised with a reason name of schemas.rejections.Reason and a detail."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(reason, detail)
        self.reason = reason
        self.detail = detail


def kept_back(state: CertificateState, pool: Pool, account_id: str) -> bool:
    """The account's payout stays held past the hold's end (a flag waits for review)."""
    return (state.held_until_ms is None and account_id in pool.flagged
            and account_id in pool.payouts)


def kept_back_minor(pool: Pool) -> int:
    """What flags keep back of the payouts (0 in the hot path: no flags)."""
    if not pool.flagged:
        return 0
    return sum(pool.payouts.get(a, 0) for a in pool.flagged)


def _stage(state: CertificateState, pool: Pool, sharer_id: str) -> str:
    """Where ``sharer_id``'s commission stands: pending, held, paid; raises if it has
    none to review."""
    if sharer_id in pool.declined:
        raise ReviewRefused("COMMISSION_DECLINED", "this commission was declined already")
    if sharer_id not in pool.acquired:
        raise ReviewRefused("NOTHING_TO_REVIEW", "the account acquired nothing here")
    if state.status in BEFORE_PURCHASE:
        if pool.pending_minor == 0:
            raise ReviewRefused("NOTHING_TO_REVIEW", "the acquisition was voided already")
        return "pending"
    if sharer_id not in pool.payouts:
        raise ReviewRefused("NOTHING_TO_REVIEW", "nothing is left of this commission")
    if state.held_until_ms is not None or kept_back(state, pool, sharer_id):
        return "held"
    return "paid"


def decline(state: CertificateState, pool: Pool, c: DeclineCommission, rec: Recorder
            ) -> None:
    stage = "pending" if state.status in BEFORE_PURCHASE else "held"
    # pending: what it acquired; held: what is left of it after refunds in the hold
    amount = pool.acquired[c.sharer_id] if stage == "pending" else pool.payouts[c.sharer_id]
    if stage == "pending":
        pool.pending_minor -= amount
    else:
        del pool.payouts[c.sharer_id]
        pool.held_minor -= amount
    pool.voided_minor += amount
    pool.released_minor += amount
    pool.flagged.pop(c.sharer_id, None)
    pool.declined[c.sharer_id] = amount
    pool.decline_reasons[c.sharer_id] = c.reason if c.note is None else f"{c.reason}: {c.note}"
    rec.event(CommissionDeclined, sharer_id=c.sharer_id, amount_minor=amount,
              currency=state.currency, reason=c.reason, note=c.note,
              by_account=c.account_id,
              by_role="seller" if c.account_id == state.seller_id else "reviewer",
              stage=stage)
    rec.settle(BudgetRelease, payee_id=pool.funder_id, amount_minor=amount,
               funding_ref=pool.funding_ref, currency=state.currency, reason="declined")


def check_decline(state: CertificateState, pool: Pool, c: DeclineCommission) -> None:
    if c.account_id == c.sharer_id:
        raise ReviewRefused("NOT_REVIEWER", "no one reviews their own commission")
    if c.account_id != state.seller_id and not c.reviewer:
        raise ReviewRefused("NOT_REVIEWER", "only the seller or a reviewer declines")
    if _stage(state, pool, c.sharer_id) == "paid":
        raise ReviewRefused("COMMISSION_PAID", "the hold has ended and the commission was "
                            "paid: only a chargeback within the window takes it back")


def check_flag(state: CertificateState, pool: Pool, c: FlagCommission) -> None:
    if c.sharer_id in pool.flagged:
        raise ReviewRefused("ALREADY_FLAGGED", f"flagged already by {pool.flagged[c.sharer_id]}")
    _stage(state, pool, c.sharer_id)  # refuses what there is nothing of to review


def flag(state: CertificateState, pool: Pool, c: FlagCommission, rec: Recorder) -> None:
    """Keep the commission back for review; a flag that comes after the commission was
    paid keeps nothing back (the fraud stage cannot know when a hold ends: a rule
    that needs a burst or a ring to grow flags its first members late) and is only
    recorded, for the reviewers and the audit."""
    paid = _stage(state, pool, c.sharer_id) == "paid"
    if not paid:
        pool.flagged[c.sharer_id] = c.rule
    rec.event(CommissionFlagged, sharer_id=c.sharer_id, rule=c.rule, detail=c.detail,
              paid=paid)


def check_approve(state: CertificateState, pool: Pool, c: ApproveCommission) -> None:
    if c.account_id == c.sharer_id:
        raise ReviewRefused("NOT_REVIEWER", "no one reviews their own commission")
    if not c.reviewer:
        raise ReviewRefused("NOT_REVIEWER", "only a reviewer approves a flagged commission")
    if c.sharer_id not in pool.flagged:
        raise ReviewRefused("NOT_FLAGGED", "no flag keeps this commission back")


def approve(state: CertificateState, pool: Pool, c: ApproveCommission, rec: Recorder) -> None:
    paid = 0
    if kept_back(state, pool, c.sharer_id):
        paid = pool.payouts[c.sharer_id]
        pool.held_minor -= paid
        pool.paid_minor += paid
        rec.settle(CommissionPayout, payee_id=c.sharer_id, amount_minor=paid,
                   funding_ref=pool.funding_ref, currency=state.currency)
    del pool.flagged[c.sharer_id]
    rec.event(CommissionApproved, sharer_id=c.sharer_id, by_account=c.account_id,
              currency=state.currency, paid_minor=paid)
