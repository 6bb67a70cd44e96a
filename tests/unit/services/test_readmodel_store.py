"""The read model's batch program (services/readmodel/store.py), run by a Python
reading of its Lua script on a dict: a batch writes what applying each command's
projection one by one writes, a batch met again changes nothing, positions only
rise, and a Redis that holds less than the worker assumed raises Behind."""

from __future__ import annotations

import asyncio
import time

import msgspec
import pytest

from domain import Accepted, handle
from schemas.commands import AcceptedCommand
from services.common.follower import follow
from services.readmodel.projection import Keys, project
from services.readmodel.store import Behind, ReadModelStore
from tests.e2e.certificates import sequencer_entropy
from tests.e2e.traffic import build


class FakeRedis:
    """Strings, hashes and sorted sets in dicts; the APPLY script read in Python."""

    def __init__(self) -> None:
        self.data: dict[str, object] = {}

    def register_script(self, _source: str):
        async def run(keys: list[str], args: list) -> list[int]:
            return self.apply(keys, [a if isinstance(a, bytes) else str(a) for a in args])
        return run

    async def mget(self, keys: list[str]) -> list:
        return [self.data.get(k) for k in keys]

    def apply(self, keys: list[str], argv: list) -> list[int]:
        d = self.data
        i, step, skipped = 0, 0, 0

        def key(j: int) -> str:
            return keys[int(argv[j]) - 1]

        while i < len(argv):
            kind = argv[i]
            if kind == "A":
                step += 1
                prev = int(argv[i + 3])
                cur = int(d.get(key(i + 1), {}).get("seq", "0"))
                if cur < prev:
                    return [step, cur, skipped]
                ok = cur == prev
                if ok:
                    d[key(i + 2)] = argv[i + 5]
                else:
                    skipped += 1
                nops = int(argv[i + 6])
                i += 7
                for _ in range(nops):
                    op, k = argv[i], key(i + 1)
                    if op == "H":
                        nf = int(argv[i + 2])
                        if ok:
                            fields = argv[i + 3:i + 3 + 2 * nf]
                            d.setdefault(k, {}).update(zip(fields[::2], fields[1::2], strict=True))
                        i += 3 + 2 * nf
                    elif op == "I":
                        if ok:
                            h = d.setdefault(k, {})
                            h[argv[i + 2]] = str(int(h.get(argv[i + 2], "0")) + int(argv[i + 3]))
                        i += 4
                    elif op == "Z":
                        if ok:
                            d.setdefault(k, {})[argv[i + 2]] = float(argv[i + 3])
                        i += 4
                    elif op == "R":
                        if ok:
                            d.get(k, {}).pop(argv[i + 2], None)
                        i += 3
                    elif op == "X":
                        i += 3
                    else:
                        raise AssertionError(f"bad op {op!r} at {i}")
            elif kind == "J":
                h = d.setdefault(key(i + 1), {})
                if "status" not in h:
                    h.update(status="rejected", reason=argv[i + 2], detail=argv[i + 3],
                             certificate_id=argv[i + 4])
                i += 6
            elif kind == "P":
                if int(argv[i + 2]) > int(d.get(key(i + 1), "-1")):
                    d[key(i + 1)] = argv[i + 2]
                i += 3
            else:
                raise AssertionError(f"bad step {kind!r} at {i}")
        return [0, 0, skipped]


def accepted_commands() -> list[AcceptedCommand]:
    states: dict = {}
    out = []
    for command in build(6, 120, seed=5, t0_ms=int(time.time() * 1000)):
        cid = command.certificate_id
        entropy = sequencer_entropy(states.get(cid), cid)
        outcome = handle(states.get(cid), command, entropy)
        if isinstance(outcome, Accepted):
            states[cid] = outcome.state
            out.append(AcceptedCommand(seq=outcome.state.seq, received_ms=command.at_ms,
                                       command=command, draw_seed=entropy.hex()))
    return out


def one_by_one(keys: Keys, commands: list[AcceptedCommand]) -> dict[str, object]:
    """What the projections are, written without the script."""
    d: dict[str, object] = {}
    states: dict = {}
    for a in commands:
        cid = a.command.certificate_id
        result = follow(states.get(cid), a)
        states[cid] = result.state
        w = project(keys, result.state, result.events, result.settlements)
        for k, mapping in w.hset.items():
            d.setdefault(k, {}).update(mapping)
        for k, f, n in w.hincrby:
            h = d.setdefault(k, {})
            h[f] = str(int(h.get(f, "0")) + n)
        for k, m, score in w.zadd:
            d.setdefault(k, {})[m] = float(score)
        for k, m in w.zrem:
            d.get(k, {}).pop(m, None)
    return d


def test_a_batch_writes_what_each_projection_writes_and_only_once():
    keys = Keys("t.")
    commands = accepted_commands()
    assert len(commands) > 60
    redis = FakeRedis()
    store = ReadModelStore(redis, keys)
    pairs = [(a, a.received_ms) for a in commands]
    half = len(pairs) // 2

    async def run() -> None:
        done = await store.apply_batch(pairs[:half], [], {("t.accepted", 0): 10})
        assert len(done.accepted_ms) == half and done.skipped == 0
        done = await store.apply_batch(pairs[half:], [], {("t.accepted", 0): 20})
        assert len(done.accepted_ms) == len(pairs) - half
        snapshot = msgspec.json.encode(sorted(redis.data.items(), key=lambda kv: kv[0]))
        # met again (a redelivery), with a fresh worker (nothing in memory)
        again = ReadModelStore(redis, keys)
        done = await again.apply_batch(pairs, [], {("t.accepted", 0): 15})
        assert done.accepted_ms == [] and done.skipped == len(pairs)
        assert msgspec.json.encode(sorted(redis.data.items(), key=lambda kv: kv[0])) == snapshot
        assert await again.positions([("t.accepted", 0), ("t.accepted", 1)]) == {
            ("t.accepted", 0): 20, ("t.accepted", 1): None}

    asyncio.run(run())
    want = one_by_one(keys, commands)
    got = {k: v for k, v in redis.data.items()
           if not k.startswith((keys.p + "cmd:", keys.p + "state:", keys.p + "pos:"))}
    assert got == want
    for a in commands:  # each command's outcome, accepted
        assert redis.data[keys.outcome(a.command.command_id)]["status"] == "accepted"


def test_a_redis_behind_the_worker_sends_it_back_to_the_stored_positions():
    keys = Keys("t.")
    commands = accepted_commands()
    redis = FakeRedis()
    store = ReadModelStore(redis, keys)
    pairs = [(a, a.received_ms) for a in commands]

    async def run() -> None:
        await store.apply_batch(pairs[:40], [], {("t.accepted", 0): 40})
        redis.data.clear()  # flushed, or restarted without its data
        with pytest.raises(Behind):
            await store.apply_batch(pairs[40:], [], {("t.accepted", 0): 80})
        assert await store.positions([("t.accepted", 0)]) == {("t.accepted", 0): None}
        # from the beginning again (no position stored): the same projections
        await store.apply_batch(pairs, [], {("t.accepted", 0): 80})

    asyncio.run(run())
    got = {k: v for k, v in redis.data.items()
           if not k.startswith((keys.p + "cmd:", keys.p + "state:", keys.p + "pos:"))}
    assert got == one_by_one(keys, commands)
