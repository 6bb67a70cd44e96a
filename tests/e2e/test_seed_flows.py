"""Seed examples 2 and 3 through all four services, checked on the topics."""

from __future__ import annotations

import time

import msgspec

from schemas import commands as c
from schemas.payments import Settlement
from schemas.rejections import Rejection
from tests.e2e import certificates
from tests.e2e.certificates import paid as paid_for

decode_settlement = msgspec.json.Decoder(Settlement).decode
decode_rejection = msgspec.json.Decoder(Rejection).decode


def now_ms() -> int:
    return int(time.time() * 1000)


def paid(cert: str) -> dict:
    return paid_for(cert, 200_000, f"pay-{cert}", "USD")


def setup(cert: str, **pool) -> list:
    # the seed's purchase pays at once: no hold (tests/e2e/test_aftersale.py has them)
    pool.setdefault("hold_s", 0)
    return certificates.setup(cert, now_ms(), price_minor=200_000, budget_minor=100_000,
                              attached_minor=10_000, currency="USD", name="Espresso machine",
                              **pool)


def settlements_by_cert(values: list[bytes]) -> dict[str, list[tuple[str, str, int]]]:
    out: dict[str, list] = {}
    for raw in values:
        s = decode_settlement(raw)
        out.setdefault(s.certificate_id, []).append(
            (type(s).__name__, s.payee_id, s.amount_minor))
    return {k: sorted(v) for k, v in out.items()}


def test_seed_examples_2_and_3_end_to_end(pipeline):
    pipeline.start_all()
    ex3, ex2, ex3w = (certificates.cert_id(n) for n in ("ex3", "ex2", "ex3w"))
    t = now_ms()
    pipeline.send(
        # example 3: two accounts acquire, purchase below the thresholds pays both
        *setup(ex3, thresholds=c.Thresholds(max_circulations=11)),
        c.Circulate(command_id="ex3-s1", certificate_id=ex3, at_ms=t, account_id="first"),
        c.Circulate(command_id="ex3-s2", certificate_id=ex3, at_ms=t, account_id="second",
                    via="first"),
        c.Purchase(command_id="ex3-buy", certificate_id=ex3, at_ms=t, account_id="buyer",
                   **paid(ex3)),
        # a share after the purchase is refused
        c.Circulate(command_id="ex3-late", certificate_id=ex3, at_ms=t, account_id="late"),
        # example 2: the upstream account gains when the next one circulates
        *setup(ex2, acquisition=c.AcquisitionPolicy(beneficiary="upstream")),
        c.Circulate(command_id="ex2-s1", certificate_id=ex2, at_ms=t, account_id="first"),
        c.Circulate(command_id="ex2-s2", certificate_id=ex2, at_ms=t, account_id="second",
                    via="first"),
        c.Purchase(command_id="ex2-buy", certificate_id=ex2, at_ms=t, account_id="buyer",
                   **paid(ex2)),
        # example 3, withdrawn: the 2nd circulation meets max_circulations=2
        *setup(ex3w, thresholds=c.Thresholds(max_circulations=2)),
        c.Circulate(command_id="ex3w-s1", certificate_id=ex3w, at_ms=t, account_id="first"),
        c.Circulate(command_id="ex3w-s2", certificate_id=ex3w, at_ms=t, account_id="second"),
        c.Purchase(command_id="ex3w-buy", certificate_id=ex3w, at_ms=t, account_id="buyer",
                   **paid(ex3w)),
    )
    # 4 (ex3) + 3 (ex2: first only, second never gained) + 2 (ex3w: release, seller)
    payments = pipeline.wait_for(pipeline.topics.payments, 4 + 3 + 2)
    assert settlements_by_cert(payments) == {
        ex3: sorted([("BudgetRelease", "funder", 80_000), ("CommissionPayout", "first", 10_000),
                     ("CommissionPayout", "second", 10_000), ("SellerPayment", "seller", 200_000)]),
        ex2: sorted([("BudgetRelease", "funder", 90_000), ("CommissionPayout", "first", 10_000),
                     ("SellerPayment", "seller", 200_000)]),
        ex3w: sorted([("BudgetRelease", "funder", 100_000), ("SellerPayment", "seller", 200_000)]),
    }
    rejections = [decode_rejection(r) for r in pipeline.wait_for(pipeline.topics.rejections, 1)]
    assert [(r.command_id, r.reason.value) for r in rejections] == [
        ("ex3-late", "certificate_purchased")]
    report = pipeline.audit()
    assert report.ok, report.problems
    assert report.settlements == 9
