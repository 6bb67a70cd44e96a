"""The cash-out service: settlements.

Consumes ``accepted`` and applies each command to its own copy of the state;
publishes ``settlements``: every money movement (commission payouts, budget releases,
the seller's payment, buyer refunds, clawbacks), each with a deterministic
``settlement_id`` that payment systems deduplicate on, and again with the next
``attempt`` when the payment system reported an attempt failed. They are keyed by
the payee's account: the netting stage (services/netting) recovers each account's
clawbacks from its later payouts and is the one writer of ``payments``.

It also counts what the payment system still owes a result for: from its table,
the settlements waiting (and the age of the oldest) and those parked after their
last failed attempt, for the dashboards and alerts.
"""

from __future__ import annotations

import time

from domain import CertificateState
from schemas.events import CertificatePurchased, HoldReleased, PaymentReported
from services.common.auth import Keyring
from services.common.follower import FollowerStage, StepResult
from services.common.metrics import Metrics
from services.common.settings import Settings

_MONEY_EVENTS = (CertificatePurchased, HoldReleased, PaymentReported)


class CashoutStage(FollowerStage):
    def __init__(self, settings: Settings, keyring: Keyring, metrics: Metrics) -> None:
        super().__init__("cashout", settings, metrics, "settlements")
        # key -> (partition, waiting, oldest waiting at_ms, parked)
        self.results: dict[bytes, tuple[int, int, int | None, int]] = {}
        metrics.awaiting_results.labels(self.name).set_function(
            lambda: sum(w for _, w, _, _ in self.results.values()))
        metrics.parked_payments.labels(self.name).set_function(
            lambda: sum(p for _, _, _, p in self.results.values()))
        metrics.oldest_awaiting_result.labels(self.name).set_function(self._oldest_age_s)

    def key_of(self, settlement) -> bytes:
        return settlement.payee_id.encode()

    def money_of(self, result: StepResult, mine: list) -> list:
        # held, released from the hold and failed payments are facts, not settlements
        return [*mine, *(e for e in result.events if isinstance(e, _MONEY_EVENTS))]

    def on_row(self, partition: int, key: bytes, state: CertificateState) -> None:
        waiting = parked = 0
        oldest = None
        for entry in state.payments.values():
            if entry.status == "awaiting":
                waiting += 1
                at = entry.settlement.at_ms
                if oldest is None or at < oldest:
                    oldest = at
            elif entry.status == "parked":
                parked += 1
        if waiting or parked:
            self.results[key] = (partition, waiting, oldest, parked)
        else:
            self.results.pop(key, None)

    def forget_partition(self, partition: int) -> None:
        for key in [k for k, (p, *_) in self.results.items() if p == partition]:
            del self.results[key]

    def _oldest_age_s(self) -> float:
        oldest = min((o for _, _, o, _ in self.results.values() if o is not None), default=None)
        return 0.0 if oldest is None else max(0.0, time.time() - oldest / 1000)


def build(settings: Settings, keyring: Keyring, metrics: Metrics) -> CashoutStage:
    return CashoutStage(settings, keyring, metrics)
