"""Applies one accepted command to the Redis read model, exactly once."""

from __future__ import annotations

import time

import msgspec
import redis.asyncio as aioredis

from domain import CertificateState
from schemas.commands import AcceptedCommand
from schemas.rejections import Reason, Rejection
from services.common.follower import follow
from services.readmodel.projection import Keys, project

OUTCOME_TTL_S = 7 * 24 * 3600
_encode = msgspec.msgpack.Encoder().encode
_decode = msgspec.msgpack.Decoder(CertificateState).decode


class ReadModelStore:
    def __init__(self, client: aioredis.Redis, keys: Keys) -> None:
        self.redis = client
        self.keys = keys

    async def apply(self, accepted: AcceptedCommand, accepted_ms: int | None = None) -> bool:
        """False when this command was projected already (a redelivery). ``accepted_ms``
        is when the sequencer committed the command (its record's timestamp): the
        outcome records it with the projection time, so how far the read model trails
        the pipeline can be measured."""
        cid = accepted.command.certificate_id
        state_key = self.keys.state(cid)
        raw = await self.redis.get(state_key)
        before = None if raw is None else _decode(raw)
        if before is not None and accepted.seq <= before.seq:
            return False
        result = follow(before, accepted)
        w = project(self.keys, result.state, result.events, result.settlements)
        # One certificate is applied by one consumer at a time (its partition's), so
        # nothing else writes its state key between the read above and this commit.
        outcome = self.keys.outcome(accepted.command.command_id)
        async with self.redis.pipeline(transaction=True) as tx:
            tx.set(state_key, _encode(result.state))
            # the outcome the API's /commands/{id} shows; accepted wins over any rejection
            tx.hset(outcome, mapping={"status": "accepted", "certificate_id": cid,
                                      "seq": str(accepted.seq),
                                      "accepted_ms": str(accepted_ms or ""),
                                      "projected_ms": str(int(time.time() * 1000))})
            tx.expire(outcome, OUTCOME_TTL_S)
            for key, mapping in w.hset.items():
                tx.hset(key, mapping=mapping)
            for key, fieldname, amount in w.hincrby:
                tx.hincrby(key, fieldname, amount)
            for key, member, score in w.zadd:
                tx.zadd(key, {member: score})
            for key, member in w.zrem:
                tx.zrem(key, member)
            await tx.execute()
        return True

    async def reject(self, rejection: Rejection) -> None:
        """Record a refused command's outcome, unless the same id was accepted (then this
        is a replay: ``duplicate`` and ``duplicate_conflict`` leave the outcome alone)."""
        if rejection.command_id is None or rejection.reason in (
                Reason.DUPLICATE, Reason.DUPLICATE_CONFLICT):
            return
        key = self.keys.outcome(rejection.command_id)
        if await self.redis.hsetnx(key, "status", "rejected"):
            await self.redis.hset(key, mapping={
                "reason": rejection.reason.value, "detail": rejection.detail,
                "certificate_id": rejection.certificate_id or ""})
            await self.redis.expire(key, OUTCOME_TTL_S)
