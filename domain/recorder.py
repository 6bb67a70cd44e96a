"""Collects what one command produces: events and settlements with their common fields.

Every event id and settlement id is derived from the certificate, its sequence
number and the command, never from a clock or a counter outside the state.
"""

from __future__ import annotations

from typing import Any

from domain.settlement import settlement_id
from domain.state import CertificateState
from schemas.events import Event
from schemas.payments import Settlement


class Recorder:
    __slots__ = ("certificate_id", "command_id", "seq", "at_ms", "entropy", "events",
                 "settlements", "_id_prefix")

    def __init__(self, state: CertificateState, command_id: str, at_ms: int,
                 entropy: bytes = b"") -> None:
        self.certificate_id = state.certificate_id
        self.entropy = entropy
        self.command_id = command_id
        self.seq = state.seq + 1
        self.at_ms = at_ms
        self.events: list[Event] = []
        self.settlements: list[Settlement] = []
        self._id_prefix = f"{self.certificate_id}/{self.seq}/"

    def next_event_id(self) -> str:
        return self._id_prefix + str(len(self.events))

    def event(self, kind: type, **fields: Any) -> None:
        # The three events of every circulation are built directly at their call
        # sites with next_event_id(): merging **fields costs 0.5 us per event there.
        self.events.append(kind(
            event_id=self.next_event_id(),
            certificate_id=self.certificate_id,
            command_id=self.command_id,
            seq=self.seq,
            at_ms=self.at_ms,
            **fields,
        ))

    def settle(self, kind: type, *, payee_id: str, amount_minor: int, **fields: Any) -> None:
        """Record a money movement; movements of zero are not emitted."""
        if amount_minor == 0:
            return
        self.settlements.append(kind(
            settlement_id=settlement_id(
                self.certificate_id, kind.__struct_config__.tag, payee_id, self.command_id),
            certificate_id=self.certificate_id,
            command_id=self.command_id,
            seq=self.seq,
            at_ms=self.at_ms,
            payee_id=payee_id,
            amount_minor=amount_minor,
            **fields,
        ))
