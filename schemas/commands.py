"""Commands: what users (through the gateway) and the withdrawal timer ask for.

Topic ``commands``, key = certificate id. Imperative names. Every command carries
``command_id`` (the idempotency key: one id, one effect) and ``at_ms``, the time the
gateway accepted it, which the domain treats as the command's time (clamped to be
monotonic per certificate). Commands are strict: unknown fields are refused, so a
typo in a client never silently changes a meaning.

The gateway signs the encoded bytes (HMAC-SHA256, see services.common.auth); the
signature travels in Kafka headers, not in the body.
"""

from __future__ import annotations

from typing import Literal, Union

import msgspec

from schemas.types import (
    AmountMinor,
    BasisPoints,
    Count,
    Currency,
    DurationS,
    HoldS,
    Id,
    PositiveAmountMinor,
    PositiveBasisPoints,
    Sha256Hex,
    ShortText,
    Text,
    TimestampMs,
)

COMMAND_VERSION = 1


class _Wire(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True, omit_defaults=True):
    pass


# --- acquisition policy -------------------------------------------------------------


class FixedAmount(_Wire, tag="fixed", tag_field="kind", kw_only=True):
    amount_minor: PositiveAmountMinor


class RandomAmount(_Wire, tag="random", tag_field="kind", kw_only=True):
    """Uniform in [min_minor, max_minor], drawn from a secret only the sequencer holds
    (see domain.draw): no client can predict or choose it. At least 1: a draw of 0
    would be an acquisition of nothing."""

    min_minor: PositiveAmountMinor
    max_minor: PositiveAmountMinor


class PercentOfAttached(_Wire, tag="percent", tag_field="kind", kw_only=True):
    basis_points: BasisPoints


class AllAttached(_Wire, tag="all", tag_field="kind", kw_only=True):
    pass


AcquisitionAmount = Union[FixedAmount, RandomAmount, PercentOfAttached, AllAttached]


class AcquisitionPolicy(_Wire, kw_only=True):
    # who gains: the circulating account, or the account it came via (seed example 2)
    beneficiary: Literal["circulator", "upstream"] = "circulator"
    # when: on circulation, or only when the account sends a Claim
    trigger: Literal["auto", "claim"] = "auto"
    amount: AcquisitionAmount = AllAttached()
    # only the first ``max_depth`` levels of sharing gain (a hop from the catalogue is
    # level 1, a hop via a level-1 account level 2, ...): the gaining account's level
    # (upstream: the one the hop came via); deeper hops circulate for free
    max_depth: Count | None = None
    # at most this many acquisitions in any minute (the certificate's clock); beyond
    # it a circulation still moves the certificate and counts, but acquires nothing
    max_acquisitions_per_minute: Count | None = None
    # account rules: only accounts at least this old, and (if set) verified, acquire
    # and count toward the circulation threshold; the gateway attests both facts
    # (Circulate.account) from the account store or the identity provider
    min_account_age_s: DurationS | None = None
    verified_only: bool = False

    @property
    def has_account_rules(self) -> bool:
        return self.min_account_age_s is not None or self.verified_only


# --- replenishment policy -----------------------------------------------------------


class ReplenishMatch(_Wire, tag="match", tag_field="kind", kw_only=True):
    """Top up by the amount just acquired: the attached amount stays constant."""

    from_second_circulation: bool = False


class ReplenishFixed(_Wire, tag="fixed", tag_field="kind", kw_only=True):
    amount_minor: PositiveAmountMinor


class ReplenishRandom(_Wire, tag="random", tag_field="kind", kw_only=True):
    min_minor: AmountMinor
    max_minor: PositiveAmountMinor


class ReplenishNone(_Wire, tag="none", tag_field="kind", kw_only=True):
    pass


ReplenishPolicy = Union[ReplenishMatch, ReplenishFixed, ReplenishRandom, ReplenishNone]


# --- withdrawal thresholds ----------------------------------------------------------


class Thresholds(_Wire, kw_only=True):
    """Any threshold met withdraws the pool. None means "no such threshold"."""

    max_circulations: Count | None = None
    max_cumulative_minor: PositiveAmountMinor | None = None
    max_cumulative_bp_of_price: PositiveBasisPoints | None = None
    max_display_s: DurationS | None = None
    on_withdraw: Literal["void", "freeze"] = "void"
    warn_at_bp: BasisPoints = 8000


class Terms(_Wire, kw_only=True):
    trade: Text = ""
    logistics: Text = ""
    insurance: Text = ""
    trade_rules: Text = ""


# --- commands -----------------------------------------------------------------------


class _Command(_Wire, tag_field="type", kw_only=True):
    v: int = COMMAND_VERSION
    command_id: Id
    certificate_id: Id
    at_ms: TimestampMs


class IssueCertificate(_Command, tag="issue_certificate", kw_only=True):
    """One copy of an offer. ``domain.offer.issue_offer`` expands an offer of N copies."""

    account_id: Id  # the seller
    offer_id: Id
    serial: Count
    copies: Count
    name: ShortText
    price_minor: PositiveAmountMinor
    currency: Currency
    terms: Terms = Terms()
    time_limit_s: DurationS | None = None
    # the account the seller allows to fund this certificate (besides the seller)
    funder_id: Id | None = None


DEFAULT_HOLD_S = 14 * 24 * 3600
DEFAULT_CLOSE_AFTER_S = 90 * 24 * 3600
DEFAULT_CHARGEBACK_WINDOW_S = 120 * 24 * 3600


class AttachPool(_Command, tag="attach_pool", kw_only=True):
    account_id: Id  # the funder: the seller, or the funder the seller named on issue
    funding_ref: Id
    budget_minor: PositiveAmountMinor
    attached_minor: PositiveAmountMinor
    currency: Currency
    acquisition: AcquisitionPolicy = AcquisitionPolicy()
    replenish: ReplenishPolicy = ReplenishMatch()
    thresholds: Thresholds = Thresholds()
    # after a purchase, payouts and the seller's payment are held this long (a refund
    # within it cancels them); 0: payable at once
    hold_s: HoldS = DEFAULT_HOLD_S
    # an unsold certificate closes this long after posting and its budget goes back
    close_after_s: DurationS = DEFAULT_CLOSE_AFTER_S
    # after the hold, commission is locked: only a chargeback the payment system
    # reports within this long after the purchase claws it back (SPEC 9)
    chargeback_window_s: DurationS = DEFAULT_CHARGEBACK_WINDOW_S


class PostCertificate(_Command, tag="post_certificate", kw_only=True):
    account_id: Id  # must be the seller


class AccountFacts(_Wire, kw_only=True):
    """What the gateway attests about the account it signs for (from the account store
    or the identity provider's claims, never from the request): a pool's account rules
    (``AcquisitionPolicy.min_account_age_s``, ``verified_only``) read these."""

    created_ms: TimestampMs
    verified: bool = False


class Circulate(_Command, tag="circulate", kw_only=True):
    account_id: Id
    via: Id | None = None
    account: AccountFacts | None = None  # None: unknown, so no account rule is met


class Claim(_Command, tag="claim", kw_only=True):
    account_id: Id


DeclineReason = Literal["fraud", "self_referral", "policy", "other"]


class DeclineCommission(_Command, tag="decline_commission", kw_only=True):
    """Review: the seller, or an account with the reviewer role, declines
    ``sharer_id``'s commission on this certificate while it is not paid yet (pending,
    held, or kept back by a fraud flag): it is voided back to the funder and the
    sharer sees ``reason`` and ``note``. ``reviewer`` is the gateway's word that the
    account holds the reviewer role (never taken from the request)."""

    account_id: Id
    sharer_id: Id
    reason: DeclineReason
    note: ShortText | None = None
    reviewer: bool = False


class ApproveCommission(_Command, tag="approve_commission", kw_only=True):
    """Review: an account with the reviewer role clears a fraud flag on ``sharer_id``'s
    commission; kept back after the hold, it is paid now. Not the seller's to say: a
    seller approving its own fake sharers would pay them from the funder's budget."""

    account_id: Id
    sharer_id: Id
    reviewer: bool = False


class FlagCommission(_Command, tag="flag_commission", kw_only=True):
    """The fraud stage's word (a ``fraud`` key): ``sharer_id``'s acquisition on this
    certificate looks like fraud by ``rule``. A flagged commission is not paid when the
    hold ends until a reviewer approves it (or someone declines it)."""

    sharer_id: Id
    rule: Id
    detail: ShortText | None = None


class Purchase(_Command, tag="purchase", kw_only=True):
    """A captured payment, reported by the payment system (a ``payments`` key; SPEC 8a):
    the buyer paid ``captured_minor`` in ``currency`` to ``seller_id`` for this
    certificate under ``payment_ref``. The buyer's click only starts a checkout; a
    purchase signed by the gateway is refused. It travels on ``payment-captures``,
    keyed by :func:`capture_key`, where the captures stage admits each ``payment_ref``
    once per seller before it reaches ``commands``. It counts only when the amount is
    at least the price, in the certificate's currency, for its seller."""

    account_id: Id  # the buyer
    seller_id: Id
    payment_ref: Id
    captured_minor: PositiveAmountMinor
    currency: Currency


def capture_key(seller_id: str, payment_ref: str) -> bytes:
    """The Kafka key of a capture on ``payment-results``: one row per payment
    reference in a seller's program (ids cannot contain ``/``; schemas.types.Id)."""
    return f"{seller_id}/{payment_ref}".encode()


def escrow_key(funding_ref: str) -> bytes:
    """The Kafka key of an escrow confirmation on ``payment-results``: one row per
    escrow hold, so one hold backs one pool (an id cannot start with ``/``)."""
    return f"/escrow/{funding_ref}".encode()


class CheckExpiry(_Command, tag="check_expiry", kw_only=True):
    """Sent by the withdrawal service's timer; carries no account."""


class ConfirmFunding(_Command, tag="confirm_funding", kw_only=True):
    """Sent by the payment system (a ``payments`` key): the escrow hold behind
    ``funding_ref`` exists for ``amount_minor`` in ``currency``. A pool goes live, and
    its certificate can be posted, only after this matches the attached pool."""

    funding_ref: Id
    amount_minor: PositiveAmountMinor
    currency: Currency


class ReleaseHold(_Command, tag="release_hold", kw_only=True):
    """Sent by the withdrawal service's timer (a ``system`` key) when a purchase's hold
    ends; id ``release:{held_until_ms}``. The held payouts become payable."""


class Refund(_Command, tag="refund", kw_only=True):
    """Give the buyer ``amount_minor`` of the price back. Sent by the seller (through
    the gateway, ``by="seller"``, ``account_id`` the seller) or by the payment system
    (a ``payments`` key, ``by="payment_system"``; a *chargeback* when it carries the
    card network's ``chargeback_reason``). Within the hold it reduces the held payouts
    in proportion. After the hold the commission is locked: the refund is the
    seller's cost, and only a chargeback within the pool's ``chargeback_window_s``
    claws commission back (domain.aftersale)."""

    by: Literal["seller", "payment_system"]
    account_id: Id | None = None
    amount_minor: PositiveAmountMinor
    refund_ref: Id
    chargeback_reason: ShortText | None = None


class CancelCertificate(_Command, tag="cancel_certificate", kw_only=True):
    """The seller takes an unsold certificate off sale: pending acquisitions are
    voided and the whole budget goes back to the funder."""

    account_id: Id  # must be the seller


class ReportPayment(_Command, tag="report_payment", kw_only=True):
    """The payment system's result for one attempt of one settlement, sent on topic
    ``payment-results`` (a ``payments`` key). ``command_id`` is
    ``result:{settlement_id}:{attempt}``: one result per attempt; another body for
    the same attempt is refused (``duplicate_conflict``). ``failed`` is published
    again as the next attempt, up to domain.payments.MAX_ATTEMPTS, then parked.
    ``cancelled``: a payout the engine asked to cancel (a ``clawback`` naming it in
    ``cancels``) was not executed and will not be; only for such a payout."""

    settlement_id: Sha256Hex
    attempt: Count
    result: Literal["settled", "failed", "cancelled"]
    reason: ShortText | None = None


Command = Union[
    IssueCertificate, AttachPool, PostCertificate, Circulate, Claim, Purchase, CheckExpiry,
    ConfirmFunding, ReleaseHold, Refund, CancelCertificate, ReportPayment,
    DeclineCommission, ApproveCommission, FlagCommission,
]
COMMAND_TYPES: tuple[type, ...] = Command.__args__  # type: ignore[attr-defined]


class AcceptedCommand(msgspec.Struct, frozen=True, kw_only=True, tag="accepted", tag_field="type"):
    """Topic ``accepted`` (internal): the circulation service's verdict, in order.

    ``seq`` is the certificate's sequence number after the command; the other stages
    apply exactly these commands, in this order, to their own copy of the state.
    ``received_ms`` is the broker timestamp of the original command, for end-to-end
    latency. ``draw_seed`` (hex) is the entropy the sequencer drew for this command
    from its secret draw key ``draw_key_id`` when the pool has a random policy; every
    stage applies the command with it, so all reach the same amounts without holding
    the secret.
    """

    v: int = COMMAND_VERSION
    seq: int
    received_ms: int
    command: Command
    draw_key_id: str | None = None
    draw_seed: str | None = None
