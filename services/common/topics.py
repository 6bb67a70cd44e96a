"""Create the topics a service needs, with equal partition counts, before it starts."""

from __future__ import annotations

import logging

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
        for meta in admin.describe_topics(list(wanted)):
            count = len(meta["partitions"])
            if count != settings.partitions:
                raise SystemExit(f"topic {meta['topic']} has {count} partitions, "
                                 f"expected {settings.partitions}: co-partitioning broken")
    finally:
        admin.close()
