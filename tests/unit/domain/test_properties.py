"""Property-based tests over random command sequences (hypothesis).

For any pool configuration and any sequence of circulations, claims, purchases,
timer ticks and clock moves:
* conservation and non-negativity hold after every step (checked from outside too);
* no account is paid twice on one certificate;
* a purchased certificate's payouts and releases sum to its budget and its seller
  payment equals the price, once its hold ended; refunds at any time (within the
  hold or after it, partial or whole) keep both sums exact, every account's net
  commission is its acquisition scaled down by the refunded part (rounded down),
  and a clawback never exceeds what an account was paid;
* the same sequence gives the same events and settlements, byte for byte;
* replaying any prefix, or inserting duplicates anywhere, changes nothing;
* a circulation that does not count (a repeat, the seller, the funder) never
  acquires, replenishes, or withdraws the pool by count or amount, so it cannot void
  anyone else's pending acquisition;
* the amounts drawn never depend on what the client chose (command ids, refs);
* every event and settlement the core produces decodes with its own contract.
"""

from __future__ import annotations

from collections import Counter

import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from domain import Accepted, Duplicate, Rejected, check_invariants, handle
from domain.draw import entropy_at
from schemas import commands as c
from schemas.events import (
    CertificateCirculated,
    CertificatePurchased,
    CommissionAcquired,
    Event,
    PoolReplenished,
    PoolWithdrawn,
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
from tests.unit.domain.scenario import DRAW_SECRET

pytestmark = pytest.mark.unit

ACCOUNTS = ["a", "b", "c", "d", "e", "seller", "funder"]
SHARERS = ACCOUNTS[:5]
CERT = "seller~p-00001"
T0 = 1_700_000_000_000
encode = msgspec.msgpack.Encoder().encode
json_encode = msgspec.json.Encoder().encode
decode_event = msgspec.json.Decoder(Event).decode
decode_settlement = msgspec.json.Decoder(Settlement).decode

amounts = st.one_of(
    st.builds(c.FixedAmount, amount_minor=st.integers(1, 5_000)),
    st.builds(lambda lo, span: c.RandomAmount(min_minor=lo, max_minor=lo + span),
              st.integers(1, 2_000), st.integers(0, 2_000)),
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
            amount=draw(amounts), max_depth=draw(st.none() | st.integers(1, 4)),
            max_acquisitions_per_minute=draw(st.none() | st.integers(1, 3)),
            min_account_age_s=draw(st.sampled_from([None, None, None, 1, 3600])),
            verified_only=draw(st.sampled_from([False, False, False, True]))),
        replenish=draw(replenishes), thresholds=draw(thresholds),
        hold_s=draw(st.sampled_from([0, 1, 30, 120])),
        close_after_s=draw(st.sampled_from([1, 60, 600, 90 * 86400])),
        chargeback_window_s=draw(st.sampled_from([1, 30, 120 * 86400])))
    setup = [
        c.IssueCertificate(command_id="issue", certificate_id=CERT, at_ms=T0,
                           account_id="seller", offer_id="seller~p", serial=1, copies=1,
                           name="x", price_minor=draw(st.integers(1, 100_000)), currency="EUR",
                           time_limit_s=draw(st.none() | st.integers(1, 100)),
                           funder_id="funder"),
        attach,
        c.ConfirmFunding(command_id="confirm", certificate_id=CERT, at_ms=T0,
                         funding_ref="esc", amount_minor=budget, currency="EUR"),
        c.PostCertificate(command_id="post", certificate_id=CERT, at_ms=T0, account_id="seller"),
    ]
    now = T0
    steps = []
    price = setup[0].price_minor
    for i in range(draw(st.integers(0, 40))):
        now += draw(st.sampled_from([0, 0, 1, 500, 5_000, 30_000]))
        kind = draw(st.sampled_from(["circulate"] * 6 + ["claim", "purchase", "tick", "release",
                                                         "refund", "refund", "cancel",
                                                         "decline", "flag", "approve"]))
        who = draw(st.sampled_from(ACCOUNTS))
        base = dict(command_id=f"k{i}", certificate_id=CERT, at_ms=now)
        if kind == "circulate":
            facts = None if draw(st.integers(0, 3)) == 0 else c.AccountFacts(
                created_ms=draw(st.sampled_from([T0 - 86_400_000] * 3 + [now])),
                verified=draw(st.sampled_from([True, True, True, False])))
            steps.append(c.Circulate(**base, account_id=who, account=facts,
                                     via=draw(st.none() | st.sampled_from(ACCOUNTS))))
        elif kind == "claim":
            steps.append(c.Claim(**base, account_id=who))
        elif kind == "purchase":
            steps.append(c.Purchase(**base, account_id=who, seller_id="seller",
                                    payment_ref=f"pay{i}", captured_minor=price, currency="EUR"))
        elif kind == "release":
            steps.append(c.ReleaseHold(**base))
        elif kind == "refund":
            by = draw(st.sampled_from(["seller", "payment_system"]))
            steps.append(c.Refund(**base, by=by, account_id=who if by == "seller" else None,
                                  amount_minor=draw(st.just(price) | st.integers(1, price)),
                                  refund_ref=f"r{i}", chargeback_reason=draw(
                                      st.none() | st.just("4837")) if by != "seller" else None))
        elif kind == "cancel":
            steps.append(c.CancelCertificate(**base, account_id=who))
        elif kind == "decline":
            steps.append(c.DeclineCommission(
                **base, account_id=draw(st.sampled_from(["seller", "rita", who])),
                sharer_id=draw(st.sampled_from(SHARERS)), reason="fraud",
                reviewer=draw(st.booleans())))
        elif kind == "flag":
            steps.append(c.FlagCommission(**base, sharer_id=draw(st.sampled_from(SHARERS)),
                                          rule="burst"))
        elif kind == "approve":
            steps.append(c.ApproveCommission(
                **base, account_id=draw(st.sampled_from(["seller", "rita", who])),
                sharer_id=draw(st.sampled_from(SHARERS)), reviewer=draw(st.booleans())))
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
        outcome = handle(state, command, entropy_at(DRAW_SECRET, state, command.certificate_id))
        outcomes.append(outcome)
        if isinstance(outcome, Accepted):
            state = outcome.state
            check_invariants(state, full=True)
            outputs.extend(encode(x) for x in (*outcome.events, *outcome.settlements))
            settlements.extend(outcome.settlements)
            # what the core produces is valid under its own wire contract
            for event in outcome.events:
                assert decode_event(json_encode(event)) == event
            for settlement in outcome.settlements:
                assert decode_settlement(json_encode(settlement)) == settlement
        else:
            assert isinstance(outcome, (Rejected, Duplicate))
            assert (None if state is None else encode(state)) == before
    return state, outputs, settlements, outcomes


SETTINGS = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@st.composite
def reviewed_scenarios(draw):
    """Sharers acquire for sure, then flags, declines, approvals, a purchase, the hold's
    end and refunds in any order (the general scenarios rarely reach a review)."""
    setup = draw(scenarios())[:4]
    attach = setup[1]
    setup[1] = msgspec.structs.replace(attach, acquisition=c.AcquisitionPolicy(
        amount=c.FixedAmount(amount_minor=draw(st.integers(1, 500)))),
        replenish=c.ReplenishMatch(), thresholds=c.Thresholds())
    price = setup[0].price_minor
    now = T0
    steps = [c.Circulate(command_id=f"s{i}", certificate_id=CERT, at_ms=now, account_id=a)
             for i, a in enumerate(SHARERS[:draw(st.integers(1, 5))])]
    for i in range(draw(st.integers(1, 20))):
        now += draw(st.sampled_from([0, 1, 1_000, 30_000, 200_000]))
        base = dict(command_id=f"r{i}", certificate_id=CERT, at_ms=now)
        kind = draw(st.sampled_from(["flag", "flag", "decline", "decline", "approve",
                                     "approve", "purchase", "release", "refund", "tick"]))
        sharer = draw(st.sampled_from(SHARERS))
        if kind == "flag":
            steps.append(c.FlagCommission(**base, sharer_id=sharer, rule="burst"))
        elif kind == "decline":
            steps.append(c.DeclineCommission(
                **base, account_id=draw(st.sampled_from(["seller", "rita"])), sharer_id=sharer,
                reason="fraud", reviewer=draw(st.booleans())))
        elif kind == "approve":
            steps.append(c.ApproveCommission(**base, account_id="rita", sharer_id=sharer,
                                             reviewer=draw(st.booleans())))
        elif kind == "purchase":
            steps.append(c.Purchase(**base, account_id="buyer", seller_id="seller",
                                    payment_ref=f"pay{i}", captured_minor=price, currency="EUR"))
        elif kind == "release":
            steps.append(c.ReleaseHold(**base))
        elif kind == "refund":
            by = draw(st.sampled_from(["seller", "payment_system"]))
            steps.append(c.Refund(**base, by=by, account_id="seller" if by == "seller" else None,
                                  amount_minor=draw(st.just(price) | st.integers(1, price)),
                                  refund_ref=f"rf{i}", chargeback_reason=None
                                  if by == "seller" else draw(st.none() | st.just("4837"))))
        else:
            steps.append(c.CheckExpiry(**base))
    return setup + steps


@SETTINGS
@given(scenarios())
def test_money_is_conserved_and_paid_once(commands):
    check_money(commands)


@settings(SETTINGS, max_examples=150)
@given(reviewed_scenarios())
def test_reviews_and_flags_keep_money_conserved_and_paid_once(commands):
    check_money(commands)


def check_money(commands):
    state, _, settlements, outcomes = run(commands)
    pool = state.pool
    payouts = Counter(s.payee_id for s in settlements if isinstance(s, CommissionPayout))
    assert all(n == 1 for n in payouts.values())
    assert "seller" not in payouts and "funder" not in payouts

    def total(kind, **where):
        return sum(s.amount_minor for s in settlements if isinstance(s, kind)
                   and all(getattr(s, k) == v for k, v in where.items()))

    # commission clawed back goes back to the funder: it is released AND owed back
    budget_out = (total(CommissionPayout) + total(BudgetRelease)
                  - total(Clawback, of_kind="commission_payout"))
    assert budget_out == pool.paid_minor + pool.released_minor - pool.clawed_back_minor
    settled = state.held_until_ms is None
    if state.status in ("purchased", "refunded", "cancelled", "closed") and settled:
        # every minor unit has gone somewhere, but what a fraud flag keeps back for
        # review (held: 0 when nothing is flagged)
        assert pool.held_minor == sum(pool.payouts.get(a, 0) for a in pool.flagged)
        assert budget_out == pool.budget_minor - pool.held_minor
    elif pool.status == "withdrawn":
        assert budget_out == pool.budget_minor - pool.held_minor
    else:
        assert budget_out <= pool.budget_minor
    seller_net = total(SellerPayment) - total(Clawback, of_kind="seller_payment")
    refunded = total(BuyerRefund)
    assert refunded == state.refunded_minor
    if state.status in ("purchased", "refunded") and settled:
        assert seller_net + refunded == state.price_minor
    else:
        assert seller_net + refunded + state.price_held_minor == (
            state.price_minor if state.status in ("purchased", "refunded") else 0)
    if state.status in ("purchased", "refunded") and settled:
        # what scales the commission down (SPEC 9): a refund within the hold, or a
        # chargeback within the window after the purchase; any other refund after the
        # hold is the seller's alone
        events = [e for o in outcomes if isinstance(o, Accepted) for e in o.events]
        bought = next(e.at_ms for e in events if isinstance(e, CertificatePurchased))
        window_ms = pool.chargeback_window_s * 1000
        counted = sum(e.amount_minor for e in events if isinstance(e, PurchaseRefunded) and (
            e.within_hold or (e.chargeback and e.at_ms <= bought + window_ms)))
        # each account keeps its exact share of what is left rounded down or up, and
        # the accounts together at most the whole of it rounded down once, at the
        # refund (domain/apportion.py, whose exact split is tested against the rule
        # applied unit by unit; an account declined after it takes its share out of
        # the sum and perhaps a rounded-down unit with it: only without declines)
        left = state.price_minor - counted
        kept = 0
        for account_id, owed in pool.payouts.items():
            net = (total(CommissionPayout, payee_id=account_id)
                   - total(Clawback, payee_id=account_id))
            if account_id in pool.flagged:
                assert net == 0  # kept back: never paid, owed in full
                net = owed
            acquired = pool.acquired[account_id]
            whole, remainder = divmod(acquired * left, state.price_minor)
            assert whole <= net <= whole + (remainder > 0) and net <= acquired
            kept += net
        if not pool.declined:
            assert kept <= sum(pool.acquired[a] for a in pool.payouts) * left // state.price_minor
        for account_id in pool.declined:  # declined before it was paid: never paid
            assert total(CommissionPayout, payee_id=account_id) == 0
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
        if isinstance(first, Accepted):
            assert handle(state, command) == Duplicate(command.command_id, first.events[0].seq)
    assert encode(state) == end


@SETTINGS
@given(scenarios(), st.data())
def test_duplicates_anywhere_have_no_effect(commands, data):
    state, outputs, _, outcomes = run(commands)
    accepted = [i for i, o in enumerate(outcomes) if isinstance(o, Accepted)]
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


@SETTINGS
@given(scenarios())
def test_circulations_that_do_not_count_take_nothing_from_anyone(commands):
    state = None
    for command in commands:
        before = None if state is None else msgspec.structs.replace(state)
        pending_before = None if state is None or state.pool is None else (
            dict(state.pool.acquired), state.pool.pending_minor, state.distinct_circulations)
        outcome = handle(state, command, entropy_at(DRAW_SECRET, state, command.certificate_id))
        if not isinstance(outcome, Accepted):
            continue
        state = outcome.state
        hop = next((e for e in outcome.events if isinstance(e, CertificateCirculated)), None)
        if hop is None or hop.counts:
            continue
        assert before is not None and pending_before is not None
        # a repeat, or the seller or funder, counts nothing and moves no money...
        assert not any(isinstance(e, (CommissionAcquired, PoolReplenished))
                       for e in outcome.events)
        assert state.distinct_circulations == pending_before[2]
        withdrawals = [e for e in outcome.events if isinstance(e, PoolWithdrawn)]
        # ...and can only coincide with a withdrawal the clock caused, never one it did
        assert all(w.threshold == "display_time" for w in withdrawals)
        if not withdrawals:
            assert (state.pool.acquired, state.pool.pending_minor) == pending_before[:2]


def _renamed(command, i):
    """The same command with every client-chosen id changed."""
    fields = {"command_id": f"other-{i}-{command.command_id}"}
    if isinstance(command, c.Purchase):
        fields["payment_ref"] = f"ref-{i}"
    return msgspec.structs.replace(command, **fields)


@SETTINGS
@given(scenarios())
def test_draws_never_depend_on_what_the_client_chose(commands):
    def amounts(sequence):
        _, _, _, outcomes = run(sequence)
        return [[(type(e).__name__, getattr(e, "amount_minor", None)) for e in o.events]
                if isinstance(o, Accepted) else type(o).__name__ for o in outcomes]

    setup, steps = commands[:4], commands[4:]
    assert amounts(commands) == amounts(setup + [_renamed(x, i) for i, x in enumerate(steps)])


@SETTINGS
@given(at_ms=st.integers(0, 2**53), limit_s=st.integers(1, 100 * 365 * 24 * 3600),
       budget=st.integers(1, 10**15))
def test_extreme_times_and_amounts_are_refused_or_valid(at_ms, limit_s, budget):
    commands = [
        c.IssueCertificate(command_id="i", certificate_id=CERT, at_ms=at_ms,
                           account_id="seller", offer_id="seller~p", serial=1, copies=1,
                           name="x", price_minor=10**15, currency="EUR", time_limit_s=limit_s),
        c.AttachPool(command_id="a", certificate_id=CERT, at_ms=at_ms, account_id="seller",
                     funding_ref="f", budget_minor=budget, attached_minor=budget,
                     currency="EUR", thresholds=c.Thresholds(max_display_s=limit_s)),
        c.ConfirmFunding(command_id="cf", certificate_id=CERT, at_ms=at_ms, funding_ref="f",
                         amount_minor=budget, currency="EUR"),
        c.PostCertificate(command_id="p", certificate_id=CERT, at_ms=at_ms, account_id="seller"),
        c.Circulate(command_id="c", certificate_id=CERT, at_ms=at_ms, account_id="a"),
        c.Purchase(command_id="b", certificate_id=CERT, at_ms=at_ms, account_id="b",
                   seller_id="seller", payment_ref="r", captured_minor=10**15, currency="EUR"),
    ]
    _, _, _, outcomes = run(commands)  # run() decodes every event with its contract
    post = outcomes[3]
    if at_ms + limit_s * 1000 > 2**53:
        assert isinstance(post, Rejected) and post.reason.value == "invalid_field"
    else:
        assert isinstance(post, Accepted)


def test_a_decline_after_a_refund_keeps_the_money_checks_true():
    """Found by a review: two sharers of 1 on a price of 4; a refund of 1 leaves 0.75
    each, 1 in all (one keeps 1, one 0); the one keeping 1 is not declined, the other
    is. The remaining account keeps more than the sum of what is left rounded down
    (0.75 -> 0): within its ceiling, and the money still adds up."""
    b = dict(certificate_id=CERT)
    base = [
        c.IssueCertificate(command_id="issue", at_ms=T0, account_id="seller",
                           offer_id="seller~p", serial=1, copies=1, name="x", price_minor=4,
                           currency="EUR", funder_id="funder", **b),
        c.AttachPool(command_id="attach", at_ms=T0, account_id="funder", funding_ref="esc",
                     budget_minor=100, attached_minor=1, currency="EUR",
                     acquisition=c.AcquisitionPolicy(amount=c.FixedAmount(amount_minor=1)),
                     replenish=c.ReplenishMatch(), thresholds=c.Thresholds(), hold_s=30, **b),
        c.ConfirmFunding(command_id="confirm", at_ms=T0, funding_ref="esc", amount_minor=100,
                         currency="EUR", **b),
        c.PostCertificate(command_id="post", at_ms=T0, account_id="seller", **b),
        c.Circulate(command_id="s0", at_ms=T0, account_id="a", **b),
        c.Circulate(command_id="s1", at_ms=T0, account_id="b", **b),
        c.Purchase(command_id="p", at_ms=T0, account_id="buyer", seller_id="seller",
                   payment_ref="pay", captured_minor=4, currency="EUR", **b),
        c.Refund(command_id="rf", at_ms=T0, by="seller", account_id="seller", amount_minor=1,
                 refund_ref="rf1", **b),
    ]
    state, *_ = run(base)
    assert sorted(state.pool.payouts.values()) == [0, 1]
    zero = next(a for a, v in state.pool.payouts.items() if v == 0)
    commands = base + [
        c.DeclineCommission(command_id="d", at_ms=T0, account_id="seller", sharer_id=zero,
                            reason="fraud", **b),
        c.ReleaseHold(command_id="rel", at_ms=T0 + 31_000, **b)]
    state, *_ = run(commands)
    assert list(state.pool.payouts.values()) == [1]
    check_money(commands)
