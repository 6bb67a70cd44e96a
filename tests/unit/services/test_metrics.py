"""The stages count per round: what a round counted reaches the counters only when
the runner publishes it (after the round's transaction committed), and nothing of a
round that was rolled back does."""

from __future__ import annotations

import random

import pytest
from prometheus_client import CollectorRegistry, Histogram, generate_latest

from schemas.payments import BudgetRelease, CommissionPayout
from services.common.metrics import LATENCY_BUCKETS, Metrics, observe_many

T = 1_700_000_000_000


def _payout(amount: int) -> CommissionPayout:
    return CommissionPayout(settlement_id="a" * 64, certificate_id="c1", command_id="x",
                            seq=1, at_ms=T, funding_ref="f1", currency="EUR",
                            amount_minor=amount, payee_id="ann", gross_minor=amount)


def _value(metrics: Metrics, line_start: str) -> float:
    for line in generate_latest(metrics.registry).decode().splitlines():
        if line.startswith(line_start):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def test_counts_reach_the_counters_when_the_round_is_published():
    m = Metrics("cashout")
    for _ in range(3):
        m.count_in("Circulate")
    m.count_out("payments", [_payout(100), _payout(50)])
    m.count_money([_payout(100), _payout(50)])
    m.count_rejection("not_posted")
    assert _value(m, 'commission_messages_in_total{service="cashout",type="Circulate"}') == 0
    m.publish()
    assert _value(m, 'commission_messages_in_total{service="cashout",type="Circulate"}') == 3
    assert _value(m, 'commission_messages_out_total{service="cashout",topic="payments",'
                     'type="CommissionPayout"}') == 2
    assert _value(m, 'commission_money_minor_units_total{currency="EUR",flow="paid_out",'
                     'service="cashout"}') == 150
    assert _value(m, 'commission_rejections_total{reason="not_posted",'
                     'service="cashout"}') == 1
    m.publish()  # published once: a second publish adds nothing
    assert _value(m, 'commission_messages_in_total{service="cashout",type="Circulate"}') == 3


def test_a_dropped_partition_or_round_is_never_counted():
    m = Metrics("cashout")
    m.use(0)
    m.count_in("Circulate")
    m.use(1)
    m.count_in("Purchase")  # the parked partition's records
    m.count_money([BudgetRelease(settlement_id="b" * 64, certificate_id="c1", command_id="x",
                                 seq=2, at_ms=T, funding_ref="f1", currency="EUR",
                                 amount_minor=7, payee_id="fred", reason="purchase")])
    m.use(0)
    m.count_in("Circulate")
    m.drop(1)
    m.publish()
    assert _value(m, 'commission_messages_in_total{service="cashout",type="Circulate"}') == 2
    assert _value(m, 'commission_messages_in_total{service="cashout",type="Purchase"}') == 0
    assert _value(m, 'commission_money_minor_units_total{currency="EUR",flow="released"') == 0
    m.count_in("Circulate")
    m.use(1)
    m.count_in("Circulate")
    m.drop()  # an aborted round: all of it
    m.publish()
    assert _value(m, 'commission_messages_in_total{service="cashout",type="Circulate"}') == 2


def test_observe_many_equals_observing_one_by_one():
    rng = random.Random(5)
    values = [rng.choice([0.0, 0.001, 0.0025, 0.1, 10.0, 11.0]) for _ in range(200)]
    values += [rng.uniform(0, 12) for _ in range(2000)]
    one, many = CollectorRegistry(), CollectorRegistry()
    h1 = Histogram("h", "h", ["s"], buckets=LATENCY_BUCKETS, registry=one).labels("x")
    h2 = Histogram("h", "h", ["s"], buckets=LATENCY_BUCKETS, registry=many).labels("x")
    for v in values:
        h1.observe(v)
    observe_many(h2, values[:1000])
    observe_many(h2, [])
    observe_many(h2, values[1000:])
    def samples(registry):
        return {(s.name, tuple(sorted(s.labels.items()))): s.value
                for family in registry.collect() for s in family.samples
                if not s.name.endswith("_created")}

    want, got = samples(one), samples(many)
    assert want.keys() == got.keys()
    for name, value in want.items():
        assert got[name] == pytest.approx(value, rel=1e-12), name
