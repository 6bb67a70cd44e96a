"""Any error a record raises in a stage parks its partition instead of crashing the
worker into a restart loop on the same record (issue #22, "no single record stops
anything"). The runner's apply loop, below the Kafka adapter: records are stand-ins
with the three accessors it reads."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
from prometheus_client import CollectorRegistry, Counter

from domain import InvariantViolation
from services.common.rows import WholeRowStore
from services.common.runner import Partition, Poison, StageRunner, _Work
from services.common.stage import Applied


def _counter() -> Counter:
    return Counter("skipped", "records skipped", registry=CollectorRegistry())


class Record:
    def __init__(self, offset: int, key: bytes = b"k") -> None:
        self._offset, self._key = offset, key

    def offset(self) -> int:
        return self._offset

    def key(self) -> bytes:
        return self._key

    def value(self) -> bytes:
        return b""


class Stage:
    def __init__(self, error: BaseException | None) -> None:
        self.error = error

    def apply(self, state, record) -> Applied:
        if record.offset() == 1 and self.error is not None:
            raise self.error
        return Applied(state, False, [])


@pytest.mark.parametrize("error", [RecursionError("deep"), KeyError("x"), ValueError("bad"),
                                   InvariantViolation("conservation")],
                         ids=lambda e: type(e).__name__)
def test_any_error_in_a_records_apply_parks_it_at_that_offset(error):
    runner = SimpleNamespace(stage=Stage(error), _skipped=_counter())
    part = Partition(WholeRowStore(dict), position=0)
    with pytest.raises(Poison, match=f"offset 1: {type(error).__name__}"):
        StageRunner._apply(runner, part, [Record(0), Record(1), Record(2)], _Work(part))


def test_records_without_errors_move_the_position():
    runner = SimpleNamespace(stage=Stage(None), _skipped=_counter())
    part = Partition(WholeRowStore(dict), position=0)
    StageRunner._apply(runner, part, [Record(0), Record(1), Record(2)], _Work(part))
    assert part.position == 3
