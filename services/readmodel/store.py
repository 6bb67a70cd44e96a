"""Applies batches of accepted commands and refusals to the Redis read model, exactly
once, and keeps where the projections stand (each partition's next offset) in Redis
with them.

One batch is one Redis round trip: a Lua script (``APPLY``) that, for each command,
checks the certificate's stored sequence number (``seq`` of ``cert:{cert}``) against
the one the command follows, and only then writes its projections and the state;
then raises each partition's position. A script runs atomically, so the check and the
writes are one step (no other client's write comes between), and the position is
never ahead of what is projected.

Where the projections stand lives in Redis, not only in the consumer group: after
Redis loses writes (a restart with ``appendfsync everysec`` loses up to a second;
restarted without its data, flushed), its positions went back with them, and the
read model re-projects from there. The group's committed offset is for lag and tools.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from dataclasses import dataclass, field

import msgspec
import redis.asyncio as aioredis

from domain import CertificateState
from schemas.commands import AcceptedCommand
from schemas.rejections import Reason, Rejection
from services.common.follower import follow
from services.readmodel.projection import Keys, project

OUTCOME_TTL_S = 7 * 24 * 3600
CACHE_CERTIFICATES = 100_000  # states kept in memory between batches (~1 KB each)
_encode = msgspec.msgpack.Encoder().encode
_decode = msgspec.msgpack.Decoder(CertificateState).decode

# ARGV is a program of steps; keys are named by their index in KEYS.
#   A cert state prev seq blob nops op*  a command: applied when cert's seq == prev
#       op: H key n f1 v1 .. fn vn | I key field by | Z key member score
#           | R key member | X key seconds
#   J outcome reason detail cert      a refusal: recorded unless the id has an outcome
#   P position offset                 a partition's next offset, only ever raised
# Returns {} when every command was applied or met as projected already (counted in
# the second element), or {gap_step, stored_seq} when a certificate's stored seq is
# below the one the command follows: Redis is behind this worker's copy (it lost
# writes, or another worker wrote), nothing after that step is written, positions
# included, and the worker starts again from the positions stored.
APPLY = """
local i, n, step, skipped = 1, #ARGV, 0, 0
while i <= n do
  local kind = ARGV[i]
  if kind == 'A' then
    step = step + 1
    local cert = KEYS[tonumber(ARGV[i + 1])]
    local prev, seq = tonumber(ARGV[i + 3]), tonumber(ARGV[i + 4])
    local cur = tonumber(redis.call('HGET', cert, 'seq') or '0')
    if cur < prev then return {step, cur, skipped} end
    local apply = cur == prev
    if apply then
      redis.call('SET', KEYS[tonumber(ARGV[i + 2])], ARGV[i + 5])
    else
      skipped = skipped + 1
    end
    local nops = tonumber(ARGV[i + 6])
    i = i + 7
    for _ = 1, nops do
      local op, key = ARGV[i], KEYS[tonumber(ARGV[i + 1])]
      if op == 'H' then
        local nf = tonumber(ARGV[i + 2])
        if apply then redis.call('HSET', key, unpack(ARGV, i + 3, i + 2 + 2 * nf)) end
        i = i + 3 + 2 * nf
      elseif op == 'I' then
        if apply then redis.call('HINCRBY', key, ARGV[i + 2], ARGV[i + 3]) end
        i = i + 4
      elseif op == 'Z' then
        if apply then redis.call('ZADD', key, ARGV[i + 3], ARGV[i + 2]) end
        i = i + 4
      elseif op == 'R' then
        if apply then redis.call('ZREM', key, ARGV[i + 2]) end
        i = i + 3
      elseif op == 'X' then
        if apply then redis.call('EXPIRE', key, ARGV[i + 2]) end
        i = i + 3
      else
        return redis.error_reply('bad op ' .. tostring(op))
      end
    end
  elseif kind == 'J' then
    local key = KEYS[tonumber(ARGV[i + 1])]
    if redis.call('HSETNX', key, 'status', 'rejected') == 1 then
      redis.call('HSET', key, 'reason', ARGV[i + 2], 'detail', ARGV[i + 3],
                 'certificate_id', ARGV[i + 4])
      redis.call('EXPIRE', key, ARGV[i + 5])
    end
    i = i + 6
  elseif kind == 'P' then
    local key = KEYS[tonumber(ARGV[i + 1])]
    local offset = tonumber(ARGV[i + 2])
    if offset > tonumber(redis.call('GET', key) or '-1') then redis.call('SET', key, offset) end
    i = i + 3
  else
    return redis.error_reply('bad step ' .. tostring(kind))
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


class _Program:
    def __init__(self) -> None:
        self.keys: list[str] = []
        self.index: dict[str, int] = {}
        self.argv: list[bytes | str | int] = []

    def key(self, name: str) -> int:
        i = self.index.get(name)
        if i is None:
            self.keys.append(name)
            i = self.index[name] = len(self.keys)
        return i


class ReadModelStore:
    def __init__(self, client: aioredis.Redis, keys: Keys,
                 cache_size: int = CACHE_CERTIFICATES) -> None:
        self.redis = client
        self.keys = keys
        self.script = client.register_script(APPLY)
        self.cache: OrderedDict[str, CertificateState] = OrderedDict()
        self.cache_size = cache_size

    def position_key(self, topic: str, partition: int) -> str:
        return f"{self.keys.p}pos:{topic}:{partition}"

    async def positions(self, tps: list[tuple[str, int]]) -> dict[tuple[str, int], int | None]:
        """Each partition's next offset to project, or None: nothing of it in Redis."""
        if not tps:
            return {}
        raw = await self.redis.mget([self.position_key(t, p) for t, p in tps])
        return {tp: None if v is None else int(v) for tp, v in zip(tps, raw, strict=True)}

    @property
    def progress_key(self) -> str:
        return f"{self.keys.p}progress"

    async def publish_progress(self, fields: dict[str, str]) -> None:
        """Where the read model stands (services/readmodel/progress.py), for the pages:
        gone 30 s after the read model stopped writing it."""
        async with self.redis.pipeline(transaction=True) as tx:
            tx.hset(self.progress_key, mapping=fields)
            tx.expire(self.progress_key, 30)
            await tx.execute()

    def forget(self) -> None:
        """Drop the states kept in memory (partitions moved, or Redis went back)."""
        self.cache.clear()

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
            raw = await self.redis.mget([self.keys.state(cid) for cid in missing])
            for cid, value in zip(missing, raw, strict=True):
                out[cid] = None if value is None else _decode(value)
        return out

    async def apply_batch(self, accepted: list[tuple[AcceptedCommand, int]],
                          rejections: list[Rejection],
                          positions: dict[tuple[str, int], int]) -> Applied:
        """Project ``accepted`` (each with its record's timestamp, ms; in partition
        order) and record ``rejections``, then raise ``positions`` (next offsets), in
        one script. Raises Behind when Redis is behind this worker's copy of a state."""
        done = Applied()
        prog = _Program()
        argv = prog.argv
        states = await self._states(list(dict.fromkeys(
            a.command.certificate_id for a, _ in accepted)))
        now_ms = str(int(time.time() * 1000))
        steps: list[tuple[str, int]] = []
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
            w = project(self.keys, result.state, result.events, result.settlements)
            outcome = self.keys.outcome(command.command.command_id)
            # the outcome the API's /commands/{id} shows; accepted wins over a rejection
            hset = {outcome: {"status": "accepted", "certificate_id": cid,
                              "seq": str(command.seq), "accepted_ms": str(accepted_ms or ""),
                              "projected_ms": now_ms}, **w.hset}
            ops: list = []
            for key, mapping in hset.items():
                ops += ["H", prog.key(key), len(mapping)]
                for f, v in mapping.items():
                    ops += [f, v]
            ops += ["X", prog.key(outcome), OUTCOME_TTL_S]
            for key, fieldname, amount in w.hincrby:
                ops += ["I", prog.key(key), fieldname, amount]
            for key, member, score in w.zadd:
                ops += ["Z", prog.key(key), member, score]
            for key, member in w.zrem:
                ops += ["R", prog.key(key), member]
            nops = len(hset) + 1 + len(w.hincrby) + len(w.zadd) + len(w.zrem)
            argv += ["A", prog.key(self.keys.cert(cid)), prog.key(self.keys.state(cid)),
                     prev, command.seq, _encode(result.state), nops, *ops]
            steps.append((cid, accepted_ms))
        for r in rejections:
            # a replay (duplicate, duplicate_conflict) leaves the outcome alone
            if r.command_id is None or r.reason in (Reason.DUPLICATE, Reason.DUPLICATE_CONFLICT):
                continue
            argv += ["J", prog.key(self.keys.outcome(r.command_id)), r.reason.value, r.detail,
                     r.certificate_id or "", OUTCOME_TTL_S]
        for (topic, partition), offset in positions.items():
            argv += ["P", prog.key(self.position_key(topic, partition)), offset]
        if not argv:
            return done
        gap, stored, skipped = await self.script(keys=prog.keys, args=argv)
        if gap:
            self.forget()
            cid = steps[gap - 1][0]
            raise Behind(f"certificate {cid}: Redis holds seq {stored}, "
                         f"this worker projected beyond it")
        done.skipped += skipped
        done.accepted_ms = [ms for _, ms in steps]
        for cid, state in states.items():  # what Redis now holds
            if state is not None:
                self.cache[cid] = state
                self.cache.move_to_end(cid)
        while len(self.cache) > self.cache_size:
            self.cache.popitem(last=False)
        if skipped:  # Redis was ahead of the copy: read the states again next time
            self.forget()
        return done
