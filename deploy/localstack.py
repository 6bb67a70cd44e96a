"""Local stack: a real single-node Apache Kafka broker (KRaft) and a real Redis server.

Used by `make up` / `make down` and by the test fixtures, so developers, CI and the
tests all run against the same thing. No Docker needed:

* Kafka comes from Maven Central. `deploy/kafka/pom.xml` pins the broker version; the
  jars are copied once into a cache folder outside git (``$COMMISSION_CACHE`` or
  ``~/.cache/commission-engine``) so the second start needs no network.
* Redis is Debian's ``redis-server``, started with explicit arguments and AOF on
  (``appendfsync always``) so that a restart of Redis loses nothing (REDIS_PERSISTENCE).

Every process started here has a pid file in its run folder; `stop` signals exactly
that pid and never looks processes up by name. Starting twice is harmless: a live
pid file whose port answers means "already up".

Command line::

    python -m deploy.localstack up      # start both, return when both answer
    python -m deploy.localstack up --brokers 3   # a 3-broker KRaft cluster instead
                                                 # (deploy/localstack.py: KafkaCluster)
    python -m deploy.localstack down    # stop what `up` started
    python -m deploy.localstack status
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import struct
import subprocess
import sys
import time
import urllib.request
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

KAFKA_VERSION = "3.9.1"
REPO_ROOT = Path(__file__).resolve().parent.parent
POM = REPO_ROOT / "deploy" / "kafka" / "pom.xml"

# Limits: how long we wait for a server to answer before declaring the start failed.
KAFKA_START_TIMEOUT_S = 90.0
REDIS_START_TIMEOUT_S = 20.0
REDIS_LOAD_TIMEOUT_S = 600.0  # replaying a kept AOF (wait_for_redis)
STOP_TIMEOUT_S = 30.0
# The broker shares 2 cores and the memory with Redis, the services and the tests.
KAFKA_HEAP = "-Xms768m -Xmx768m"
# the login of the optional SASL listener (local test broker only; not a secret)
SASL_USER = ("commission", "commission-local-secret")
TLS_STORE_PASSWORD = "commission-local-store"
MTLS_CLIENT = "commission-client"  # the common name of the mutual-TLS client certificate


def local_password(user: str) -> str:
    """The password of a test broker's extra SCRAM user (Kafka.acl_users)."""
    return f"{user}-local-secret"


# Processes this interpreter started, kept so they are reaped (and not reported by
# Python as leaked) when stopped; `make down` in another process uses the pid files.
_CHILDREN: dict[int, subprocess.Popen] = {}


def _spawn(argv: list[str], log: Path, env: dict[str, str] | None = None,
           cwd: Path | None = None) -> int:
    with open(log, "ab") as out:
        proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, start_new_session=True, env=env,
                                cwd=cwd)
    _CHILDREN[proc.pid] = proc
    return proc.pid


def _reap(pid: int) -> None:
    proc = _CHILDREN.pop(pid, None)
    if proc is not None:
        proc.wait()


def cache_dir() -> Path:
    root = os.environ.get("COMMISSION_CACHE") or str(Path.home() / ".cache" / "commission-engine")
    return Path(root) / f"kafka-{KAFKA_VERSION}"


def ensure_kafka_jars() -> Path:
    """Copy the pinned broker and its runtime dependencies from Maven Central once."""
    return maven_runtime(POM, cache_dir(), KAFKA_VERSION, "the Kafka broker jars")


def maven_runtime(pom: Path, root: Path, version: str, what: str) -> Path:
    """``root``/libs: the runtime dependencies of ``pom`` (with -Dkafka.version),
    copied from Maven Central once; a ``complete`` marker says the copy finished."""
    libs = root / "libs"
    marker = root / "complete"
    if marker.exists():
        return libs
    if shutil.which("mvn") is None:
        raise SystemExit(f"maven (mvn) is required to fetch {what}")
    tmp = root / "libs.partial"
    shutil.rmtree(tmp, ignore_errors=True)
    subprocess.run(
        [
            "mvn", "-q", "-B", "-f", str(pom),
            f"-Dkafka.version={version}",
            "dependency:copy-dependencies",
            "-DincludeScope=runtime",
            f"-DoutputDirectory={tmp}",
        ],
        check=True,
    )
    shutil.rmtree(libs, ignore_errors=True)
    tmp.rename(libs)
    marker.write_text(version + "\n")
    return libs
    if shutil.which("mvn") is None:
        raise SystemExit("maven (mvn) is required to fetch the Kafka broker jars")
    tmp = cache_dir() / "libs.partial"
    shutil.rmtree(tmp, ignore_errors=True)
    subprocess.run(
        [
            "mvn", "-q", "-B", "-f", str(POM),
            f"-Dkafka.version={KAFKA_VERSION}",
            "dependency:copy-dependencies",
            "-DincludeScope=runtime",
            f"-DoutputDirectory={tmp}",
        ],
        check=True,
    )
    shutil.rmtree(libs, ignore_errors=True)
    tmp.rename(libs)
    marker.write_text(KAFKA_VERSION + "\n")
    return libs


_HANDED_OUT: set[int] = set()


def free_port() -> int:
    """A port free now, never one this process was handed before: the kernel may
    answer the same port to two binds in a row, and two servers told the same port
    clash (a Redis Cluster node's bus on its neighbour's port did, in CI)."""
    while True:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        if port not in _HANDED_OUT:
            _HANDED_OUT.add(port)
            return port


def port_open(port: int, host: str = "127.0.0.1") -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


def pid_alive(pid: int) -> bool:
    proc = _CHILDREN.get(pid)
    if proc is not None:
        return proc.poll() is None
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie child of ours still "exists"; reap it if it is ours.
    try:
        done, _ = os.waitpid(pid, os.WNOHANG)
        return done == 0
    except ChildProcessError:
        return True


def read_pid(pidfile: Path) -> int | None:
    try:
        return int(pidfile.read_text().strip())
    except (FileNotFoundError, ValueError):
        return None


def stop_pidfile(pidfile: Path, timeout_s: float = STOP_TIMEOUT_S) -> bool:
    """SIGTERM the process named by the pid file, SIGKILL it after timeout_s."""
    pid = read_pid(pidfile)
    if pid is None:
        return False
    if pid_alive(pid):
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout_s
        while pid_alive(pid) and time.monotonic() < deadline:
            time.sleep(0.1)
        if pid_alive(pid):
            os.kill(pid, signal.SIGKILL)
            while pid_alive(pid):
                time.sleep(0.05)
    _reap(pid)
    pidfile.unlink(missing_ok=True)
    return True


def kafka_answers(port: int) -> bool:
    """True when the broker answers an ApiVersions request (not only accepts TCP)."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=2.0) as s:
            client_id = b"localstack"
            # ApiVersions v0: api_key=18, api_version=0, correlation_id=1, client_id.
            body = struct.pack(">hhih", 18, 0, 1, len(client_id)) + client_id
            s.sendall(struct.pack(">i", len(body)) + body)
            header = s.recv(4)
            if len(header) < 4:
                return False
            (size,) = struct.unpack(">i", header)
            data = b""
            while len(data) < size:
                chunk = s.recv(size - len(data))
                if not chunk:
                    return False
                data += chunk
            correlation_id, error_code = struct.unpack(">ih", data[:6])
            return correlation_id == 1 and error_code == 0
    except OSError:
        return False


def redis_reply(port: int) -> bytes | None:
    """What Redis on ``port`` answers a PING (``+PONG``, or ``-LOADING ...`` while it
    replays its data), None when nothing answers."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1.0) as s:
            s.sendall(b"PING\r\n")
            return s.recv(64) or None
    except OSError:
        return None


def redis_answers(port: int) -> bool:
    return (redis_reply(port) or b"").startswith(b"+PONG")


def wait_for_redis(port: int, pid: int | None, log: Path | None, what: str = "redis") -> None:
    """Wait until Redis answers, then until it has loaded its data. A Redis restarted
    on a kept run folder replays its AOF first (answering -LOADING meanwhile): 23 s for
    the ~500,000 keys a few `make run`s at DEMO_RATE=1000 left, longer than the start
    itself may take. So the start has REDIS_START_TIMEOUT_S, the replay as long as the
    server lives and says it is loading, up to REDIS_LOAD_TIMEOUT_S."""
    wait_until(lambda: redis_reply(port) is not None, REDIS_START_TIMEOUT_S, what, log, pid=pid)
    wait_until(lambda: not (redis_reply(port) or b"").startswith(b"-LOADING"),
               REDIS_LOAD_TIMEOUT_S, f"{what} (loading its data)", log, pid=pid)
    wait_until(lambda: redis_answers(port), REDIS_START_TIMEOUT_S, what, log, pid=pid)


def wait_until(check, timeout_s: float, what: str, log: Path | None = None,
               pid: int | None = None) -> None:
    """Wait for ``check``; give up at the timeout, or at once when process ``pid``
    (the server being started) has exited."""
    deadline = time.monotonic() + timeout_s
    exited = False
    while time.monotonic() < deadline:
        if check():
            return
        if pid is not None and not pid_alive(pid):
            exited = True
            break
        time.sleep(0.2)
    tail = ""
    if log is not None and log.exists():
        tail = "\n".join(log.read_text(errors="replace").splitlines()[-30:])
    why = "exited" if exited else f"did not answer within {timeout_s:.0f}s"
    raise RuntimeError(f"{what} {why}\n{tail}")


@dataclass(frozen=True)
class _Server:
    """A server this module starts: its pid file and log in ``run_dir``; running when
    that pid lives and its port answers (``answers``)."""

    run_dir: Path
    port: int
    name: ClassVar[str]

    @property
    def pidfile(self) -> Path:
        return self.run_dir / f"{self.name}.pid"

    @property
    def log(self) -> Path:
        return self.run_dir / f"{self.name}.log"

    def answers(self) -> bool:
        raise NotImplementedError

    def running(self) -> bool:
        pid = read_pid(self.pidfile)
        return pid is not None and pid_alive(pid) and self.answers()

    def stop(self) -> None:
        stop_pidfile(self.pidfile)


def new_cluster_id() -> str:
    return str(uuid.uuid4()).replace("-", "")[:22]


def replication(replicas: int) -> list[str]:
    """The broker settings for ``replicas`` copies of every partition. One node: 1
    and a minimum in-sync of 1, or the group and transaction coordinators never
    become ready. A cluster: every topic, the consumer offsets and the transaction
    state included, on ``replicas`` brokers (at most 3), a write acknowledged only
    by at least 2 in-sync replicas, and no out-of-sync replica ever elected leader
    (it would drop acknowledged writes: committed transactions)."""
    copies = min(replicas, 3)
    min_isr = 1 if copies == 1 else 2
    return [
        f"default.replication.factor={copies}",
        f"offsets.topic.replication.factor={copies}",
        f"transaction.state.log.replication.factor={copies}",
        f"transaction.state.log.min.isr={min_isr}",
        f"min.insync.replicas={min_isr}",
        "unclean.leader.election.enable=false",
        *(CLUSTER_TIMINGS if copies > 1 else []),
    ]


# How soon a cluster notices a node is gone. The defaults (a broker fenced 9 s after
# its last heartbeat, a follower out of the ISR after 30 s behind) would make every
# leader failover a 9-second stall; on one machine a node that stops answering for
# 4 s is gone, and a follower 10 s behind is out of sync. Not on a single node: there
# the controller fenced its own broker under load ("controller event queue
# overloaded. Timed out heartbeat from broker 1", a CI run with a cluster beside it),
# and a broker started again after a kill then took over 90 s to answer.
CLUSTER_TIMINGS = [
    "broker.heartbeat.interval.ms=500",
    "broker.session.timeout.ms=4000",
    "replica.lag.time.max.ms=10000",
    "controller.quorum.election.timeout.ms=1000",
    "controller.quorum.fetch.timeout.ms=2000",
    # a broker that comes back leads its preferred partitions again within seconds
    "leader.imbalance.check.interval.seconds=10",
]


@dataclass(frozen=True)
class Kafka(_Server):
    """A single-node KRaft broker (combined controller and broker) on 127.0.0.1."""

    name: ClassVar[str] = "kafka"
    controller_port: int
    default_partitions: int = 4
    # optional listeners that need a login (SASL PLAIN or SCRAM-SHA-256 with SASL_USER),
    # in the clear and over TLS (a certificate for 127.0.0.1 made at start, its PEM in
    # tls_ca_file), for the tests of authenticated clients
    sasl_port: int | None = None
    tls_port: int | None = None
    # a TLS listener that logs clients in by their certificate (mutual TLS); the client's
    # certificate and key are made at start (client_cert_files), its principal is a
    # super user
    mtls_port: int | None = None
    # more SCRAM users (password: local_password(user)), whom the broker's ACLs then
    # govern; SASL_USER and the listener in the clear (ANONYMOUS) stay super users
    acl_users: tuple[str, ...] = ()
    # one node of a KafkaCluster (below): its id, the quorum's voters and the
    # replication every topic gets; alone, node 1 is its own quorum with 1 replica
    node_id: int = 1
    voters: str | None = None
    replicas: int = 1
    heap: str = KAFKA_HEAP
    # "controller": a controller-only voter of a cluster's quorum (port is its
    # controller listener; it serves no clients)
    roles: str = "broker,controller"

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def sasl_bootstrap(self) -> str | None:
        return None if self.sasl_port is None else f"127.0.0.1:{self.sasl_port}"

    @property
    def tls_bootstrap(self) -> str | None:
        return None if self.tls_port is None else f"127.0.0.1:{self.tls_port}"

    @property
    def mtls_bootstrap(self) -> str | None:
        return None if self.mtls_port is None else f"127.0.0.1:{self.mtls_port}"

    @property
    def tls_ca_file(self) -> Path:
        return self.run_dir / "tls" / "broker.pem"

    @property
    def client_cert_files(self) -> tuple[Path, Path]:
        """(certificate, key) PEM files a client presents on the mutual-TLS listener."""
        return self.run_dir / "tls" / "client.pem", self.run_dir / "tls" / "client.key"

    @property
    def _keystore(self) -> Path:
        return self.run_dir / "tls" / "broker.p12"

    def _make_certificate(self) -> None:
        """A self-signed certificate for 127.0.0.1: its own CA, trusted by the tests."""
        if self._keystore.exists():
            return
        self._keystore.parent.mkdir(parents=True, exist_ok=True)
        store = ["-keystore", str(self._keystore), "-storetype", "PKCS12",
                 "-storepass", TLS_STORE_PASSWORD]
        subprocess.run(["keytool", "-genkeypair", "-alias", "broker", "-keyalg", "RSA",
                        "-keysize", "2048", "-validity", "30", "-dname", "CN=127.0.0.1",
                        "-ext", "SAN=IP:127.0.0.1,DNS:localhost", *store],
                       check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        subprocess.run(["keytool", "-exportcert", "-rfc", "-alias", "broker",
                        "-file", str(self.tls_ca_file), *store],
                       check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        cert, key = self.client_cert_files
        subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes",
                        "-keyout", str(key), "-out", str(cert), "-days", "30",
                        "-subj", f"/CN={MTLS_CLIENT}"],
                       check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def properties(self) -> str:
        # One node: every internal topic has replication factor and min ISR 1, or
        # the group coordinator and the transaction coordinator never become ready.
        # In a cluster (replicas > 1): replication() below.
        if self.roles == "controller":
            return "\n".join([
                "process.roles=controller", f"node.id={self.node_id}",
                f"controller.quorum.voters={self.voters}",
                f"listeners=CONTROLLER://127.0.0.1:{self.controller_port}",
                "controller.listener.names=CONTROLLER",
                "listener.security.protocol.map=CONTROLLER:PLAINTEXT",
                f"log.dirs={self.run_dir / 'data'}", *replication(self.replicas),
                "num.network.threads=1", "num.io.threads=1", "background.threads=1", ""])
        listeners = [f"PLAINTEXT://127.0.0.1:{self.port}"]
        security = []  # login listeners, TLS and the authorizer, when asked for
        logins = [(name, port) for name, port in (("SASL_PLAINTEXT", self.sasl_port),
                                                  ("SASL_SSL", self.tls_port))
                  if port is not None]
        if logins:
            security.append("sasl.enabled.mechanisms=PLAIN,SCRAM-SHA-256")
        for name, port in logins:
            listeners.append(f"{name}://127.0.0.1:{port}")
            user, password = SASL_USER
            prefix = f"listener.name.{name.lower()}"
            security += [
                f"{prefix}.plain.sasl.jaas.config="
                "org.apache.kafka.common.security.plain.PlainLoginModule required "
                f'user_{user}="{password}";',
                f"{prefix}.scram-sha-256.sasl.jaas.config="
                "org.apache.kafka.common.security.scram.ScramLoginModule required;",
            ]
        if self.mtls_port is not None:
            listeners.append(f"SSL://127.0.0.1:{self.mtls_port}")
            security += ["listener.name.ssl.ssl.client.auth=required",
                     "listener.name.ssl.ssl.truststore.type=PEM",
                     f"listener.name.ssl.ssl.truststore.location={self.client_cert_files[0]}"]
        if logins or self.mtls_port is not None:
            security += ["authorizer.class.name="
                     "org.apache.kafka.metadata.authorizer.StandardAuthorizer",
                     f"super.users=User:ANONYMOUS;User:{SASL_USER[0]};User:CN={MTLS_CLIENT}"]
        if self.tls_port is not None or self.mtls_port is not None:
            security += ["ssl.keystore.type=PKCS12", f"ssl.keystore.location={self._keystore}",
                     f"ssl.keystore.password={TLS_STORE_PASSWORD}",
                     f"ssl.key.password={TLS_STORE_PASSWORD}"]
        return "\n".join([
            "process.roles=broker,controller",
            f"node.id={self.node_id}",
            f"controller.quorum.voters={self.voters or f'1@127.0.0.1:{self.controller_port}'}",
            f"listeners={','.join(listeners)},CONTROLLER://127.0.0.1:{self.controller_port}",
            f"advertised.listeners={','.join(listeners)}",
            "controller.listener.names=CONTROLLER",
            "inter.broker.listener.name=PLAINTEXT",
            "listener.security.protocol.map=CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT,"
            "SASL_PLAINTEXT:SASL_PLAINTEXT,SASL_SSL:SASL_SSL,SSL:SSL",
            *security,
            f"log.dirs={self.run_dir / 'data'}",
            f"num.partitions={self.default_partitions}",
            *replication(self.replicas),
            "offsets.topic.num.partitions=8",
            "transaction.state.log.num.partitions=8",
            "group.initial.rebalance.delay.ms=0",
            "auto.create.topics.enable=true",
            "log.retention.hours=168",
            "num.network.threads=2",
            "num.io.threads=2",
            "background.threads=2",
            # after a kill every partition's log is recovered: the tests' hundreds of
            # topics took 19 s on one thread, 15 s on four
            "num.recovery.threads.per.data.dir=4",
            "",
        ])

    def start(self) -> None:
        if self.running():
            return
        self.launch()
        wait_until(lambda: kafka_answers(self.port), KAFKA_START_TIMEOUT_S, "kafka", self.log)

    def launch(self, cluster_id: str | None = None) -> int:
        """Start the process (formatting its storage the first time, with
        ``cluster_id`` or a new one) and return its pid, without waiting: the nodes
        of a cluster answer only once a quorum of them runs."""
        libs = ensure_kafka_jars()
        self.run_dir.mkdir(parents=True, exist_ok=True)
        if self.tls_port is not None or self.mtls_port is not None:
            self._make_certificate()
        props = self.run_dir / "server.properties"
        props.write_text(self.properties())
        log4j = self.run_dir / "log4j.properties"
        log4j.write_text(
            "log4j.rootLogger=WARN, stdout\n"
            "log4j.appender.stdout=org.apache.log4j.ConsoleAppender\n"
            "log4j.appender.stdout.layout=org.apache.log4j.PatternLayout\n"
            "log4j.appender.stdout.layout.ConversionPattern=[%d] %p %m (%c)%n\n"
            "log4j.logger.kafka.server.KafkaServer=INFO\n"
            "log4j.logger.kafka.server.KafkaRaftServer=INFO\n"
        )
        java = ["java", f"-Dlog4j.configuration=file:{log4j}", *self.heap.split(),
                # the collector's pauses: for a stall the services' metrics cannot explain
                "-XX:+UseSerialGC",
                f"-Xlog:gc:file={self.run_dir}/gc.log:time,uptime:filecount=2,filesize=10m",
                "-cp", f"{libs}/*"]
        if not (self.run_dir / "data" / "meta.properties").exists():
            scram = []
            if self.sasl_port is not None or self.tls_port is not None:
                users = [SASL_USER, *((u, local_password(u)) for u in self.acl_users)]
                scram = [arg for user, password in users for arg in (
                    "--add-scram", f"SCRAM-SHA-256=[name={user},password={password}]")]
            subprocess.run(
                [*java, "kafka.tools.StorageTool", "format", "--ignore-formatted",
                 "-t", cluster_id or new_cluster_id(), "-c", str(props), *scram],
                check=True, stdout=subprocess.DEVNULL,
            )
        pid = _spawn([*java, "kafka.Kafka", str(props)], self.log)
        self.pidfile.write_text(f"{pid}\n")
        return pid

    def answers(self) -> bool:
        return kafka_answers(self.port)

    def kill(self) -> None:
        """SIGKILL the broker: for tests of what survives a broker crash."""
        pid = read_pid(self.pidfile)
        if pid is not None and pid_alive(pid):
            os.kill(pid, signal.SIGKILL)
            while pid_alive(pid):
                time.sleep(0.05)
            _reap(pid)
        self.pidfile.unlink(missing_ok=True)


# How Redis keeps its data (deploy/compose.yaml says the same):
# - AOF on, fsynced before each write is answered (``appendfsync always``): the API's
#   accounts and session ends live here, and no topic could give them back;
# - no RDB snapshots (``save ""``): the AOF is the one copy;
# - the AOF rewritten (a forked child writes the dataset anew, then the AOF starts
#   over from it) once it has grown to five times what the last rewrite wrote
#   (``auto-aof-rewrite-percentage 400``; Redis's default is twice), and written
#   uncompressed (``rdbcompression no``). A rewrite takes a core for a time that grows
#   with the dataset, and on a machine whose cores are busy it holds everything back
#   meanwhile: at the read model's half-maximum rate on two cores (issue #25) every
#   rewrite showed as a burst of up to a second in the read model's trail, and with
#   the defaults one came every ~12 s (1.1-1.7 s each, compressing every value was most
#   of it; 0.5-0.6 s uncompressed, for a file 18 % larger). Four times rarer, the time
#   spent rewriting is a quarter; the price is disk (the AOF up to five times the
#   dataset) and a longer replay when Redis restarts. docs/benchmarks.md, "The read
#   model's trail and Redis's AOF rewrites".
REDIS_PERSISTENCE = ("--appendonly", "yes", "--appendfsync", "always", "--save", "",
                     "--auto-aof-rewrite-percentage", "400", "--rdbcompression", "no")


@dataclass(frozen=True)
class Redis(_Server):
    """Debian's redis-server with AOF on, so a restart loses nothing."""

    name: ClassVar[str] = "redis"

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        if self.running():
            return
        server = shutil.which("redis-server")
        if server is None:
            raise SystemExit("redis-server is missing: run `make install` (apt-get install redis-server)")
        data = self.run_dir / "redis-data"
        data.mkdir(parents=True, exist_ok=True)
        pid = _spawn(
            [server, "--port", str(self.port), "--bind", "127.0.0.1",
             "--dir", str(data), *REDIS_PERSISTENCE, "--daemonize", "no",
             "--protected-mode", "yes"],
            self.log,
        )
        self.pidfile.write_text(f"{pid}\n")
        wait_for_redis(self.port, pid, self.log)

    def answers(self) -> bool:
        return redis_answers(self.port)


PROMETHEUS_START_TIMEOUT_S = 30.0
ALERT_RULES = REPO_ROOT / "deploy" / "prometheus" / "alerts.yml"


def prometheus_answers(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/-/ready", timeout=1) as r:
            return r.status == 200
    except OSError:
        return False


@dataclass(frozen=True)
class Prometheus(_Server):
    """Debian's ``prometheus`` server, scraping the processes given to ``start`` on
    127.0.0.1 with the project's alert rules loaded; its data in its own folder.

    Each target is its own scrape target whose ``instance`` label is the process's
    name (``circulation``, ``api``, ...), so an alert says which process is down.
    """

    name: ClassVar[str] = "prometheus"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def config(self, jobs: dict[str, dict[str, int]], rules: Path, interval_s: float) -> str:
        """The scrape configuration: ``jobs`` maps a job name to {process name: port}."""
        lines = ["global:", f"  scrape_interval: {interval_s:g}s",
                 f"  evaluation_interval: {interval_s:g}s", "rule_files:",
                 f"  - {json.dumps(str(rules))}", "scrape_configs:"]
        for job, targets in jobs.items():
            lines += [f"  - job_name: {job}", "    static_configs:"]
            lines += [f"      - targets: [\"127.0.0.1:{port}\"]\n"
                      f"        labels: {{instance: {name}}}" for name, port in targets.items()]
        return "\n".join(lines) + "\n"

    def start(self, jobs: dict[str, dict[str, int]], *, rules: Path = ALERT_RULES,
              interval_s: float = 5.0) -> None:
        if self.running():
            return
        server = shutil.which("prometheus")
        if server is None:
            raise SystemExit("prometheus is missing: run `make install` (apt-get install prometheus)")
        self.run_dir.mkdir(parents=True, exist_ok=True)
        config = self.run_dir / "prometheus.yml"
        config.write_text(self.config(jobs, rules, interval_s))
        pid = _spawn([server, f"--config.file={config}",
                      f"--storage.tsdb.path={self.run_dir / 'data'}",
                      "--storage.tsdb.retention.time=2d",
                      f"--web.listen-address=127.0.0.1:{self.port}"], self.log)
        self.pidfile.write_text(f"{pid}\n")
        # ours must answer, not another server on the port (it would exit, port taken)
        wait_until(lambda: pid_alive(pid) and prometheus_answers(self.port),
                   PROMETHEUS_START_TIMEOUT_S, "prometheus", self.log, pid=pid)

    def answers(self) -> bool:
        return prometheus_answers(self.port)


# --- a KRaft cluster of N brokers on this machine (make up BROKERS=3) ---------------

# Three brokers, Redis, the stages and the tests share 2 cores: small heaps.
CLUSTER_HEAP = "-Xms128m -Xmx256m"


@dataclass(frozen=True)
class KafkaCluster:
    """N combined broker+controller KRaft nodes on 127.0.0.1, each with its own ports,
    data folder (``run_dir``/node-{id}) and pid file, all formatted with one cluster
    id (``run_dir``/cluster.id). With 3 or more nodes every topic has 3 replicas and
    a minimum of 2 in sync (``replication``). Nodes are numbered from 1 (node ids)."""

    run_dir: Path
    ports: tuple[int, ...]
    controller_ports: tuple[int, ...]
    default_partitions: int = 4
    heap: str = CLUSTER_HEAP
    # controller-only voters beyond the brokers (node ids after theirs), on these
    # ports. With 3 combined nodes, two stopped take the quorum with them: no leader
    # moves, no replica leaves the ISR, writes time out. Two more voters keep the
    # quorum alive with one broker left, so the ISR does shrink below
    # min.insync.replicas and writes are refused NOT_ENOUGH_REPLICAS (the tests).
    extra_controller_ports: tuple[int, ...] = ()

    @classmethod
    def on_free_ports(cls, run_dir: Path, brokers: int = 3, controllers: int = 0,
                      **kwargs) -> KafkaCluster:
        return cls(run_dir, tuple(free_port() for _ in range(brokers)),
                   tuple(free_port() for _ in range(brokers)),
                   extra_controller_ports=tuple(free_port() for _ in range(controllers)),
                   **kwargs)

    @classmethod
    def on_ports_from(cls, run_dir: Path, base: int, brokers: int = 3) -> KafkaCluster:
        """Node i on base+2(i-1), its controller listener on the port after."""
        return cls(run_dir, tuple(base + 2 * i for i in range(brokers)),
                   tuple(base + 2 * i + 1 for i in range(brokers)))

    @property
    def node_ids(self) -> list[int]:
        """The brokers' node ids."""
        return list(range(1, len(self.ports) + 1))

    @property
    def all_ids(self) -> list[int]:
        """Every node's id: the brokers', then the controller-only voters'."""
        return list(range(1, len(self.ports) + len(self.extra_controller_ports) + 1))

    def node(self, node_id: int) -> Kafka:
        cports = (*self.controller_ports, *self.extra_controller_ports)
        voters = ",".join(f"{i}@127.0.0.1:{port}"
                          for i, port in zip(self.all_ids, cports, strict=True))
        common = dict(run_dir=self.run_dir / f"node-{node_id}",
                      controller_port=cports[node_id - 1],
                      default_partitions=self.default_partitions, node_id=node_id,
                      voters=voters, replicas=len(self.ports))
        if node_id > len(self.ports):
            return Kafka(port=cports[node_id - 1], roles="controller", heap="-Xms64m -Xmx128m",
                         **common)
        return Kafka(port=self.ports[node_id - 1], heap=self.heap, **common)

    @property
    def nodes(self) -> list[Kafka]:
        """Every node, brokers first."""
        return [self.node(i) for i in self.all_ids]

    @property
    def bootstrap(self) -> str:
        return ",".join(self.node(i).bootstrap for i in self.node_ids)

    @property
    def replication_factor(self) -> int:
        return min(len(self.ports), 3)

    def _cluster_id(self) -> str:
        path = self.run_dir / "cluster.id"
        if not path.exists():
            self.run_dir.mkdir(parents=True, exist_ok=True)
            path.write_text(new_cluster_id() + "\n")
        return path.read_text().strip()

    def start(self, node_ids: list[int] | None = None) -> None:
        """Start the nodes (all by default) that are not running, together (a node
        answers only once a quorum of controllers runs), and wait until each answers."""
        cluster_id = self._cluster_id()
        nodes = [self.node(i) for i in (node_ids or self.all_ids)]
        started = {node.node_id: node.launch(cluster_id) for node in nodes if not node.running()}
        for node in nodes:
            if node.node_id in started:
                wait_until(lambda n=node: kafka_answers(n.port), KAFKA_START_TIMEOUT_S,
                           f"kafka node {node.node_id}", node.log, pid=started[node.node_id])
        # a broker answers ApiVersions before it has registered with the controller
        # and caught up the metadata: wait until the cluster lists every live broker
        wait_until(self._lists_live_brokers, KAFKA_START_TIMEOUT_S, "kafka cluster metadata")

    def _lists_live_brokers(self) -> bool:
        from confluent_kafka import KafkaException
        from confluent_kafka.admin import AdminClient

        live = [i for i in self.node_ids if self.node(i).running()]
        bootstrap = ",".join(self.node(i).bootstrap for i in live)
        try:
            brokers = AdminClient({"bootstrap.servers": bootstrap}).list_topics(timeout=5).brokers
        except KafkaException:
            return False
        return sorted(brokers) == live

    def running(self) -> bool:
        return all(node.running() for node in self.nodes)

    def running_nodes(self) -> list[int]:
        return [node.node_id for node in self.nodes if node.running()]

    def running_brokers(self) -> list[int]:
        return [i for i in self.node_ids if self.node(i).running()]

    def kill(self, node_id: int) -> None:
        """SIGKILL one node: a broker (and a controller) crashing."""
        self.node(node_id).kill()

    def stop(self) -> None:
        """SIGTERM every node at once (a node shutting down alone waits for the
        others to take its partitions over), SIGKILL what has not stopped in time."""
        pids = {node.pidfile: read_pid(node.pidfile) for node in self.nodes}
        for pid in pids.values():
            if pid is not None and pid_alive(pid):
                os.kill(pid, signal.SIGTERM)
        for pidfile in pids:
            stop_pidfile(pidfile)

    def active_controller(self) -> int | None:
        """The node id of the KRaft quorum's leader (the active controller), as the
        running nodes last recorded it (the quorum-state file: leader and epoch)."""
        best = (-1, None)
        for node in self.nodes:
            if not node.running():
                continue
            path = node.run_dir / "data" / "__cluster_metadata-0" / "quorum-state"
            try:
                state = json.loads(path.read_text())
            except (OSError, ValueError):
                continue
            leader, epoch = state.get("leaderId", -1), state.get("leaderEpoch", -1)
            if leader is not None and leader >= 1 and epoch > best[0]:
                best = (epoch, leader)
        return best[1]


def default_cluster(brokers: int) -> KafkaCluster:
    """`make up BROKERS=3`: its own folder and ports (KAFKA_CLUSTER_PORT, default
    19092: nodes on 19092, 19094, 19096, controllers one above), so it never clashes
    with the one-broker stack."""
    return KafkaCluster.on_ports_from(default_run_dir() / "kafka-cluster",
                                      int(os.environ.get("KAFKA_CLUSTER_PORT", "19092")), brokers)


def _cluster_folders() -> list[Path]:
    root = default_run_dir() / "kafka-cluster"
    return sorted(root.glob("node-*")) if root.exists() else []


def default_run_dir() -> Path:
    return Path(os.environ.get("COMMISSION_RUN_DIR", REPO_ROOT / "run"))


def default_stack() -> tuple[Kafka, Redis]:
    run = default_run_dir()
    kafka = Kafka(
        run_dir=run / "kafka",
        port=int(os.environ.get("KAFKA_PORT", "9092")),
        controller_port=int(os.environ.get("KAFKA_CONTROLLER_PORT", "9093")),
    )
    redis = Redis(run_dir=run / "redis", port=int(os.environ.get("REDIS_PORT", "6379")))
    return kafka, redis


def default_prometheus() -> Prometheus:
    """The Prometheus server `make run` starts (DEMO_PROMETHEUS_PORT, default 9090)."""
    return Prometheus(default_run_dir() / "prometheus",
                      int(os.environ.get("DEMO_PROMETHEUS_PORT", "9090")))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m deploy.localstack")
    parser.add_argument("action", choices=["up", "down", "status", "fetch"])
    parser.add_argument("--brokers", type=int, default=1,
                        help="more than 1: a KRaft cluster of that many brokers "
                             "(replication factor 3, min.insync.replicas 2)")
    args = parser.parse_args(argv)
    kafka, redis = default_stack()
    # the cluster's size is how many node folders `up --brokers N` made
    cluster = default_cluster(args.brokers if args.brokers > 1 else len(_cluster_folders()))
    if args.action == "fetch":
        print(ensure_kafka_jars())
    elif args.action == "up":
        if args.brokers > 1:
            cluster.start()
            print(f"kafka  {cluster.bootstrap}  ({len(cluster.ports)} brokers, replication "
                  f"factor {cluster.replication_factor}; logs {cluster.run_dir}/node-*)")
            print(f"       export KAFKA_BOOTSTRAP_SERVERS={cluster.bootstrap} "
                  f"COMMISSION_REPLICATION_FACTOR={cluster.replication_factor}")
        else:
            kafka.start()
            print(f"kafka  {kafka.bootstrap}  (logs {kafka.log})")
        redis.start()
        print(f"redis  {redis.url}  (logs {redis.log})")
    elif args.action == "down":
        default_prometheus().stop()  # if a `make run` left one (its pid file says)
        redis.stop()
        kafka.stop()
        if cluster.ports:
            cluster.stop()
        print("stopped what `up` started")
    else:
        kafka_up = kafka.running()
        print(f"kafka  {kafka.bootstrap}  {'up' if kafka_up else 'down'}")
        if cluster.ports:
            up = cluster.running_nodes()
            kafka_up = kafka_up or bool(up)
            print(f"kafka  {cluster.bootstrap}  nodes up: {up or 'none'}")
        print(f"redis  {redis.url}  {'up' if redis.running() else 'down'}")
        return 0 if kafka_up and redis.running() else 1
    return 0


if __name__ == "__main__":
    sys.exit(main())


@dataclass(frozen=True)
class RedisCluster:
    """A Redis Cluster of three masters (no replicas) from Debian's redis-server, for
    the tests of the read model and the API on a cluster (issue #25): one process per
    port, each with its pid file, the slots split by ``redis-cli --cluster create``.
    AOF on with ``appendfsync always``, as the single Redis."""

    run_dir: Path
    ports: tuple[int, int, int]
    bus_ports: tuple[int, int, int]  # the nodes' cluster bus (else port + 10,000)

    @property
    def url(self) -> str:
        return f"redis+cluster://127.0.0.1:{self.ports[0]}/0"

    def node(self, port: int) -> Redis:
        return Redis(run_dir=self.run_dir / f"node-{port}", port=port)

    def start(self) -> None:
        server, cli = shutil.which("redis-server"), shutil.which("redis-cli")
        if server is None or cli is None:
            raise SystemExit("redis-server is missing: run `make install` (apt-get install redis-server)")
        pids = []
        for port, bus in zip(self.ports, self.bus_ports, strict=True):
            node = self.node(port)
            (node.run_dir / "redis-data").mkdir(parents=True, exist_ok=True)
            pid = _spawn([server, "--port", str(port), "--cluster-port", str(bus),
                          "--bind", "127.0.0.1",
                          "--dir", str(node.run_dir / "redis-data"), "--cluster-enabled", "yes",
                          "--cluster-config-file", "nodes.conf", *REDIS_PERSISTENCE,
                          "--daemonize", "no", "--protected-mode", "yes"], node.log)
            node.pidfile.write_text(f"{pid}\n")
            pids.append(pid)
        for port, pid in zip(self.ports, pids, strict=True):
            node = self.node(port)
            wait_for_redis(port, pid, node.log, "redis cluster node")
        log = self.run_dir / "cluster-create.log"
        with open(log, "ab") as out:
            subprocess.run([cli, "--cluster", "create",
                            *(f"127.0.0.1:{p}" for p in self.ports),
                            "--cluster-replicas", "0", "--cluster-yes"],
                           stdout=out, stderr=subprocess.STDOUT, check=True, timeout=60)

        def ok() -> bool:
            answer = subprocess.run([cli, "-p", str(self.ports[0]), "cluster", "info"],
                                    capture_output=True, text=True, timeout=5).stdout
            return "cluster_state:ok" in answer
        wait_until(ok, REDIS_START_TIMEOUT_S, "redis cluster", log)

    def stop(self) -> None:
        for port in self.ports:
            self.node(port).stop()
