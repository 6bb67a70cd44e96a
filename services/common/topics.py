"""Create the topics a service needs, with equal partition counts, before it starts."""

from __future__ import annotations

import logging
import time

from kafka.admin import KafkaAdminClient, NewTopic
from kafka.errors import TopicAlreadyExistsError

from services.common.settings import Settings

log = logging.getLogger("commission.topics")


def ensure_topics(settings: Settings, topics: list[str], compacted: list[str] = ()) -> None:
    """Create missing topics; refuse to run when an existing one has another partition
    count (co-partitioning is what keeps one certificate's messages in order)."""
    admin = KafkaAdminClient(bootstrap_servers=settings.bootstrap, client_id="commission-admin")
    try:
        wanted = {t: False for t in topics} | {t: True for t in compacted}
        existing = set(admin.list_topics())
        new = [
            NewTopic(name, settings.partitions, 1,
                     topic_configs={"cleanup.policy": "compact"} if is_compacted else {})
            for name, is_compacted in wanted.items() if name not in existing
        ]
        if new:
            try:
                admin.create_topics(new)
            except TopicAlreadyExistsError:
                pass  # another service created it at the same time
        counts = _partition_counts(admin, list(wanted))
        for name, count in counts.items():
            if count != settings.partitions:
                raise SystemExit(f"topic {name} has {count} partitions, "
                                 f"expected {settings.partitions}: co-partitioning broken")
    finally:
        admin.close()


def _partition_counts(admin: KafkaAdminClient, topics: list[str],
                      timeout_s: float = 30.0) -> dict[str, int]:
    """Partition count of each topic; a topic created a moment ago may show none yet."""
    deadline = time.monotonic() + timeout_s
    while True:
        counts = {}
        for meta in admin.describe_topics(topics):
            name = meta.get("topic") or meta.get("name")
            counts[name] = len(meta.get("partitions") or [])
        if all(counts.get(t) for t in topics) or time.monotonic() > deadline:
            return {t: counts.get(t, 0) for t in topics}
        time.sleep(0.2)
