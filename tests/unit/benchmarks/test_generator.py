"""The share-traffic generator (benchmarks/generator.py), without Kafka: what it
generates, checked against its spec and against the domain core."""

from __future__ import annotations

from collections import Counter

import msgspec
import pytest

from benchmarks.generator import TrafficSpec, generate
from domain import Accepted, handle
from domain.draw import entropy_at
from schemas import commands as c

pytestmark = pytest.mark.unit

encode = msgspec.json.Encoder().encode


def fingerprint(items) -> list[bytes]:
    return [encode(i.command) if i.command is not None else i.raw for i in items]


def accepted_share_by_tenth(items) -> list[float]:
    states: dict = {}
    tenth = len(items) // 10
    accepted = [0] * 10
    for i, item in enumerate(items[: tenth * 10]):
        if item.command is None or item.forged:
            continue
        command = msgspec.structs.replace(item.command, at_ms=1_700_000_000_000 + i)
        state = states.get(command.certificate_id)
        outcome = handle(state, command, entropy_at(b"draw", state, command.certificate_id))
        if isinstance(outcome, Accepted):
            states[command.certificate_id] = outcome.state
            accepted[i // tenth] += 1
    return [a / tenth for a in accepted]


def test_same_seed_same_traffic_other_seed_other_traffic():
    spec = TrafficSpec(commands=3_000, seed=8, bad_rate=0.01, duplicate_rate=0.01,
                       forged_rate=0.01)
    assert fingerprint(generate(spec)) == fingerprint(generate(spec))
    assert fingerprint(generate(spec)) != fingerprint(
        generate(TrafficSpec(commands=3_000, seed=9, bad_rate=0.01, duplicate_rate=0.01,
                             forged_rate=0.01)))


def test_a_long_run_stays_the_same_mix():
    """Bought and exhausted certificates are replaced: the share of commands the core
    accepts is the same in the last tenth of a long run as in the first."""
    items = generate(TrafficSpec(commands=60_000, seed=5, purchase_rate=0.01))
    shares = accepted_share_by_tenth(items)
    assert min(shares) > 0.97, shares
    kinds = Counter(type(i.command).__name__ for i in items)
    assert kinds["Purchase"] > 300  # so certificates really were bought and replaced
    assert kinds["IssueCertificate"] == 200 + kinds["Purchase"] + sum(
        1 for cid, n in Counter(i.command.certificate_id for i in items
                                if isinstance(i.command, c.Circulate)).items() if n >= 5_000)


def test_popularity_is_skewed_and_the_hot_mode_concentrates():
    items = generate(TrafficSpec(commands=20_000, seed=2))
    per_cert = Counter(i.command.certificate_id for i in items
                       if isinstance(i.command, c.Circulate))
    top = per_cert.most_common()
    assert top[0][1] > 10 * top[len(top) // 2][1]  # Zipf: the head dwarfs the median
    hot = generate(TrafficSpec(certificates=5, commands=10_000, seed=2, hot=True,
                               hot_share=0.9, purchase_rate=0.0))
    shares = Counter(i.command.certificate_id for i in hot
                     if isinstance(i.command, c.Circulate))
    assert shares.most_common(1)[0][1] / sum(shares.values()) > 0.85


def test_cascades_share_from_the_sharers_feed():
    items = generate(TrafficSpec(commands=5_000, seed=3))
    holders: dict[str, set[str]] = {}
    with_via = 0
    for item in items:
        cmd = item.command
        if isinstance(cmd, c.Circulate):
            if cmd.via is not None:
                with_via += 1
                assert cmd.via in holders.get(cmd.certificate_id, set())
            holders.setdefault(cmd.certificate_id, set()).add(cmd.account_id)
    assert with_via > 2_000  # most shares continue a cascade


def test_bad_duplicate_and_forged_commands_at_their_rates():
    n = 20_000
    items = generate(TrafficSpec(commands=n, seed=4, bad_rate=0.02, duplicate_rate=0.03,
                                 forged_rate=0.01))
    bad = sum(1 for i in items if i.command is None)
    forged = sum(1 for i in items if i.forged)
    ids = Counter(i.command.command_id for i in items if i.command is not None)
    duplicates = sum(k - 1 for k in ids.values())
    for got, rate in ((bad, 0.02), (duplicates, 0.03), (forged, 0.01)):
        assert abs(got / n - rate) < rate * 0.25, (got, rate)
