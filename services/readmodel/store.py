"""Applies batches of accepted commands and refusals to the Redis read model, exactly
once, and keeps where the projections stand (each partition's next offset) in Redis
with them.

The certificate's state copy is a hash of a head and append-only segments
(services/readmodel/statecopy.py): a batch writes the head and the segments filled
since, not the whole state (17 kB on average in the benchmark, up to 248 kB).

Work per batch, not per command (issue #25): the commands of one certificate in a
batch are applied in Python one after the other, and what they write is merged:
the certificate's state and page are written once (their last value), increments
summed, a sorted set's member added or removed once (its last operation). Only each
command's outcome (``cmd:{id}``) is written per command. The program goes to Redis as
ONE msgpack argument (``cmsgpack`` in Lua), not ~100 arguments a command for
redis-py to pack.

One Redis (``redis.asyncio.Redis``): the batch is one script, one round trip, one
fsync. For each certificate (step ``C``) it checks the stored ``seq`` of
``cert:{cert}`` against the seq before the batch's first command of it, and only then
writes the state, the page and everything else those commands write; then raises
each partition's position. A script runs atomically, so the check and the writes are
one step, and a position is never ahead of what is projected.

Redis Cluster (``redis.asyncio.cluster.RedisCluster``): a script may only touch keys
of one slot, so the program is split by hash tag (services/readmodel/projection.py:
a certificate's state and page share one, an account's feeds and earnings one, the
catalogue one). Each slot's part is a script of its own, made exactly-once on its own:
writes to keys outside the certificate's slot go per command, guarded by
``applied:{tag}`` (certificate -> the last seq applied there), so a batch met again,
cut differently after a restart, never applies an increment twice. Order: first the
certificates' stored seqs are read and must be this worker's (else Behind, nothing
written); then those parts and the outcomes; then the certificates' states (so a
crash between the two leaves the states behind: the commands are applied again, and
the guards skip what is in); then the positions. Not covered: one cluster node
restarted without its data (its slots alone went back); with ``appendfsync always``
and a replica per master that is a disaster to rebuild from, by deleting the read
model's keys (the topics are the source of truth).

Where the projections stand lives in Redis, not only in the consumer group: after
Redis loses writes (restarted without its data, flushed), its positions went back
with them, and the read model re-projects from there. The group's committed offset
is for lag and tools.
"""

from __future__ import annotations

import asyncio
from collections import OrderedDict
from dataclasses import dataclass, field

import msgspec
import redis.asyncio as aioredis
from redis.asyncio.cluster import RedisCluster
from redis.crc import key_slot

from domain import CertificateState
from schemas.commands import AcceptedCommand
from schemas.payments import Settlement
from schemas.rejections import Reason, Rejection
from services.common.follower import follow
from services.common.rows import Lengths
from services.readmodel import statecopy
from services.readmodel.projection import Keys, hash_tag, project, project_payment
from services.readmodel.projection import page as certificate_page

OUTCOME_TTL_S = 7 * 24 * 3600
CLUSTER_CONCURRENCY = 16  # scripts in flight at once on a Redis Cluster
CACHE_CERTIFICATES = 100_000  # states kept in memory between batches (~1 KB each)
_encode = msgspec.msgpack.Encoder().encode

# ARGV[1] is a msgpack list of steps; keys are named by their index in KEYS, the
# states (msgpack bytes, which Redis's cmsgpack cannot read inside ARGV[1]) by theirs
# in ARGV.
#   {'C', cert, row, prev, last, n, fields, page, ops}   a certificate's commands
#       prev+1..last (n of them): applied when cert's seq == prev, met as projected
#       already when it is >= last; anything else: Redis and this worker disagree.
#       fields: {name, i, ...}: the state copy's hash fields, values in ARGV[i]
#       (services/readmodel/statecopy.py)
#   {'G', guard, cert, seq, ops}    Redis Cluster: one command's writes in one slot,
#       applied when the guard hash holds less than seq for cert
#   {'O', key, fields, ttl}         an accepted command's outcome (Redis Cluster)
#   {'J', key, reason, detail, cert, ttl}  a refusal: recorded unless it has an outcome
#   {'P', key, offset}              a partition's next offset, only ever raised
#   {'W', key, ops}                 writes that are the same every time they are made
#       (a payout as ``payments`` has it: projection.project_payment), unguarded
#   op: {'H', key, fields} | {'I', key, field, by} | {'Z', key, member, score}
#       | {'R', key, member} | {'X', key, seconds} | {'D', key}
#       | {'T', key}: the outcome's projected_ms, the script's own clock (Redis TIME)
#       | {'O', key, fields, ttl}: an outcome: its fields and projected_ms, expiring
# Returns {0, 0, skipped} when every step was applied (skipped: commands met as
# projected already), or {step, stored_seq, skipped} at the first certificate whose
# stored seq disagrees: nothing from that step on is written, positions included.
APPLY = """
local prog = cmsgpack.unpack(ARGV[1])
local t = redis.call('TIME')
local now_ms = tostring(tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000))
local function run(ops)
  for _, o in ipairs(ops) do
    local op, key = o[1], KEYS[o[2]]
    if op == 'H' then redis.call('HSET', key, unpack(o[3]))
    elseif op == 'I' then redis.call('HINCRBY', key, o[3], o[4])
    elseif op == 'Z' then redis.call('ZADD', key, o[4], o[3])
    elseif op == 'R' then redis.call('ZREM', key, o[3])
    elseif op == 'X' then redis.call('EXPIRE', key, o[3])
    elseif op == 'T' then redis.call('HSET', key, 'projected_ms', now_ms)
    elseif op == 'O' then
      redis.call('HSET', key, 'projected_ms', now_ms, unpack(o[3]))
      redis.call('EXPIRE', key, o[4])
    elseif op == 'D' then redis.call('DEL', key)
    else error('bad op ' .. tostring(op)) end
  end
end
local skipped = 0
for n, s in ipairs(prog) do
  local kind = s[1]
  if kind == 'C' then
    local cur = tonumber(redis.call('HGET', KEYS[s[2]], 'seq') or '0')
    if cur == s[4] then
      local f, row = s[7], {}
      for i = 1, #f, 2 do row[i] = f[i]; row[i + 1] = ARGV[f[i + 1]] end
      redis.call('HSET', KEYS[s[3]], unpack(row))
      redis.call('HSET', KEYS[s[2]], unpack(s[8]))
      run(s[9])
    elseif cur >= s[5] then
      skipped = skipped + s[6]
    else
      return {n, cur, skipped}
    end
  elseif kind == 'G' then
    local guard = KEYS[s[2]]
    if tonumber(redis.call('HGET', guard, s[3]) or '0') < s[4] then
      run(s[5])
      redis.call('HSET', guard, s[3], s[4])
    end
  elseif kind == 'O' then
    redis.call('HSET', KEYS[s[2]], 'projected_ms', now_ms, unpack(s[3]))
    redis.call('EXPIRE', KEYS[s[2]], s[4])
  elseif kind == 'J' then
    local key = KEYS[s[2]]
    if redis.call('HSETNX', key, 'status', 'rejected') == 1 then
      redis.call('HSET', key, 'reason', s[3], 'detail', s[4], 'certificate_id', s[5])
      redis.call('EXPIRE', key, s[6])
    end
  elseif kind == 'W' then
    run(s[3])
  elseif kind == 'P' then
    local key = KEYS[s[2]]
    if s[3] > tonumber(redis.call('GET', key) or '-1') then redis.call('SET', key, s[3]) end
  else
    error('bad step ' .. tostring(kind))
  end
end
return {0, 0, skipped}
"""


class Behind(Exception):
    """Redis holds less than this worker assumed (it lost writes, was flushed, or
    another worker wrote): start again from the positions stored in Redis."""


@dataclass
class Applied:
    """What one batch did: the accepted commands projected (their record timestamps,
    for the trail) and those met as projected already."""

    accepted_ms: list[int] = field(default_factory=list)
    skipped: int = 0


class StalePlan(Exception):
    """A plan made on copies of the states forgotten since: plan the batch again."""


class _Program:
    """Steps for one script, with the keys they name (KEYS are 1-based in Lua)."""

    def __init__(self) -> None:
        self.keys: list[str] = []
        self.index: dict[str, int] = {}
        self.steps: list[list] = []
        self.certs: list[str] = []  # the certificate of each step ("": none)
        self.blobs: list[bytes] = []  # ARGV[2..]

    def blob(self, value: bytes) -> int:
        self.blobs.append(value)
        return len(self.blobs) + 1

    def key(self, name: str) -> int:
        i = self.index.get(name)
        if i is None:
            self.keys.append(name)
            i = self.index[name] = len(self.keys)
        return i

    def ops(self, hset: dict[str, dict[str, str]], incr: dict[tuple[str, str], int],
            zset: dict[tuple[str, str], str | None]) -> list[list]:
        out: list[list] = []
        for key, mapping in hset.items():
            out.append(["H", self.key(key), _flat(mapping)])
        for (key, fieldname), by in incr.items():
            if by:
                out.append(["I", self.key(key), fieldname, by])
        for (key, member), score in zset.items():
            out.append(["R", self.key(key), member] if score is None
                       else ["Z", self.key(key), member, score])
        return out


def _flat(mapping: dict[str, str]) -> list[str]:
    out: list[str] = []
    for f, v in mapping.items():
        out += (f, v)
    return out


@dataclass
class _Merged:
    """One certificate's commands in a batch, merged into what Redis must hold after
    them (increments summed, a sorted set member's last operation)."""

    prev: int
    last: int = 0
    n: int = 0
    state: CertificateState | None = None
    hset: dict[str, dict[str, str]] = field(default_factory=dict)
    incr: dict[tuple[str, str], int] = field(default_factory=dict)
    zset: dict[tuple[str, str], str | None] = field(default_factory=dict)
    fields: list[tuple[str, bytes]] = field(default_factory=list)  # the state copy's
    # hash fields that change (statecopy.py), encoded when planned
    drop: list[str] = field(default_factory=list)  # keys the write deletes
    page: dict[str, str] = field(default_factory=dict)  # the page after them


@dataclass
class Plan:
    """A batch's writes, computed (ReadModelStore.plan) and not yet written."""

    done: Applied
    merged: dict[str, _Merged]
    outcomes: list
    guarded: list
    refusals: list
    positions: dict[tuple[str, int], int]
    generation: int
    # payouts from ``payments``, merged by key (idempotent: written unguarded)
    payouts: dict[str, dict[str, str]] = field(default_factory=dict)


class ReadModelStore:
    def __init__(self, client: aioredis.Redis | RedisCluster, keys: Keys,
                 cache_size: int = CACHE_CERTIFICATES, cluster: bool | None = None) -> None:
        self.redis = client
        self.keys = keys
        # a script per slot (tests pass cluster=True to a fake that checks the slots)
        self.cluster = isinstance(client, RedisCluster) if cluster is None else cluster
        self.script = client.register_script(APPLY)
        self.cache: OrderedDict[str, CertificateState] = OrderedDict()
        # what each cached certificate's copy in Redis holds (or will, once the
        # batches planned are written): which segments a write must add
        self.written: dict[str, Lengths | None] = {}
        self.legacy: set[str] = set()  # copies in the former format, to delete
        self.cache_size = cache_size
        self.generation = 0  # raised by forget(): plans made before are stale

    def position_key(self, topic: str, partition: int) -> str:
        return f"{self.keys.p}pos:{topic}:{partition}"

    async def _mget(self, keys: list[str]) -> list:
        if self.cluster:  # one slot per key: the client splits it by node
            return await self.redis.mget_nonatomic(keys)
        return await self.redis.mget(keys)

    async def positions(self, tps: list[tuple[str, int]]) -> dict[tuple[str, int], int | None]:
        """Each partition's next offset to project, or None: nothing of it in Redis."""
        if not tps:
            return {}
        raw = await self._mget([self.position_key(t, p) for t, p in tps])
        return {tp: None if v is None else int(v) for tp, v in zip(tps, raw, strict=True)}

    @property
    def progress_key(self) -> str:
        return self.keys.progress

    async def publish_progress(self, fields: dict[str, str]) -> None:
        """Where the read model stands (services/readmodel/progress.py), for the pages:
        gone 30 s after the read model stopped writing it."""
        async with self.redis.pipeline(transaction=not self.cluster) as tx:
            tx.hset(self.progress_key, mapping=fields)
            tx.expire(self.progress_key, 30)
            await tx.execute()

    def forget(self) -> None:
        """Drop the states kept in memory (partitions moved, or Redis went back), and
        with them every plan made on them."""
        self.cache.clear()
        self.written.clear()
        self.legacy.clear()
        self.generation += 1

    async def _states(self, cids: list[str]) -> dict[str, CertificateState | None]:
        out: dict[str, CertificateState | None] = {}
        missing = []
        for cid in cids:
            state = self.cache.get(cid)
            if state is None:
                missing.append(cid)
            else:
                out[cid] = state
        if missing:
            for cid, (state, written, legacy) in (
                    await statecopy.load(self.redis, self.keys, missing)).items():
                out[cid] = state
                self.written[cid] = written
                if legacy:
                    self.legacy.add(cid)
        return out

    async def apply_batch(self, accepted: list[tuple[AcceptedCommand, int]],
                          rejections: list[Rejection],
                          positions: dict[tuple[str, int], int],
                          payments: list[Settlement] = ()) -> Applied:
        """Project ``accepted`` (each with its record's timestamp, ms; in partition
        order) and record ``rejections`` and the payouts among ``payments``, then raise
        ``positions`` (next offsets). Raises Behind when Redis is behind this worker's
        copy of a state."""
        return await self.execute(await self.plan(accepted, rejections, positions, payments))

    async def plan(self, accepted: list[tuple[AcceptedCommand, int]],
                   rejections: list[Rejection],
                   positions: dict[tuple[str, int], int],
                   payments: list[Settlement] = ()) -> Plan:
        """The batch's writes, computed on this worker's copies of the states, which
        it then takes as what Redis will hold (the consumer plans the next batch while
        Redis runs this one's script); ``execute`` writes them. Raises Behind."""
        done = Applied()
        k = self.keys
        generation = self.generation  # forgotten while the states are read: stale
        states = await self._states(list(dict.fromkeys(
            a.command.certificate_id for a, _ in accepted)))
        if generation != self.generation:
            raise StalePlan("the copies were forgotten while the states were read")
        merged: dict[str, _Merged] = {}
        outcomes: list[tuple[str, str, int, dict[str, str]]] = []  # cid, key, seq, fields
        guarded: list[tuple[str, int, dict]] = []  # Redis Cluster: (cid, seq, writes)
        for command, accepted_ms in accepted:
            cid = command.command.certificate_id
            before = states[cid]
            prev = 0 if before is None else before.seq
            if command.seq <= prev:  # met again: projected already
                done.skipped += 1
                continue
            if command.seq != prev + 1:  # Redis lost this certificate's last writes
                self.forget()
                raise Behind(f"certificate {cid}: Redis holds seq {prev}, "
                             f"the next record has {command.seq}")
            result = follow(before, command)
            states[cid] = result.state
            m = merged.get(cid)
            if m is None:
                m = merged[cid] = _Merged(prev=prev)
            m.last, m.state = command.seq, result.state
            m.n += 1
            w = project(k, result.state, result.events, result.settlements, with_page=False)
            cert_key = k.cert(cid)
            # the outcome the API's /commands/{id} shows; accepted wins over a rejection
            outcomes.append((cid, k.outcome(command.command.command_id), command.seq, {
                "status": "accepted", "certificate_id": cid, "seq": str(command.seq),
                "accepted_ms": str(accepted_ms or "")}))
            if self.cluster:
                m.hset.setdefault(cert_key, {}).update(w.hset.pop(cert_key))
                guarded.append((cid, command.seq, w))
            else:
                for key, mapping in w.hset.items():
                    m.hset.setdefault(key, {}).update(mapping)
                for key, fieldname, amount in w.hincrby:
                    m.incr[(key, fieldname)] = m.incr.get((key, fieldname), 0) + amount
                for key, member, score in w.zadd:
                    m.zset[(key, member)] = str(score)
                for key, member in w.zrem:
                    m.zset[(key, member)] = None
            done.accepted_ms.append(accepted_ms)
        refusals = [r for r in rejections
                    # a replay (duplicate, duplicate_conflict) leaves the outcome alone
                    if r.command_id is not None
                    and r.reason not in (Reason.DUPLICATE, Reason.DUPLICATE_CONFLICT)]
        for cid, m in merged.items():  # what Redis will hold (forgotten if not)
            # encoded now: the core updates a state in place, and the next batch is
            # planned (on this very object) before this one is written
            assert m.state is not None
            m.fields, self.written[cid] = statecopy.encode(m.state, self.written.get(cid))
            if cid in self.legacy:  # its former one-value copy goes with this write
                self.legacy.discard(cid)
                m.drop.append(k.state(cid))
            m.page = {**m.hset.pop(k.cert(cid), {}), **certificate_page(m.state)}
            self.cache[cid] = m.state
            self.cache.move_to_end(cid)
        while len(self.cache) > self.cache_size:
            self.written.pop(self.cache.popitem(last=False)[0], None)
        payouts: dict[str, dict[str, str]] = {}
        for s in payments:  # netting's payouts: gross, offset, net (no state needed)
            w = project_payment(k, s)
            if w is not None:
                for key, mapping in w.hset.items():
                    payouts.setdefault(key, {}).update(mapping)
        return Plan(done, merged, outcomes, guarded, refusals, positions, generation,
                    payouts)

    async def execute(self, plan: Plan) -> Applied:
        """Write a planned batch. Raises Behind (and forgets every copy) when Redis
        disagrees, or StalePlan when the copies it was planned on were forgotten since
        (a batch before it failed): nothing of it is written then."""
        if plan.generation != self.generation:
            raise StalePlan("planned on copies forgotten since")
        try:
            if self.cluster:
                skipped = await self._run_cluster(plan.merged, plan.outcomes, plan.guarded,
                                                  plan.refusals, plan.positions, plan.payouts)
            else:
                skipped = await self._run_one(plan.merged, plan.outcomes, plan.refusals,
                                              plan.positions, plan.payouts)
        except BaseException:
            self.forget()
            raise
        plan.done.skipped += skipped
        if skipped:  # Redis was ahead of the copy: read the states again next time
            self.forget()
        return plan.done

    def _certificate(self, prog: _Program, cid: str, m: _Merged, ops: list[list]) -> None:
        fields: list = []
        for name, value in m.fields:
            fields += (name, prog.blob(value))
        prog.steps.append(["C", prog.key(self.keys.cert(cid)),
                           prog.key(statecopy.row_key(self.keys, cid)),
                           m.prev, m.last, m.n, fields, _flat(m.page),
                           prog.ops(m.hset, m.incr, m.zset) + ops
                           + [["D", prog.key(key)] for key in m.drop]])
        prog.certs.append(cid)

    def _refusal(self, prog: _Program, r: Rejection) -> None:
        prog.steps.append(["J", prog.key(self.keys.outcome(r.command_id)), r.reason.value,
                           r.detail, r.certificate_id or "", OUTCOME_TTL_S])
        prog.certs.append("")

    @staticmethod
    def _payouts(prog: _Program, key: str, mapping: dict[str, str]) -> None:
        prog.steps.append(["W", prog.key(key), [["H", prog.key(key), _flat(mapping)]]])
        prog.certs.append("")

    def _position(self, prog: _Program, topic: str, partition: int, offset: int) -> None:
        prog.steps.append(["P", prog.key(self.position_key(topic, partition)), offset])
        prog.certs.append("")

    async def _call(self, prog: _Program) -> int:
        """Run one program; its skipped count, or Behind at a disagreeing certificate."""
        if not prog.steps:
            return 0
        gap, stored, skipped = await self.script(keys=prog.keys, args=[_encode(prog.steps), *prog.blobs])
        if gap:
            self.forget()
            raise Behind(f"certificate {prog.certs[gap - 1]}: Redis holds seq {stored}, "
                         f"this worker's copy disagrees")
        return skipped

    async def _run_one(self, merged: dict[str, _Merged], outcomes: list, refusals: list,
                       positions: dict[tuple[str, int], int],
                       payouts: dict[str, dict[str, str]] | None = None) -> int:
        prog = _Program()
        by_cert: dict[str, list[list]] = {}
        for cid, key, _seq, fields in outcomes:
            i = prog.key(key)
            by_cert.setdefault(cid, []).append(["O", i, _flat(fields), OUTCOME_TTL_S])
        for cid, m in merged.items():
            self._certificate(prog, cid, m, by_cert[cid])
        for r in refusals:
            self._refusal(prog, r)
        for key, mapping in (payouts or {}).items():
            self._payouts(prog, key, mapping)
        for (topic, partition), offset in positions.items():
            self._position(prog, topic, partition, offset)
        return await self._call(prog)

    async def _gather(self, programs) -> list[int]:
        """Run programs (one per slot) concurrently, at most CLUSTER_CONCURRENCY at a
        time (each holds one of the client's connections to its node)."""
        limit = asyncio.Semaphore(CLUSTER_CONCURRENCY)

        async def one(prog: _Program) -> int:
            async with limit:
                return await self._call(prog)
        return list(await asyncio.gather(*(one(p) for p in programs)))

    async def _run_cluster(self, merged: dict[str, _Merged], outcomes: list,
                           guarded: list, refusals: list,
                           positions: dict[tuple[str, int], int],
                           payouts: dict[str, dict[str, str]] | None = None) -> int:
        k = self.keys
        # Before any slot is written: do the states in Redis stand where this worker's
        # copies do? (Its copies are stale when another worker wrote meanwhile, or
        # Redis was flushed; the guards below cannot tell, being in other slots.)
        async with self.redis.pipeline() as p:
            for cid in merged:
                p.hget(k.cert(cid), "seq")
            stored = await p.execute()
        for (cid, m), seq in zip(merged.items(), stored, strict=True):
            if int(seq or 0) != m.prev:
                self.forget()
                raise Behind(f"certificate {cid}: Redis holds seq {int(seq or 0)}, "
                             f"this worker's copy {m.prev}")
        first: dict[int, _Program] = {}  # by slot: guarded writes, outcomes, refusals

        def slot_of(key: str) -> _Program:
            return first.setdefault(key_slot(hash_tag(key).encode()), _Program())

        for cid, seq, w in guarded:
            parts: dict[str, tuple[dict, dict, dict]] = {}  # by hash tag
            for key, mapping in w.hset.items():
                parts.setdefault(hash_tag(key), ({}, {}, {}))[0][key] = mapping
            for key, fieldname, amount in w.hincrby:
                incr = parts.setdefault(hash_tag(key), ({}, {}, {}))[1]
                incr[(key, fieldname)] = incr.get((key, fieldname), 0) + amount
            for key, member, score in w.zadd:
                parts.setdefault(hash_tag(key), ({}, {}, {}))[2][(key, member)] = str(score)
            for key, member in w.zrem:
                parts.setdefault(hash_tag(key), ({}, {}, {}))[2][(key, member)] = None
            for tag, (hset, incr, zset) in parts.items():
                guard = k.applied(tag)
                prog = slot_of(guard)
                prog.steps.append(["G", prog.key(guard), cid, seq, prog.ops(hset, incr, zset)])
                prog.certs.append(cid)
        for _cid, key, _seq, fields in outcomes:
            prog = slot_of(key)
            prog.steps.append(["O", prog.key(key), _flat(fields), OUTCOME_TTL_S])
            prog.certs.append("")
        for r in refusals:
            self._refusal(slot_of(k.outcome(r.command_id)), r)
        for key, mapping in (payouts or {}).items():
            self._payouts(slot_of(key), key, mapping)
        await self._gather(first.values())
        second: dict[int, _Program] = {}  # by slot: the certificates' states and pages
        for cid, m in merged.items():
            prog = second.setdefault(key_slot(cid.encode()), _Program())
            self._certificate(prog, cid, m, [])
        skipped = sum(await self._gather(second.values()))
        third: dict[int, _Program] = {}
        for (topic, partition), offset in positions.items():
            key = self.position_key(topic, partition)
            self._position(third.setdefault(key_slot(key.encode()), _Program()),
                           topic, partition, offset)
        await self._gather(third.values())
        return skipped
