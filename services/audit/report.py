"""Reconciliation from the topics alone, read with ``read_committed``.

Per certificate it checks, without trusting any service's state:
* conservation: a purchased certificate's payouts and releases sum to the budget
  attached (from ``certificate-events``) and its seller payment equals the price;
  a certificate not purchased has no payout and releases at most its budget;
* no settlement id appears twice (``duplicate`` if the copies are identical,
  ``conflict`` if not), and no account is paid twice on one certificate;
* every settlement has a cause: its command id is an accepted command of that
  certificate (topic ``accepted``).
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field

import msgspec

from schemas.commands import AcceptedCommand
from schemas.events import CertificateIssued, CertificatePurchased, Event, PoolAttached
from schemas.payments import BudgetRelease, CommissionPayout, SellerPayment, Settlement

_decode_settlement = msgspec.json.Decoder(Settlement).decode
_decode_event = msgspec.json.Decoder(Event).decode
_decode_accepted = msgspec.json.Decoder(AcceptedCommand).decode


@dataclass
class Certificate:
    price_minor: int | None = None
    budget_minor: int | None = None
    purchased: bool = False
    commands: set[str] = field(default_factory=set)
    settlements: dict[str, bytes] = field(default_factory=dict)
    payouts: dict[str, int] = field(default_factory=dict)
    released_minor: int = 0
    paid_out_minor: int = 0
    seller_paid: list[int] = field(default_factory=list)


@dataclass
class Report:
    certificates: int = 0
    settlements: int = 0
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


def reconcile(events: list[bytes], accepted: list[bytes], payments: list[bytes]) -> Report:
    certs: dict[str, Certificate] = defaultdict(Certificate)
    report = Report()
    for raw in events:
        event = _decode_event(raw)
        cert = certs[event.certificate_id]
        if isinstance(event, CertificateIssued):
            cert.price_minor = event.price_minor
        elif isinstance(event, PoolAttached):
            cert.budget_minor = event.budget_minor
        elif isinstance(event, CertificatePurchased):
            cert.purchased = True
    for raw in accepted:
        record = _decode_accepted(raw)
        certs[record.command.certificate_id].commands.add(record.command.command_id)
    for raw in payments:
        s = _decode_settlement(raw)
        report.settlements += 1
        cert = certs[s.certificate_id]
        where = f"{s.certificate_id} {s.settlement_id}"
        seen = cert.settlements.get(s.settlement_id)
        if seen is not None:
            kind = "duplicate" if seen == raw else "conflicting"
            report.problems.append(f"{where}: {kind} settlement id")
            continue
        cert.settlements[s.settlement_id] = raw
        if s.command_id not in cert.commands:
            report.problems.append(f"{where}: no accepted command {s.command_id} caused it")
        if isinstance(s, CommissionPayout):
            if s.payee_id in cert.payouts:
                report.problems.append(f"{where}: {s.payee_id} paid twice")
            cert.payouts[s.payee_id] = s.amount_minor
            cert.paid_out_minor += s.amount_minor
        elif isinstance(s, BudgetRelease):
            cert.released_minor += s.amount_minor
        elif isinstance(s, SellerPayment):
            cert.seller_paid.append(s.amount_minor)
    for cid, cert in sorted(certs.items()):
        report.certificates += 1
        out = cert.paid_out_minor + cert.released_minor
        if cert.budget_minor is None:
            if out:
                report.problems.append(f"{cid}: money moved without a pool attached")
            continue
        if cert.purchased:
            if out != cert.budget_minor:
                report.problems.append(
                    f"{cid}: payouts + releases = {out}, budget = {cert.budget_minor}")
            if cert.seller_paid != [cert.price_minor]:
                report.problems.append(
                    f"{cid}: seller payments {cert.seller_paid}, price {cert.price_minor}")
        else:
            if cert.paid_out_minor:
                report.problems.append(f"{cid}: payouts before any purchase")
            if out > cert.budget_minor:
                report.problems.append(f"{cid}: released {out} > budget {cert.budget_minor}")
            if cert.seller_paid:
                report.problems.append(f"{cid}: seller paid but not purchased")
    return report
