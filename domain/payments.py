"""What the payment system says about each settlement (issue #13, rule 4).

Every settlement the engine publishes on ``payments`` waits for a result on
``payment-results`` (a ``report_payment`` command, signed with a payments key):

* ``settled``: done; earnings count it as paid from now on;
* ``failed``: the same settlement (same ``settlement_id``) is published again with
  the next ``attempt``, up to MAX_ATTEMPTS attempts; after the last one fails it is
  *parked* for an operator (metric, alert) and nothing is published again.

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
    elif c.attempt < MAX_ATTEMPTS:
        entry.attempt = c.attempt + 1
        again = msgspec.structs.replace(s, attempt=entry.attempt)
        entry.settlement = again
        rec.settlements.append(again)
        rec.event(PaymentReported, outcome="retried", next_attempt=entry.attempt, **fields)
    else:
        entry.status = "parked"
        rec.event(PaymentReported, outcome="parked", **fields)
