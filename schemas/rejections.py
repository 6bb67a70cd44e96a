"""Rejections: every refused command, on topic ``rejections``, key = certificate id
when it could be read (else the raw Kafka key).

``reason`` is a stable machine-readable code (:class:`Reason`); ``detail`` is for
humans and never contains secrets. ``original`` holds the bytes received (base64 in
JSON), at most :data:`MAX_ORIGINAL_BYTES` of them, with ``original_size`` and the
``original_sha256`` of the whole, and their source topic, partition and offset, so
an operator can find, fix and resend the command. A rejection stays a few KiB
whatever arrived: a huge record cannot make its own rejection too large to publish.
"""

from __future__ import annotations

import enum

import msgspec

from schemas.types import TimestampMs

REJECTION_VERSION = 1
MAX_ORIGINAL_BYTES = 4096


class Reason(str, enum.Enum):
    # transport and contract
    UNDECODABLE = "undecodable"
    UNSUPPORTED_VERSION = "unsupported_version"
    INVALID_FIELD = "invalid_field"
    AMOUNT_OUT_OF_RANGE = "amount_out_of_range"
    KEY_MISMATCH = "key_mismatch"  # Kafka key is not the command's certificate id
    # authentication
    UNSIGNED = "unsigned"
    UNKNOWN_KEY = "unknown_key"
    BAD_SIGNATURE = "bad_signature"
    NOT_AUTHORIZED = "not_authorized"
    STALE = "stale"  # at_ms too far from the broker's timestamp: a replayed capture
    # idempotency
    DUPLICATE = "duplicate"  # this command id was applied already: no second effect
    DUPLICATE_CONFLICT = "duplicate_conflict"  # same command id, different body
    NOTHING_DUE = "nothing_due"  # a timer's check found nothing to do (already done)
    # lifecycle
    UNKNOWN_CERTIFICATE = "unknown_certificate"
    ALREADY_ISSUED = "already_issued"
    OFFER_NOT_OWNED = "offer_not_owned"  # the offer id is another seller's
    FUNDING_NOT_CONFIRMED = "funding_not_confirmed"  # posting before the escrow is confirmed
    FUNDING_MISMATCH = "funding_mismatch"  # the confirmation is not the attached pool's
    FUNDING_ALREADY_CONFIRMED = "funding_already_confirmed"
    POOL_NOT_ATTACHED = "pool_not_attached"
    POOL_ALREADY_ATTACHED = "pool_already_attached"
    NOT_POSTED = "not_posted"
    ALREADY_POSTED = "already_posted"
    CERTIFICATE_PURCHASED = "certificate_purchased"
    POOL_WITHDRAWN = "pool_withdrawn"
    # circulation and acquisition
    ALREADY_HOLDER = "already_holder"
    VIA_NOT_IN_CHAIN = "via_not_in_chain"
    CHAIN_LIMIT = "chain_limit"
    NOTHING_TO_CLAIM = "nothing_to_claim"
    POOL_EMPTY = "pool_empty"  # a claim while nothing is attached to take from
    # money
    CURRENCY_MISMATCH = "currency_mismatch"
    ATTACHED_EXCEEDS_BUDGET = "attached_exceeds_budget"
    INVALID_RANGE = "invalid_range"
    BUYER_IS_SELLER = "buyer_is_seller"
    # a captured payment (SPEC 8a)
    PAYMENT_BELOW_PRICE = "payment_below_price"  # captured less than the price
    PAYMENT_CURRENCY_MISMATCH = "payment_currency_mismatch"  # not the certificate's currency
    PAYMENT_SELLER_MISMATCH = "payment_seller_mismatch"  # paid to another seller
    PAYMENT_REF_USED = "payment_ref_used"  # this reference bought something already
    FUNDING_REF_USED = "funding_ref_used"  # this escrow hold backs another pool already
    # after the purchase
    NOT_PURCHASED = "not_purchased"  # a refund of a certificate no one bought
    REFUND_EXCEEDS_PRICE = "refund_exceeds_price"  # beyond what is left of the price
    REFUND_REF_USED = "refund_ref_used"  # this refund reference was applied already
    # after the hold a refund goes through the payment system, which takes it from the
    # seller's side; the engine would pay the buyer at once and only hope to recover
    # it from the seller's future payouts
    REFUND_AFTER_HOLD = "refund_after_hold"
    VELOCITY_LIMIT = "velocity_limit"  # a claim beyond the pool's acquisitions per minute
    # reviews (decline, approve) and the fraud stage's flags
    NOT_REVIEWER = "not_reviewer"  # only the seller or a reviewer declines; only a reviewer approves
    NOTHING_TO_REVIEW = "nothing_to_review"  # the account has no commission on this certificate
    COMMISSION_PAID = "commission_paid"  # paid already: after the hold only a chargeback takes it back
    COMMISSION_DECLINED = "commission_declined"  # declined already
    ALREADY_FLAGGED = "already_flagged"  # one flag at a time keeps a commission back
    NOT_FLAGGED = "not_flagged"  # an approval of a commission no flag keeps back
    CERTIFICATE_ENDED = "certificate_ended"  # cancelled, closed or fully refunded
    # payment results
    UNKNOWN_SETTLEMENT = "unknown_settlement"  # no such settlement on this certificate
    STALE_ATTEMPT = "stale_attempt"  # a result for another attempt than the current one
    PAYMENT_ALREADY_SETTLED = "payment_already_settled"
    PAYMENT_PARKED = "payment_parked"  # it failed every attempt; an operator decides
    PAYMENT_CANCELLED = "payment_cancelled"  # cancelled at the engine's request, sent again
    NOT_CANCELLING = "not_cancelling"  # "cancelled" for a payout no chargeback asked to cancel
    # a record no decision could be made on (an error while handling it)
    UNPROCESSABLE = "unprocessable"
    TOO_LARGE = "too_large"  # larger than any command: not passed on


class Rejection(msgspec.Struct, frozen=True, kw_only=True, tag="rejection", tag_field="type"):
    v: int = REJECTION_VERSION
    reason: Reason
    detail: str
    command_id: str | None = None
    certificate_id: str | None = None
    source_topic: str = ""
    source_partition: int = -1
    source_offset: int = -1
    original: bytes = b""  # the first MAX_ORIGINAL_BYTES of what arrived
    original_size: int = 0  # bytes received; more than len(original) when cut
    original_sha256: str = ""  # of all the bytes received (hex)
    at_ms: TimestampMs = 0
    # reason ``duplicate``: the first outcome of this command id (accepted, at this seq)
    first_seq: int | None = None
