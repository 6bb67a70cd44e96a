"""Runs the four services as real processes against the test stack, as `make run`
does, with this test's own topic prefix and consumer groups."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from collections import Counter
from pathlib import Path

from deploy.localstack import free_port
from schemas.commands import Command, Purchase, ReportPayment
from services.audit.read import read_records, read_topic
from services.audit.report import Report, reconcile_all
from services.common.auth import Keyring
from services.common.settings import PLAINTEXT, KafkaAuth, Settings, Topics
from services.common.topics import ensure_topics
from services.gateway import CommandSender

ROOT = Path(__file__).resolve().parents[2]
SERVICES = ("circulation", "allocation", "withdrawal", "cashout", "netting", "captures")


def answers_ready(port: int) -> bool:
    """The service on ``port`` answers /readyz with 200 (False while it does not answer)."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=2) as answer:
            return answer.status == 200
    except OSError:  # not serving yet, or 503 (HTTPError is an OSError)
        return False


class Pipeline:
    def __init__(self, bootstrap: str, prefix: str, logs: Path, *, partitions: int = 4,
                 timer_interval_s: float = 0.5, extra_env: dict[str, str] | None = None,
                 kafka_auth: KafkaAuth = PLAINTEXT, replication_factor: int = 1):
        self.settings = Settings(bootstrap=bootstrap, topics=Topics(prefix=f"{prefix}."),
                                 partitions=partitions, group_prefix=prefix,
                                 timer_interval_s=timer_interval_s, kafka_auth=kafka_auth,
                                 replication_factor=replication_factor)
        self.logs = logs
        self.logs.mkdir(parents=True, exist_ok=True)
        self.env = {
            **os.environ,
            "KAFKA_BOOTSTRAP_SERVERS": bootstrap,
            "COMMISSION_TOPIC_PREFIX": f"{prefix}.",
            "COMMISSION_GROUP_PREFIX": prefix,
            "COMMISSION_PARTITIONS": str(partitions),
            "COMMISSION_TIMER_INTERVAL_S": str(timer_interval_s),
            "COMMISSION_REPLICATION_FACTOR": str(replication_factor),
            "LOG_LEVEL": "info",
            "COMMISSION_DATA_DIR": str(logs.parent / "data"),
            **kafka_auth.env(),
            **(extra_env or {}),
        }
        self.env.pop("COMMISSION_KEYS_FILE", None)
        self.keyring = Keyring.from_env()
        self.procs: dict[tuple[str, int], subprocess.Popen] = {}
        self.metrics_ports: dict[tuple[str, int], int] = {}  # 0: none
        self.supervised = False
        self.restarts: Counter[str] = Counter()  # by restart_exited, per service
        self._restarting = threading.Lock()
        # send the payment system's captures and results through payment-results and
        # the captures stage, as in a deployment (escrow confirmations stay on
        # commands: a post sent right after one could overtake it). The expectation
        # reads commands as the sequencer received them (traffic.seen), so the route
        # changes nothing it checks; the captures stage is then under test too.
        self.via_captures = False
        ensure_topics(self.settings, self.settings.topics.all())
        self.sender = CommandSender(self.settings, self.keyring)

    @property
    def topics(self) -> Topics:
        return self.settings.topics

    def start(self, service: str, instance: int = 0, metrics_port: int = 0,
              **env_overrides: str) -> subprocess.Popen:
        log = open(self.logs / f"{service}-{instance}.log", "ab")  # noqa: SIM115
        env = {**self.env, "METRICS_PORT": str(metrics_port),
               # the worker's transactional id is {group}-{instance}: stable across a
               # restart of the same slot, unique among the live workers
               "COMMISSION_INSTANCE": str(instance), **env_overrides}
        proc = subprocess.Popen([sys.executable, "-m", f"services.{service}"], cwd=ROOT,
                                env=env, stdout=log, stderr=subprocess.STDOUT)
        log.close()
        self.procs[(service, instance)] = proc
        self.metrics_ports[(service, instance)] = metrics_port
        return proc

    def start_all(self, ready: bool = False) -> None:
        """Start every stage; with ``ready``, return once each answers /readyz (joined
        its group, has its partitions, restored its table): for a test whose clock
        starts with its first command (six processes starting on two cores take
        seconds)."""
        if not ready:
            for service in SERVICES:
                self.start(service)
            return
        ports = {service: free_port() for service in SERVICES}
        for service, port in ports.items():
            self.start(service, metrics_port=port)
        deadline = time.monotonic() + 90
        for service, port in ports.items():
            while not answers_ready(port):
                self.assert_running()
                if time.monotonic() > deadline:
                    raise AssertionError(f"{service} not ready after 90 s; logs in {self.logs}")
                time.sleep(0.2)

    def signal(self, service: str, instance: int = 0, sig: int = signal.SIGKILL) -> None:
        proc = self.procs.pop((service, instance))
        if proc.poll() is None:
            proc.send_signal(sig)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.send_signal(signal.SIGUSR1)  # its threads' stacks, into its log
            time.sleep(1)
            proc.kill()
            proc.wait()
            raise AssertionError(f"{service}-{instance} did not stop within 60 s of {sig}") from None

    def restart_exited(self) -> list[tuple[str, int]]:
        """What a supervisor does: start again every service that exited (a service
        exits with 75 when a transaction fails, e.g. while the broker is down)."""
        with self._restarting:  # a supervisor thread and the test's checks both call it
            exited = [k for k, p in self.procs.items() if p.poll() is not None]
            for service, instance in exited:  # on its port: its /readyz stays where it was
                self.start(service, instance, self.metrics_ports[(service, instance)])
                self.restarts[service] += 1
        return exited

    def assert_running(self) -> None:
        """No service exited; or, when the test plays a supervisor (``supervised``),
        what exited is started again (a stage exits 75 to be restarted)."""
        if self.supervised:
            self.restart_exited()
            return
        dead = {k: p.returncode for k, p in self.procs.items() if p.poll() is not None}
        assert not dead, f"services exited: {dead}; see {self.logs}"

    def stop_all(self) -> None:
        for key in list(self.procs):
            self.signal(*key, sig=signal.SIGTERM)

    def _send(self, command: Command) -> None:
        if self.via_captures and isinstance(command, (Purchase, ReportPayment)):
            self.sender.send(command, topic=self.topics.payment_results)
        else:
            self.sender.send(command)

    def send(self, *commands: Command) -> None:
        for command in commands:
            self._send(command)
        self.sender.flush()

    def feed_in_background(self, commands: list[Command], every: int,
                           pause_s: float) -> threading.Event:
        """Send from a thread, pausing ``pause_s`` after every ``every`` commands, so
        that what the test does meanwhile lands mid-stream. Set when all are sent."""
        done = threading.Event()

        def feed() -> None:
            for i, command in enumerate(commands):
                self._send(command)
                if i % every == every - 1:
                    self.sender.flush()
                    time.sleep(pause_s)
            self.sender.flush()
            done.set()

        threading.Thread(target=feed, daemon=True).start()
        return done

    def read(self, topic: str) -> list[bytes]:
        return read_topic(self.settings.bootstrap, topic, timeout_s=60,
                          auth=self.settings.kafka_auth)

    def wait_for(self, topic: str, count: int, timeout_s: float = 90.0) -> list[bytes]:
        """Committed records of ``topic`` once there are at least ``count``."""
        deadline = time.monotonic() + timeout_s
        while True:
            values = self.read(topic)
            if len(values) >= count:
                return values
            self.assert_running()
            if time.monotonic() > deadline:
                raise AssertionError(f"{topic}: {len(values)} records after {timeout_s}s, "
                                     f"wanted {count}; logs in {self.logs}")
            time.sleep(0.5)

    def audit(self) -> Report:
        t = self.topics
        settlements = read_records(self.settings.bootstrap, t.settlements, 60,
                                   self.settings.kafka_auth)
        # netting publishes one payment per settlement: wait until it has caught up
        payments = self.wait_for(t.payments, len(settlements))
        return reconcile_all(self.read(t.certificate_events), self.read(t.accepted),
                             [(r.partition, r.offset, r.value) for r in settlements], payments)
