"""`make run`: start the stack if needed, the seven stages (the fraud stage too), the read model, the API,
the demo's payment system and a demo feeder, and show a live one-screen summary
until Ctrl-C (or DEMO_SECONDS), then shut down cleanly and run the audit. While it
runs, the audit runs in its own process every 15 s (niced), as deployments run it.

    DEMO_RATE=100       commands per second from the feeder
    DEMO_SECONDS=0      stop by itself after this many seconds (0: until Ctrl-C)
    DEMO_METRICS_BASE_PORT=9101   /metrics of the five money stages on 9101..9105, the
                                  read model on 9106, the audit on 9107, captures 9108
    DEMO_API_PORT=8080            the web pages and the JSON API (its /metrics on the
    DEMO_API_OPS_PORT=9109        ops port, not the public one)
    DEMO_FRAUD_PORT=9110          /metrics of the fraud stage
    DEMO_PAYSIM_PORT=8090         the simulated payment system: checkout pages
    DEMO_PROMETHEUS_PORT=9090     a Prometheus server scraping all of them (and the
                                  API) every 5 s with deploy/prometheus/alerts.yml

Watch the settlements from a second terminal with `make watch` (or
`python -m services.watch payments`).
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from collections import Counter, defaultdict
from pathlib import Path

import msgspec
from rich.console import Console
from rich.live import Live
from rich.panel import Panel
from rich.table import Table

from deploy.localstack import (
    REPO_ROOT,
    Prometheus,
    default_prometheus,
    default_run_dir,
    default_stack,
    pid_alive,
    read_pid,
)
from schemas.commands import ReportPayment
from schemas.payments import Settlement
from schemas.rejections import Rejection
from services.audit.__main__ import main as audit
from services.common.auth import Keyring
from services.common.metrics import scrape, total
from services.common.settings import Settings
from services.common.topics import ensure_topics
from services.demo.clients import FastSender, committed_batches
from services.demo.feeder import Feeder
from services.gateway import CommandSender

SERVICES = ("captures", "circulation", "allocation", "withdrawal", "cashout", "netting",
            "fraud")
# /metrics ports from METRICS_BASE_PORT up: the five money stages, the read model,
# the audit, then the captures stage (the payment system's way in)
PORT_ORDER = ("circulation", "allocation", "withdrawal", "cashout", "netting", "readmodel",
              "audit", "captures")
# the platform side: the read model (faust), the API over it, and the demo's payment
# system (its checkout pages; it holds the payment system's private key, the API not)
PLATFORM = ("readmodel", "api", "paysim")
METRICS_BASE_PORT = int(os.environ.get("DEMO_METRICS_BASE_PORT", "9101"))
API_PORT = int(os.environ.get("DEMO_API_PORT", "8080"))
API_OPS_PORT = int(os.environ.get("DEMO_API_OPS_PORT", "9109"))
FRAUD_PORT = int(os.environ.get("DEMO_FRAUD_PORT", "9110"))
PAYSIM_PORT = int(os.environ.get("DEMO_PAYSIM_PORT", "8090"))
AUDIT_PORT = METRICS_BASE_PORT + PORT_ORDER.index("audit")
AUDIT_EVERY_S = 15
# ... and it runs at most a fifth of the time: each pass re-reads every topic, longer
# as they grow (services/audit/__main__.py pause_after)
AUDIT_DUTY = 0.2
AUDIT_NICE = 10
# Each stage commits at most every 100 ms (Kafka Streams' exactly-once default,
# services/common/settings.py commit_spacing_ms). At DEMO_RATE=1000 on two cores,
# committing every round made ~104 transactions/s across the stages and the broker
# took 58 % of a core; spaced: ~53/s and 42 % (docs/benchmarks.md, sixth pass).
COMMIT_SPACING_MS = "100"
# how long the feeder waits for the stages and the read model to be ready
READY_WITHIN_S = 180


def yield_cores(pid: int, nice: int) -> None:
    """Make a process started in a session of its own (start_new_session) yield the
    cores to the others. Where the kernel groups processes by session for scheduling
    (autogroup, /proc/sys/kernel/sched_autogroup_enabled, on by default in Debian), a
    process's own nice value only weighs inside its session's group, and the groups
    share the cores equally: the audit started with `nice -n 10` took 10-23 % of a core
    at DEMO_RATE=1000 while the pipeline was short of CPU. The group's nice value is
    written to /proc/PID/autogroup (man 7 sched); without autogroup the file is absent
    and `nice` alone does it."""
    try:
        Path(f"/proc/{pid}/autogroup").write_text(f"{nice}\n")
    except OSError:
        pass


class Services:
    """The five stages as child processes, with pid files and restart on exit 75."""

    def __init__(self, settings: Settings, folder: Path, redis_url: str) -> None:
        self.settings = settings
        self.redis_url = redis_url
        self.folder = folder
        folder.mkdir(parents=True, exist_ok=True)
        self.procs: dict[str, subprocess.Popen] = {}
        self.restarts: Counter = Counter()

    def port(self, name: str) -> int:
        """9101-9105 the five money stages, 9106 the read model, 9108 the captures
        stage (the API serves its own /metrics)."""
        if name == "fraud":  # after the API's ops port
            return FRAUD_PORT
        return METRICS_BASE_PORT + PORT_ORDER.index(name)

    def start(self, name: str) -> None:
        pidfile = self.folder / f"{name}.pid"
        old = read_pid(pidfile)
        if old is not None and pid_alive(old):
            os.kill(old, signal.SIGTERM)  # ours, from an earlier run that did not stop
        env = {"COMMISSION_COMMIT_SPACING_MS": COMMIT_SPACING_MS,  # unless set otherwise
               **os.environ, "KAFKA_BOOTSTRAP_SERVERS": self.settings.bootstrap,
               "REDIS_URL": self.redis_url, "API_PORT": str(API_PORT),
               "API_OPS_PORT": str(API_OPS_PORT), "PAYSIM_PORT": str(PAYSIM_PORT),
               "PAYMENT_SYSTEM_URL": f"http://127.0.0.1:{PAYSIM_PORT}",
               "METRICS_PORT": str(self.port(name))
               if name in PORT_ORDER or name == "fraud" else "0"}
        command = [sys.executable, "-m", f"services.{name}"]
        if name == "audit":  # a check beside the traffic: it yields the cores to it
            command = ["nice", "-n", str(AUDIT_NICE), *command, "--every", str(AUDIT_EVERY_S),
                       "--duty", str(AUDIT_DUTY),
                       "--port", str(AUDIT_PORT)]
        with open(self.folder / f"{name}.log", "ab") as log:
            proc = subprocess.Popen(command, env=env, cwd=REPO_ROOT, stdout=log,
                                    stderr=subprocess.STDOUT, start_new_session=True)
        if name == "audit":
            yield_cores(proc.pid, AUDIT_NICE)
        pidfile.write_text(f"{proc.pid}\n")
        self.procs[name] = proc

    def ready(self, name: str) -> bool:
        """The service's /readyz answers 200 (a stage: joined its group, its partitions
        restored; the read model: assigned, Redis answering)."""
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port(name)}/readyz",
                                        timeout=1) as answer:
                return answer.status == 200
        except OSError:  # refused while it starts, 503 (HTTPError) while not ready
            return False

    def wait_ready(self, names: tuple[str, ...], timeout_s: float) -> list[str]:
        """Wait until every one of ``names`` is ready (supervising them meanwhile);
        the names still not ready when ``timeout_s`` ran out."""
        deadline = time.monotonic() + timeout_s
        waiting = list(names)
        while waiting and time.monotonic() < deadline:
            self.supervise()
            waiting = [name for name in waiting if not self.ready(name)]
            if waiting:
                time.sleep(0.5)
        return waiting

    def supervise(self) -> None:
        for name, proc in list(self.procs.items()):
            if proc.poll() is not None:
                self.restarts[name] += 1
                self.start(name)

    def stop(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for name, proc in self.procs.items():
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            (self.folder / f"{name}.pid").unlink(missing_ok=True)

    def trail(self) -> str:
        """The read model's trail since the last call (p50 and p99 as histogram bucket
        bounds) and the records it stands behind: what a page lags the pipeline."""
        try:
            samples = scrape(self.port("readmodel"), timeout_s=1)
        except OSError:
            return "-"
        buckets = {float(s.labels["le"]): s.value for s in samples
                   if s.name == "commission_readmodel_trail_seconds_bucket"}
        before, self.trail_buckets = getattr(self, "trail_buckets", {}), buckets
        new = {le: n - before.get(le, 0.0) for le, n in buckets.items()}
        count = new.get(float("inf"), 0.0)
        behind = int(total(samples, "commission_readmodel_behind_records"))
        if count <= 0:
            return f"no projections since the last look; {behind} records behind"

        def bound(q: float) -> str:
            le = min(le for le, n in new.items() if n >= q * count)
            return "> 10 s" if le == float("inf") else f"<= {le * 1000:.0f} ms"
        return (f"trail p50 {bound(0.5)}, p99 {bound(0.99)} ({count:.0f} projections); "
                f"{behind} records behind")

    def lag(self, name: str) -> int | None:
        return self._gauge(name, "commission_consumer_lag_messages")

    def behind(self) -> int | None:
        """The records the read model has yet to project (None: it does not answer)."""
        return self._gauge("readmodel", "commission_readmodel_behind_records")

    def _gauge(self, name: str, metric: str) -> int | None:
        try:
            return int(total(scrape(self.port(name), timeout_s=1), metric))
        except OSError:
            return None


class Tally(threading.Thread):
    """Counts settlements and rejections published since the demo started, and plays
    the payment system: it reports a result for every settlement on
    ``payment-results`` (signed with its Ed25519 key), settling most and failing
    one in ten, so failed attempts are published again and a few are parked."""

    def __init__(self, settings: Settings, payer: CommandSender | None = None) -> None:
        super().__init__(daemon=True)
        self.settings = settings
        self.payer = payer
        self.results: Counter = Counter()
        self.rng = random.Random(7)
        self.settlements: Counter = Counter()
        self.money: dict[tuple[str, str], int] = defaultdict(int)
        self.rejections: Counter = Counter()
        self.stopping = threading.Event()

    def run(self) -> None:
        t = self.settings.topics
        decode_s = msgspec.json.Decoder(Settlement).decode
        decode_r = msgspec.json.Decoder(Rejection).decode
        for batch in committed_batches(self.settings, (t.payments, t.rejections),
                                       self.stopping):
            results = []
            for record in batch:
                if record.topic() == t.payments:
                    s = decode_s(record.value())
                    kind = type(s).__name__
                    self.settlements[kind] += 1
                    if s.attempt == 1:  # a retry is the same money again
                        self.money[(kind, s.currency)] += s.amount_minor
                    if self.payer is not None:
                        results.append(self.result(s))
                else:
                    self.rejections[decode_r(record.value()).reason.value] += 1
            if results and self.payer is not None:
                # signed together: one Ed25519 signature for the batch, and one check
                # in each of the captures stage and the sequencer (services/common/merkle.py)
                self.payer.send_batch(results, topic=self.settings.topics.payment_results)

    def result(self, s: Settlement) -> ReportPayment:
        """What the payment system reports of ``s``: settled, or failed one time in ten."""
        result = "failed" if self.rng.random() < 0.1 else "settled"
        self.results[result] += 1
        return ReportPayment(command_id=f"result:{s.settlement_id}:{s.attempt}",
                             certificate_id=s.certificate_id, at_ms=int(time.time() * 1000),
                             settlement_id=s.settlement_id, attempt=s.attempt,
                             result=result, reason=None if result == "settled" else "declined")


def summary(started: float, feeder: Feeder, tally: Tally, services: Services, rate: float,
            verdict: str, monitoring: str = "") -> list[tuple[str, str]]:
    """What the demo shows, as (label, text) rows: the same for the screen and the log."""
    elapsed = time.monotonic() - started
    rows = [
        ("commands", f"{feeder.sent} sent, {feeder.sent / max(elapsed, 1e-9):.0f}/s "
                     f"(target {rate:.0f}/s); offers {feeder.offers}, live {len(feeder.live)}"),
        ("settlements", f"{sum(tally.settlements.values())}: " + ", ".join(
            f"{k} {v}" for k, v in sorted(tally.settlements.items()))),
    ]
    by_currency: dict[str, list[str]] = defaultdict(list)
    for (kind, currency), amount in sorted(tally.money.items()):
        by_currency[currency].append(f"{kind} {amount / 100:,.2f}")
    rows += [(f"money {currency}", ", ".join(items)) for currency, items in by_currency.items()]
    rows.append(("payment system", f"settled {tally.results['settled']}, failed "
                 f"{tally.results['failed']} (published again; the 3rd failure is parked)"))
    rows.append(("rejections", f"{sum(tally.rejections.values())}: " + ", ".join(
        f"{k} {v}" for k, v in tally.rejections.most_common(6))))
    lags = {s: services.lag(s) for s in SERVICES}  # one scrape per service
    rows.append(("lag", ", ".join(f"{s} {'-' if lag is None else lag}"
                                  for s, lag in lags.items())))
    rows.append(("read model", services.trail()))
    if services.restarts:
        rows.append(("restarts", ", ".join(f"{k} {v}" for k, v in services.restarts.items())))
    rows.append(("audit", verdict))
    if monitoring:
        rows.append(("prometheus", monitoring))
    return rows


def draw(live, started: float, feeder: Feeder, tally: Tally, services: Services, rate: float,
         verdict: str, monitoring: str = "") -> None:
    """Redraw the summary in place on a terminal (rich), or print one plain line."""
    rows = summary(started, feeder, tally, services, rate, verdict, monitoring)
    try:
        if live is not None:
            table = Table(show_header=False, box=None, pad_edge=False, expand=True)
            table.add_column(style="bold", no_wrap=True)
            table.add_column(overflow="fold")
            for label, text in rows:
                table.add_row(label, text)
            elapsed = time.monotonic() - started
            live.update(Panel(table, title=f"commission engine demo · {elapsed:.0f} s",
                              subtitle=f"web http://127.0.0.1:{API_PORT}/ (sign up, or alice / demo-alice) "
                                       "· Ctrl-C stops"), refresh=True)
        else:
            sys.stdout.write(" | ".join(f"{label} {text}" for label, text in rows) + "\n")
            sys.stdout.flush()
    except BrokenPipeError:
        raise KeyboardInterrupt from None  # whoever read our output is gone: stop cleanly


def audit_verdict(log: Path) -> str:
    """The latest verdict of the audit process (`python -m services.audit --every S
    --port P`, as deployments run it; its gauges on AUDIT_PORT for Prometheus), from
    its log: its last summary line and the first discrepancy of that run. It runs in
    its own process, niced: in the demo's process it held the GIL for seconds at a
    time reading every topic, and the feeder fell to a fraction of its rate."""
    try:
        with open(log, "rb") as f:
            f.seek(max(0, f.seek(0, os.SEEK_END) - 64_000))
            lines = f.read().decode(errors="replace").splitlines()
    except OSError:
        return "first run pending"
    first: str | None = None
    verdict = "first run pending"
    for line in lines:
        if line.startswith("DISCREPANCY ") and first is None:
            first = line[len("DISCREPANCY "):]
        elif line.startswith("audit OK") or line.startswith("audit FAILED"):
            verdict = line[len("audit "):] + (f"; first: {first}" if first else "")
            first = None
        elif line.startswith("audit: cannot read"):
            verdict, first = "could not read the topics", None
    return verdict


def monitoring(prometheus: Prometheus) -> str:
    """One line from the demo's Prometheus: its address, targets up, alerts firing."""
    try:
        with urllib.request.urlopen(f"{prometheus.url}/api/v1/query?query=up", timeout=1) as r:
            up = [int(float(v["value"][1])) for v in json.loads(r.read())["data"]["result"]]
        with urllib.request.urlopen(f"{prometheus.url}/api/v1/alerts", timeout=1) as r:
            alerts = json.loads(r.read())["data"]["alerts"]
    except (OSError, ValueError, KeyError):
        return f"{prometheus.url} (not answering)"
    firing = sorted({a["labels"]["alertname"] for a in alerts if a["state"] == "firing"})
    return (f"{prometheus.url} · {sum(up)} of {len(up)} targets up · firing: "
            f"{', '.join(firing) or 'none'}")


def _interrupt(signum, frame) -> None:
    raise KeyboardInterrupt  # SIGTERM and SIGHUP (terminal closed) stop like Ctrl-C


def main() -> int:
    signal.signal(signal.SIGTERM, _interrupt)
    signal.signal(signal.SIGHUP, _interrupt)
    rate = float(os.environ.get("DEMO_RATE", "100"))
    seconds = float(os.environ.get("DEMO_SECONDS", "0"))
    kafka, redis = default_stack()
    kafka_was_up = kafka.running()
    stack_was_up = kafka_was_up and redis.running()
    kafka.start()
    try:
        redis.start()
    except BaseException:
        if not kafka_was_up:  # not left running by a start that failed
            kafka.stop()
        raise
    settings = Settings.from_env(bootstrap=kafka.bootstrap)
    ensure_topics(settings, settings.topics.all())
    services = Services(settings, default_run_dir() / "services", redis.url)
    prometheus = default_prometheus()
    prometheus_was_up = prometheus.running()
    try:
        prometheus.start({"commission": {**{name: services.port(name)
                                             for name in (*SERVICES, "readmodel")},
                                          "api": API_OPS_PORT},
                          "commission-audit": {"audit": AUDIT_PORT}})
        # Debian's Prometheus 2 has no new UI: its pages are under /classic/ (/alerts is 404)
        print(f"prometheus {prometheus.url} (alerts {prometheus.url}/classic/alerts, "
              f"targets {prometheus.url}/classic/targets)", flush=True)
    except RuntimeError as err:  # e.g. the port is taken: the demo runs on without it
        prometheus.stop()
        print(f"prometheus did not start ({str(err).splitlines()[-1]}); set "
              "DEMO_PROMETHEUS_PORT to a free port to have one", flush=True)
    payer = FastSender(settings, Keyring.from_env())  # the payment system's own client
    tally = Tally(settings, payer)
    tally.start()
    for name in (*SERVICES, *PLATFORM, "audit"):
        services.start(name)
    # Commands sent while the stages restore their tables would wait there and make
    # the first minute a backlog (21,000 commands at DEMO_RATE=1000 on a kept run
    # folder), and the read model's trail with it: the feeder starts once they are ready.
    print("waiting for the stages and the read model to be ready ...", flush=True)
    not_ready = services.wait_ready((*SERVICES, "readmodel"), READY_WITHIN_S)
    if not_ready:
        print(f"not ready after {READY_WITHIN_S} s: {', '.join(not_ready)} (their logs are "
              f"in {services.folder}); the feeder starts anyway", flush=True)
    sender = FastSender(settings, Keyring.from_env())  # the users' (services/demo/clients.py)
    # the payment system's word on a client of its own (services/demo/feeder.py)
    feeder = Feeder(sender, payer=FastSender(settings, Keyring.from_env()), rate=rate)
    tty = sys.stdout.isatty()
    # on a terminal the summary is redrawn in place (rich); otherwise a plain line
    live = Live(console=Console(), auto_refresh=False, transient=False) if tty else None
    started = time.monotonic()
    next_draw = started
    interval = 1.0 / rate
    try:
        if live is not None:
            live.start()
        while not seconds or time.monotonic() - started < seconds:
            feeder.step()
            now = time.monotonic()
            if now >= next_draw:
                sender.flush()
                services.supervise()
                draw(live, started, feeder, tally, services, rate,
                     audit_verdict(services.folder / "audit.log"), monitoring(prometheus))
                next_draw = now + (1.0 if tty else 5.0)
            time.sleep(max(0.0, started + feeder.sent * interval - time.monotonic()))
    except KeyboardInterrupt:
        pass
    finally:
        if live is not None:
            live.stop()
        with contextlib.suppress(BrokenPipeError):
            print("\nstopping: draining the pipeline ...")
        sender.flush()
        sender.close()
        if feeder.payer is not None:
            feeder.payer.close()
        # the read model too: one stopped behind starts the next run catching up
        # (11,210 records, the first 45 s of a run at DEMO_RATE=1000 trailing by seconds)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and (any(services.lag(s) for s in SERVICES)
                                               or services.behind()):
            time.sleep(0.5)
        services.stop()
        tally.stopping.set()
        tally.join(timeout=5)
        payer.close()
    status = 2
    try:
        print("services stopped; running the audit:")
        status = audit([])
    except BrokenPipeError:
        pass
    finally:
        if not prometheus_was_up:
            prometheus.stop()
        if not stack_was_up:
            redis.stop()
            kafka.stop()
            with contextlib.suppress(BrokenPipeError):
                print("stopped the Kafka broker and Redis this run started")
    return status


if __name__ == "__main__":
    sys.exit(main())
