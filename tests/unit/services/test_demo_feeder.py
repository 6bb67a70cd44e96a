"""make run's traffic: a second run on the broker data the first left (the run folder
persists) uses none of the first run's references, which the engine refuses as used."""

from __future__ import annotations

import time

import pytest

from schemas import commands as c
from services.demo.feeder import Feeder

pytestmark = pytest.mark.unit


class Collecting:
    """The feeder's sender, below the adapter line: keeps what it is asked to send."""

    payment_results = "payment-results"

    def __init__(self) -> None:
        self.sent: list[c.Command] = []

    def send(self, command: c.Command, topic: str | None = None) -> None:
        self.sent.append(command)

    def send_raw(self, key: bytes, body: bytes, headers=None) -> None:
        pass


def references(feeder: Feeder, steps: int) -> set[str]:
    for _ in range(steps):
        feeder.step()
    sent = feeder.sender.sent
    refs = [ref for cmd in sent for ref in (getattr(cmd, "funding_ref", None),
                                             getattr(cmd, "payment_ref", None),
                                             getattr(cmd, "refund_ref", None)) if ref]
    ids = [cmd.command_id for cmd in sent]
    assert len(set(ids)) == len(ids)
    return set(refs) | set(ids)


def test_a_second_run_reuses_no_reference_of_the_first():
    first = references(Feeder(Collecting()), 500)
    time.sleep(0.002)
    second = references(Feeder(Collecting()), 500)
    assert any(ref.startswith("escrow-") for ref in first)  # it did fund pools
    assert not first & second
