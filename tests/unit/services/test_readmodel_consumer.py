"""The read model's loop (services/readmodel/consumer.py) plans each batch while
Redis runs the one before: against a fake consumer (batches cut at random across
two partitions) and the store tests' Redis read in Python, with scripts and reads
that take a random while, it writes what applying the commands one by one writes,
and never meets Redis "behind" it. (Planning ahead once dropped every batch it
planned: a settled batch was reported as failed.)"""

from __future__ import annotations

import asyncio
import random

import msgspec
import pytest
from aiokafka import TopicPartition

from services.common.metrics import ReadModelMetrics
from services.common.settings import Settings, Topics
from services.readmodel.consumer import Projector
from services.readmodel.projection import Keys
from services.readmodel.store import ReadModelStore
from tests.unit.services.test_readmodel_store import (
    FakeRedis,
    accepted_commands,
    one_by_one,
    projections,
)


class Record:
    def __init__(self, value: bytes, offset: int, timestamp: int) -> None:
        self.value, self.offset, self.timestamp = value, offset, timestamp


class SlowRedis(FakeRedis):
    """Scripts and reads answer after a random while, so the loop's steps interleave."""

    def __init__(self, rng: random.Random) -> None:
        super().__init__()
        self.rng = rng

    def register_script(self, source: str):
        run = super().register_script(source)

        async def slow(keys, args):
            await asyncio.sleep(self.rng.random() * 0.002)
            return await run(keys, args)
        return slow

    def pipeline(self, transaction: bool = True):
        pipe = super().pipeline(transaction)
        execute, rng = pipe.execute, self.rng

        async def slow() -> list:
            await asyncio.sleep(rng.random() * 0.002)
            return await execute()
        pipe.execute = slow
        pipe.hset = pipe.expire = lambda *a, **k: None  # the progress hash: not checked
        return pipe


class FakeConsumer:
    def __init__(self, parts: dict[TopicPartition, list[Record]], rng: random.Random) -> None:
        self.parts, self.rng = parts, rng
        self.pos = dict.fromkeys(parts, 0)

    def assignment(self) -> set:
        return set(self.parts)

    def seek(self, tp: TopicPartition, offset: int) -> None:
        self.pos[tp] = offset

    async def seek_to_beginning(self, *tps) -> None:
        for tp in tps:
            self.pos[tp] = 0

    async def beginning_offsets(self, tps) -> dict:
        return dict.fromkeys(tps, 0)

    async def position(self, tp: TopicPartition) -> int:
        return self.pos[tp]

    def last_stable_offset(self, tp: TopicPartition) -> int:
        return len(self.parts[tp])

    async def commit(self, offsets) -> None:
        return None

    async def getmany(self, timeout_ms: int = 0, max_records: int | None = None) -> dict:
        await asyncio.sleep(0)
        out, budget = {}, self.rng.randint(1, 40)
        for tp in self.rng.sample(list(self.parts), len(self.parts)):
            records = self.parts[tp][self.pos[tp]:self.pos[tp] + budget]
            if records:
                out[tp] = records
                self.pos[tp] += len(records)
                budget -= len(records)
            if budget <= 0:
                break
        return out

    def done(self) -> bool:
        return all(self.pos[tp] == len(r) for tp, r in self.parts.items())


@pytest.mark.parametrize("seed", range(6))
def test_batches_planned_while_the_last_one_is_written_write_what_one_by_one_does(seed):
    rng = random.Random(seed)
    keys = Keys("t.")
    commands = accepted_commands()
    settings = Settings(bootstrap="unused", topics=Topics(prefix="t."), group_prefix="t",
                        partitions=2)
    topic = settings.topics.accepted
    parts: dict[TopicPartition, list[Record]] = {TopicPartition(topic, p): [] for p in (0, 1)}
    for a in commands:  # a certificate's commands in one partition, in order
        tp = TopicPartition(topic, sum(a.command.certificate_id.encode()) % 2)
        parts[tp].append(Record(msgspec.json.encode(a), len(parts[tp]), a.received_ms))
    redis = SlowRedis(rng)
    projector = Projector(settings, ReadModelStore(redis, keys, cluster=False),
                          ReadModelMetrics(), "t")
    consumer = projector.consumer = FakeConsumer(parts, rng)
    behind = []

    async def refuse(exc: Exception) -> None:
        behind.append(exc)
        raise AssertionError(f"met Redis behind the worker: {exc}")
    projector.behind = refuse

    async def run() -> None:
        await projector.seek_to_stored(list(parts))
        projector.rebalancing = False
        while True:  # Projector.run's loop, on the fake consumer
            batch = await consumer.getmany(timeout_ms=0 if projector.inflight else 500)
            if batch:
                await projector.project(batch)
            elif projector.inflight is not None:
                await projector.settle()
            elif consumer.done():
                break
            await projector.report()

    asyncio.run(run())
    assert behind == []
    assert projections(keys, redis) == one_by_one(keys, commands)
    assert projector.projected == len(commands)
