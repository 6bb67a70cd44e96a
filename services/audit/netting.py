"""Reconciliation of ``payments`` with ``settlements``: the netting hop.

Per certificate the audit checks the settlements as cash-out made them (gross, topic
``settlements``, report.py). This checks what the netting stage made of them:

* every record on ``payments`` is the netting (domain/netting.py) of a settlement,
  applied in the order the netting stage reads them (each account's settlements in
  their partition's order), each exactly once;
* every settlement the netting stage has committed past (its group's offsets in
  ``settlements``; all of them when the pipeline is stopped) is on ``payments``;
* and, without the core's help: every payout pays its gross less its offset, and no
  account had more offset from its payouts than was clawed back from it, per
  currency (a payout cancelled and sent again counts with its reissue's offset only).
"""

from __future__ import annotations

from collections import Counter, defaultdict

import msgspec

from domain.netting import NETTABLE, NettingViolation, replay
from schemas.payments import Clawback, Settlement

_decode = msgspec.json.Decoder(Settlement).decode
_encode = msgspec.json.Encoder().encode


def check_netting(settlements: list[tuple[int, int, bytes]], payments: list[bytes],
                  done: dict[int, int] | None = None) -> list[str]:
    """``settlements``: (partition, offset, value) of the ``settlements`` topic;
    ``done``: the netting group's committed offset per partition (None: all done)."""
    problems: list[str] = []
    ordered = sorted(settlements)
    decoded = [_decode(value) for _, _, value in ordered]
    try:
        _, netted = replay(decoded)
    except NettingViolation as exc:
        return [f"netting: the settlements break a ledger: {exc}"]
    want = Counter(_encode(s) for s in netted)
    due = Counter(_encode(s) for (p, offset, _), s in zip(ordered, netted, strict=True)
                  if done is None or offset < done.get(p, 0))
    # compared as this code encodes them: a record written before a field was added
    # (with its default) is the same settlement, not another one
    got = Counter(_encode(_decode(raw)) for raw in payments)
    for raw, n in (got - want).items():
        s = _decode(raw)
        problems.append(f"{s.certificate_id} {s.settlement_id} attempt {s.attempt}: on "
                        f"payments{' again' if raw in want else ''} but not the netting of "
                        f"a settlement ({n}x)")
    for raw in due - got:
        s = _decode(raw)
        problems.append(f"{s.certificate_id} {s.settlement_id} attempt {s.attempt}: netted "
                        "but missing from payments")
    clawed: dict[tuple[str, str], int] = defaultdict(int)
    for s in decoded:
        if isinstance(s, Clawback) and s.attempt == 1:
            clawed[(s.payee_id, s.currency)] += s.amount_minor
    offset: dict[tuple[str, str], int] = defaultdict(int)
    paid = [s for s in map(_decode, got) if isinstance(s, NETTABLE)]
    # a cancelled payout's offset was given back when it was sent again
    reissued = {s.reissue_of for s in paid if s.reissue_of is not None}
    for s in paid:
        if s.gross_minor is None or s.amount_minor + s.offset_minor != s.gross_minor:
            problems.append(f"{s.certificate_id} {s.settlement_id}: pays {s.amount_minor} "
                            f"with offset {s.offset_minor} of gross {s.gross_minor}")
        if s.attempt == 1 and s.settlement_id not in reissued:
            offset[(s.payee_id, s.currency)] += s.offset_minor
    for (account, currency), taken in sorted(offset.items()):
        if taken > clawed[(account, currency)]:
            problems.append(f"{account} {currency}: {taken} offset from payouts, only "
                            f"{clawed[(account, currency)]} clawed back")
    return problems
