"""The audit's reader gives up on a topic that stops moving, not on a long one: `make
run` keeps its data from run to run, and after a few long runs the audit at the end
could not read `accepted` within its 60 s and said so instead of its verdict.

A fake consumer (positions and poll, on a fake clock) stands for kafka-python's."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
from kafka import TopicPartition

from services.audit.read import drain


@dataclass
class Record:
    offset: int


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


class SlowConsumer:
    """Each poll takes ``poll_s`` on the clock and returns ``per_poll`` records of
    each partition, until ``stall_at`` records of a partition, where it stops."""

    def __init__(self, clock: Clock, tps, per_poll: int, poll_s: float,
                 stall_at: int | None = None) -> None:
        self.clock, self.per_poll, self.poll_s, self.stall_at = clock, per_poll, poll_s, stall_at
        self.at = {tp: 0 for tp in tps}

    def position(self, tp: TopicPartition) -> int:
        return self.at[tp]

    def poll(self, timeout_ms: int) -> dict:
        self.clock.now += self.poll_s
        out = {}
        for tp, at in self.at.items():
            upto = at + self.per_poll
            if self.stall_at is not None:
                upto = min(upto, self.stall_at)
            if upto > at:
                out[tp] = [Record(o) for o in range(at, upto)]
                self.at[tp] = upto
        return out


TPS = [TopicPartition("accepted", 0), TopicPartition("accepted", 1)]


def test_a_read_far_longer_than_the_timeout_that_keeps_moving_reads_everything():
    clock = Clock()
    end = {TPS[0]: 10_000, TPS[1]: 7_001}
    consumer = SlowConsumer(clock, TPS, per_poll=100, poll_s=0.5)
    records = drain(consumer, TPS, end, timeout_s=2.0, clock=clock)
    assert clock.now == 50.0  # 100 polls: 25 times the timeout
    # every record below each end, none past it (the fake returns up to 7,100 on 1)
    assert len(records) == 10_000 + 7_001
    assert max(r.offset for r in records) == 9_999


def test_a_read_that_stops_moving_gives_up_after_the_timeout_and_says_how_far_it_got():
    clock = Clock()
    end = {TPS[0]: 1_000, TPS[1]: 1_000}
    consumer = SlowConsumer(clock, TPS, per_poll=100, poll_s=0.5, stall_at=300)
    with pytest.raises(TimeoutError, match=r"accepted: .*no progress for 2.0s \(600 records read\)"):
        drain(consumer, TPS, end, timeout_s=2.0, clock=clock)
    # it moved until 1.5 s, then gave up a little over 2 s later
    assert 3.5 < clock.now <= 4.5
