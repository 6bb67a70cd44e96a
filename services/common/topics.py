"""Create the topics a service needs, with equal partition counts, before it starts."""

from __future__ import annotations

import logging
import time

from kafka.admin import ConfigResource, ConfigResourceType, KafkaAdminClient, NewTopic
from kafka.errors import KafkaError, TopicAlreadyExistsError

from services.common.settings import Settings

log = logging.getLogger("commission.topics")


# The circulation service refuses a command whose at_ms is far from its record's
# timestamp (`stale`), so that a captured command cannot be replayed later, and the
# captures stage does the same for what the payment system says on payment-results.
# That only holds if the broker stamps the time: with the default CreateTime the
# producer does, and a replay can carry a backdated timestamp (tests/e2e/test_poison.py).
BROKER_TIME = {"message.timestamp.type": "LogAppendTime"}

# What outsiders write (commands, what the payment system says) is bounded by the
# broker: the largest valid command is ~50 KB (four 2,000-character terms of
# escaped characters, tests/unit/services/test_limits.py), so 256 KiB leaves room
# and an 800 kB record is refused at produce, before any stage reads it. Producers
# that write these topics keep their batches below it (PRODUCER_BATCH_BYTES):
# librdkafka does not split a batch the broker refuses as too large.
INPUT_MAX_MESSAGE_BYTES = 256 * 1024
PRODUCER_BATCH_BYTES = 128 * 1024
BOUNDED = {"max.message.bytes": str(INPUT_MAX_MESSAGE_BYTES)}


# How long a service starting while no broker answers (the cluster restarting, or a
# broker that just died still in the metadata the admin client picked) waits for one
# before it exits; a supervisor restarting it at once would only loop
BROKER_WAIT_S = 60.0


def ensure_topics(settings: Settings, topics: list[str], compacted: list[str] = (), *,
                  wait_s: float = BROKER_WAIT_S) -> None:
    """Create missing topics; refuse to run when an existing one has another partition
    count (co-partitioning is what keeps one certificate's messages in order), fewer
    replicas than the environment asks for, or, for a changelog, is not compacted (a
    changelog trimmed by time would lose rows: the restored table would be wrong). The
    commands topic gets the broker's time, also when it exists already.

    A broker that cannot be reached (none to bootstrap from, a connection lost, a
    request timed out: kafka-python's retriable errors) is tried again with a new
    client until ``wait_s`` has passed (an attempt itself may take kafka-python's 30 s
    bootstrap timeout); what the topics themselves are refused for exits at once."""
    deadline = time.monotonic() + wait_s
    while True:
        try:
            return _ensure_topics(settings, topics, compacted)
        except KafkaError as exc:  # no broker to bootstrap from: KafkaTimeoutError
            if not exc.retriable or time.monotonic() > deadline:
                raise
            log.warning("no broker answers the topic check (%s): trying again",
                        type(exc).__name__)
            time.sleep(1.0)


def _ensure_topics(settings: Settings, topics: list[str], compacted: list[str]) -> None:
    admin = KafkaAdminClient(bootstrap_servers=settings.bootstrap, client_id="commission-admin",
                             **settings.kafka_auth.kafka_python())
    try:
        wanted = {t: False for t in topics} | {t: True for t in compacted}
        existing = set(admin.list_topics())

        inputs = {settings.topics.commands, settings.topics.payment_results}

        def configs(name: str, is_compacted: bool) -> dict[str, str]:
            out = {"cleanup.policy": "compact"} if is_compacted else {}
            out |= BOUNDED if name in inputs else {}
            return out | (BROKER_TIME if name in inputs else {})

        new = [NewTopic(name, settings.partitions, settings.replication_factor,
                        topic_configs=configs(name, is_compacted))
               for name, is_compacted in wanted.items() if name not in existing]
        if new:
            try:
                admin.create_topics(new)
            except TopicAlreadyExistsError:
                pass  # another service created it at the same time
        for name in inputs & set(wanted) & existing:
            _ensure_configs(admin, name, configs(name, False))
        counts = _partition_counts(admin, list(wanted))
        for name, (count, replicas) in counts.items():
            if count != settings.partitions:
                raise SystemExit(f"topic {name} has {count} partitions, "
                                 f"expected {settings.partitions}: co-partitioning broken")
            if replicas < settings.replication_factor:
                raise SystemExit(f"topic {name} has {replicas} replicas, the environment asks "
                                 f"for {settings.replication_factor} "
                                 "(COMMISSION_REPLICATION_FACTOR)")
        for name in compacted:
            if name in existing:
                _ensure_compacted(admin, name)
    finally:
        admin.close()


def _ensure_configs(admin: KafkaAdminClient, topic: str, wanted: dict[str, str]) -> None:
    """Set an input topic's rules (LogAppendTime, the size bound) on a topic created
    before them, or by hand; with a user that may not alter configs, an operator sets
    them once and this only checks. Other settings of the topic are left alone
    (incremental alter: only these keys)."""
    described = admin.describe_configs(
        [ConfigResource(ConfigResourceType.TOPIC, topic, dict.fromkeys(wanted))],
        config_filter="all")
    current = described.get("topic", {}).get(topic, {})
    missing = {k: v for k, v in wanted.items() if current.get(k, {}).get("value") != v}
    if not missing:
        return
    try:
        outcome = admin.alter_configs(
            [ConfigResource(ConfigResourceType.TOPIC, topic, missing)])["topic"][topic]
    except Exception as exc:  # refused (no AlterConfigs permission) or unreachable
        outcome = exc
    if outcome != "OK":
        raise SystemExit(f"{topic} must have {missing} (the broker's time for the stale "
                         f"check, the bound on one record) and it could not be set: {outcome}")


def _ensure_compacted(admin: KafkaAdminClient, topic: str) -> None:
    described = admin.describe_configs(
        [ConfigResource(ConfigResourceType.TOPIC, topic, {"cleanup.policy": None})],
        config_filter="all")
    policy = described.get("topic", {}).get(topic, {}).get("cleanup.policy", {}).get("value")
    if policy is None or "compact" not in policy.split(","):
        raise SystemExit(f"changelog {topic} has cleanup.policy={policy}, not compact: "
                         "deleting old records by time or size would lose table rows; "
                         "set cleanup.policy=compact")


def _partition_counts(admin: KafkaAdminClient, topics: list[str],
                      timeout_s: float = 30.0) -> dict[str, tuple[int, int]]:
    """(partitions, fewest replicas of one partition) of each topic; a topic created a
    moment ago may show no partitions yet."""
    deadline = time.monotonic() + timeout_s
    while True:
        counts = {}
        for meta in admin.describe_topics(topics):
            name = meta.get("topic") or meta.get("name")
            partitions = meta.get("partitions") or []
            counts[name] = (len(partitions),
                            min((len(p.get("replica_nodes") or p.get("replicas") or [])
                                 for p in partitions), default=0))
        if all(counts.get(t, (0, 0))[0] for t in topics) or time.monotonic() > deadline:
            return {t: counts.get(t, (0, 0)) for t in topics}
        time.sleep(0.2)
