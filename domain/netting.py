"""Clawbacks offset against the account's later payouts (issue #13, rule 3).

A refund after the hold claws back what was already paid: a ``clawback`` settlement
per account, a debit. Each account keeps its outstanding clawback balance, per
currency, in its own ledger; every later payout to that account (a commission payout
or a seller's payment, on any certificate) is reduced by that balance first:

    amount_minor (what the payment system pays) = gross_minor - offset_minor
    offset_minor = min(outstanding balance, gross_minor), taken at the first attempt

Both the gross and the offset are on the settlement. The certificate's own
accounting (its conservation equation, its earnings) keeps the gross: the
certificate paid the account in full, and the account paid part of its debt back
with it. The platform, which made the funder whole at the clawback
(``budget_release`` reason ``clawback``), recovers the offset.

Rules, and why:

* Only payouts are reduced: a budget release returns the funder's own escrow and a
  buyer refund the buyer's own money, neither is the account's earnings.
* The offset is decided once, at the first attempt. A failed attempt is published
  again with the same offset (the same settlement, the same amounts), and a payout
  parked after its last failure keeps it: the operator who settles it by hand pays
  what the settlement says, less the clawbacks against it (``against_parked``), never
  below nothing. What such clawbacks exceed it by (it paid less than its gross, an
  earlier debt offset from it) is a debt like any other.
* A balance in one currency is never offset against a payout in another.
* A payout a chargeback cancelled before the payment system executed it (the
  ``clawback`` said ``cancels``) comes back as a new payout (``reissue_of``) of the
  same gross: the cancelled one's offset is given back to the balance first, and the
  new one is netted afresh, so the chargeback's debit is recovered from it (unless a
  payout netted meanwhile recovered it already).

Per ledger and currency, always: clawed_back = outstanding + recovered.

This is applied by its own stage, keyed by account (services/netting), because one
account's clawbacks and payouts come from many certificates.
"""

from __future__ import annotations

import msgspec

from domain.invariants import InvariantViolation
from schemas.payments import Clawback, CommissionPayout, SellerPayment, Settlement

# settlements that pay an account its earnings, and so may be reduced by its debt
NETTABLE = (CommissionPayout, SellerPayment)


class NettingViolation(InvariantViolation):
    """A ledger broke its equation: a bug; the stage must not publish (the runner
    parks the partition, as for any broken invariant)."""


class AccountLedger(msgspec.Struct, kw_only=True):
    account_id: str
    # currency -> clawbacks not yet recovered from a payout
    outstanding: dict[str, int] = msgspec.field(default_factory=dict)
    # currency -> every clawback; and every offset taken (recovered)
    clawed_back: dict[str, int] = msgspec.field(default_factory=dict)
    recovered: dict[str, int] = msgspec.field(default_factory=dict)
    # settlement id -> the offset its first attempt took (only those > 0), so a later
    # attempt of the same payout carries the same amounts
    offsets: dict[str, int] = msgspec.field(default_factory=dict)
    # settlement id -> what is left of that payout's amount (gross less its offset) to
    # cover clawbacks against it once it is parked; kept only for payouts with an
    # offset (one without covers every clawback against it: they never exceed its gross)
    coverable: dict[str, int] = msgspec.field(default_factory=dict)


def _add(counts: dict[str, int], currency: str, amount: int) -> None:
    counts[currency] = counts.get(currency, 0) + amount


def net(ledger: AccountLedger | None, s: Settlement) -> tuple[AccountLedger, Settlement]:
    """Apply one settlement for ``s.payee_id`` to its ledger: the ledger after it, and
    the settlement to publish (a payout with its gross and offset; others as they
    are). Pure: the ledger given is never changed; a new one is returned when the
    settlement changes it, the same one otherwise."""
    if ledger is None:
        ledger = AccountLedger(account_id=s.payee_id)
    elif ledger.account_id != s.payee_id:
        raise NettingViolation(f"{s.settlement_id} for {s.payee_id} applied to the "
                               f"ledger of {ledger.account_id}")
    out: Settlement = s
    if isinstance(s, Clawback):
        if s.attempt == 1:
            debt = s.amount_minor
            if s.against_parked is not None:
                # a debit against a payout that was never paid (parked) comes off it, as
                # far as what it pays covers; only the rest is a debt (a payout netted
                # against an earlier debt pays less than its gross)
                left = ledger.coverable.get(s.against_parked)
                covered = debt if left is None else min(debt, left)
                debt -= covered
                if left is not None and covered:
                    ledger = _copy(ledger)
                    ledger.coverable[s.against_parked] = left - covered
            if debt:
                ledger = _copy(ledger)
                _add(ledger.outstanding, s.currency, debt)
                _add(ledger.clawed_back, s.currency, debt)
    elif isinstance(s, NETTABLE):
        if s.reissue_of in ledger.offsets and s.attempt == 1:
            # the payout it replaces was cancelled, never paid: what it recovered was
            # not recovered after all, and is owed again (taken from this one below)
            ledger = _copy(ledger)
            given_back = ledger.offsets.pop(s.reissue_of)
            ledger.coverable.pop(s.reissue_of, None)
            _add(ledger.outstanding, s.currency, given_back)
            _add(ledger.recovered, s.currency, -given_back)
        if s.attempt == 1 and s.settlement_id not in ledger.offsets:
            offset = min(ledger.outstanding.get(s.currency, 0), s.amount_minor)
            if offset:
                ledger = _copy(ledger)
                ledger.offsets[s.settlement_id] = offset
                ledger.coverable[s.settlement_id] = s.amount_minor - offset
                _add(ledger.outstanding, s.currency, -offset)
                _add(ledger.recovered, s.currency, offset)
        else:
            offset = ledger.offsets.get(s.settlement_id, 0)
        out = msgspec.structs.replace(s, amount_minor=s.amount_minor - offset,
                                      gross_minor=s.amount_minor, offset_minor=offset)
    check(ledger)
    return ledger, out


def _copy(ledger: AccountLedger) -> AccountLedger:
    return msgspec.structs.replace(
        ledger, outstanding=dict(ledger.outstanding), clawed_back=dict(ledger.clawed_back),
        recovered=dict(ledger.recovered), offsets=dict(ledger.offsets),
        coverable=dict(ledger.coverable))


def check(ledger: AccountLedger) -> None:
    for currency in {*ledger.outstanding, *ledger.clawed_back, *ledger.recovered}:
        owed = ledger.outstanding.get(currency, 0)
        total = ledger.clawed_back.get(currency, 0)
        back = ledger.recovered.get(currency, 0)
        if owed < 0 or back < 0 or total != owed + back:
            raise NettingViolation(f"{ledger.account_id} {currency}: clawed back {total} != "
                                   f"outstanding {owed} + recovered {back}")


def replay(settlements: list[Settlement]) -> tuple[dict[str, AccountLedger], list[Settlement]]:
    """Net ``settlements`` in the order given (each account's in the order the
    netting stage applies them): the ledgers after them, and what is published."""
    ledgers: dict[str, AccountLedger] = {}
    published = []
    for s in settlements:
        ledgers[s.payee_id], out = net(ledgers.get(s.payee_id), s)
        published.append(out)
    return ledgers, published
