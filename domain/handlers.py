"""One handler per command: validate, then apply.

``handle(state, command)`` is the whole engine for one certificate. Each handler
first decides whether the command is legal, raising :class:`Refusal` with a typed
reason *before anything is touched*; only then does it mutate the state and record
events and settlements. So a refused command changes nothing (a property test
checks it byte for byte), and an accepted one is followed by the invariant check.

A command id already applied with the same body is a :class:`Duplicate` (no
effect, and it names the seq the first one was applied at); with another body it
is refused (``duplicate_conflict``). The body is what the sender meant: ``at_ms``,
the time a gateway or timer stamped on it, is left out, so a retry stamped later is
a duplicate, not a conflict. Every command gets exactly one verdict: accepted (it
recorded at least one event) or refused with a reason (a claim on an empty pool is
``pool_empty``, a timer tick with nothing due is ``nothing_due``). A refused command
is not recorded as applied, so the same id may be decided again later.

Random amounts come from ``entropy``, which the sequencer draws from a secret and
carries on the accepted record (see domain.draw); nothing the client chose enters.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from typing import Union

import msgspec

from domain import aftersale, payments, review
from domain import pool as pools
from domain.invariants import check_invariants
from domain.offer import certificate_id_for, offer_owner
from domain.recorder import Recorder
from domain.state import MAX_CHAIN_HOPS, CertificateState, Hop, Pool
from domain.thresholds import cumulative_limit_minor, display_limit_ms, due_warnings, first_met
from schemas.commands import (
    ApproveCommission,
    AttachPool,
    CancelCertificate,
    CheckExpiry,
    Circulate,
    Claim,
    Command,
    ConfirmFunding,
    DeclineCommission,
    FlagCommission,
    IssueCertificate,
    PostCertificate,
    Purchase,
    RandomAmount,
    Refund,
    ReleaseHold,
    ReplenishMatch,
    ReplenishRandom,
    ReportPayment,
)
from schemas.events import (
    AccountAmount,
    AcquisitionClaimable,
    CertificateCirculated,
    CertificateIssued,
    CertificatePosted,
    CertificatePurchased,
    Event,
    FundingConfirmed,
    NoGain,
    PoolAttached,
)
from schemas.payments import BudgetRelease, Settlement
from schemas.rejections import Reason
from schemas.types import MAX_TIMESTAMP_MS


class Refusal(Exception):
    def __init__(self, reason: Reason, detail: str) -> None:
        super().__init__(reason, detail)
        self.reason = reason
        self.detail = detail


class Accepted(msgspec.Struct, frozen=True):
    state: CertificateState
    events: list[Event]
    settlements: list[Settlement]


class Rejected(msgspec.Struct, frozen=True):
    reason: Reason
    detail: str


class Duplicate(msgspec.Struct, frozen=True):
    command_id: str
    first_seq: int | None = None  # None: applied before seqs were recorded with ids


Outcome = Union[Accepted, Rejected, Duplicate]

_encode = msgspec.msgpack.Encoder().encode
_DIGEST_BYTES = 12


def command_digest(command: Command) -> bytes:
    """What the sender meant: the body without ``at_ms`` (the time it was stamped)."""
    return hashlib.blake2b(_encode(msgspec.structs.replace(command, at_ms=0)),
                           digest_size=_DIGEST_BYTES).digest()


class _Context(msgspec.Struct, frozen=True):
    now: int
    entropy: bytes


# --- shared checks ------------------------------------------------------------------


def _existing(state: CertificateState | None) -> CertificateState:
    if state is None:
        raise Refusal(Reason.UNKNOWN_CERTIFICATE, "no certificate with this id was issued")
    return state


def _not_ended(state: CertificateState) -> None:
    if state.status in aftersale.ENDED:
        raise Refusal(Reason.CERTIFICATE_ENDED, f"the certificate was {state.status}")


def _on_display(state: CertificateState, now_ms: int) -> Pool:
    _not_ended(state)
    if state.status == "issued":
        raise Refusal(Reason.NOT_POSTED, "the certificate is not posted yet")
    if state.status == "purchased":
        raise Refusal(Reason.CERTIFICATE_PURCHASED, "the certificate was already purchased")
    assert state.pool is not None  # posting requires a pool
    closes = aftersale.close_deadline_ms(state)
    if closes is not None and now_ms >= closes:
        # closed by time; the timer's check_expiry records it
        raise Refusal(Reason.CERTIFICATE_ENDED, "the certificate's pool has closed")
    return state.pool


def _open_pool(state: CertificateState, now_ms: int) -> Pool:
    pool = _on_display(state, now_ms)
    if pool.status != "open":
        raise Refusal(Reason.POOL_WITHDRAWN, f"the commission pool is {pool.status}")
    return pool


def _check_range(lo: int, hi: int, what: str) -> None:
    if lo > hi:
        raise Refusal(Reason.INVALID_RANGE, f"{what}: min_minor > max_minor")


# --- handlers: each returns the recorder, or raises Refusal before any change --------


def _issue(state: CertificateState | None, c: IssueCertificate, ctx: _Context
           ) -> tuple[CertificateState, Recorder]:
    if state is not None:
        raise Refusal(Reason.ALREADY_ISSUED, "a certificate with this id exists")
    if c.serial > c.copies:
        raise Refusal(Reason.INVALID_FIELD, "serial is beyond the number of copies")
    # An offer id is "{seller}~{name}": it belongs to its seller by construction, so no
    # one else can issue copies of it (see domain.offer for why not first-come).
    owner = offer_owner(c.offer_id)
    if owner is None:
        raise Refusal(Reason.INVALID_FIELD, "offer_id must be '{seller id}~{name}'")
    if owner != c.account_id:
        raise Refusal(Reason.OFFER_NOT_OWNED, "this offer id belongs to another seller")
    if c.certificate_id != certificate_id_for(c.offer_id, c.serial):
        raise Refusal(Reason.INVALID_FIELD, "certificate_id must be '{offer_id}-{serial:05d}'")
    state = CertificateState(
        certificate_id=c.certificate_id, offer_id=c.offer_id, serial=c.serial,
        seller_id=c.account_id, price_minor=c.price_minor, currency=c.currency,
        time_limit_s=c.time_limit_s, funder_id=c.funder_id,
    )
    rec = Recorder(state, c.command_id, ctx.now)
    rec.event(CertificateIssued, seller_id=c.account_id, offer_id=c.offer_id, serial=c.serial,
              copies=c.copies, name=c.name, price_minor=c.price_minor, currency=c.currency,
              terms=c.terms, time_limit_s=c.time_limit_s, funder_id=c.funder_id)
    return state, rec


def _attach(state: CertificateState, c: AttachPool, ctx: _Context) -> Recorder:
    if c.account_id not in (state.seller_id, state.funder_id):
        raise Refusal(Reason.NOT_AUTHORIZED,
                      "only the seller, or the funder the seller named, attaches a pool")
    _not_ended(state)
    if state.status != "issued":
        raise Refusal(Reason.ALREADY_POSTED if state.status == "posted"
                      else Reason.CERTIFICATE_PURCHASED, "a pool is attached before posting")
    if state.pool is not None:
        raise Refusal(Reason.POOL_ALREADY_ATTACHED, "this certificate already has a pool")
    if c.currency != state.currency:
        raise Refusal(Reason.CURRENCY_MISMATCH, f"the certificate is priced in {state.currency}")
    if c.attached_minor > c.budget_minor:
        raise Refusal(Reason.ATTACHED_EXCEEDS_BUDGET, "attached_minor > budget_minor")
    if isinstance(c.acquisition.amount, RandomAmount):
        _check_range(c.acquisition.amount.min_minor, c.acquisition.amount.max_minor, "acquisition")
    if isinstance(c.replenish, ReplenishRandom):
        _check_range(c.replenish.min_minor, c.replenish.max_minor, "replenish")
    rec = Recorder(state, c.command_id, ctx.now)
    state.pool = Pool(
        funder_id=c.account_id, funding_ref=c.funding_ref, budget_minor=c.budget_minor,
        initial_attached_minor=c.attached_minor, attached_minor=c.attached_minor, reserve_minor=c.budget_minor - c.attached_minor,
        acquisition=c.acquisition, replenish=c.replenish, thresholds=c.thresholds,
        display_limit_ms=display_limit_ms(state, c.thresholds),
        cumulative_limit_minor=cumulative_limit_minor(state, c.thresholds),
        hold_s=c.hold_s, close_after_s=c.close_after_s,
        chargeback_window_s=c.chargeback_window_s,
    )
    rec.event(PoolAttached, funder_id=c.account_id, funding_ref=c.funding_ref,
              currency=c.currency, budget_minor=c.budget_minor,
              attached_minor=c.attached_minor, reserve_minor=c.budget_minor - c.attached_minor,
              acquisition=c.acquisition, replenish=c.replenish, thresholds=c.thresholds,
              hold_s=c.hold_s, close_after_s=c.close_after_s,
              chargeback_window_s=c.chargeback_window_s)
    return rec


def _confirm_funding(state: CertificateState, c: ConfirmFunding, ctx: _Context) -> Recorder:
    pool = state.pool
    if pool is None:
        raise Refusal(Reason.POOL_NOT_ATTACHED, "no pool is attached to confirm")
    if pool.funding_confirmed:
        raise Refusal(Reason.FUNDING_ALREADY_CONFIRMED, "the pool's funding was confirmed before")
    if c.funding_ref != pool.funding_ref:
        raise Refusal(Reason.FUNDING_MISMATCH, "funding_ref is not the attached pool's")
    if c.currency != state.currency:
        raise Refusal(Reason.FUNDING_MISMATCH, f"the pool is in {state.currency}")
    if c.amount_minor < pool.budget_minor:
        raise Refusal(Reason.FUNDING_MISMATCH,
                      f"the hold of {c.amount_minor} is below the budget of {pool.budget_minor}")
    rec = Recorder(state, c.command_id, ctx.now)
    pool.funding_confirmed = True
    rec.event(FundingConfirmed, funding_ref=c.funding_ref, amount_minor=c.amount_minor,
              currency=c.currency)
    if state.status == "cancelled" or state.status == "closed":
        # the certificate ended before its escrow was confirmed (aftersale.end released
        # nothing then): the hold the payment system now reports goes back at once
        rec.settle(BudgetRelease, payee_id=pool.funder_id, amount_minor=pool.budget_minor,
                   funding_ref=pool.funding_ref, currency=state.currency,
                   reason=state.status)
    return rec


def _post(state: CertificateState, c: PostCertificate, ctx: _Context) -> Recorder:
    if c.account_id != state.seller_id:
        raise Refusal(Reason.NOT_AUTHORIZED, "only the seller posts a certificate")
    _not_ended(state)
    if state.status != "issued":
        raise Refusal(Reason.ALREADY_POSTED if state.status == "posted"
                      else Reason.CERTIFICATE_PURCHASED, "the certificate was posted before")
    if state.pool is None:
        raise Refusal(Reason.POOL_NOT_ATTACHED, "attach a commission pool before posting")
    if not state.pool.funding_confirmed:
        raise Refusal(Reason.FUNDING_NOT_CONFIRMED,
                      "the payment system has not confirmed the pool's escrow hold yet")
    limit = state.pool.display_limit_ms
    if limit is not None and ctx.now + limit > MAX_TIMESTAMP_MS:
        raise Refusal(Reason.INVALID_FIELD, "the display deadline would be beyond 2^53 ms")
    close_after_s = state.pool.close_after_s
    closes = None if close_after_s is None else ctx.now + close_after_s * 1000
    if closes is not None and closes > MAX_TIMESTAMP_MS:
        raise Refusal(Reason.INVALID_FIELD, "the pool's end would be beyond 2^53 ms")
    rec = Recorder(state, c.command_id, ctx.now)
    state.status = "posted"
    state.posted_at_ms = ctx.now
    rec.event(CertificatePosted, seller_id=state.seller_id,
              display_deadline_ms=None if limit is None else ctx.now + limit,
              closes_at_ms=closes)
    return rec


def _circulate(state: CertificateState, c: Circulate, ctx: _Context) -> Recorder:
    pool = _open_pool(state, ctx.now)
    if c.account_id == state.holder:
        raise Refusal(Reason.ALREADY_HOLDER, "the account already holds the certificate")
    if c.via is not None and (c.via == c.account_id or c.via not in state.members):
        raise Refusal(Reason.VIA_NOT_IN_CHAIN, "via must be another account in the chain")
    if len(state.chain) >= MAX_CHAIN_HOPS:
        raise Refusal(Reason.CHAIN_LIMIT, f"the chain is limited to {MAX_CHAIN_HOPS} hops")
    now = ctx.now
    rec = Recorder(state, c.command_id, now, ctx.entropy)
    previous = state.holder
    # Only a new account other than the seller and the funder, that meets the pool's
    # account rules, counts: a repeat, the seller or funder, or an account too new or
    # not verified moves the certificate but counts toward no threshold, acquires
    # nothing and replenishes nothing (SPEC rule 6; issue #24 rule 4).
    new = c.account_id not in state.members
    insider = c.account_id == state.seller_id or c.account_id == pool.funder_id
    eligible = pools.meets_account_rules(pool, c.account, now)
    counts = new and not insider and eligible
    depth = 1 if c.via is None else state.depth[c.via] + 1
    no_gain = _no_gain(state, pool, c, new, insider, eligible, depth, now)
    state.depth.setdefault(c.account_id, depth)  # an account keeps its first level
    state.members[c.account_id] = len(state.chain)
    state.chain.append(Hop(c.account_id, c.via, now))
    state.holder = c.account_id
    state.circulations += 1
    if counts:
        state.distinct_circulations += 1
    elif new and not insider:
        state.ineligible_members += 1
        state.ineligible.append(c.account_id)
    rec.events.append(CertificateCirculated(
        event_id=rec.next_event_id(), certificate_id=state.certificate_id,
        command_id=c.command_id, seq=rec.seq, at_ms=now, account_id=c.account_id, via=c.via,
        previous_holder=previous, hop=len(state.chain), circulations=state.circulations,
        counts=counts, distinct_circulations=state.distinct_circulations, depth=depth,
        no_gain=no_gain))
    # Seed [123]: the thresholds are checked first; a withdrawn pool pays nothing more.
    if pools.check_withdrawal(state, pool, now, rec, only=("display_time", "circulations")):
        return rec
    if counts:
        _acquire_on_circulation(state, pool, c, no_gain is None, rec)
    if not pools.check_withdrawal(state, pool, now, rec, only=("cumulative",)):
        pools.raise_warnings(state, pool, now, rec)
    return rec


def _no_gain(state: CertificateState, pool: Pool, c: Circulate, new: bool, insider: bool,
             eligible: bool, depth: int, now: int) -> NoGain | None:
    """Why this hop will acquire nothing, when the state says so before the pool is
    asked (CertificateCirculated.no_gain); the same conditions decide the acquisition."""
    if not new:
        return "repeat"
    if insider:
        return "seller_or_funder"
    if not eligible:
        return "account_rules"
    who = c.account_id if pool.acquisition.beneficiary == "circulator" else c.via
    if who is None:
        return "upstream_none"
    if who == state.seller_id or who == pool.funder_id:
        return "seller_or_funder"
    if who != c.account_id and who in state.ineligible:
        return "account_rules"  # the upstream account did not meet them when it joined
    if who in pool.acquired or who in pool.claimable:
        return "already_gained"
    max_depth = pool.acquisition.max_depth
    # the level of the account that would gain: upstream, the one the share came via
    if max_depth is not None and (depth if who == c.account_id else depth - 1) > max_depth:
        return "too_deep"
    if pools.velocity_used_up(pool, now):
        return "velocity"
    return None


def _acquire_on_circulation(state: CertificateState, pool: Pool, c: Circulate, may: bool,
                            rec: Recorder) -> None:
    pools.restore_before_acquiring(state, pool, rec)
    who = c.account_id if pool.acquisition.beneficiary == "circulator" else c.via
    acquired = 0
    if may and pools.may_gain(state, pool, who):
        assert who is not None
        if pool.acquisition.trigger == "auto":
            acquired = pools.acquire(state, pool, who, rec)
        else:
            pool.claimable[who] = len(state.chain)
            rec.event(AcquisitionClaimable, account_id=who)
    pools.replenish(state, pool, acquired, rec)


def _claim(state: CertificateState, c: Claim, ctx: _Context) -> Recorder:
    pool = _open_pool(state, ctx.now)
    if c.account_id not in pool.claimable:
        detail = ("the account already gained on this certificate" if c.account_id in pool.acquired
                  else "the account has nothing to claim on this certificate")
        raise Refusal(Reason.NOTHING_TO_CLAIM, detail)
    expired = first_met(state, pool, ctx.now, ("display_time",)) is not None
    if not expired and pools.velocity_used_up(pool, ctx.now):
        raise Refusal(Reason.VELOCITY_LIMIT, "the pool's acquisitions for this minute are "
                      "used up; the claim stays open")
    if not expired and pools.acquisition_amount(pool, ctx.entropy) == 0:
        raise Refusal(Reason.POOL_EMPTY, "nothing is attached to the pool to claim from now; "
                      "the claim stays open")
    rec = Recorder(state, c.command_id, ctx.now, ctx.entropy)
    if pools.check_withdrawal(state, pool, ctx.now, rec, only=("display_time",)):
        return rec
    acquired = pools.acquire(state, pool, c.account_id, rec)
    assert acquired > 0
    if isinstance(pool.replenish, ReplenishMatch) and not pool.replenish.from_second_circulation:
        pools.replenish(state, pool, acquired, rec)
    if not pools.check_withdrawal(state, pool, ctx.now, rec, only=("cumulative",)):
        pools.raise_warnings(state, pool, ctx.now, rec)
    return rec


def _purchase(state: CertificateState, c: Purchase, ctx: _Context) -> Recorder:
    """A payment the payment system captured (SPEC 8a). Whether its reference was
    used before in the seller's program was decided by the captures stage, which
    admits each (seller, payment_ref) once; here: for this certificate's seller, the
    whole price, in its currency."""
    pool = _on_display(state, ctx.now)
    if c.account_id == state.seller_id:
        raise Refusal(Reason.BUYER_IS_SELLER, "the seller cannot buy their own certificate")
    if c.seller_id != state.seller_id:
        raise Refusal(Reason.PAYMENT_SELLER_MISMATCH,
                      "the payment was captured for another seller than this certificate's")
    if c.currency != state.currency:
        raise Refusal(Reason.PAYMENT_CURRENCY_MISMATCH,
                      f"the payment was captured in {c.currency}, the price is in {state.currency}")
    if c.captured_minor < state.price_minor:
        raise Refusal(Reason.PAYMENT_BELOW_PRICE,
                      f"captured {c.captured_minor}, the price is {state.price_minor}")
    if ctx.now + pool.hold_s * 1000 > MAX_TIMESTAMP_MS:
        raise Refusal(Reason.INVALID_FIELD, "the hold would end beyond 2^53 ms")
    rec = Recorder(state, c.command_id, ctx.now)
    # Seed example 3 (S37): the thresholds are checked when the certificate is bought.
    pools.check_withdrawal(state, pool, ctx.now, rec)
    state.status = "purchased"
    state.purchased_at_ms = ctx.now
    state.buyer_id = c.account_id
    state.payment_ref = c.payment_ref
    paid, held, released = aftersale.cash_out(state, pool, ctx.now, rec)
    rec.event(CertificatePurchased, buyer_id=c.account_id, payment_ref=c.payment_ref,
              currency=state.currency, price_minor=state.price_minor,
              paid_out_minor=paid, released_minor=released,
              held_until_ms=state.held_until_ms, held_minor=held,
              # everything with a hold; with none, what a fraud flag keeps back
              held=[AccountAmount(account_id=a, amount_minor=m) for a, m in pool.payouts.items()
                    if state.held_until_ms is not None or a in pool.flagged])
    return rec


def _release_hold(state: CertificateState, c: ReleaseHold, ctx: _Context) -> Recorder:
    if state.held_until_ms is None or ctx.now < state.held_until_ms:
        raise Refusal(Reason.NOTHING_DUE, "no hold ends now")
    assert state.pool is not None
    rec = Recorder(state, c.command_id, ctx.now)
    aftersale.release(state, state.pool, rec)
    return rec


def _refund(state: CertificateState, c: Refund, ctx: _Context) -> Recorder:
    if c.by == "seller" and c.account_id != state.seller_id:
        raise Refusal(Reason.NOT_AUTHORIZED, "only the seller (or the payment system) refunds")
    _not_ended(state)
    if state.status != "purchased":
        raise Refusal(Reason.NOT_PURCHASED, "the certificate was not purchased")
    if c.chargeback_reason is not None and c.by != "payment_system":
        raise Refusal(Reason.INVALID_FIELD, "only the payment system reports a chargeback")
    if c.by == "seller" and state.held_until_ms is None:
        # the price was paid out: a refund now is money the seller must give back,
        # which only the payment system can take from the seller's side (else the
        # buyer is paid at once and the debt waits on the seller's next sale)
        raise Refusal(Reason.REFUND_AFTER_HOLD, "after the hold a refund goes through the "
                      "payment system, which takes it from the seller")
    # Each party's references are its own: a seller who used the reference the payment
    # system will give a chargeback (a predictable one) would otherwise have that
    # chargeback refused as a duplicate, keeping the price and everyone's commission.
    # "by ref" cannot be an Id (no spaces), so it never meets a reference stored bare
    # by rows from before, which still count as used by either party.
    used = f"{c.by} {c.refund_ref}"
    if used in state.refund_refs or c.refund_ref in state.refund_refs:
        raise Refusal(Reason.REFUND_REF_USED,
                      f"refund {c.refund_ref} was applied already (under another command id)")
    left = state.price_minor - state.refunded_minor
    if c.amount_minor > left:
        raise Refusal(Reason.REFUND_EXCEEDS_PRICE,
                      f"at most {left} of the price is left to refund")
    rec = Recorder(state, c.command_id, ctx.now)
    state.refund_refs.append(used)
    aftersale.refund(state, state.pool, c.amount_minor, c.by, c.refund_ref, rec,
                     chargeback=c.chargeback_reason is not None, now_ms=ctx.now)
    return rec


def _cancel(state: CertificateState, c: CancelCertificate, ctx: _Context) -> Recorder:
    if c.account_id != state.seller_id:
        raise Refusal(Reason.NOT_AUTHORIZED, "only the seller cancels a certificate")
    _not_ended(state)
    if state.status == "purchased":
        raise Refusal(Reason.CERTIFICATE_PURCHASED, "a sold certificate is refunded, "
                      "not cancelled")
    rec = Recorder(state, c.command_id, ctx.now)
    aftersale.end(state, "cancelled", rec)
    return rec


def _check_expiry(state: CertificateState, c: CheckExpiry, ctx: _Context) -> Recorder:
    pool = state.pool
    closes = aftersale.close_deadline_ms(state)
    if state.status == "posted" and closes is not None and ctx.now >= closes:
        rec = Recorder(state, c.command_id, ctx.now)
        aftersale.end(state, "closed", rec)
        return rec
    if state.status != "posted" or pool is None or pool.status != "open" or not (
            first_met(state, pool, ctx.now, ("display_time",))
            or due_warnings(state, pool, ctx.now)):
        raise Refusal(Reason.NOTHING_DUE, "no display-time warning, withdrawal or end is due")
    rec = Recorder(state, c.command_id, ctx.now)
    if not pools.check_withdrawal(state, pool, ctx.now, rec, only=("display_time",)):
        pools.raise_warnings(state, pool, ctx.now, rec)
    return rec


def _report_payment(state: CertificateState, c: ReportPayment, ctx: _Context) -> Recorder:
    if c.command_id != f"result:{c.settlement_id}:{c.attempt}":
        raise Refusal(Reason.INVALID_FIELD,
                      "command_id must be 'result:{settlement_id}:{attempt}'")
    entry = state.payments.get(c.settlement_id)
    if entry is None:
        raise Refusal(Reason.UNKNOWN_SETTLEMENT, "this certificate published no such settlement")
    if entry.status == "settled":
        raise Refusal(Reason.PAYMENT_ALREADY_SETTLED, "the settlement was reported settled")
    if entry.status == "parked":
        raise Refusal(Reason.PAYMENT_PARKED, "the settlement failed its last attempt and is "
                      "parked for an operator")
    if entry.status == "cancelled":
        raise Refusal(Reason.PAYMENT_CANCELLED, "the payout was cancelled at the engine's "
                      "request and sent again as another settlement")
    if c.result == "cancelled" and not entry.cancel_requested:
        raise Refusal(Reason.NOT_CANCELLING, "no chargeback asked to cancel this settlement: "
                      "report it settled or failed")
    if c.attempt != entry.attempt:
        raise Refusal(Reason.STALE_ATTEMPT, f"the current attempt is {entry.attempt}")
    rec = Recorder(state, c.command_id, ctx.now)
    payments.report(state, c, entry, rec)
    return rec


def _reviewed_pool(state: CertificateState) -> Pool:
    if state.pool is None:
        raise Refusal(Reason.NOTHING_TO_REVIEW, "no pool, so no commission to review")
    return state.pool


def _review(check, apply, state: CertificateState, c: Command, ctx: _Context) -> Recorder:
    pool = _reviewed_pool(state)
    try:
        check(state, pool, c)
    except review.ReviewRefused as refused:
        raise Refusal(Reason[refused.reason], refused.detail) from None
    rec = Recorder(state, c.command_id, ctx.now)
    apply(state, pool, c, rec)
    return rec


def _decline(state: CertificateState, c: DeclineCommission, ctx: _Context) -> Recorder:
    return _review(review.check_decline, review.decline, state, c, ctx)


def _flag(state: CertificateState, c: FlagCommission, ctx: _Context) -> Recorder:
    return _review(review.check_flag, review.flag, state, c, ctx)


def _approve(state: CertificateState, c: ApproveCommission, ctx: _Context) -> Recorder:
    return _review(review.check_approve, review.approve, state, c, ctx)


_HANDLERS: dict[type, Callable[[CertificateState, Command, _Context], Recorder]] = {
    AttachPool: _attach,  # type: ignore[dict-item]
    ConfirmFunding: _confirm_funding,  # type: ignore[dict-item]
    PostCertificate: _post,  # type: ignore[dict-item]
    Circulate: _circulate,  # type: ignore[dict-item]
    Claim: _claim,  # type: ignore[dict-item]
    Purchase: _purchase,  # type: ignore[dict-item]
    CheckExpiry: _check_expiry,  # type: ignore[dict-item]
    ReleaseHold: _release_hold,  # type: ignore[dict-item]
    Refund: _refund,  # type: ignore[dict-item]
    CancelCertificate: _cancel,  # type: ignore[dict-item]
    ReportPayment: _report_payment,  # type: ignore[dict-item]
    DeclineCommission: _decline,  # type: ignore[dict-item]
    FlagCommission: _flag,  # type: ignore[dict-item]
    ApproveCommission: _approve,  # type: ignore[dict-item]
}


def handle(state: CertificateState | None, command: Command, entropy: bytes = b"") -> Outcome:
    """Apply one command to one certificate's state (mutated in place when accepted).

    ``entropy`` is the sequencer's draw for this command (domain.draw); needed only
    when the pool has a random policy."""
    digest = command_digest(command)
    if state is not None:
        seen = state.applied.get(command.command_id)
        if seen is not None:
            if seen[:_DIGEST_BYTES] == digest:
                first = seen[_DIGEST_BYTES:]
                return Duplicate(command.command_id,
                                 int.from_bytes(first, "big") if first else None)
            return Rejected(Reason.DUPLICATE_CONFLICT,
                            "this command id was applied before with another body")
    ctx = _Context(command.at_ms if state is None else max(state.clock_ms, command.at_ms),
                   entropy)
    try:
        if isinstance(command, IssueCertificate):
            state, rec = _issue(state, command, ctx)
        else:
            rec = _HANDLERS[type(command)](_existing(state), command, ctx)
    except Refusal as refusal:
        return Rejected(refusal.reason, refusal.detail)
    assert state is not None
    assert rec.events, f"{type(command).__name__} accepted without an event"
    state.seq = rec.seq
    state.clock_ms = ctx.now
    state.applied[command.command_id] = digest + rec.seq.to_bytes(8, "big")
    if rec.settlements:
        payments.track(state, rec.settlements)
    check_invariants(state)
    return Accepted(state, rec.events, rec.settlements)
