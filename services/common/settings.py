"""Settings: one typed struct, read once from the environment, with local defaults
that make `make run` work out of the box."""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from schemas.topics import DEFAULT_PARTITIONS


def _env(name: str, default: str) -> str:
    return os.environ.get(name, default)


@dataclass(frozen=True)
class Topics:
    """Topic names; a prefix isolates test runs and tenants on one cluster."""

    prefix: str = ""

    def name(self, base: str) -> str:
        return f"{self.prefix}{base}"

    @property
    def commands(self) -> str:
        return self.name("commands")

    @property
    def accepted(self) -> str:
        return self.name("accepted")

    @property
    def certificate_events(self) -> str:
        return self.name("certificate-events")

    @property
    def allocations(self) -> str:
        return self.name("allocations")

    @property
    def withdrawals(self) -> str:
        return self.name("withdrawals")

    @property
    def payments(self) -> str:
        return self.name("payments")

    @property
    def rejections(self) -> str:
        return self.name("rejections")

    def all(self) -> list[str]:
        return [self.commands, self.accepted, self.certificate_events, self.allocations,
                self.withdrawals, self.payments, self.rejections]


@dataclass(frozen=True)
class Settings:
    bootstrap: str = "127.0.0.1:9092"
    topics: Topics = field(default_factory=Topics)
    partitions: int = DEFAULT_PARTITIONS
    # prefix of the consumer groups and transactional ids ({prefix}-{service}[-{partition}])
    group_prefix: str = "commission"
    metrics_port: int = 0  # 0: no metrics server
    data_dir: str = "run/services"
    # how long a transaction may stay open: the latency floor of read_committed readers
    commit_interval_s: float = 0.1
    # after the first records of a round arrive, wait this long for more (see runner);
    # at 2,600 commands/s, p99 after warm-up: 0 ms 319, 5 ms 173-202, 10 ms 210,
    # 20 ms 227-240 (fewer transactions, each waits longer) -- docs/benchmarks.md
    batch_linger_ms: int = 5
    # a signed command whose at_ms is further than this from the broker's record
    # timestamp is refused as stale: a captured command cannot be replayed later
    max_clock_skew_ms: int = 10 * 60 * 1000
    timer_interval_s: float = 1.0
    log_level: str = "info"

    @classmethod
    def from_env(cls, **overrides) -> Settings:
        values = dict(
            bootstrap=_env("KAFKA_BOOTSTRAP_SERVERS", cls.bootstrap),
            topics=Topics(prefix=_env("COMMISSION_TOPIC_PREFIX", "")),
            partitions=int(_env("COMMISSION_PARTITIONS", str(cls.partitions))),
            group_prefix=_env("COMMISSION_GROUP_PREFIX", cls.group_prefix),
            metrics_port=int(_env("METRICS_PORT", "0")),
            data_dir=_env("COMMISSION_DATA_DIR", cls.data_dir),
            commit_interval_s=float(_env("COMMISSION_COMMIT_INTERVAL_S", str(cls.commit_interval_s))),
            batch_linger_ms=int(_env("COMMISSION_BATCH_LINGER_MS", str(cls.batch_linger_ms))),
            max_clock_skew_ms=int(_env("COMMISSION_MAX_CLOCK_SKEW_MS", str(cls.max_clock_skew_ms))),
            timer_interval_s=float(_env("COMMISSION_TIMER_INTERVAL_S", str(cls.timer_interval_s))),
            log_level=_env("LOG_LEVEL", cls.log_level),
        )
        values.update(overrides)
        return cls(**values)
