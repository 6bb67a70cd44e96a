"""Deterministic command traffic for end-to-end tests, and what the core says it
must produce. The expectation is computed by the domain core from the same command
sequence, independently of the services (which run it after Kafka, restarts and
rebalances)."""

from __future__ import annotations

import random
from collections import Counter
from dataclasses import dataclass, field

import msgspec

from domain import Accepted, CertificateState, Duplicate, Rejected, handle
from domain.netting import AccountLedger, replay
from schemas import commands as c
from schemas.commands import CheckExpiry, ReleaseHold
from schemas.payments import Settlement
from schemas.rejections import Rejection
from schemas.topics import TOPICS
from services.audit.read import read_records, read_rows, read_table
from services.common.rows import RUNNER_PREFIX
from tests.e2e.certificates import cert_id, sequencer_entropy, setup

encode = msgspec.json.Encoder().encode
_encode_row = msgspec.msgpack.Encoder().encode
_decode_accepted = msgspec.json.Decoder(c.AcceptedCommand).decode
_decode_rejection = msgspec.json.Decoder(Rejection).decode
_decode_settlement = msgspec.json.Decoder(Settlement).decode
MEMBERS = {t.name: t.message_types() for t in TOPICS}


# A hold the withdrawal timer does not end during a test (it would send its own
# release_hold, at a moment no expectation can know): the traffic ends it itself,
# with a release stamped at the hold's end, within the sequencer's 10 minutes of
# accepted clock skew.
TRAFFIC_HOLD_S = 300


def build(n_certs: int, n_commands: int, seed: int, t0_ms: int) -> list[c.Command]:
    """Issue, attach, confirm and post ``n_certs`` certificates, then circulations,
    claims and resent commands up to ``n_commands``; some certificates are bought
    (with no hold, a 5-minute hold the traffic releases, or the default 14 days),
    some bought ones refunded (within the hold or after it, in part or whole, by the
    seller or the payment system) and some unsold ones cancelled."""
    rng = random.Random(seed)
    accounts = [f"acct-{i}" for i in range(400)]
    certs = [cert_id(f"load-{seed}-{i:04d}") for i in range(n_certs)]
    commands: list[c.Command] = []
    t = t0_ms

    def at() -> int:
        nonlocal t
        t += 1
        return t

    holds: dict[str, int] = {}
    prices: dict[str, int] = {}
    for cid in certs:
        price = prices[cid] = rng.randrange(1_000, 500_000)
        hold = holds[cid] = rng.choice([0, 0, TRAFFIC_HOLD_S, c.DEFAULT_HOLD_S])
        budget = rng.randrange(1_000, 200_000)
        amount = rng.choice([
            c.FixedAmount(amount_minor=rng.randrange(1, 5_000)),
            c.PercentOfAttached(basis_points=rng.randrange(100, 10_000)),
            c.RandomAmount(min_minor=1, max_minor=rng.randrange(1, 3_000)),
            c.AllAttached(),
        ])
        replenish = rng.choice([c.ReplenishMatch(), c.ReplenishMatch(from_second_circulation=True),
                                c.ReplenishFixed(amount_minor=rng.randrange(1, 2_000)),
                                c.ReplenishNone()])
        thresholds = c.Thresholds(
            max_circulations=rng.choice([None, rng.randrange(5, 80)]),
            max_cumulative_minor=rng.choice([None, rng.randrange(1_000, 100_000)]),
            on_withdraw=rng.choice(["void", "freeze"]))
        commands += setup(
            cid, at(), price_minor=price, budget_minor=budget, name="Load item",
            attached_minor=rng.randrange(1, budget + 1),
            acquisition=c.AcquisitionPolicy(
                beneficiary=rng.choice(["circulator", "circulator", "upstream"]),
                trigger=rng.choice(["auto", "auto", "auto", "claim"]),
                amount=amount, max_depth=rng.choice([None, None, 3])),
            replenish=replenish, thresholds=thresholds, hold_s=hold)
    chains: dict[str, list[str]] = {cid: [] for cid in certs}
    buy_after = {cid: rng.randrange(10, 120) for cid in certs if rng.random() < 0.6}
    weights = [1 / (i + 1) ** 0.8 for i in range(n_certs)]  # Zipf-like popularity
    n = 0
    after: dict[str, list[c.Command]] = {}  # what follows a purchase, in order
    cancel_at = {cid: rng.randrange(20, 150) for cid in certs
                 if cid not in buy_after and rng.random() < 0.3}
    while len(commands) < n_commands:
        n += 1
        cid = rng.choices(certs, weights)[0]
        if after.get(cid) and rng.random() < 0.3:
            commands.append(after[cid].pop(0))
            continue
        # now and then the seller or the funder circulates: it must count for nothing
        account = rng.choice(accounts) if rng.random() > 0.03 else rng.choice(["seller",
                                                                               "funder"])
        chain = chains[cid]
        roll = rng.random()
        if roll < 0.02 and commands:
            commands.append(rng.choice(commands[-200:]))  # a resent command: no second effect
        elif roll < 0.06:
            commands.append(c.Claim(command_id=f"{cid}-c{n}", certificate_id=cid, at_ms=at(),
                                    account_id=rng.choice(chain) if chain else account))
        else:
            via = rng.choice(chain) if chain and rng.random() < 0.7 else None
            commands.append(c.Circulate(command_id=f"{cid}-s{n}", certificate_id=cid, at_ms=at(),
                                        account_id=account, via=via))
            chain.append(account)
        if cid in buy_after and len(chain) >= buy_after[cid]:
            bought_at = at()
            commands.append(c.Purchase(command_id=f"{cid}-buy", certificate_id=cid,
                                       at_ms=bought_at, account_id=rng.choice(accounts),
                                       payment_ref=f"pay-{cid}"))
            del buy_after[cid]
            after[cid] = _after_purchase(rng, cid, prices[cid], holds[cid], bought_at)
        if cid in cancel_at and len(chain) >= cancel_at[cid]:
            commands.append(c.CancelCertificate(command_id=f"{cid}-cancel", certificate_id=cid,
                                                at_ms=at(), account_id="seller"))
            del cancel_at[cid]
    return with_payment_results(commands, rng)


def with_payment_results(commands: list[c.Command], rng: random.Random) -> list[c.Command]:
    """Insert the payment system's results: each settlement the core publishes gets
    one (settled, or now and then failed: then its next attempt gets one too) a few
    commands later, as the payment system would send them."""
    out: list[c.Command] = []
    states: dict[str, CertificateState] = {}
    scheduled: list[tuple[int, c.Command]] = []

    def run(command: c.Command) -> None:
        out.append(command)
        cid = command.certificate_id
        state = states.get(cid)
        outcome = handle(state, command, sequencer_entropy(state, cid))
        if not isinstance(outcome, Accepted):
            return
        states[cid] = outcome.state
        for settlement in outcome.settlements:
            result = "failed" if rng.random() < 0.2 else "settled"
            report = c.ReportPayment(
                command_id=f"result:{settlement.settlement_id}:{settlement.attempt}",
                certificate_id=cid, at_ms=command.at_ms, settlement_id=settlement.settlement_id,
                attempt=settlement.attempt, result=result,
                reason=None if result == "settled" else "declined")
            scheduled.append((len(out) + rng.randrange(1, 40), report))

    for command in commands:
        run(command)
        due = [x for x in scheduled if x[0] <= len(out)]
        for item in due:
            scheduled.remove(item)
            run(item[1])
    for _, report in scheduled:
        run(report)
    return out


def _after_purchase(rng: random.Random, cid: str, price: int, hold_s: int,
                    bought_at: int) -> list[c.Command]:
    """Refunds (none, one or two; the second may exceed what is left: refused) and,
    for the traffic's own hold, its release, somewhere among them."""
    out: list[c.Command] = []
    for i in range(rng.choice([0, 1, 1, 2])):
        by = rng.choice(["seller", "payment_system"])
        amount = rng.choice([price, rng.randrange(1, price + 1)])
        out.append(c.Refund(command_id=f"{cid}-refund{i}", certificate_id=cid,
                            at_ms=bought_at, by=by, amount_minor=amount,
                            account_id="seller" if by == "seller" else None,
                            refund_ref=f"rf-{cid}-{i}"))
    if hold_s == TRAFFIC_HOLD_S:
        end = bought_at + hold_s * 1000
        out.insert(rng.randrange(len(out) + 1),
                   ReleaseHold(command_id=f"release:{end}", certificate_id=cid, at_ms=end))
    return out


@dataclass
class Expected:
    topics: dict[str, Counter] = field(default_factory=dict)  # base topic -> Counter(bytes)
    rejections: Counter = field(default_factory=Counter)  # (command id, reason)
    accepted: Counter = field(default_factory=Counter)  # (certificate id, seq, command id)
    states: dict[str, CertificateState] = field(default_factory=dict)


def accepted_of(records: list[bytes]) -> Counter:
    """What an ``accepted`` topic holds, in the shape of Expected.accepted."""
    out: Counter = Counter()
    for raw in records:
        a = _decode_accepted(raw)
        out[(a.command.certificate_id, a.seq, a.command.command_id)] += 1
    return out


def rejections_of(records: list[bytes]) -> Counter:
    out: Counter = Counter()
    for raw in records:
        r = _decode_rejection(raw)
        out[(r.command_id, r.reason.value)] += 1
    return out


def expect(commands: list[c.Command]) -> Expected:
    out = Expected(topics={"certificate-events": Counter(), "allocations": Counter(),
                           "withdrawals": Counter(), "settlements": Counter()})
    for command in commands:
        cid = command.certificate_id
        state = out.states.get(cid)
        outcome = handle(state, command, sequencer_entropy(state, cid))
        if isinstance(outcome, Rejected):
            out.rejections[(command.command_id, outcome.reason.value)] += 1
        elif isinstance(outcome, Duplicate):
            if not isinstance(command, CheckExpiry):
                out.rejections[(command.command_id, "duplicate")] += 1
        elif isinstance(outcome, Accepted):
            out.states[cid] = outcome.state
            out.accepted[(cid, outcome.state.seq, command.command_id)] += 1
            for item in (*outcome.events, *outcome.settlements):
                for topic, counter in out.topics.items():
                    if isinstance(item, MEMBERS[topic]):
                        counter[encode(item)] += 1
    return out


def assert_outputs_as_expected(pipeline, expected: Expected, timeout_s: float) -> None:
    """Every output topic holds exactly the core's records, each once, and every
    refusal appears once with its reason."""
    t = pipeline.topics
    for base, want in expected.topics.items():
        got = Counter(pipeline.wait_for(t.name(base), sum(want.values()), timeout_s=timeout_s))
        missing, extra = want - got, got - want
        assert not missing and not extra, (
            f"{base}: {sum(missing.values())} missing, {sum(extra.values())} extra")
    # payments: the core's netting of the settlements, in the order netting read them
    # (one account's settlements are in one partition, in order)
    want = Counter(encode(s) for s in replay(_settlements_in_order(pipeline))[1])
    got = Counter(pipeline.wait_for(t.payments, sum(want.values()), timeout_s=timeout_s))
    missing, extra = want - got, got - want
    assert not missing and not extra, (
        f"payments: {sum(missing.values())} missing, {sum(extra.values())} extra")
    got_rejections = rejections_of(
        pipeline.wait_for(t.rejections, sum(expected.rejections.values())))
    assert got_rejections == expected.rejections


def committed_table(pipeline, stage: str) -> dict[str, bytes]:
    """A stage's committed table from its changelog, each row as msgpack bytes."""
    topic = f"{pipeline.topics.prefix}{pipeline.settings.group_prefix}-{stage}-state-changelog"
    if stage == "netting":  # an account's ledger per row, kept whole (rows.WholeRowStore)
        return {k.decode(): v for k, v in read_table(pipeline.settings.bootstrap, topic, 120).items()
                if not k.startswith(RUNNER_PREFIX)}
    return {k: _encode_row(v) for k, v in read_rows(pipeline.settings.bootstrap, topic, 120).items()}


def expected_table(pipeline, expected: Expected, stage: str) -> dict[str, bytes]:
    """What the core says the stage's table holds: every certificate's state; for
    netting, the ledgers of the settlements on the topic, netted in their order (an
    account never clawed back has no row)."""
    if stage != "netting":
        return {cid: _encode_row(state) for cid, state in expected.states.items()}
    ledgers, _ = replay(_settlements_in_order(pipeline))
    return {account: _encode_row(ledger) for account, ledger in ledgers.items()
            if ledger != AccountLedger(account_id=account)}


def _settlements_in_order(pipeline) -> list[Settlement]:
    """The settlements topic as netting reads it: each partition in its order."""
    records = read_records(pipeline.settings.bootstrap, pipeline.topics.settlements, 60,
                           pipeline.settings.kafka_auth)
    return [_decode_settlement(r.value) for r in sorted(records,
                                                        key=lambda r: (r.partition, r.offset))]
