"""The allocation service: acquisitions, claimable shares and replenishments.

Consumes ``accepted`` and applies each command to its own copy of the state;
publishes ``allocations``: who acquired how much of each pool (pending until a
purchase cashes it), who may claim, and how the pool was topped up from its reserve.
"""

from __future__ import annotations

from services.common.auth import Keyring
from services.common.follower import FollowerStage
from services.common.metrics import Metrics
from services.common.settings import Settings


def build(settings: Settings, keyring: Keyring, metrics: Metrics) -> FollowerStage:
    return FollowerStage("allocation", settings, metrics, "allocations")
