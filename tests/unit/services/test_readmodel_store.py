"""The read model's batch program (services/readmodel/store.py), run by a Python
reading of its Lua script on a dict: a batch writes what applying each command's
projection one by one writes, a batch met again changes nothing, positions only
rise, and a Redis that holds less than the worker assumed raises Behind."""

from __future__ import annotations

import asyncio
import time

import msgspec
import pytest
from redis.crc import key_slot

from domain import Accepted, handle
from schemas.commands import AcceptedCommand
from services.common.follower import follow
from services.readmodel import statecopy
from services.readmodel.projection import Keys, hash_tag, project
from services.readmodel.store import Behind, ReadModelStore, StalePlan
from tests.e2e.certificates import sequencer_entropy
from tests.e2e.traffic import build


class FakeRedis:
    """Strings, hashes and sorted sets in dicts; the APPLY script read in Python. With
    ``cluster``, every script must name keys of one slot only (as Redis Cluster
    refuses others)."""

    def __init__(self, cluster: bool = False) -> None:
        self.data: dict[str, object] = {}
        self.cluster = cluster
        self.calls = 0

    def register_script(self, _source: str):
        async def run(keys: list[str], args: list) -> list[int]:
            if self.cluster:
                assert len({key_slot(hash_tag(k).encode()) for k in keys}) == 1, keys
            self.calls += 1
            return self.apply(keys, msgspec.msgpack.decode(args[0]), args)
        return run

    async def mget(self, keys: list[str]) -> list:
        assert not self.cluster
        return [self.data.get(k) for k in keys]

    async def mget_nonatomic(self, keys: list[str]) -> list:
        return [self.data.get(k) for k in keys]

    def pipeline(self, transaction: bool = True):
        fake = self

        class Pipeline:
            def __init__(self) -> None:
                self.reads: list = []

            async def __aenter__(self):
                return self

            async def __aexit__(self, *exc) -> None:
                return None

            def hget(self, key: str, name: str) -> None:
                self.reads.append(lambda: fake.data.get(key, {}).get(name))

            def hgetall(self, key: str) -> None:  # redis-py: field names as bytes
                self.reads.append(lambda: {f.encode(): v for f, v in
                                           fake.data.get(key, {}).items()})

            def get(self, key: str) -> None:
                self.reads.append(lambda: fake.data.get(key))

            async def execute(self) -> list:
                return [read() for read in self.reads]
        return Pipeline()

    def run(self, keys: list[str], ops: list) -> None:
        d = self.data
        for op in ops:
            k = keys[op[1] - 1]
            if op[0] == "H":
                fields = op[2]
                d.setdefault(k, {}).update(zip(fields[::2], fields[1::2], strict=True))
            elif op[0] == "I":
                h = d.setdefault(k, {})
                h[op[2]] = str(int(h.get(op[2], "0")) + int(op[3]))
            elif op[0] == "Z":
                d.setdefault(k, {})[op[2]] = float(op[3])
            elif op[0] == "R":
                d.get(k, {}).pop(op[2], None)
            elif op[0] == "T":
                d.setdefault(k, {})["projected_ms"] = "1"
            elif op[0] == "D":
                d.pop(k, None)
            elif op[0] == "O":
                d.setdefault(k, {}).update(zip(op[2][::2], op[2][1::2], strict=True),
                                           projected_ms="1")
            elif op[0] != "X":
                raise AssertionError(f"bad op {op!r}")

    def apply(self, keys: list[str], steps: list, argv: list) -> list[int]:
        d = self.data
        skipped = 0
        for n, s in enumerate(steps, 1):
            kind, k = s[0], keys[s[1] - 1]
            if kind == "C":
                cur = int(d.get(k, {}).get("seq", "0"))
                if cur == s[3]:
                    d.setdefault(keys[s[2] - 1], {}).update(
                        (f, argv[i - 1]) for f, i in zip(s[6][::2], s[6][1::2], strict=True))
                    d.setdefault(k, {}).update(zip(s[7][::2], s[7][1::2], strict=True))
                    self.run(keys, s[8])
                elif cur >= s[4]:
                    skipped += s[5]
                else:
                    return [n, cur, skipped]
            elif kind == "G":
                if int(d.get(k, {}).get(s[2], "0")) < s[3]:
                    self.run(keys, s[4])
                    d.setdefault(k, {})[s[2]] = str(s[3])
            elif kind == "O":
                d.setdefault(k, {}).update(zip(s[2][::2], s[2][1::2], strict=True),
                                           projected_ms="1")
            elif kind == "J":
                h = d.setdefault(k, {})
                if "status" not in h:
                    h.update(status="rejected", reason=s[2], detail=s[3], certificate_id=s[4])
            elif kind == "W":
                self.run(keys, s[2])
            elif kind == "P":
                if s[2] > int(d.get(k, "-1")):
                    d[k] = str(s[2])
            else:
                raise AssertionError(f"bad step {kind!r}")
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
    return {k: v for k, v in d.items() if v != {}}  # Redis keeps no empty set


def projections(keys: Keys, redis: FakeRedis) -> dict[str, object]:
    """What the pages read: without outcomes, states, positions and guards."""
    skip = tuple(keys.p + part for part in ("cmd:", "state:", "row:", "pos:", "applied:"))
    return {k: v for k, v in redis.data.items() if not k.startswith(skip) and v != {}}


@pytest.mark.parametrize("cluster", [False, True], ids=["one-redis", "cluster"])
def test_a_batch_writes_what_each_projection_writes_and_only_once(cluster):
    keys = Keys("t.")
    commands = accepted_commands()
    assert len(commands) > 60
    redis = FakeRedis(cluster)
    store = ReadModelStore(redis, keys, cluster=cluster)
    pairs = [(a, a.received_ms) for a in commands]
    half = len(pairs) // 2

    async def run() -> None:
        done = await store.apply_batch(pairs[:half], [], {("t.accepted", 0): 10})
        assert len(done.accepted_ms) == half and done.skipped == 0
        done = await store.apply_batch(pairs[half:], [], {("t.accepted", 0): 20})
        assert len(done.accepted_ms) == len(pairs) - half
        snapshot = msgspec.json.encode(sorted(redis.data.items(), key=lambda kv: kv[0]))
        # met again (a redelivery), with a fresh worker (nothing in memory)
        again = ReadModelStore(redis, keys, cluster=cluster)
        done = await again.apply_batch(pairs, [], {("t.accepted", 0): 15})
        assert done.accepted_ms == [] and done.skipped == len(pairs)
        assert msgspec.json.encode(sorted(redis.data.items(), key=lambda kv: kv[0])) == snapshot
        assert await again.positions([("t.accepted", 0), ("t.accepted", 1)]) == {
            ("t.accepted", 0): 20, ("t.accepted", 1): None}

    asyncio.run(run())
    assert projections(keys, redis) == one_by_one(keys, commands)
    if not cluster:  # one script a batch (three: the one met again)
        assert redis.calls == 3
    for a in commands:  # each command's outcome, accepted
        assert redis.data[keys.outcome(a.command.command_id)]["status"] == "accepted"


@pytest.mark.parametrize("cluster", [False, True], ids=["one-redis", "cluster"])
def test_a_redis_behind_the_worker_sends_it_back_to_the_stored_positions(cluster):
    keys = Keys("t.")
    commands = accepted_commands()
    redis = FakeRedis(cluster)
    store = ReadModelStore(redis, keys, cluster=cluster)
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
    assert projections(keys, redis) == one_by_one(keys, commands)


class CrashBeforeStates(FakeRedis):
    """Redis Cluster: the worker dies after the slots of feeds, earnings and outcomes
    took their writes and before the certificates' states did."""

    def register_script(self, source: str):
        inner = super().register_script(source)

        async def run(keys: list[str], args: list) -> list[int]:
            if self.crash and any(s[0] == "C" for s in msgspec.msgpack.decode(args[0])):
                raise ConnectionError("killed")
            return await inner(keys, args)
        return run


def test_on_a_cluster_a_batch_cut_otherwise_after_a_crash_applies_nothing_twice():
    keys = Keys("t.")
    commands = accepted_commands()
    redis = CrashBeforeStates(cluster=True)
    pairs = [(a, a.received_ms) for a in commands]

    async def run() -> None:
        redis.crash = False
        await ReadModelStore(redis, keys, cluster=True).apply_batch(pairs[:20], [], {})
        redis.crash = True
        with pytest.raises(ConnectionError):
            await ReadModelStore(redis, keys, cluster=True).apply_batch(pairs[20:70], [], {})
        redis.crash = False
        again = ReadModelStore(redis, keys, cluster=True)  # restarted: batches cut otherwise
        for i in range(0, len(pairs), 7):
            await again.apply_batch(pairs[i:i + 7], [], {})

    asyncio.run(run())
    assert projections(keys, redis) == one_by_one(keys, commands)


def test_a_batch_planned_on_copies_of_a_batch_that_failed_is_not_written():
    """The consumer plans batch B while batch A's script runs; A meets a Redis that
    lost its data (Behind), so B, planned on A's states, is refused unwritten."""
    keys = Keys("t.")
    commands = accepted_commands()
    redis = FakeRedis()
    store = ReadModelStore(redis, keys)
    pairs = [(a, a.received_ms) for a in commands]

    async def run() -> None:
        await store.apply_batch(pairs[:30], [], {("t.accepted", 0): 30})
        a = await store.plan(pairs[30:50], [], {("t.accepted", 0): 50})
        b = await store.plan(pairs[50:70], [], {("t.accepted", 0): 70})
        redis.data.clear()
        with pytest.raises(Behind):
            await store.execute(a)
        with pytest.raises(StalePlan):
            await store.execute(b)
        assert redis.data == {}

    asyncio.run(run())


def test_batches_planned_ahead_of_their_writes_write_what_one_by_one_does():
    """The consumer plans each batch before the one before it is written; the core
    updates states in place, so each batch's states must be taken when planned."""
    keys = Keys("t.")
    commands = accepted_commands()
    redis = FakeRedis()
    store = ReadModelStore(redis, keys)
    pairs = [(a, a.received_ms) for a in commands]

    async def run() -> None:
        plans = [await store.plan(pairs[i:i + 9], [], {}) for i in range(0, len(pairs), 9)]
        for plan in plans:
            done = await store.execute(plan)
            assert done.skipped == 0

    asyncio.run(run())
    assert projections(keys, redis) == one_by_one(keys, commands)


def test_the_state_copy_written_in_parts_reads_back_whole_and_replaces_the_former_format():
    """Each batch writes a certificate's head and only the segments filled since
    (statecopy.py); read back by a fresh worker, the copies are the states one by
    one reaches. A copy in the former one-value format is read, and deleted by the
    next write of its certificate."""
    keys = Keys("t.")
    commands = accepted_commands()
    redis = FakeRedis()
    pairs = [(a, a.received_ms) for a in commands]
    states: dict = {}
    for a in commands:
        states[a.command.certificate_id] = follow(states.get(a.command.certificate_id), a).state
    encode = msgspec.msgpack.Encoder().encode
    cids = sorted(states)

    async def run() -> None:
        store = ReadModelStore(redis, keys)
        for i in range(0, len(pairs) - 20, 7):  # small batches: segments fill across them
            await store.apply_batch(pairs[i:i + 7], [], {})
        rest = pairs[i + 7:]
        fresh = ReadModelStore(redis, keys)
        # one certificate's copy as the former format held it: read, then deleted
        legacy = cids[0]
        before = await statecopy.load_one(redis, keys, legacy)
        del redis.data[statecopy.row_key(keys, legacy)]
        redis.data[keys.state(legacy)] = encode(before)
        assert encode(await statecopy.load_one(redis, keys, legacy)) == encode(before)
        done = await fresh.apply_batch(rest, [], {})
        assert done.skipped == 0 and len(done.accepted_ms) == len(rest)
        for cid in cids:
            assert encode(await statecopy.load_one(redis, keys, cid)) == encode(states[cid])
        touched = {a.command.certificate_id for a, _ in rest}
        assert (keys.state(legacy) in redis.data) == (legacy not in touched)

    asyncio.run(run())
    assert projections(keys, redis) == one_by_one(keys, commands)
    sizes = [len(v) for k, h in redis.data.items() if k.startswith(keys.p + "row:")
             for v in h.values()]
    assert len(sizes) > len(cids)  # heads and segments, not one value a certificate


@pytest.mark.parametrize("cluster", [False, True], ids=["one-redis", "cluster"])
def test_payouts_from_payments_land_under_their_payee_with_the_positions(cluster):
    """The netting stage's payouts (``payments``) are written under the payee's
    account, in the batch's script with its positions; met again, they write the same."""
    from schemas.payments import BudgetRelease, CommissionPayout

    keys = Keys("t.")
    common = {"certificate_id": "s~x-00001", "command_id": "x", "seq": 3, "at_ms": 5,
              "funding_ref": "f", "currency": "EUR"}
    payout = CommissionPayout(settlement_id="a" * 64, payee_id="ann", amount_minor=40,
                              gross_minor=100, offset_minor=60, **common)
    release = BudgetRelease(settlement_id="b" * 64, payee_id="funder", amount_minor=7,
                            reason="purchase", **common)
    redis = FakeRedis(cluster)
    store = ReadModelStore(redis, keys, cluster=cluster)

    async def run() -> None:
        for _ in range(2):  # a redelivery writes the same
            await store.apply_batch([], [], {("t.payments", 1): 9}, [payout, release])
            assert redis.data[keys.payouts("ann")] == {"a" * 64: "s~x-00001|EUR|100|60|40|5"}
            assert keys.payouts("funder") not in redis.data  # only commission payouts
            assert await store.positions([("t.payments", 1)]) == {("t.payments", 1): 9}

    asyncio.run(run())
