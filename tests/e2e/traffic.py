"""Deterministic command traffic for end-to-end tests, and what the core says it
must produce. The expectation is computed by the domain core from the same command
sequence, independently of the services (which run it after Kafka, restarts and
rebalances)."""

from __future__ import annotations

import random
import time
from collections import Counter
from dataclasses import dataclass, field

import msgspec
from kafka import KafkaAdminClient, KafkaConsumer, TopicPartition
from kafka.errors import KafkaError

from domain import Accepted, CertificateState, Duplicate, Rejected, handle
from domain.netting import AccountLedger, replay
from schemas import commands as c
from schemas.commands import capture_key
from schemas.events import CertificatePurchased, CommissionAcquired, CommissionFlagged
from schemas.payments import Settlement
from schemas.rejections import Rejection
from schemas.topics import TOPICS
from services.allocation.stage import seen_of
from services.audit.read import read_records, read_rows, read_table
from services.captures.stage import Admitted
from services.circulation.intake import sequence
from services.common.auth import header_dict
from services.common.follower import StepResult
from services.common.rejection import Source
from services.common.rows import RUNNER_PREFIX
from services.fraud import rules
from services.fraud.stage import feed_outputs, thresholds_from_env
from tests.e2e.certificates import cert_id, paid, sequencer_entropy, setup

encode = msgspec.json.Encoder().encode
_encode_row = msgspec.msgpack.Encoder().encode
_decode_seen = msgspec.msgpack.Decoder(rules.Seen).decode
_command_decoder = msgspec.json.Decoder(c.Command)


def _decode_command(raw: bytes | None) -> c.Command | None:
    try:
        return _command_decoder.decode(raw or b"")
    except (msgspec.DecodeError, RecursionError):
        return None  # what the test sent as bad input
_decode_accepted = msgspec.json.Decoder(c.AcceptedCommand).decode
_decode_rejection = msgspec.json.Decoder(Rejection).decode
_decode_settlement = msgspec.json.Decoder(Settlement).decode
MEMBERS = {t.name: t.message_types() for t in TOPICS}


# A hold that ends during a test: the withdrawal service's timer releases it (its
# release_hold is on `commands`, so the expectation, computed from that topic, has it).
TRAFFIC_HOLD_S = 2


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
                amount=amount, max_depth=rng.choice([None, None, 3]),
                # some pools defend against fake accounts (issue #24)
                max_acquisitions_per_minute=rng.choice([None] * 8 + [5, 20]),
                min_account_age_s=rng.choice([None] * 8 + [3_600]),
                verified_only=rng.random() < 0.05),
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
            # what the gateway attests: most accounts old and verified, some fresh
            facts = None if rng.random() < 0.1 else c.AccountFacts(
                created_ms=t0_ms - rng.choice([86_400_000] * 9 + [10_000]),
                verified=rng.random() < 0.9)
            commands.append(c.Circulate(command_id=f"{cid}-s{n}", certificate_id=cid, at_ms=at(),
                                        account_id=account, via=via, account=facts))
            chain.append(account)
        if cid in buy_after and len(chain) >= buy_after[cid]:
            bought_at = at()
            commands.append(c.Purchase(command_id=f"{cid}-buy", certificate_id=cid,
                                       at_ms=bought_at, account_id=rng.choice(accounts),
                                       **paid(cid, prices[cid])))
            del buy_after[cid]
            after[cid] = _after_purchase(rng, cid, prices[cid], holds[cid], bought_at, chain)
        if cid in cancel_at and len(chain) >= cancel_at[cid]:
            commands.append(c.CancelCertificate(command_id=f"{cid}-cancel", certificate_id=cid,
                                                at_ms=at(), account_id="seller"))
            del cancel_at[cid]
    return with_payment_results(with_reviews(commands, rng), rng)


def _replay(commands: list[c.Command], react) -> list[c.Command]:
    """Run ``commands`` through the core in order; ``react(command, outcome, position)``
    returns commands to insert, each at a later position (where it lands in ``out``)."""
    out: list[c.Command] = []
    states: dict[str, CertificateState] = {}
    scheduled: list[tuple[int, c.Command]] = []

    def run(command: c.Command) -> None:
        out.append(command)
        cid = command.certificate_id
        state = states.get(cid)
        outcome = handle(state, command, sequencer_entropy(state, cid))
        if isinstance(outcome, Accepted):
            states[cid] = outcome.state
            scheduled.extend(react(command, outcome, len(out)))

    for command in commands:
        run(command)
        due = [x for x in scheduled if x[0] <= len(out)]
        for item in due:
            scheduled.remove(item)
            run(item[1])
    for _, command in scheduled:
        run(command)
    return out


def with_reviews(commands: list[c.Command], rng: random.Random) -> list[c.Command]:
    """Insert what reviewers and the fraud stage say (issue #24), a few commands after
    what they react to: some acquisitions are flagged, some flags approved by a
    reviewer or declined, some held commissions declined by the seller."""

    def react(command: c.Command, outcome: Accepted, at: int) -> list[tuple[int, c.Command]]:
        out: list[tuple[int, c.Command]] = []
        for e in outcome.events:
            base = dict(certificate_id=e.certificate_id, at_ms=command.at_ms)
            later = at + rng.randrange(1, 60)
            if isinstance(e, CommissionAcquired) and rng.random() < 0.08:
                out.append((later, c.FlagCommission(
                    **base, command_id=f"{e.certificate_id}-flag-{e.account_id}",
                    sharer_id=e.account_id, rule="burst", detail="test traffic")))
            elif isinstance(e, CommissionFlagged) and not e.paid and rng.random() < 0.6:
                if rng.random() < 0.5:
                    out.append((later, c.ApproveCommission(
                        **base, command_id=f"{e.certificate_id}-approve-{e.sharer_id}",
                        account_id="rita", sharer_id=e.sharer_id, reviewer=True)))
                else:
                    out.append((later, c.DeclineCommission(
                        **base, command_id=f"{e.certificate_id}-decline-{e.sharer_id}",
                        account_id="rita", sharer_id=e.sharer_id, reviewer=True,
                        reason="fraud", note="flagged and confirmed")))
            elif isinstance(e, CertificatePurchased) and e.held and rng.random() < 0.3:
                sharer = rng.choice(e.held).account_id
                out.append((later, c.DeclineCommission(
                    **base, command_id=f"{e.certificate_id}-decline-{sharer}",
                    account_id="seller", sharer_id=sharer, reason="self_referral")))
        return out

    return _replay(commands, react)


def with_payment_results(commands: list[c.Command], rng: random.Random) -> list[c.Command]:
    """Insert the payment system's results: each settlement the core publishes gets
    one (settled, or now and then failed: then its next attempt gets one too) a few
    commands later, as the payment system would send them; a payout a chargeback asks
    to cancel is often reported cancelled (then its reissue gets a result too)."""

    attempts: dict[str, int] = {}  # each settlement's latest attempt

    def result(command: c.Command, sid: str, outcome: str) -> c.ReportPayment:
        return c.ReportPayment(
            command_id=f"result:{sid}:{attempts[sid]}", certificate_id=command.certificate_id,
            at_ms=command.at_ms, settlement_id=sid, attempt=attempts[sid], result=outcome,
            reason=None if outcome == "settled" else "declined")

    def react(command: c.Command, outcome: Accepted, at: int) -> list[tuple[int, c.Command]]:
        out: list[tuple[int, c.Command]] = []
        for settlement in outcome.settlements:
            sid = settlement.settlement_id
            attempts[sid] = settlement.attempt
            said = "failed" if rng.random() < 0.2 else "settled"
            # most results come soon, some much later (a chargeback may come first)
            later = rng.randrange(1, 40) if rng.random() < 0.7 else rng.randrange(40, 800)
            out.append((at + later, result(command, sid, said)))
            cancels = getattr(settlement, "cancels", None)
            if cancels is not None and rng.random() < 0.7:
                # a chargeback asks to cancel a payout still awaiting its result: the
                # payment system says cancelled if this comes before its other answer
                # (else it is refused as a second, different result)
                out.append((at + 1, result(command, cancels, "cancelled")))
        return out

    return _replay(commands, react)


def _after_purchase(rng: random.Random, cid: str, price: int, hold_s: int,
                    bought_at: int, chain: list[str]) -> list[c.Command]:
    """Refunds (none, one or two; the second may exceed what is left: refused; some of
    the payment system's are chargebacks)."""
    out: list[c.Command] = []
    for i in range(rng.choice([0, 1, 1, 2])):
        by = rng.choice(["seller", "payment_system"])
        amount = rng.choice([price, rng.randrange(1, price + 1)])
        chargeback = "4837" if by == "payment_system" and rng.random() < 0.5 else None
        out.append(c.Refund(command_id=f"{cid}-refund{i}", certificate_id=cid,
                            at_ms=bought_at, by=by, amount_minor=amount,
                            account_id="seller" if by == "seller" else None,
                            refund_ref=f"rf-{cid}-{i}", chargeback_reason=chargeback))
    return out


@dataclass
class Expected:
    topics: dict[str, Counter] = field(default_factory=dict)  # base topic -> Counter(bytes)
    rejections: Counter = field(default_factory=Counter)  # (command id, reason)
    accepted: Counter = field(default_factory=Counter)  # (certificate id, seq, command id)
    states: dict[str, CertificateState] = field(default_factory=dict)
    accepted_kinds: Counter = field(default_factory=Counter)  # command type -> how many
    # (command id, reason) -> the certificate it named (None: none could be read)
    rejected: dict[tuple, str | None] = field(default_factory=dict)
    # allocation's fraud-feed records: Counter((key, value)), certificate id of each
    feed: Counter = field(default_factory=Counter)
    feed_certs: dict[bytes, str] = field(default_factory=dict)


def _ALL(certificate_id: str) -> bool:
    return True


def accepted_of(records: list[bytes], keep=_ALL) -> Counter:
    """What an ``accepted`` topic holds, in the shape of Expected.accepted, for the
    certificates ``keep`` keeps. A record that does not decode is never published by
    the pipeline; it counts (and so differs from any expectation) unless a test that
    writes one itself filters."""
    out: Counter = Counter()
    for raw in records:
        try:
            a = _decode_accepted(raw)
        except msgspec.DecodeError:
            if keep is _ALL:
                out[("<undecodable>", 0, raw[:60].decode("utf-8", "replace"))] += 1
            continue
        if keep(a.command.certificate_id):
            out[(a.command.certificate_id, a.seq, a.command.command_id)] += 1
    return out


def rejections_of(records: list[bytes], keep=_ALL) -> Counter:
    out: Counter = Counter()
    for raw in records:
        r = _decode_rejection(raw)
        if r.certificate_id is None or keep(r.certificate_id):
            out[(r.command_id, r.reason.value)] += 1
    return out


def _new_expected() -> Expected:
    return Expected(topics={"certificate-events": Counter(), "allocations": Counter(),
                            "withdrawals": Counter(), "settlements": Counter()})


def _published(out: Expected, cid: str, seq: int, command: c.Command, events, settlements,
               state: CertificateState) -> None:
    """Record an accepted command: its state, its verdict and what it publishes."""
    out.states[cid] = state
    out.accepted[(cid, seq, command.command_id)] += 1
    out.accepted_kinds[type(command).__name__] += 1
    for item in (*events, *settlements):
        for topic, counter in out.topics.items():
            if isinstance(item, MEMBERS[topic]):
                counter[encode(item)] += 1
        if type(item) is CommissionAcquired:  # what allocation feeds the fraud stage
            result = StepResult(state=state, changed=True, events=list(events))
            for o in feed_outputs("fraud-feed", seen_of(command, result, item)):
                out.feed[(o.key, o.value)] += 1
                out.feed_certs[o.value] = cid


def expect(commands: list[c.Command]) -> Expected:
    out = _new_expected()
    for command in commands:
        cid = command.certificate_id
        state = out.states.get(cid)
        outcome = handle(state, command, sequencer_entropy(state, cid))
        if isinstance(outcome, Rejected):
            out.rejections[(command.command_id, outcome.reason.value)] += 1
        elif isinstance(outcome, Duplicate):
            out.rejections[(command.command_id, "duplicate")] += 1
        elif isinstance(outcome, Accepted):
            _published(out, cid, outcome.state.seq, command, outcome.events,
                       outcome.settlements, outcome.state)
    return out


def seen(pipeline) -> Expected:
    """What the core computes from the commands exactly as the pipeline received them:
    every record of ``commands`` (the test's, the timer's, the forwarded payment
    results), in each partition's order, through the sequencer's own intake with the
    broker's time (services/circulation/intake.py), then the core."""
    settings = pipeline.settings
    records = read_records(settings.bootstrap, pipeline.topics.commands, 60,
                           settings.kafka_auth)
    out = _new_expected()
    keyring = pipeline.keyring
    draw_key = keyring.first("draw")
    for r in sorted(records, key=lambda r: (r.partition, r.offset)):
        source = Source(r.topic, r.partition, r.offset, r.timestamp, r.key,
                        header_dict(r.headers))
        cid = (r.key or b"").decode()
        result = sequence(out.states.get(cid), r.value or b"", source, keyring,
                          settings.max_clock_skew_ms, draw_key)
        if result.rejection is not None:
            key = (result.rejection.command_id, result.rejection.reason.value)
            out.rejections[key] += 1
            out.rejected[key] = result.rejection.certificate_id
        if result.changed and result.accepted is not None:
            _published(out, cid, result.accepted.seq, result.accepted.command, result.events,
                       result.settlements, result.state)
    return out


def settled(pipeline, timeout_s: float = 60) -> Expected:
    """``seen`` once the input is complete: no hold ends within a minute without its
    release (the timer sends it), and ``commands`` stopped growing."""
    deadline = time.monotonic() + timeout_s
    last = -1
    while True:
        want = seen(pipeline)
        size = sum(want.accepted.values()) + sum(want.rejections.values())
        if (not holds_ending(want) and size == last) or time.monotonic() > deadline:
            return want
        last = size
        time.sleep(1)


def holds_ending(want: Expected) -> bool:
    """A hold ends within a minute, and the timer has not released it yet: the input
    is not complete."""
    soon = time.time() * 1000 + 60_000
    return any(s.held_until_ms is not None and s.held_until_ms <= soon
               for s in want.states.values())


def differences(pipeline, want: Expected, keep=_ALL) -> list[str]:
    """How the committed outputs differ from ``want`` (empty: they do not); ``keep``
    limits both to some certificates."""
    t = pipeline.topics
    problems = []

    def compare(name: str, want_c: Counter, got_c: Counter) -> None:
        missing, extra = want_c - got_c, got_c - want_c
        if missing or extra:
            problems.append(f"{name}: {sum(missing.values())} missing, "
                            f"{sum(extra.values())} extra")

    def mine(records: list[bytes]) -> Counter:
        if keep is _ALL:
            return Counter(records)
        return Counter(r for r in records if keep(msgspec.json.decode(r)["certificate_id"]))

    settlements = _settlement_records(pipeline)
    got_topics = {base: [r.value for r in settlements] if base == "settlements"
                  else pipeline.read(t.name(base)) for base in want.topics}
    for base, want_c in want.topics.items():
        compare(base, mine(list(want_c.elements())), mine(got_topics[base]))
    # payments: the core's netting of the settlements, in the order netting read them
    # (one account's settlements are in one partition, in order)
    netted = Counter(encode(s) for s in replay(_in_order(settlements))[1])
    compare("payments", mine(list(netted.elements())), mine(pipeline.read(t.payments)))
    feed = read_records(pipeline.settings.bootstrap, t.fraud_feed, 60,
                        pipeline.settings.kafka_auth)
    compare("fraud-feed", Counter({k: n for k, n in want.feed.items()
                                   if keep(want.feed_certs[k[1]])}),
            Counter((r.key, r.value) for r in feed
                    if keep(_decode_seen(r.value).certificate_id)))
    compare("accepted", Counter({k: n for k, n in want.accepted.items() if keep(k[0])}),
            accepted_of(pipeline.read(t.accepted), keep))
    compare("rejections", Counter({k: n for k, n in want.rejections.items()
                                   if want.rejected.get(k) is None or keep(want.rejected[k])}),
            rejections_of(pipeline.read(t.rejections), keep))
    return problems


def assert_outputs_as_expected(pipeline, timeout_s: float, keep=_ALL) -> Expected:
    """Every output topic holds exactly what the core computes from the commands the
    pipeline received (``seen``), each record once, and every refusal once with its
    reason. Retried until ``timeout_s``: the pipeline may still be applying, and the
    timer may still add commands. Returns the expectation that held."""
    deadline = time.monotonic() + timeout_s
    while True:
        pipeline.assert_running()
        # what the payment system said reaches commands through the captures stage: an
        # expectation taken before it passed everything on would hold for a moment and
        # then be stale (seen once on a loaded CI, in test_faults)
        behind = pipeline.via_captures and not captures_caught_up(pipeline)
        want = seen(pipeline)
        problems = differences(pipeline, want, keep)
        if behind:
            problems.append("the captures stage has not passed everything on yet")
        if holds_ending(want):
            problems.append("a hold ends soon: its release is still to come")
        if not problems:
            return want
        if time.monotonic() > deadline:
            raise AssertionError("; ".join(problems) + f" (logs in {pipeline.logs})")
        time.sleep(1)


def captures_caught_up(pipeline) -> bool:
    """The captures stage's group has committed the end of ``payment-results``: every
    record there was decided and, if admitted, forwarded to commands (one transaction)."""
    topic = pipeline.topics.payment_results
    admin = KafkaAdminClient(bootstrap_servers=pipeline.settings.bootstrap)
    consumer = KafkaConsumer(bootstrap_servers=pipeline.settings.bootstrap,
                             isolation_level="read_committed", group_id=None)
    try:
        group = f"{pipeline.settings.group_prefix}-captures"
        try:
            committed = admin.list_group_offsets({group: None}).get(group, {})
        except KafkaError:  # the coordinator moving (NOT_COORDINATOR): ask again later
            return False
        tps = [TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic)
                                                        or ())]
        ends = consumer.end_offsets(tps)
    finally:
        consumer.close()
        admin.close()
    return all(ends[tp] == 0 or (tp in committed and committed[tp].offset >= ends[tp])
               for tp in tps)


def committed_table(pipeline, stage: str) -> dict[str, bytes]:
    """A stage's committed table from its changelog, each row as msgpack bytes."""
    topic = f"{pipeline.topics.prefix}{pipeline.settings.group_prefix}-{stage}-state-changelog"
    if stage in ("netting", "captures", "fraud"):  # rows kept whole (rows.WholeRowStore)
        return {k.decode(): v for k, v in read_table(pipeline.settings.bootstrap, topic, 120).items()
                if not k.startswith(RUNNER_PREFIX)}
    return {k: _encode_row(v) for k, v in read_rows(pipeline.settings.bootstrap, topic, 120).items()}


def expected_table(pipeline, expected: Expected, stage: str) -> dict[str, bytes]:
    """What the core says the stage's table holds: every certificate's state; for
    netting, the ledgers of the settlements on the topic, netted in their order (an
    account never clawed back has no row); for captures, one row per payment
    reference of the purchases it forwarded to commands (none when the test put the
    payment system's word straight on commands)."""
    if stage == "fraud":
        return _fraud_rows(pipeline)
    if stage == "captures":
        if not pipeline.via_captures:
            return {}
        rows = {}
        for r in sorted(read_records(pipeline.settings.bootstrap, pipeline.topics.commands, 60,
                                     pipeline.settings.kafka_auth),
                        key=lambda r: (r.partition, r.offset)):
            command = _decode_command(r.value)
            if isinstance(command, c.Purchase):
                key = capture_key(command.seller_id, command.payment_ref).decode()
                rows.setdefault(key, _encode_row(Admitted(command.command_id,
                                                          command.certificate_id)))
        return rows
    if stage != "netting":
        return {cid: _encode_row(state) for cid, state in expected.states.items()}
    ledgers, _ = replay(_in_order(_settlement_records(pipeline)))
    return {account: _encode_row(ledger) for account, ledger in ledgers.items()
            if ledger != AccountLedger(account_id=account)}


def _fraud_rows(pipeline) -> dict[str, bytes]:
    """The fraud stage's rows: its rules applied to the committed fraud-feed, each
    partition in its order (the settings the pipeline's environment gives it)."""
    th = thresholds_from_env(pipeline.env)
    rows: dict[bytes, object] = {}
    records = read_records(pipeline.settings.bootstrap, pipeline.topics.fraud_feed, 60,
                           pipeline.settings.kafka_auth)
    for r in sorted(records, key=lambda r: (r.partition, r.offset)):
        row, changed, _ = rules.apply(rows.get(r.key), r.key, _decode_seen(r.value), th)
        if changed:
            rows[r.key] = row
    return {k.decode(): _encode_row(v) for k, v in rows.items()}


def _settlement_records(pipeline) -> list:
    return read_records(pipeline.settings.bootstrap, pipeline.topics.settlements, 60,
                        pipeline.settings.kafka_auth)


def _in_order(records: list) -> list[Settlement]:
    """The settlements topic as netting reads it: each partition in its order."""
    return [_decode_settlement(r.value) for r in sorted(records,
                                                        key=lambda r: (r.partition, r.offset))]
