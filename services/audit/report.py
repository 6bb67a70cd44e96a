"""Reconciliation from the topics alone, read with ``read_committed``.

Per certificate it checks, without trusting any service's state:
* conservation of the budget: once a certificate's money has all moved (bought and
  its hold over, fully refunded, cancelled or closed), payouts + releases -
  commission clawed back = the budget attached (from ``certificate-events``);
  before that, they never exceed it;
* conservation of the price: once bought and its hold over, the seller's payment -
  what was clawed back from the seller + what was refunded to the buyer = the price;
* nothing payable while held: no commission payout or seller payment of a
  certificate whose hold has not been released (and none before a purchase);
* no clawback or buyer refund without a refund: their command is an accepted
  refund of that certificate;
* no settlement id appears twice for one attempt (``duplicate`` if the copies are
  identical, ``conflict`` if not); a later attempt is the same settlement again
  (only ``attempt`` differs) and only after the payment system reported the
  previous one failed; no account is paid twice on one certificate;
* payment results: every settlement's last attempt has a result (``settled`` or
  ``parked``) within ``results_within_ms`` of its publication, when given; the
  settlements still waiting are counted either way;
* every settlement has a cause: its command id is an accepted command of that
  certificate (topic ``accepted``).

On a running pipeline the audit reads a cut of each topic (services/audit/read.py
``read_cut``): committed records up to end offsets taken per partition, and what lay
beyond them. A transaction becomes readable one partition at a time, so a cut can hold
part of one: a refund's budget release on the funder's partition of ``settlements``
without the commission clawed back on the sharer's, which reads as "released X >
budget Y" (as `make run`'s live audit printed mid-traffic, OK once stopped). A certificate with a settlement in the cut caused by a command
(``seq``) at or after one of its records beyond the cut of ``settlements`` or
``certificate-events`` is *torn* (``torn_certificates``): none of its settlements is
summed and it is counted in flight, checked in full by a later audit. (``accepted`` is
read last: the cause of every settlement read is in it.) A torn certificate is never reported, so nothing is reported that is not
there; what one audit does not check, a later one does.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field

import msgspec

from schemas.commands import AcceptedCommand, Refund
from schemas.events import (
    CertificateEnded,
    CertificateIssued,
    CertificatePurchased,
    CommissionApproved,
    CommissionDeclined,
    CommissionFlagged,
    Event,
    FundingConfirmed,
    HoldReleased,
    PaymentReported,
    PoolAttached,
    PurchaseRefunded,
)
from schemas.payments import (
    BudgetRelease,
    BuyerRefund,
    Clawback,
    CommissionPayout,
    SellerPayment,
    Settlement,
)
from services.audit.netting import check_netting

_decode_settlement = msgspec.json.Decoder(Settlement).decode
_decode_event = msgspec.json.Decoder(Event).decode
_decode_accepted = msgspec.json.Decoder(AcceptedCommand).decode


@dataclass
class Certificate:
    price_minor: int | None = None
    budget_minor: int | None = None
    funded: bool = False  # the payment system confirmed the pool's escrow hold
    purchased: bool = False
    held: bool = False  # bought with a hold not released yet
    ended: bool = False  # fully refunded, cancelled or closed
    commands: set[str] = field(default_factory=set)
    refunds: set[str] = field(default_factory=set)  # command ids of accepted refunds
    settlements: dict[tuple[str, int], bytes] = field(default_factory=dict)
    first: dict[str, Settlement] = field(default_factory=dict)  # each id's attempt 1
    retried: set[tuple[str, int]] = field(default_factory=set)  # (id, next attempt)
    done: set[str] = field(default_factory=set)  # settled, parked or cancelled
    # cancelled by a chargeback -> the one settlement it was sent again as
    cancelled: dict[str, str | None] = field(default_factory=dict)
    payouts: dict[str, int] = field(default_factory=dict)
    released_minor: int = 0
    paid_out_minor: int = 0
    clawed_commission_minor: int = 0
    clawed_seller_minor: int = 0
    refunded_minor: int = 0
    seller_paid: list[int] = field(default_factory=list)
    # sharers whose commission a fraud flag keeps back until a review (it stays held
    # past the hold's end, so the budget is not all out yet)
    flagged: set[str] = field(default_factory=set)


@dataclass
class Report:
    certificates: int = 0
    settlements: int = 0
    in_flight: int = 0  # certificates with commands not yet through cash-out, or torn
    torn: int = 0  # certificates with records beyond the cut read (not summed)
    awaiting_results: int = 0  # settlements whose last attempt has no result yet
    oldest_awaiting_ms: int | None = None  # when the oldest of them was published
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


def reconcile(events: list[bytes], accepted: list[bytes], settlements: list[bytes],
              now_ms: int | None = None, results_within_ms: int | None = None,
              in_flight: frozenset[str] = frozenset(),
              torn: frozenset[str] = frozenset()) -> Report:
    """``settlements``: the topic ``settlements`` (as cash-out made them, before
    netting: services/audit/netting.py checks that hop).
    ``in_flight``: certificates with accepted commands the cash-out service has not
    committed yet (a running pipeline); their sums are not complete yet, so only the
    checks that hold at every moment apply to them (duplicates, causes, nothing
    payable while held, retries, clawbacks with a refund).
    ``torn``: certificates with records beyond the cut read (``torn_certificates``):
    their settlements are left out and they count as in flight."""
    certs: dict[str, Certificate] = defaultdict(Certificate)
    report = Report()
    for raw in events:
        event = _decode_event(raw)
        cert = certs[event.certificate_id]
        if isinstance(event, CertificateIssued):
            cert.price_minor = event.price_minor
        elif isinstance(event, PoolAttached):
            cert.budget_minor = event.budget_minor
        elif isinstance(event, FundingConfirmed):
            cert.funded = True
        elif isinstance(event, CertificatePurchased):
            cert.purchased = True
            cert.held = event.held_until_ms is not None
        elif isinstance(event, HoldReleased):
            cert.held = False
        elif isinstance(event, PurchaseRefunded):
            if event.fully:
                cert.held, cert.ended = False, True
        elif isinstance(event, CertificateEnded):
            cert.ended = True
        elif isinstance(event, CommissionFlagged):
            if not event.paid:  # a flag on a paid commission keeps nothing back
                cert.flagged.add(event.sharer_id)
        elif isinstance(event, (CommissionApproved, CommissionDeclined)):
            cert.flagged.discard(event.sharer_id)
        elif isinstance(event, PaymentReported):
            if event.next_attempt is not None:
                cert.retried.add((event.settlement_id, event.next_attempt))
            else:
                cert.done.add(event.settlement_id)
            if event.outcome == "cancelled":
                cert.cancelled[event.settlement_id] = event.reissued_as
    for raw in accepted:
        record = _decode_accepted(raw)
        cert = certs[record.command.certificate_id]
        cert.commands.add(record.command.command_id)
        if isinstance(record.command, Refund):
            cert.refunds.add(record.command.command_id)
    for raw in settlements:
        s = _decode_settlement(raw)
        report.settlements += 1
        if s.certificate_id in torn:
            continue
        cert = certs[s.certificate_id]
        where = f"{s.certificate_id} {s.settlement_id}"
        seen = cert.settlements.get((s.settlement_id, s.attempt))
        if seen is not None:
            kind = "duplicate" if seen == raw else "conflicting"
            report.problems.append(f"{where}: {kind} settlement id")
            continue
        cert.settlements[(s.settlement_id, s.attempt)] = raw
        if s.attempt > 1:
            # the same movement again, not a new one: no money counted twice
            original = cert.first.get(s.settlement_id)
            if (s.settlement_id, s.attempt) not in cert.retried:
                report.problems.append(f"{where}: attempt {s.attempt} without a failed "
                                       "attempt before it")
            if original is None or msgspec.structs.replace(original, attempt=s.attempt) != s:
                report.problems.append(f"{where}: attempt {s.attempt} differs from attempt 1")
            continue
        cert.first[s.settlement_id] = s
        if s.command_id not in cert.commands:
            report.problems.append(f"{where}: no accepted command {s.command_id} caused it")
        if isinstance(s, (Clawback, BuyerRefund)) and s.command_id not in cert.refunds:
            report.problems.append(f"{where}: a {type(s).__name__} without a refund")
        if isinstance(s, (CommissionPayout, SellerPayment)) and s.reissue_of is not None:
            # the same money as the payout it replaces, counted once: that one was
            # cancelled (reported so) before it was executed, and sent again as this
            # one, the same in all but its id, cause and time
            was = cert.first.get(s.reissue_of)
            same = was is not None and msgspec.structs.replace(
                s, settlement_id=was.settlement_id, command_id=was.command_id, seq=was.seq,
                at_ms=was.at_ms, reissue_of=was.reissue_of) == was
            if cert.cancelled.get(s.reissue_of) != s.settlement_id or not same:
                report.problems.append(f"{where}: reissues {s.reissue_of}, which was not "
                                       "cancelled and sent again as this same payout")
            continue
        if isinstance(s, CommissionPayout):
            if s.payee_id in cert.payouts:
                report.problems.append(f"{where}: {s.payee_id} paid twice")
            cert.payouts[s.payee_id] = s.amount_minor
            cert.paid_out_minor += s.amount_minor
        elif isinstance(s, BudgetRelease):
            cert.released_minor += s.amount_minor
        elif isinstance(s, SellerPayment):
            cert.seller_paid.append(s.amount_minor)
        elif isinstance(s, Clawback):
            if s.of_kind == "seller_payment":
                cert.clawed_seller_minor += s.amount_minor
            else:
                cert.clawed_commission_minor += s.amount_minor
        elif isinstance(s, BuyerRefund):
            cert.refunded_minor += s.amount_minor
    for cid, cert in sorted(certs.items()):
        report.certificates += 1
        if cid in torn:
            report.torn += 1
        if cid in in_flight or cid in torn:
            report.in_flight += 1
            _check_partial(cid, cert, report.problems)
        else:
            _check(cid, cert, report.problems)
        for sid, s in cert.first.items():
            if sid in cert.done:
                continue
            report.awaiting_results += 1
            if report.oldest_awaiting_ms is None or s.at_ms < report.oldest_awaiting_ms:
                report.oldest_awaiting_ms = s.at_ms
            if (results_within_ms is not None and now_ms is not None
                    and now_ms - s.at_ms > results_within_ms):
                report.problems.append(f"{cid} {sid}: no payment result after "
                                       f"{(now_ms - s.at_ms) // 1000} s")
    return report


def _check_partial(cid: str, cert: Certificate, problems: list[str]) -> None:
    """What holds while some of the certificate's commands are still in flight."""
    payable = cert.paid_out_minor or cert.seller_paid
    if cert.held and payable:
        problems.append(f"{cid}: payable while held")
    if not cert.purchased and payable:
        problems.append(f"{cid}: payouts before any purchase")
    out = cert.paid_out_minor + cert.released_minor - cert.clawed_commission_minor
    if cert.budget_minor is not None and out > cert.budget_minor:
        problems.append(f"{cid}: released {out} > budget {cert.budget_minor}")


def _check(cid: str, cert: Certificate, problems: list[str]) -> None:
    out = cert.paid_out_minor + cert.released_minor - cert.clawed_commission_minor
    if cert.budget_minor is None:
        if out:
            problems.append(f"{cid}: money moved without a pool attached")
        return
    if not cert.funded:
        # nothing was ever held behind the pool: nothing may go out of it (a pool
        # cancelled before its confirmation releases nothing, domain.aftersale.end)
        if out or cert.seller_paid:
            problems.append(f"{cid}: {out} released or paid from a pool never funded")
        return
    payable = cert.paid_out_minor or cert.seller_paid
    if cert.held and payable:
        problems.append(f"{cid}: payable while held")
    if not cert.purchased and payable:
        problems.append(f"{cid}: payouts before any purchase")
    if (cert.purchased or cert.ended) and not cert.held and not cert.flagged:
        if out != cert.budget_minor:
            problems.append(f"{cid}: payouts + releases - clawed back = {out}, "
                            f"budget = {cert.budget_minor}")
    elif out > cert.budget_minor:
        problems.append(f"{cid}: released {out} > budget {cert.budget_minor}")
    if cert.purchased and not cert.held:
        price = sum(cert.seller_paid) - cert.clawed_seller_minor + cert.refunded_minor
        if price != cert.price_minor or len(cert.seller_paid) > 1:
            problems.append(f"{cid}: seller payments {cert.seller_paid} - clawed back "
                            f"{cert.clawed_seller_minor} + refunded {cert.refunded_minor} "
                            f"!= price {cert.price_minor}")
    elif cert.refunded_minor and not cert.purchased:
        problems.append(f"{cid}: refunded but not purchased")


def torn_certificates(beyond_settlements: list[bytes], beyond_events: list[bytes],
                      settlements: list[bytes]) -> frozenset[str]:
    """The certificates with a settlement in the cut (``settlements``) caused by a
    command at or after the first of theirs with a record beyond the cut of
    ``settlements`` or ``certificate-events`` (committed later, still open, or
    aborted): that settlement may be one part of a transaction whose other part is not
    in the cut (or, for events, the sequencer's events of its cause not yet readable).
    A certificate whose records beyond the cut are all newer than its settlements in
    the cut (new traffic) is not torn."""
    first: dict[str, int] = {}
    for s in map(_decode_settlement, beyond_settlements):
        first[s.certificate_id] = min(s.seq, first.get(s.certificate_id, s.seq))
    for e in map(_decode_event, beyond_events):
        first[e.certificate_id] = min(e.seq, first.get(e.certificate_id, e.seq))
    return frozenset(s.certificate_id for s in map(_decode_settlement, settlements)
                     if s.certificate_id in first and s.seq >= first[s.certificate_id])


def reconcile_all(events: list[bytes], accepted: list[bytes],
                  settlements: list[tuple[int, int, bytes]], payments: list[bytes], *,
                  netted: dict[int, int] | None = None, **options) -> Report:
    """Both hops: every certificate from ``settlements`` (``reconcile``, with its
    ``options``) and what netting made of them on ``payments`` (``check_netting``;
    ``settlements`` as (partition, offset, value), ``netted`` netting's positions)."""
    report = reconcile(events, accepted, [value for _, _, value in settlements], **options)
    report.problems += check_netting(settlements, payments, netted)
    return report
