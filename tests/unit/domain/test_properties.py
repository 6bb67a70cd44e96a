"""Property-based tests over random command sequences (hypothesis).

For any pool configuration and any sequence of circulations, claims, purchases,
timer ticks and clock moves:
* conservation and non-negativity hold after every step (checked from outside too);
* no account is paid twice on one certificate;
* a purchased certificate's payouts and releases sum to its budget and its seller
  payment equals the price;
* the same sequence gives the same events and settlements, byte for byte;
* replaying any prefix, or inserting duplicates anywhere, changes nothing.
"""

from __future__ import annotations

from collections import Counter

import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from domain import Accepted, Duplicate, Rejected, check_invariants, handle
from schemas import commands as c
from schemas.payments import BudgetRelease, CommissionPayout, SellerPayment

pytestmark = pytest.mark.unit

ACCOUNTS = ["a", "b", "c", "d", "e", "seller", "funder"]
CERT = "cert-p"
T0 = 1_700_000_000_000
encode = msgspec.msgpack.Encoder().encode

amounts = st.one_of(
    st.builds(c.FixedAmount, amount_minor=st.integers(1, 5_000)),
    st.builds(lambda lo, span: c.RandomAmount(min_minor=lo, max_minor=lo + span),
              st.integers(0, 2_000), st.integers(1, 2_000)),
    st.builds(c.PercentOfAttached, basis_points=st.integers(0, 10_000)),
    st.just(c.AllAttached()),
)
replenishes = st.one_of(
    st.builds(c.ReplenishMatch, from_second_circulation=st.booleans()),
    st.builds(c.ReplenishFixed, amount_minor=st.integers(1, 3_000)),
    st.builds(lambda lo, span: c.ReplenishRandom(min_minor=lo, max_minor=lo + span),
              st.integers(0, 1_000), st.integers(1, 1_000)),
    st.just(c.ReplenishNone()),
)
thresholds = st.builds(
    c.Thresholds,
    max_circulations=st.none() | st.integers(1, 15),
    max_cumulative_minor=st.none() | st.integers(1, 20_000),
    max_cumulative_bp_of_price=st.none() | st.integers(1, 10_000),
    max_display_s=st.none() | st.integers(1, 100),
    on_withdraw=st.sampled_from(["void", "freeze"]),
    warn_at_bp=st.integers(0, 10_000),
)


@st.composite
def scenarios(draw):
    budget = draw(st.integers(1, 20_000))
    attach = c.AttachPool(
        command_id="attach", certificate_id=CERT, at_ms=T0, account_id="funder",
        funding_ref="esc", budget_minor=budget, attached_minor=draw(st.integers(1, budget)),
        currency="EUR",
        acquisition=c.AcquisitionPolicy(
            beneficiary=draw(st.sampled_from(["circulator", "upstream"])),
            trigger=draw(st.sampled_from(["auto", "claim"])),
            amount=draw(amounts)),
        replenish=draw(replenishes), thresholds=draw(thresholds))
    setup = [
        c.IssueCertificate(command_id="issue", certificate_id=CERT, at_ms=T0,
                           account_id="seller", offer_id="o", serial=1, copies=1, name="x",
                           price_minor=draw(st.integers(1, 100_000)), currency="EUR",
                           time_limit_s=draw(st.none() | st.integers(1, 100))),
        attach,
        c.PostCertificate(command_id="post", certificate_id=CERT, at_ms=T0, account_id="seller"),
    ]
    now = T0
    steps = []
    for i in range(draw(st.integers(0, 40))):
        now += draw(st.sampled_from([0, 0, 1, 500, 5_000, 30_000]))
        kind = draw(st.sampled_from(["circulate"] * 6 + ["claim", "purchase", "tick"]))
        who = draw(st.sampled_from(ACCOUNTS))
        base = dict(command_id=f"k{i}", certificate_id=CERT, at_ms=now)
        if kind == "circulate":
            steps.append(c.Circulate(**base, account_id=who,
                                     via=draw(st.none() | st.sampled_from(ACCOUNTS))))
        elif kind == "claim":
            steps.append(c.Claim(**base, account_id=who))
        elif kind == "purchase":
            steps.append(c.Purchase(**base, account_id=who, payment_ref=f"pay{i}"))
        else:
            steps.append(c.CheckExpiry(**base))
    return setup + steps


def run(commands):
    state = None
    outputs: list[bytes] = []
    settlements = []
    outcomes = []
    for command in commands:
        before = None if state is None else encode(state)
        outcome = handle(state, command)
        outcomes.append(outcome)
        if isinstance(outcome, Accepted):
            state = outcome.state
            check_invariants(state, full=True)
            outputs.extend(encode(x) for x in (*outcome.events, *outcome.settlements))
            settlements.extend(outcome.settlements)
        else:
            assert isinstance(outcome, (Rejected, Duplicate))
            assert (None if state is None else encode(state)) == before
    return state, outputs, settlements, outcomes


SETTINGS = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@SETTINGS
@given(scenarios())
def test_money_is_conserved_and_paid_once(commands):
    state, _, settlements, _ = run(commands)
    pool = state.pool
    payouts = Counter(s.payee_id for s in settlements if isinstance(s, CommissionPayout))
    assert all(n == 1 for n in payouts.values())
    assert "seller" not in payouts and "funder" not in payouts
    budget_out = sum(s.amount_minor for s in settlements
                     if isinstance(s, (CommissionPayout, BudgetRelease)))
    assert budget_out == pool.paid_minor + pool.released_minor
    if state.status == "purchased":
        assert budget_out == pool.budget_minor
        assert [s.amount_minor for s in settlements if isinstance(s, SellerPayment)] == [
            state.price_minor]
    elif pool.status == "withdrawn":
        assert budget_out == pool.budget_minor  # everything went back to the funder
    else:
        assert budget_out <= pool.budget_minor
    assert len({s.settlement_id for s in settlements}) == len(settlements)


@SETTINGS
@given(scenarios())
def test_same_commands_same_bytes(commands):
    _, first, _, _ = run(commands)
    _, second, _, _ = run(commands)
    assert first == second


@SETTINGS
@given(scenarios(), st.data())
def test_replaying_any_prefix_changes_nothing(commands, data):
    state, _, _, outcomes = run(commands)
    end = encode(state)
    cut = data.draw(st.integers(0, len(commands)))
    # A command that was refused, or had nothing to do, was not applied: sending it
    # again is a new attempt, not a replay. Everything that was applied is a duplicate.
    for command, first in zip(commands[:cut], outcomes[:cut], strict=True):
        if isinstance(first, Accepted) and first.events:
            assert handle(state, command) == Duplicate(command.command_id)
    assert encode(state) == end


@SETTINGS
@given(scenarios(), st.data())
def test_duplicates_anywhere_have_no_effect(commands, data):
    state, outputs, _, outcomes = run(commands)
    accepted = [i for i, o in enumerate(outcomes) if isinstance(o, Accepted) and o.events]
    # (position in the original sequence after which the copy goes, copied index)
    copies = []
    for _ in range(data.draw(st.integers(1, 5))):
        original = data.draw(st.sampled_from(accepted))
        copies.append((data.draw(st.integers(original, len(commands) - 1)), original))
    noisy = []
    for i, command in enumerate(commands):
        noisy.append(command)
        noisy.extend(commands[o] for after, o in copies if after == i)
    state2, outputs2, _, outcomes2 = run(noisy)
    assert sum(isinstance(o, Duplicate) for o in outcomes2) == len(copies)
    assert outputs2 == outputs
    assert encode(state2) == encode(state)
