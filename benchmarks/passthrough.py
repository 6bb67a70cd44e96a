"""The raw limit: the pipeline's topology and client, with no processing.

    python -m benchmarks.passthrough ROLE     # ROLE: circulation|allocation|withdrawal|cashout

Each role copies its input records to its output topic unchanged, through the same
StageRunner (same librdkafka client, same rounds, one transaction per round) as
the real service in that position: commands -> accepted, then accepted -> one
output topic each for the three followers.
"""

from __future__ import annotations

import sys

from confluent_kafka import Message

from domain import CertificateState
from services.common.auth import Keyring
from services.common.metrics import Metrics
from services.common.service import run_service
from services.common.settings import Settings
from services.common.stage import Applied, Output

ROUTES = {
    "circulation": ("commands", "accepted"),
    "allocation": ("accepted", "allocations"),
    "withdrawal": ("accepted", "withdrawals"),
    "cashout": ("accepted", "payments"),
}


class Passthrough:
    def __init__(self, name: str, settings: Settings, metrics: Metrics) -> None:
        self.name = name
        source, target = ROUTES[name]
        self.source = settings.topics.name(source)
        self.target = settings.topics.name(target)
        self.metrics = metrics
        self.counted_in = metrics.messages_in.labels(name, "raw")
        self.counted_out = metrics.messages_out.labels(name, self.target, "raw")

    def input_topic(self) -> str:
        return self.source

    def output_topics(self) -> list[str]:
        return [self.target]

    def apply(self, state: CertificateState | None, record: Message) -> Applied:
        self.counted_in.inc()
        self.counted_out.inc()
        return Applied(None, False, [Output(self.target, record.value())],
                       received_ms=record.timestamp()[1])


def main() -> None:
    role = sys.argv[1]

    def factory(settings: Settings, keyring: Keyring, metrics: Metrics) -> Passthrough:
        return Passthrough(role, settings, metrics)

    run_service(role, factory)


if __name__ == "__main__":
    main()
