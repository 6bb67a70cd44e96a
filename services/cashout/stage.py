"""The cash-out service: settlements.

Consumes ``accepted`` and applies each command to its own copy of the state;
publishes ``payments``: every money movement (commission payouts, budget releases,
the seller's payment), each with a deterministic ``settlement_id`` that payment
systems deduplicate on. It is the only writer of ``payments``.
"""

from __future__ import annotations

from services.common.auth import Keyring
from services.common.follower import FollowerStage
from services.common.metrics import Metrics
from services.common.settings import Settings


def build(settings: Settings, keyring: Keyring, metrics: Metrics) -> FollowerStage:
    return FollowerStage("cashout", settings, metrics, "payments")
