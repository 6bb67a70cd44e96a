"""The allocation service: acquisitions, claimable shares and replenishments.

Consumes ``accepted`` and applies each command to its own copy of the state;
publishes ``allocations``: who acquired how much of each pool (pending until a
purchase cashes it), who may claim, and how the pool was topped up from its reserve.

It is also where the fraud stage learns of acquisitions (it alone runs the core and
knows who acquired): each acquisition goes to ``fraud-feed`` as a small
``Seen`` record (who, on which seller's and funder's certificate, when, the account
facts the gateway attested, the certificate's latest earlier acquirers), under the
keys of the fraud rules' rows (services/fraud/rules.py), in the same transaction.
"""

from __future__ import annotations

from itertools import islice

from schemas.commands import AcceptedCommand, Circulate, Command
from schemas.events import CommissionAcquired
from services.common.auth import Keyring
from services.common.follower import FollowerStage, StepResult
from services.common.metrics import Metrics
from services.common.settings import Settings
from services.common.stage import Output
from services.fraud.rules import CO_MAX, Seen
from services.fraud.stage import feed_outputs


class AllocationStage(FollowerStage):
    def __init__(self, settings: Settings, metrics: Metrics) -> None:
        super().__init__("allocation", settings, metrics, "allocations")
        self.feed = settings.topics.fraud_feed

    def output_topics(self) -> list[str]:
        return [self.output_topic, self.feed]

    def extra_outputs(self, accepted: AcceptedCommand, result: StepResult,
                      mine: list) -> list[Output]:
        out: list[Output] = []
        for event in mine:
            if type(event) is CommissionAcquired:
                seen = seen_of(accepted.command, result, event)
                records = feed_outputs(self.feed, seen)
                self.metrics.count_out(self.feed, [seen] * len(records))
                out += records
        return out


def seen_of(command: Command, result: StepResult, event: CommissionAcquired) -> Seen:
    state = result.state
    facts = command.account if type(command) is Circulate else None
    # the latest earlier acquirers: the acquirer itself is the last one (one gain per
    # account and certificate), so skip it
    latest = tuple(islice(reversed(state.pool.acquired), CO_MAX + 1))
    if latest and latest[0] == event.account_id:
        co = latest[1:]
    else:
        co = tuple(a for a in latest if a != event.account_id)
    return Seen(certificate_id=event.certificate_id, account_id=event.account_id,
                seller_id=state.seller_id, funder_id=state.pool.funder_id,
                at_ms=event.at_ms, seq=event.seq,
                created_ms=None if facts is None else facts.created_ms,
                verified=False if facts is None else facts.verified, co=co[:CO_MAX])


def build(settings: Settings, keyring: Keyring, metrics: Metrics) -> FollowerStage:
    return AllocationStage(settings, metrics)
