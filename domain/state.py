"""Per-certificate state: what the rules need to decide, and nothing more.

The state is what every service keeps in its table row, so it is small: the terms
and the name of the offer travel in the CertificateIssued event, not here. Apart
from the chain of hops, the set of accounts that gained, and the command ids seen
(all of which grow with the traffic a certificate gets, and are bounded by
MAX_CHAIN_HOPS), a row is a few hundred bytes of msgpack.

The state is stored as msgpack arrays (``array_like``): the head of a row is ~230 B
instead of ~650 B with field names, and it is rewritten on every change (see
services/common/rows.py). The field order is therefore the storage format: add a
field only at the end of its struct, with a default, so stored rows still decode.

Dicts, not sets, hold account ids: insertion order makes the encoding of a state,
and the order of payouts, deterministic across processes (str hashes are salted
per process, so set order is not).
"""

from __future__ import annotations

from typing import Literal

import msgspec

from schemas.commands import AcquisitionPolicy, ReplenishPolicy, Thresholds
from schemas.payments import Settlement

# Limits on everything that grows with traffic. A certificate refuses circulations
# beyond this many hops (Reason.CHAIN_LIMIT); the dedupe table of command ids is
# bounded by the same figure times the few command kinds a hop can bring.
MAX_CHAIN_HOPS = 10_000

# "refunded": the whole price went back; "cancelled" by the seller, "closed" at the
# pool's end: taken off sale unsold
CertificateStatus = Literal["issued", "posted", "purchased", "refunded", "cancelled", "closed"]
PoolStatus = Literal["open", "withdrawn", "frozen"]


class Hop(msgspec.Struct, array_like=True, frozen=True):
    account_id: str
    via: str | None
    at_ms: int


class Pool(msgspec.Struct, kw_only=True, array_like=True):
    funder_id: str
    funding_ref: str
    budget_minor: int
    initial_attached_minor: int
    attached_minor: int
    reserve_minor: int
    acquisition: AcquisitionPolicy
    replenish: ReplenishPolicy
    thresholds: Thresholds
    # effective limits, fixed when the pool is attached (see domain.thresholds)
    display_limit_ms: int | None = None
    cumulative_limit_minor: int | None = None
    status: PoolStatus = "open"
    # money buckets:
    # attached + reserve + pending + held + paid + released - clawed_back == budget
    pending_minor: int = 0
    paid_minor: int = 0
    released_minor: int = 0
    voided_minor: int = 0  # the part of released_minor that was pending once
    cumulative_minor: int = 0  # everything ever acquired (a withdrawal threshold)
    # account -> amount it acquired; an account gains at most once per certificate
    acquired: dict[str, int] = msgspec.field(default_factory=dict)
    # claim-triggered pools: accounts allowed to claim, in the order they became so
    claimable: dict[str, int] = msgspec.field(default_factory=dict)
    warned: list[str] = msgspec.field(default_factory=list)
    # the payment system confirmed the escrow hold behind funding_ref (ConfirmFunding)
    funding_confirmed: bool = False
    # after the purchase (domain.aftersale); 0 and None in rows from before they were
    hold_s: int = 0
    close_after_s: int | None = None
    held_minor: int = 0  # commission held until the hold ends
    # clawed back after the hold: counted in paid (it was paid) and in released (it
    # goes back to the funder), so subtracted once
    clawed_back_minor: int = 0
    # account -> commission held (before the hold ends) or paid (after), net of
    # refunds within the hold; clawbacks are in ``clawed``
    payouts: dict[str, int] = msgspec.field(default_factory=dict)
    clawed: dict[str, int] = msgspec.field(default_factory=dict)
    # after the hold only a chargeback within this long of the purchase claws back
    # commission (None in rows from before: no window, every chargeback claws back)
    chargeback_window_s: int | None = None
    # times (ms) of the acquisitions of the last minute, when the pool limits them
    recent_acquisitions: list[int] = msgspec.field(default_factory=list)
    # review (domain.review): account -> the fraud rule that flagged its commission
    # (until approved or declined; a flagged payout is kept back, held, when the hold
    # ends), and account -> the commission a review declined (voided to the funder)
    flagged: dict[str, str] = msgspec.field(default_factory=dict)
    declined: dict[str, int] = msgspec.field(default_factory=dict)
    # account -> why its commission was declined ("reason" or "reason: note"): the
    # sharer's pages say it
    decline_reasons: dict[str, str] = msgspec.field(default_factory=dict)


class PaymentTrack(msgspec.Struct, array_like=True):
    """One settlement, from its publication to the payment system's last result
    (the settlement as last published: to publish it again, and to say whose it is)."""

    status: Literal["awaiting", "settled", "parked", "cancelled"]
    attempt: int
    settlement: Settlement
    # a chargeback asked the payment system to cancel this payout (still awaiting)
    cancel_requested: bool = False


class CertificateState(msgspec.Struct, kw_only=True, array_like=True):
    certificate_id: str
    offer_id: str
    serial: int
    seller_id: str
    price_minor: int
    currency: str
    time_limit_s: int | None = None
    status: CertificateStatus = "issued"
    posted_at_ms: int | None = None
    buyer_id: str | None = None
    # sequence number of the last accepted command and the certificate's clock
    seq: int = 0
    clock_ms: int = 0
    circulations: int = 0
    holder: str | None = None
    chain: list[Hop] = msgspec.field(default_factory=list)
    # account -> index of its last hop; answers "is `via` in the chain" in O(1)
    members: dict[str, int] = msgspec.field(default_factory=dict)
    pool: Pool | None = None
    # command id -> digest of its body (at_ms left out) followed by the seq it was
    # applied at: one id, one effect; another body is refused
    applied: dict[str, bytes] = msgspec.field(default_factory=dict)
    # the funder the seller named when issuing (besides the seller, the only one who
    # may attach a pool)
    funder_id: str | None = None
    # circulations that count: by accounts new to the chain, not the seller or funder
    distinct_circulations: int = 0
    # account -> level of sharing of its first hop (1 from the catalogue, via's + 1)
    depth: dict[str, int] = msgspec.field(default_factory=dict)
    # after the purchase: the price is held with the payouts until held_until_ms
    # (None: no hold pending); price == price_held + price_paid + refunded - price_clawed
    payment_ref: str | None = None
    held_until_ms: int | None = None
    price_held_minor: int = 0
    price_paid_minor: int = 0
    refunded_minor: int = 0  # paid back to the buyer
    price_clawed_minor: int = 0  # clawed back from the seller (refunds after the hold)
    # settlement id -> where it stands with the payment system (domain.payments)
    payments: dict[str, PaymentTrack] = msgspec.field(default_factory=dict)
    # every refund reference applied, as "{by} {refund_ref}" (bare in rows from
    # before): a party's reference refunds once, whatever command id carries it again
    refund_refs: list[str] = msgspec.field(default_factory=list)
    purchased_at_ms: int | None = None
    # the part of refunded_minor that scaled commission down: refunds within the hold
    # and chargebacks within the window (a locked refund is the seller's alone)
    commission_refunded_minor: int = 0
    # accounts new to the chain that did not meet the pool's account rules (too new,
    # not verified): members that count toward no threshold
    ineligible_members: int = 0
    # those accounts: an upstream beneficiary must have met the rules when it joined,
    # or a fresh account would be paid through a verified friend who shares via it
    ineligible: list[str] = msgspec.field(default_factory=list)
