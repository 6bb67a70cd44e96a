"""Domain events: facts the engine recorded, in the order it recorded them.

Topics ``certificate-events`` (circulation), ``allocations`` (allocation) and
``withdrawals`` (withdrawal), key = certificate id. Past-tense names. ``seq`` is the
certificate's command sequence number (1, 2, ...) and ``event_id`` is
``"{certificate_id}/{seq}/{index}"``: deterministic, so a replayed input produces
byte-identical events and consumers deduplicate on the id.

Unlike commands, events tolerate unknown fields: a consumer built against an older
version keeps working when fields are added (msgspec schema evolution).
"""

from __future__ import annotations

from typing import Literal, Union

import msgspec

from schemas.commands import AcquisitionPolicy, ReplenishPolicy, Terms, Thresholds
from schemas.types import (
    AmountMinor,
    Count,
    Currency,
    DurationS,
    HoldS,
    Id,
    ShortText,
    TimestampMs,
)

EVENT_VERSION = 1

ThresholdName = Literal["circulations", "cumulative", "display_time"]


class AccountAmount(msgspec.Struct, frozen=True, kw_only=True):
    account_id: Id
    amount_minor: AmountMinor


class _Event(msgspec.Struct, frozen=True, kw_only=True, tag_field="type"):
    v: int = EVENT_VERSION
    event_id: str
    certificate_id: Id
    command_id: Id
    seq: int
    at_ms: TimestampMs


class CertificateIssued(_Event, tag="certificate_issued", kw_only=True):
    seller_id: Id
    offer_id: Id
    serial: Count
    copies: Count
    name: ShortText
    price_minor: AmountMinor
    currency: Currency
    terms: Terms
    time_limit_s: DurationS | None = None
    funder_id: Id | None = None  # the funder the seller named, if any


class PoolAttached(_Event, tag="pool_attached", kw_only=True):
    funder_id: Id
    funding_ref: Id
    currency: Currency
    budget_minor: AmountMinor
    attached_minor: AmountMinor
    reserve_minor: AmountMinor
    acquisition: AcquisitionPolicy
    replenish: ReplenishPolicy
    thresholds: Thresholds
    hold_s: HoldS = 0
    close_after_s: DurationS | None = None
    chargeback_window_s: DurationS | None = None


class FundingConfirmed(_Event, tag="funding_confirmed", kw_only=True):
    """The payment system confirmed the escrow hold behind the pool: it is live."""

    funding_ref: Id
    amount_minor: AmountMinor
    currency: Currency


class CertificatePosted(_Event, tag="certificate_posted", kw_only=True):
    seller_id: Id
    display_deadline_ms: TimestampMs | None = None
    # unsold by then, the certificate closes and its budget goes back to the funder
    closes_at_ms: TimestampMs | None = None


class CertificateCirculated(_Event, tag="certificate_circulated", kw_only=True):
    """The certificate moved into ``account_id``'s feed and out of ``previous_holder``'s."""

    account_id: Id
    via: Id | None
    previous_holder: Id | None
    hop: int
    circulations: int
    # whether this hop counts (a new account, not the seller or funder): only those
    # count toward the circulation threshold, acquire and replenish
    counts: bool = True
    distinct_circulations: int = 0  # the threshold's value after this hop
    depth: int = 1  # level of sharing: 1 from the catalogue, via's level + 1 otherwise
    # why this hop acquires nothing, when that is known before the pool is asked:
    # "repeat" (the account was in the chain), "seller_or_funder", "account_rules"
    # (too new or not verified for this pool: it does not count either),
    # "already_gained", "too_deep" (beyond max_depth), "velocity" (the pool's
    # acquisitions per minute were used up), "upstream_none" (an upstream pool and no
    # via). None: the pool was asked (a CommissionAcquired follows unless it was empty
    # or a threshold withdrew it: a PoolWithdrawn follows then)
    no_gain: NoGain | None = None


NoGain = Literal["repeat", "seller_or_funder", "account_rules", "already_gained",
                 "too_deep", "velocity", "upstream_none", "pool_closed"]


class AcquisitionClaimable(_Event, tag="acquisition_claimable", kw_only=True):
    """Claim-triggered pools: ``account_id`` may now claim its share."""

    account_id: Id


class CommissionAcquired(_Event, tag="commission_acquired", kw_only=True):
    account_id: Id
    amount_minor: AmountMinor
    currency: Currency
    attached_after_minor: AmountMinor
    cumulative_minor: AmountMinor


class PoolReplenished(_Event, tag="pool_replenished", kw_only=True):
    amount_minor: AmountMinor
    currency: Currency
    attached_after_minor: AmountMinor
    reserve_after_minor: AmountMinor


class WithdrawalWarned(_Event, tag="withdrawal_warned", kw_only=True):
    threshold: ThresholdName
    value: int
    limit: int


class PoolWithdrawn(_Event, tag="pool_withdrawn", kw_only=True):
    threshold: ThresholdName
    mode: Literal["void", "freeze"]
    currency: Currency
    voided: list[AccountAmount]
    voided_minor: AmountMinor
    released_minor: AmountMinor


class CertificatePurchased(_Event, tag="certificate_purchased", kw_only=True):
    """``paid_out_minor``: commission payable at once (no hold); ``held_minor``:
    commission held until ``held_until_ms`` (with the seller's price), or with no hold
    what fraud flags keep back for review; listed in ``held``."""

    buyer_id: Id
    payment_ref: Id
    currency: Currency
    price_minor: AmountMinor
    paid_out_minor: AmountMinor
    released_minor: AmountMinor
    held_until_ms: TimestampMs | None = None
    held_minor: AmountMinor = 0
    held: list[AccountAmount] = []


class HoldReleased(_Event, tag="hold_released", kw_only=True):
    """The hold ended: the held payouts and the seller's price are now payable."""

    currency: Currency
    paid_out_minor: AmountMinor
    seller_paid_minor: AmountMinor
    # what fraud flags keep back (held until a reviewer approves or declines it)
    kept_back_minor: AmountMinor = 0


class PurchaseRefunded(_Event, tag="purchase_refunded", kw_only=True):
    """Part or all of the price went back to the buyer. Within the hold the held
    payouts shrink (``voided``, back to the funder). After it the commission is
    ``locked``: the seller pays the refund (``clawed_back`` holds the seller's share
    only), unless it is a ``chargeback`` within the pool's window, which claws paid
    commission back too (``clawed_back``, the commission's back to the funder)."""

    by: Literal["seller", "payment_system"]
    refund_ref: Id
    currency: Currency
    amount_minor: AmountMinor
    refunded_total_minor: AmountMinor
    within_hold: bool
    fully: bool
    voided: list[AccountAmount] = []
    clawed_back: list[AccountAmount] = []
    released_minor: AmountMinor = 0
    chargeback: bool = False
    # after the hold, not a chargeback within the window: no sharer gave anything back
    commission_locked: bool = False


class CertificateEnded(_Event, tag="certificate_ended", kw_only=True):
    """Taken off sale unsold: by the seller (``cancelled``) or at the pool's end
    (``closed``). Pending acquisitions are voided, the budget goes back."""

    reason: Literal["cancelled", "closed"]
    currency: Currency
    voided: list[AccountAmount]
    voided_minor: AmountMinor
    released_minor: AmountMinor


class PaymentReported(_Event, tag="payment_reported", kw_only=True):
    """The payment system's result for a settlement: ``settled``; ``failed`` and
    published again as ``next_attempt``; ``parked`` (failed its last attempt); or
    ``cancelled`` (a payout a chargeback asked to cancel, not executed: sent again as
    ``reissued_as``)."""

    settlement_id: str
    settlement_kind: str  # the settlement's type, e.g. commission_payout
    payee_id: Id
    amount_minor: AmountMinor
    currency: Currency
    attempt: int
    outcome: Literal["settled", "retried", "parked", "cancelled"]
    reason: ShortText | None = None
    next_attempt: int | None = None
    # cancelled at the engine's request (a chargeback): sent again as this settlement
    reissued_as: str | None = None


class CommissionDeclined(_Event, tag="commission_declined", kw_only=True):
    """A review voided ``sharer_id``'s commission back to the funder, before it was
    paid: while ``pending`` (before a purchase) or ``held`` (during the hold, or kept
    back by a fraud flag)."""

    sharer_id: Id
    amount_minor: AmountMinor
    currency: Currency
    reason: Literal["fraud", "self_referral", "policy", "other"]
    note: ShortText | None = None
    by_account: Id
    by_role: Literal["seller", "reviewer"]
    stage: Literal["pending", "held"]


class CommissionFlagged(_Event, tag="commission_flagged", kw_only=True):
    """The fraud stage flagged ``sharer_id``'s acquisition: it is not paid when the
    hold ends until a reviewer approves it or someone declines it.

    ``paid``: the flag came after the hold had ended and the commission was paid
    (rules that see a burst or a ring only once it has grown flag its first members
    late). Nothing is kept back, and only a chargeback takes a paid commission back;
    the flag is recorded for the reviewers and the audit, not refused."""

    sharer_id: Id
    rule: Id
    detail: ShortText | None = None
    paid: bool = False


class CommissionApproved(_Event, tag="commission_approved", kw_only=True):
    """A reviewer cleared the flag; ``paid_minor`` > 0 when the hold had ended and the
    commission kept back is paid now."""

    sharer_id: Id
    by_account: Id
    currency: Currency
    paid_minor: AmountMinor = 0


Event = Union[
    CertificateIssued,
    PoolAttached,
    CertificatePosted,
    CertificateCirculated,
    AcquisitionClaimable,
    FundingConfirmed,
    CommissionAcquired,
    PoolReplenished,
    WithdrawalWarned,
    PoolWithdrawn,
    CertificatePurchased,
    HoldReleased,
    PurchaseRefunded,
    CertificateEnded,
    PaymentReported,
    CommissionDeclined,
    CommissionFlagged,
    CommissionApproved,
]
EVENT_TYPES: tuple[type, ...] = Event.__args__  # type: ignore[attr-defined]
