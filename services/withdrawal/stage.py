"""The withdrawal service: thresholds, warnings and the time-limit timer.

Consumes ``accepted`` and applies each command to its own copy of the state;
publishes ``withdrawals`` (warnings once per threshold, and withdrawals of pools).
Its timer looks at the certificates of the partitions it owns and, when a deadline
has passed with no message, sends a command to ``commands`` signed with a system
key: ``check_expiry`` for a display-time warning or withdrawal or the pool's end,
``release_hold`` when a purchase's hold ends. Deterministic ids (``expire:`` or
``release:`` and the deadline): the sequencer applies each once, however often it
is sent.
"""

from __future__ import annotations

import msgspec

from domain import CertificateState, next_deadline_ms
from schemas.commands import CheckExpiry, ReleaseHold
from services.common.auth import Keyring
from services.common.follower import FollowerStage
from services.common.metrics import Metrics
from services.common.settings import Settings

_encode = msgspec.json.Encoder().encode


class WithdrawalStage(FollowerStage):
    """Publishes warnings and withdrawals; its timer sends check_expiry commands for
    certificates whose display-time deadline has passed, signed with a system key."""

    RESEND_AFTER_MS = 30_000

    def __init__(self, settings: Settings, keyring: Keyring, metrics: Metrics) -> None:
        super().__init__("withdrawal", settings, metrics, "withdrawals")
        self.key = keyring.first("system")
        self.keyring = keyring
        # key -> (partition, deadline, a hold's end?)
        self.deadlines: dict[bytes, tuple[int, int, bool]] = {}
        self.sent: dict[bytes, tuple[int, int]] = {}  # key -> (deadline, sent at)

    def on_row(self, partition: int, key: bytes, state: CertificateState) -> None:
        deadline = next_deadline_ms(state)
        if deadline is None:
            self.deadlines.pop(key, None)
        else:
            self.deadlines[key] = (partition, deadline, state.held_until_ms is not None)

    def forget_partition(self, partition: int) -> None:
        for key in [k for k, (p, _, _) in self.deadlines.items() if p == partition]:
            del self.deadlines[key]
            self.sent.pop(key, None)

    def due(self, now_ms: int) -> list[tuple[str, bytes, bytes, list]]:
        out = []
        for key, (_, deadline, hold) in self.deadlines.items():
            if deadline > now_ms:
                continue
            previous = self.sent.get(key)
            if previous and previous[0] == deadline and now_ms - previous[1] < self.RESEND_AFTER_MS:
                continue
            kind, prefix = (ReleaseHold, "release") if hold else (CheckExpiry, "expire")
            command = kind(command_id=f"{prefix}:{deadline}", certificate_id=key.decode(),
                           at_ms=now_ms)
            body = _encode(command)
            out.append((self.topics.commands, key, body, self.keyring.sign(body, self.key)))
            self.sent[key] = (deadline, now_ms)
        return out


def build(settings: Settings, keyring: Keyring, metrics: Metrics) -> WithdrawalStage:
    return WithdrawalStage(settings, keyring, metrics)
