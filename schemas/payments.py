"""Settlement events: every money movement, on topic ``payments``, key = certificate id.

``settlement_id`` is deterministic (see domain.settlement): payment systems use it as
their idempotency key. The engine guarantees each id appears once on the topic for
``read_committed`` readers; consumers should dedupe on it anyway.

Compatibility promise to payment consumers: these structs never forbid unknown
fields, fields are only ever added (with defaults, at the end), and a new kind of
settlement comes with a new ``v`` announced beforehand. Decode with
``msgspec.json.Decoder(schemas.payments.Settlement)``.
"""

from __future__ import annotations

from typing import Literal, Union

import msgspec

from schemas.types import AmountMinor, Currency, Id, Sha256Hex, TimestampMs

SETTLEMENT_VERSION = 1


class _Settlement(msgspec.Struct, frozen=True, kw_only=True, tag_field="type"):
    v: int = SETTLEMENT_VERSION
    settlement_id: Sha256Hex
    certificate_id: Id
    command_id: Id  # the command that caused this movement
    seq: int
    at_ms: TimestampMs
    funding_ref: Id
    currency: Currency
    amount_minor: AmountMinor
    # 1, then 2, 3, ... each time the payment system reported the previous attempt
    # failed: the same settlement (same id) to execute again
    attempt: int = 1


class _Payout(_Settlement, kw_only=True):
    """A payment of the account's earnings. The amount to pay, ``amount_minor``, is
    ``gross_minor - offset_minor``: the account's outstanding clawbacks (any
    certificate, same currency) are recovered from its payouts first
    (domain/netting.py). ``amount_minor`` 0: nothing to transfer, the whole payout
    went to the account's debt; report it ``settled`` like any other."""

    payee_id: Id
    gross_minor: AmountMinor | None = None  # what the certificate paid; None: no netting
    offset_minor: AmountMinor = 0  # recovered from the payee's outstanding clawbacks
    # this payout replaces that one (same payee, same gross), which a chargeback asked
    # the payment system to cancel and which it reported cancelled (or failed) before
    # executing it: the same money sent once more, never twice (the one it replaces
    # was not paid); its offset is taken afresh, the cancelled one's is given back
    reissue_of: Sha256Hex | None = None


class CommissionPayout(_Payout, tag="commission_payout", kw_only=True):
    """Pay a pending acquisition out of the escrowed budget to the account."""


class SellerPayment(_Payout, tag="seller_payment", kw_only=True):
    """The buyer's payment of the price to the seller (not from the budget)."""

    payer_id: Id
    payment_ref: Id


class BudgetRelease(_Settlement, tag="budget_release", kw_only=True):
    """Return the unspent (or voided, or clawed-back) part of the budget to the
    funder."""

    payee_id: Id
    # "declined": a review voided a commission before it was paid
    reason: Literal["purchase", "withdrawal", "refund", "clawback", "cancelled", "closed",
                    "declined"]


class BuyerRefund(_Settlement, tag="buyer_refund", kw_only=True):
    """Pay part or all of the price back to the buyer (``payment_ref``: the purchase's
    payment). Within the hold it comes out of the price still held; after it, out of
    a clawback from the seller (a ``clawback`` settlement with the same command)."""

    payee_id: Id  # the buyer
    payment_ref: Id
    refund_ref: Id


class Clawback(_Settlement, tag="clawback", kw_only=True):
    """A DEBIT: ``payee_id`` owes ``amount_minor`` (of a payout it was already paid,
    ``of_kind``) because the purchase was refunded after the hold. Never a payment to
    make: the engine recovers it from the account's next payouts (their
    ``offset_minor``), so the payment system only records it."""

    payee_id: Id  # the account debited
    refund_ref: Id
    of_kind: Literal["commission_payout", "seller_payment"]
    # the account was never paid: its payout (this settlement id) failed every attempt
    # and is parked. The debit comes off that parked payout (whoever settles it pays
    # it less this amount), not off the account's later payouts: an account never
    # owes back money it did not receive (netting records no debt for it)
    against_parked: Sha256Hex | None = None
    # the account's payout on this certificate (this settlement id) was sent and had no
    # result yet: the payment system is asked to CANCEL it if it has not executed it,
    # and to report it ``cancelled``; the engine then sends it again (``reissue_of``)
    # and this debit is recovered from it first. If it was executed (reported
    # ``settled``), this is a debit like any other
    cancels: Sha256Hex | None = None


Settlement = Union[CommissionPayout, SellerPayment, BudgetRelease, BuyerRefund, Clawback]
SETTLEMENT_TYPES: tuple[type, ...] = Settlement.__args__  # type: ignore[attr-defined]
