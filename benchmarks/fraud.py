"""The generator's fraud mode and `make fraud-report`: honest share traffic mixed with
seeded fraud, labelled, and what the fraud stage's rules make of it.

    python -m benchmarks.fraud [--commands 100000] [--seed 1]

Honest traffic: 30,000 accounts, most created months or years ago and 3 % in the last
30 days, picked with a skewed activity (a few share a lot), sharing certificates of
50 sellers (funded by 20 funders) in cascades (``via``), with purchases. Seeded
fraud, each account labelled with its scheme:

* ``sybil_chain``: a fraudulent seller's burst of 6-14 accounts created within a
  minute, circulating its certificates one via the other;
* ``funder_burst``: a funder's burst of 6-12 fresh accounts acquiring only on the
  pools it funds (on honest sellers' certificates);
* ``ring``: 4-6 long-standing accounts that share the same seller's certificates
  together, on 4-6 of them;
* ``velocity``: one account acquiring on 12-20 certificates within half a minute.

The report runs the domain core on the commands (time: 2,000 commands/s), gives each
acquisition to the rules as the allocation stage would (the same ``Seen`` records and
keys, through their codec), and counts per rule the honest acquisitions flagged (false
positives) and per scheme the seeded acquisitions no rule flagged (false negatives),
and the CPU the fraud path takes per command (allocation's feed records, the stage's
decoding, rules and signed flags, and the stage's changelog records: each row it
touched, encoded once per round of ``ROUND`` commands, as the runner writes them;
process time, this process alone; the Kafka clients' work is not in it).
"""

from __future__ import annotations

import argparse
import bisect
import hashlib
import itertools
import random
import sys
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field

import msgspec

from domain import Accepted, handle
from domain.offer import certificate_id_for
from schemas import commands as c
from schemas.events import CommissionAcquired
from services.allocation.stage import seen_of
from services.common.auth import Keyring
from services.common.follower import StepResult
from services.fraud import rules
from services.fraud.rules import Thresholds
from services.fraud.stage import FraudStage, feed_outputs

DAY_MS = 86_400_000
RATE = 2_000  # commands per second of the simulated clock
ROUND = 300  # commands per round: the stage writes each row it touched once per round
SCHEMES = ("sybil_chain", "funder_burst", "ring", "velocity")


@dataclass
class FraudTraffic:
    """The commands (at_ms already on the simulated clock) and the labels."""

    commands: list[c.Command] = field(default_factory=list)
    labels: dict[str, str] = field(default_factory=dict)  # account -> scheme
    start_ms: int = 0


def fraud_traffic(commands: int = 100_000, seed: int = 1, start_ms: int = 1_800_000_000_000,
                  fraud_share: float = 0.06) -> FraudTraffic:
    rng = random.Random(seed)
    out = FraudTraffic(start_ms=start_ms)
    clock = itertools.count()

    def at() -> int:
        return start_ms + next(clock) * 1000 // RATE

    def emit(command: c.Command) -> None:
        out.commands.append(msgspec.structs.replace(command, at_ms=at()))

    honest = 30_000
    created = [start_ms - rng.randrange(31 * DAY_MS, 730 * DAY_MS) if rng.random() > 0.03
               else start_ms - rng.randrange(0, 30 * DAY_MS) for _ in range(honest)]
    cum = list(itertools.accumulate(1.0 / (i + 1) ** 0.6 for i in range(honest)))

    def facts(created_ms: int) -> c.AccountFacts:
        return c.AccountFacts(created_ms=created_ms, verified=rng.random() < 0.5)

    issued = itertools.count()

    def issue(seller: str, funder: str) -> str:
        n = next(issued)
        cid = certificate_id_for(f"{seller}~fraud-{seed}-{n}", 1)
        budget = rng.randrange(200_000, 1_000_000)
        emit(c.IssueCertificate(command_id=f"{cid}-i", certificate_id=cid, at_ms=0,
                                account_id=seller, offer_id=f"{seller}~fraud-{seed}-{n}",
                                serial=1, copies=1, name="Generated", price_minor=50_000,
                                currency="EUR", funder_id=funder))
        emit(c.AttachPool(command_id=f"{cid}-a", certificate_id=cid, at_ms=0,
                          account_id=funder, funding_ref=f"esc-{cid}", budget_minor=budget,
                          attached_minor=budget // 2, currency="EUR",
                          acquisition=c.AcquisitionPolicy(amount=c.FixedAmount(amount_minor=50)),
                          hold_s=86_400))
        emit(c.ConfirmFunding(command_id=f"{cid}-e", certificate_id=cid, at_ms=0,
                              funding_ref=f"esc-{cid}", amount_minor=budget, currency="EUR"))
        emit(c.PostCertificate(command_id=f"{cid}-p", certificate_id=cid, at_ms=0,
                               account_id=seller))
        return cid

    def share(cid: str, account: str, created_ms: int, via: str | None) -> None:
        emit(c.Circulate(command_id=f"{cid}-{account}", certificate_id=cid, at_ms=0,
                         account_id=account, via=via, account=facts(created_ms)))

    slots = [issue(f"seller-{i % 50}", f"funder-{rng.randrange(20)}") for i in range(300)]
    chains: dict[str, list[str]] = defaultdict(list)
    weights = list(itertools.accumulate(1.0 / (i + 1) ** 0.8 for i in range(len(slots))))
    n_fraud = 0
    last: dict[int, int] = {}
    while len(out.commands) < commands:
        if rng.random() < fraud_share / 10:
            n_fraud += 1
            _seed_fraud(rng, n_fraud, out, issue, share, slots, start_ms, at)
            continue
        slot = bisect.bisect(weights, rng.random() * weights[-1])
        cid = slots[slot]
        if rng.random() < 0.002:  # bought: a new certificate takes the slot
            emit(c.Purchase(command_id=f"{cid}-buy", certificate_id=cid, at_ms=0,
                            account_id=f"buyer-{rng.randrange(10_000)}",
                            seller_id=cid.split("~")[0], payment_ref=f"pay-{cid}",
                            captured_minor=50_000, currency="EUR"))
            slots[slot] = issue(f"seller-{rng.randrange(50)}", f"funder-{rng.randrange(20)}")
            continue
        # people, not bots: an honest account shares at most once in 20 s (the most
        # active of them ~3 a minute); one that shared less than 20 s ago stays away
        now = start_ms + len(out.commands) * 1000 // RATE
        for attempt in range(40):
            who = (bisect.bisect(cum, rng.random() * cum[-1]) if attempt < 10
                   else rng.randrange(honest))  # the busy head: someone else
            if now - last.get(who, -10**15) >= 20_000:
                break
        last[who] = now
        chain = chains[cid]
        via = rng.choice(chain[-20:]) if chain and rng.random() < 0.7 else None
        share(cid, f"u{who}", created[who], via)
        chain.append(f"u{who}")
    return out


def _seed_fraud(rng, n, out, issue, share, slots, start_ms, at) -> None:
    scheme = SCHEMES[n % len(SCHEMES)]
    if scheme == "sybil_chain":
        seller = f"evil-seller-{n}"
        certs = [issue(seller, seller) for _ in range(rng.randint(1, 3))]
        born = at() - rng.randrange(60_000, 3_600_000)
        accounts = [f"sy{n}-{i}" for i in range(rng.randint(6, 14))]
        for cid in certs:
            via = None
            for i, a in enumerate(accounts):
                share(cid, a, born + i * rng.randrange(1_000, 5_000), via)
                out.labels[a] = scheme
                via = a
    elif scheme == "funder_burst":
        funder = f"evil-funder-{n}"
        certs = [issue(f"seller-{rng.randrange(50)}", funder) for _ in range(rng.randint(2, 4))]
        born = at() - rng.randrange(60_000, 86_400_000)
        accounts = [f"fb{n}-{i}" for i in range(rng.randint(6, 12))]
        for i, a in enumerate(accounts):
            out.labels[a] = scheme
            for cid in rng.sample(certs, rng.randint(1, len(certs))):
                share(cid, a, born + i * rng.randrange(500, 8_000), None)
    elif scheme == "ring":
        seller = f"seller-{rng.randrange(50)}"
        accounts = [f"rg{n}-{i}" for i in range(rng.randint(4, 6))]
        ages = [start_ms - rng.randrange(60 * DAY_MS, 700 * DAY_MS) for _ in accounts]
        for _ in range(rng.randint(4, 6)):
            cid = issue(seller, f"funder-{rng.randrange(20)}")
            via = None
            for a, created_ms in zip(accounts, ages, strict=True):
                share(cid, a, created_ms, via)
                out.labels[a] = scheme
                via = a
    else:
        a = f"vb{n}"
        out.labels[a] = scheme
        created_ms = start_ms - rng.randrange(40 * DAY_MS, 400 * DAY_MS)
        for cid in rng.sample(slots, rng.randint(12, 20)):
            share(cid, a, created_ms, None)


def report(commands: int = 100_000, seed: int = 1, th: Thresholds | None = None) -> dict:
    th = th or Thresholds()
    traffic = fraud_traffic(commands, seed)
    states: dict = {}
    acquisitions: dict[tuple[str, str], str] = {}  # (cert, account) -> scheme or "honest"
    keyring = Keyring.from_env()
    key = keyring.signing_key("fraud")
    encode = msgspec.json.Encoder().encode
    decode_seen = msgspec.msgpack.Decoder(rules.Seen).decode
    encode_row = msgspec.msgpack.Encoder().encode
    rows: dict[bytes, object] = {}
    touched: set[bytes] = set()
    changelog_bytes = 0
    flagged: dict[tuple[str, str], set[str]] = defaultdict(set)
    # 1. the core, and allocation's Seen per acquisition (seen_of timed on its own:
    # a clock read per acquisition costs more than seen_of if it is process_time)
    feed: list[tuple[int, int, rules.Seen]] = []  # (command index, at_ms, seen)
    seen_of_s = 0.0
    clock = time.perf_counter
    core_started = time.process_time()
    for n, command in enumerate(traffic.commands):
        cid = command.certificate_id
        outcome = handle(states.get(cid), command,
                         hashlib.sha256(command.command_id.encode()).digest())
        if not isinstance(outcome, Accepted):
            continue
        states[cid] = outcome.state
        acquired = [e for e in outcome.events if type(e) is CommissionAcquired]
        if not acquired:
            continue
        result = StepResult(state=outcome.state, changed=True, events=outcome.events)
        for event in acquired:
            acquisitions[(cid, event.account_id)] = traffic.labels.get(event.account_id,
                                                                       "honest")
            began = clock()
            seen = seen_of(command, result, event)
            seen_of_s += clock() - began
            feed.append((n, command.at_ms, seen))
    core_cpu = time.process_time() - core_started - seen_of_s
    # 2. what allocation adds (the feed records) and the fraud stage does with them, in
    # rounds: each row the round touched is written to the changelog once
    fraud_started = time.process_time()
    round_end = ROUND
    for n, at_ms, seen in feed:
        if n >= round_end:
            for row_key in touched:
                changelog_bytes += len(encode_row(rows[row_key]))
            touched.clear()
            round_end = (n // ROUND + 1) * ROUND
        for out in feed_outputs("fraud-feed", seen):
            row, changed, flags = rules.apply(rows.get(out.key), out.key,
                                              decode_seen(out.value), th)
            if changed:
                rows[out.key] = row
                touched.add(out.key)
            for f in flags:
                body = encode(FraudStage.flag_command(f, at_ms))
                keyring.sign(body, key)
                flagged[(f.certificate_id, f.sharer_id)].add(f.rule)
    for row_key in touched:
        changelog_bytes += len(encode_row(rows[row_key]))
    fraud_cpu = time.process_time() - fraud_started + seen_of_s
    kinds = Counter(acquisitions.values())
    missed = Counter(k for a, k in acquisitions.items() if k != "honest" and a not in flagged)
    honest_by_rule = Counter(r for a, k in acquisitions.items() if k == "honest"
                             for r in flagged.get(a, ()))
    fraud_by_rule = Counter(r for a, k in acquisitions.items() if k != "honest"
                            for r in flagged.get(a, ()))
    honest_flagged = sum(1 for a, k in acquisitions.items() if k == "honest" and a in flagged)
    fraud_total = sum(v for k, v in kinds.items() if k != "honest")
    return {
        "commands": len(traffic.commands), "acquisitions": sum(kinds.values()),
        "honest": kinds["honest"], "fraud": fraud_total,
        "per_scheme": {s: {"acquisitions": kinds[s], "missed": missed[s]} for s in SCHEMES},
        "per_rule": {r: {"fraud_flagged": fraud_by_rule[r], "honest_flagged": honest_by_rule[r]}
                     for r in rules.RULES},
        "fraud_flagged_pct": 100 * (fraud_total - sum(missed.values())) / max(fraud_total, 1),
        "honest_flagged_pct": 100 * honest_flagged / max(kinds["honest"], 1),
        "fraud_us_per_command": 1e6 * fraud_cpu / len(traffic.commands),
        "core_us_per_command": 1e6 * core_cpu / len(traffic.commands),
        "changelog_bytes_per_command": changelog_bytes / len(traffic.commands),
        "rows": len(rows), "thresholds": th.__dict__,
    }


def markdown(r: dict) -> str:
    lines = [f"Commands: {r['commands']:,}; acquisitions: {r['acquisitions']:,} "
             f"({r['honest']:,} honest, {r['fraud']:,} seeded fraud). Thresholds: "
             + ", ".join(f"`{k}={v}`" for k, v in r["thresholds"].items()) + ".", "",
             "| rule | seeded fraud acquisitions it flagged | honest acquisitions it flagged "
             "(false positives) |", "| --- | ---: | ---: |"]
    for rule, v in r["per_rule"].items():
        pct = 100 * v["honest_flagged"] / max(r["honest"], 1)
        lines.append(f"| {rule} | {v['fraud_flagged']:,} | {v['honest_flagged']:,} ({pct:.2f} %) |")
    lines += ["", "| seeded scheme | acquisitions | missed by every rule (false negatives) |",
              "| --- | ---: | ---: |"]
    for scheme, v in r["per_scheme"].items():
        lines.append(f"| {scheme} | {v['acquisitions']:,} | {v['missed']:,} |")
    lines += ["", f"Seeded fraud acquisitions flagged: **{r['fraud_flagged_pct']:.1f} %** "
              f"(target >= 95 %); honest acquisitions flagged: **{r['honest_flagged_pct']:.2f} %** "
              f"(target <= 1 %).", "",
              f"CPU of the fraud path: **{r['fraud_us_per_command']:.2f} us per command** "
              f"(allocation's feed records, the stage's decoding, rules, signed flags and "
              f"its changelog records, each row it touched once per round of {ROUND} commands: "
              f"{r['changelog_bytes_per_command']:,.0f} bytes per command; "
              f"the domain core on the same commands: {r['core_us_per_command']:.2f} us per "
              f"command, one copy of the state)."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.fraud")
    parser.add_argument("--commands", type=int, default=100_000)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args(argv)
    print(markdown(report(args.commands, args.seed)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
