"""Settings: one typed struct, read once from the environment, with local defaults
that make `make run` work out of the box."""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass, field
from urllib.parse import quote, urlsplit, urlunsplit

from schemas.topics import DEFAULT_PARTITIONS, Topics


def production() -> bool:
    """``COMMISSION_ENV=production``: every process then refuses what only suits a
    development machine (development keys, demo passwords, Kafka in the clear)."""
    return os.environ.get("COMMISSION_ENV") == "production"


def _env(name: str, default: str) -> str:
    return os.environ.get(name, default)


def _from_file(variable: str) -> str | None:
    """The stripped content of the file named by ``$variable`` (a mounted secret), or
    None when the variable is not set."""
    path = os.environ.get(variable)
    if not path:
        return None
    with open(path, encoding="utf-8") as f:
        return f.read().strip()


def redis_url_from_env(default: str = "redis://127.0.0.1:6379/0") -> str:
    """``REDIS_URL``, with the password of its user from the file named by
    ``REDIS_PASSWORD_FILE`` (a mounted secret) when that is set: production logs in as
    its own ACL user over TLS (``rediss://user@host:port/db?ssl_ca_certs=...``) and
    keeps the password out of the environment. Never log the result."""
    url = _env("REDIS_URL", default)
    password = _from_file("REDIS_PASSWORD_FILE")
    if password is None:
        return url
    parts = urlsplit(url)
    if parts.password is not None:
        raise SystemExit("REDIS_URL carries a password and REDIS_PASSWORD_FILE is set: "
                         "keep the password in the file only")
    user = parts.username or ""
    host = parts.hostname or ""
    if ":" in host:  # an IPv6 literal
        host = f"[{host}]"
    netloc = f"{user}:{quote(password, safe='')}@{host}"
    if parts.port is not None:
        netloc += f":{parts.port}"
    return urlunsplit(parts._replace(netloc=netloc))


SECURITY_PROTOCOLS = ("PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL")
SASL_MECHANISMS = ("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512")


@dataclass(frozen=True)
class KafkaAuth:
    """How every Kafka client of this process connects: PLAINTEXT (the local stack) by
    default; TLS, mutual TLS and SASL (PLAIN, SCRAM) for a real cluster. The password comes from
    the environment or a file (a mounted secret) and never appears in ``repr``, logs
    or metrics. The HMAC on commands authenticates their *authors*; this authenticates
    the *processes*, so that a broker with ACLs can let only the circulation service
    write ``accepted``, only the cash-out service write ``payments``, and so on
    (docs/runbook.md, "Access control")."""

    security_protocol: str = "PLAINTEXT"
    sasl_mechanism: str | None = None
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    ca_file: str | None = None  # TLS: the CA that signed the brokers' certificates
    # mutual TLS: the client's certificate and key (PEM), when the broker logs clients
    # in by certificate instead of SASL
    cert_file: str | None = None
    key_file: str | None = None

    def __post_init__(self) -> None:
        if self.security_protocol not in SECURITY_PROTOCOLS:
            raise SystemExit(f"KAFKA_SECURITY_PROTOCOL must be one of {SECURITY_PROTOCOLS}, "
                             f"not {self.security_protocol!r}")
        if self.sasl:
            if self.sasl_mechanism not in SASL_MECHANISMS:
                raise SystemExit(f"KAFKA_SASL_MECHANISM must be one of {SASL_MECHANISMS}, "
                                 f"not {self.sasl_mechanism!r}")
            if not self.username or not self.password:
                raise SystemExit("SASL needs KAFKA_SASL_USERNAME and KAFKA_SASL_PASSWORD "
                                 "(or KAFKA_SASL_PASSWORD_FILE)")
        if bool(self.cert_file) != bool(self.key_file):
            raise SystemExit("a client certificate needs both KAFKA_SSL_CERTFILE and "
                             "KAFKA_SSL_KEYFILE")

    @property
    def sasl(self) -> bool:
        return self.security_protocol.startswith("SASL")

    @property
    def tls(self) -> bool:
        return self.security_protocol.endswith("SSL")

    @classmethod
    def from_env(cls) -> KafkaAuth:
        protocol = _env("KAFKA_SECURITY_PROTOCOL", "PLAINTEXT").upper()
        sasl = protocol.startswith("SASL")
        # without SASL the files may not be mounted: read them only when logging in
        password = os.environ.get("KAFKA_SASL_PASSWORD")
        if sasl and password is None:
            password = _from_file("KAFKA_SASL_PASSWORD_FILE")
        username = os.environ.get("KAFKA_SASL_USERNAME")
        if sasl and username is None:
            username = _from_file("KAFKA_SASL_USERNAME_FILE")
        mechanism = os.environ.get("KAFKA_SASL_MECHANISM", "PLAIN").upper()
        return cls(security_protocol=protocol, sasl_mechanism=mechanism if sasl else None,
                   username=username, password=password,
                   ca_file=os.environ.get("KAFKA_SSL_CAFILE"),
                   cert_file=os.environ.get("KAFKA_SSL_CERTFILE"),
                   key_file=os.environ.get("KAFKA_SSL_KEYFILE"))

    def env(self) -> dict[str, str]:
        """The environment that makes a child process connect the same way."""
        out = {"KAFKA_SECURITY_PROTOCOL": self.security_protocol}
        if self.sasl:
            out |= {"KAFKA_SASL_MECHANISM": self.sasl_mechanism,
                    "KAFKA_SASL_USERNAME": self.username, "KAFKA_SASL_PASSWORD": self.password}
        for name, value in (("KAFKA_SSL_CAFILE", self.ca_file),
                            ("KAFKA_SSL_CERTFILE", self.cert_file),
                            ("KAFKA_SSL_KEYFILE", self.key_file)):
            if value:
                out[name] = value
        return out

    def _login(self) -> dict:
        """The keyword arguments kafka-python and aiokafka spell alike."""
        out: dict = {"security_protocol": self.security_protocol}
        if self.sasl:
            out |= {"sasl_mechanism": self.sasl_mechanism,
                    "sasl_plain_username": self.username, "sasl_plain_password": self.password}
        return out

    def kafka_python(self) -> dict:
        """Keyword arguments for kafka-python's clients."""
        out = self._login()
        if self.tls:
            out |= {k: v for k, v in (("ssl_cafile", self.ca_file),
                                      ("ssl_certfile", self.cert_file),
                                      ("ssl_keyfile", self.key_file)) if v}
        return out

    def librdkafka(self) -> dict:
        """Configuration properties for confluent-kafka (librdkafka) clients."""
        out: dict = {"security.protocol": self.security_protocol.lower()}
        if self.sasl:
            out |= {"sasl.mechanisms": self.sasl_mechanism, "sasl.username": self.username,
                    "sasl.password": self.password}
        if self.tls:
            out |= {k: v for k, v in (("ssl.ca.location", self.ca_file),
                                      ("ssl.certificate.location", self.cert_file),
                                      ("ssl.key.location", self.key_file)) if v}
            # the test broker's certificate is made for 127.0.0.1 (an IP SAN)
            out["ssl.endpoint.identification.algorithm"] = "https"
        return out

    def aiokafka(self) -> dict:
        """Keyword arguments for aiokafka's clients."""
        out = self._login()
        if self.tls:
            out["ssl_context"] = self.ssl_context()
        return out

    def faust(self):
        """faust's ``broker_credentials`` (None: PLAINTEXT)."""
        import faust  # only the read model uses faust; keep it out of the services' imports

        if self.sasl:
            return faust.SASLCredentials(
                username=self.username, password=self.password, mechanism=self.sasl_mechanism,
                ssl_context=self.ssl_context() if self.tls else None)
        if self.tls:
            return faust.SSLCredentials(self.ssl_context())
        return None

    def ssl_context(self):
        from aiokafka.helpers import create_ssl_context

        return create_ssl_context(cafile=self.ca_file, certfile=self.cert_file,
                                  keyfile=self.key_file)


PLAINTEXT = KafkaAuth()


@dataclass(frozen=True)
class Settings:
    bootstrap: str = "127.0.0.1:9092"
    topics: Topics = field(default_factory=Topics)
    kafka_auth: KafkaAuth = PLAINTEXT
    partitions: int = DEFAULT_PARTITIONS
    # replicas of every topic this project creates, and the fewest it accepts on an
    # existing one (1 on the one-broker local stack; 3 on a real cluster)
    replication_factor: int = 1
    # in-sync replicas a write needs (the brokers' min.insync.replicas): the runner
    # names the partitions below it when a commit waits (1 alone, 2 on a cluster)
    min_insync_replicas: int = 1
    # prefix of the consumer groups and transactional ids ({prefix}-{service}[-{partition}])
    group_prefix: str = "commission"
    metrics_port: int = 0  # 0: no metrics server
    data_dir: str = "run/services"
    # how long an idle runner waits for a record before it looks at its timer and
    # gauges; a record that arrives ends the wait at once (runner._next_batch)
    commit_interval_s: float = 0.1
    # after the first records of a round arrive, wait this long for more (see runner);
    # at 2,600 commands/s, p99 after warm-up: 0 ms 319, 5 ms 173-202, 10 ms 210,
    # 20 ms 227-240 (fewer transactions, each waits longer) -- docs/benchmarks.md
    batch_linger_ms: int = 5
    # a round with outputs commits no sooner than this after the previous commit
    # ended, as Kafka Streams' commit.interval.ms (100 ms under exactly-once): under
    # load, fewer and larger transactions (fewer markers, less CPU in the broker and
    # the stage); a record that arrives after a quiet spell still commits at once.
    # 0: every round with outputs commits at once.
    commit_spacing_ms: int = 0
    # a signed command whose at_ms is further than this from the broker's record
    # timestamp is refused as stale: a captured command cannot be replayed later
    max_clock_skew_ms: int = 10 * 60 * 1000
    timer_interval_s: float = 1.0
    log_level: str = "info"
    # this worker among the workers of its stage: its transactional id is
    # {group}-{instance}. Stable across restarts (a pod's name, a process slot) so
    # that a restarted worker's init_transactions aborts what its predecessor left
    # open at once; unique among the live workers of a stage.
    instance: str = "0"
    # fault injection for tests (services/common/faults.py); empty in production
    faults: str = ""

    @classmethod
    def from_env(cls, **overrides) -> Settings:
        values = dict(
            bootstrap=_env("KAFKA_BOOTSTRAP_SERVERS", cls.bootstrap),
            kafka_auth=KafkaAuth.from_env(),
            topics=Topics(prefix=_env("COMMISSION_TOPIC_PREFIX", "")),
            partitions=int(_env("COMMISSION_PARTITIONS", str(cls.partitions))),
            replication_factor=int(_env("COMMISSION_REPLICATION_FACTOR",
                                        str(cls.replication_factor))),
            min_insync_replicas=int(_env("COMMISSION_MIN_INSYNC_REPLICAS", str(
                min(2, int(_env("COMMISSION_REPLICATION_FACTOR", "1")))))),
            group_prefix=_env("COMMISSION_GROUP_PREFIX", cls.group_prefix),
            metrics_port=int(_env("METRICS_PORT", "0")),
            data_dir=_env("COMMISSION_DATA_DIR", cls.data_dir),
            commit_interval_s=float(_env("COMMISSION_COMMIT_INTERVAL_S", str(cls.commit_interval_s))),
            batch_linger_ms=int(_env("COMMISSION_BATCH_LINGER_MS", str(cls.batch_linger_ms))),
            commit_spacing_ms=int(_env("COMMISSION_COMMIT_SPACING_MS", str(cls.commit_spacing_ms))),
            max_clock_skew_ms=int(_env("COMMISSION_MAX_CLOCK_SKEW_MS", str(cls.max_clock_skew_ms))),
            timer_interval_s=float(_env("COMMISSION_TIMER_INTERVAL_S", str(cls.timer_interval_s))),
            log_level=_env("LOG_LEVEL", cls.log_level),
            instance=_env("COMMISSION_INSTANCE", socket.gethostname()),
            faults=_env("COMMISSION_FAULTS", ""),
        )
        values.update(overrides)
        return cls(**values)
