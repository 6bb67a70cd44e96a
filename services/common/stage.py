"""What a stage is to the runner: a name, an input, outputs, and ``apply``.

A stage decides what one input record does to one row of its table (a certificate's
state; for netting an account's ledger) and what to publish; the runner (services/common/runner.py) does all the Kafka: transactions,
positions, rebalances. Each service folder holds its own stage (``stage.py``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple, Protocol

from confluent_kafka import Message

from domain import CertificateState


class Output(NamedTuple):
    """One record to publish (a tuple: a stage makes several per command)."""

    topic: str
    value: bytes
    headers: tuple[tuple[str, bytes], ...] = ()
    # None: the input record's key, and so its partition number (every topic has the
    # same count). A key of its own goes to the partition the Java client's
    # partitioner gives it (murmur2), like every other producer of that topic.
    key: bytes | None = None


class Applied(NamedTuple):
    """What a stage made of one record."""

    state: CertificateState | None
    changed: bool
    outputs: list[Output]
    received_ms: int | None = None  # for end-to-end latency, when outputs were published


class Stage(Protocol):
    name: str

    def input_topic(self) -> str: ...

    def output_topics(self) -> list[str]: ...

    def apply(self, state: CertificateState | None, record: Message) -> Applied: ...


StageFactory = Callable[..., Stage]


