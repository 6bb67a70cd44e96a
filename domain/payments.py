"""What the payment system says about each settlement (issue #13, rule 4).

Every settlement the engine publishes on ``payments`` waits for a result on
``payment-results`` (a ``report_payment`` command, signed with a payments key):

* ``settled``: done; earnings count it as paid from now on;
* ``failed``: the same settlement (same ``settlement_id``) is published again with
  the next ``attempt``, up to MAX_ATTEMPTS attempts; after the last one fails it is
  *parked* for an operator (metric, alert) and nothing is published again.
* ``cancelled``: only for a payout a chargeback asked to cancel while it awaited its
  result (a ``clawback`` naming it in ``cancels``, domain/aftersale.py): it was not
  executed. It is sent again as a new settlement (``reissue_of``, same payee, same
  gross), from which the netting stage recovers the chargeback's debit first, so the
  account gets what it is owed net of the chargeback, from this very payout. A
  ``failed`` result for such a payout means the same (not executed) and is treated
  the same: a retry would be the old payout again. ``settled`` means the cancel came
  too late: the debit stands, recovered from the account's later payouts.

A result names its settlement and attempt, and its command id is
``result:{settlement_id}:{attempt}``, so one attempt has one result: the same
result again is a duplicate, a different one is refused (``duplicate_conflict``).
A result for a settlement this certificate never published, for an attempt that is
not the current one, for a settled or a parked settlement, is refused with its
reason. The limit is a rule of the core, the same in every stage (a setting read
by each process could differ between them and break determinism).
"""

from __future__ import annotations

import msgspec

from domain.recorder import Recorder
from domain.settlement import settlement_id
from domain.state import CertificateState, PaymentTrack
from schemas.commands import ReportPayment
from schemas.events import PaymentReported
from schemas.payments import Settlement

MAX_ATTEMPTS = 3


def track(state: CertificateState, settlements: list[Settlement]) -> None:
    """Remember every newly published settlement until its result."""
    for s in settlements:
        if s.attempt == 1:
            state.payments[s.settlement_id] = PaymentTrack("awaiting", 1, s)


def report(state: CertificateState, c: ReportPayment, entry: PaymentTrack,
           rec: Recorder) -> None:
    s = entry.settlement
    assert entry.status == "awaiting"
    fields = dict(settlement_id=c.settlement_id, settlement_kind=s.__struct_config__.tag,
                  payee_id=s.payee_id, amount_minor=s.amount_minor, currency=s.currency,
                  attempt=c.attempt, reason=c.reason)
    if c.result == "settled":
        entry.status = "settled"
        rec.event(PaymentReported, outcome="settled", **fields)
    elif entry.cancel_requested:  # cancelled, or failed: not executed either way
        entry.status = "cancelled"
        again = reissue(s, rec)
        rec.event(PaymentReported, outcome="cancelled", reissued_as=again.settlement_id,
                  **fields)
    elif c.attempt < MAX_ATTEMPTS:
        entry.attempt = c.attempt + 1
        again = msgspec.structs.replace(s, attempt=entry.attempt)
        entry.settlement = again
        rec.settlements.append(again)
        rec.event(PaymentReported, outcome="retried", next_attempt=entry.attempt, **fields)
    else:
        entry.status = "parked"
        rec.event(PaymentReported, outcome="parked", **fields)


def reissue(s: Settlement, rec: Recorder) -> Settlement:
    """``s`` (a payout) sent again as a new settlement of the same kind, payee and
    gross, caused by ``rec``'s command; tracked from its first attempt (track())."""
    kind = s.__struct_config__.tag
    again = msgspec.structs.replace(
        s, settlement_id=settlement_id(rec.certificate_id, kind, s.payee_id, rec.command_id),
        command_id=rec.command_id, seq=rec.seq, at_ms=rec.at_ms, attempt=1,
        reissue_of=s.settlement_id)
    rec.settlements.append(again)
    return again


def last_payout(state: CertificateState, payee_id: str, kind: type) -> PaymentTrack | None:
    """The track of ``payee_id``'s payout of ``kind`` on this certificate, or None: the
    last one published (a reissue replaces the payout it cancelled)."""
    found = None
    for track in state.payments.values():
        s = track.settlement
        if isinstance(s, kind) and s.payee_id == payee_id:
            found = track
    return found
