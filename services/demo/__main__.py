"""`make run`: start the stack if needed, the four services and a demo feeder, and
show a live one-screen summary until Ctrl-C (or DEMO_SECONDS), then shut down
cleanly and run the audit.

    DEMO_RATE=100       commands per second from the feeder
    DEMO_SECONDS=0      stop by itself after this many seconds (0: until Ctrl-C)
    DEMO_METRICS_BASE_PORT=9101   the services' metrics on 9101..9104

Watch the settlements from a second terminal with `make watch` (or
`python -m services.watch payments`).
"""

from __future__ import annotations

import contextlib
import os
import random
import signal
import subprocess
import sys
import threading
import time
from collections import Counter, defaultdict
from pathlib import Path

import msgspec
from kafka import KafkaConsumer, TopicPartition

from deploy.localstack import REPO_ROOT, default_run_dir, default_stack, pid_alive, read_pid
from schemas.commands import ReportPayment
from schemas.payments import Settlement
from schemas.rejections import Rejection
from services.audit.__main__ import main as audit
from services.common.auth import Keyring
from services.common.metrics import scrape, total
from services.common.settings import Settings
from services.common.topics import ensure_topics
from services.demo.feeder import Feeder
from services.gateway import CommandSender

_encode = msgspec.json.Encoder().encode

SERVICES = ("circulation", "allocation", "withdrawal", "cashout")
# the platform side: the read model (faust) and the read API over it
PLATFORM = ("readmodel", "api")
METRICS_BASE_PORT = int(os.environ.get("DEMO_METRICS_BASE_PORT", "9101"))
API_PORT = int(os.environ.get("DEMO_API_PORT", "8080"))


class Services:
    """The four services as child processes, with pid files and restart on exit 75."""

    def __init__(self, settings: Settings, folder: Path, redis_url: str) -> None:
        self.settings = settings
        self.redis_url = redis_url
        self.folder = folder
        folder.mkdir(parents=True, exist_ok=True)
        self.procs: dict[str, subprocess.Popen] = {}
        self.restarts: Counter = Counter()

    def port(self, name: str) -> int:
        """9101-9104 the four services, 9105 the read model (the API serves its own
        /metrics on API_PORT)."""
        return METRICS_BASE_PORT + (*SERVICES, "readmodel").index(name)

    def start(self, name: str) -> None:
        pidfile = self.folder / f"{name}.pid"
        old = read_pid(pidfile)
        if old is not None and pid_alive(old):
            os.kill(old, signal.SIGTERM)  # ours, from an earlier run that did not stop
        env = {**os.environ, "KAFKA_BOOTSTRAP_SERVERS": self.settings.bootstrap,
               "REDIS_URL": self.redis_url, "API_PORT": str(API_PORT),
               "METRICS_PORT": str(self.port(name)) if name != "api" else "0"}
        with open(self.folder / f"{name}.log", "ab") as log:
            proc = subprocess.Popen([sys.executable, "-m", f"services.{name}"], env=env,
                                    cwd=REPO_ROOT, stdout=log, stderr=subprocess.STDOUT,
                                    start_new_session=True)
        pidfile.write_text(f"{proc.pid}\n")
        self.procs[name] = proc

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

    def lag(self, name: str) -> int | None:
        try:
            return int(total(scrape(self.port(name), timeout_s=1),
                             "commission_consumer_lag_messages"))
        except OSError:
            return None


class Tally(threading.Thread):
    """Counts settlements and rejections published since the demo started, and plays
    the payment system: it reports a result for every settlement on
    ``payment-results`` (signed with the payments key), settling most and failing
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
        consumer = KafkaConsumer(bootstrap_servers=self.settings.bootstrap, group_id=None,
                                 isolation_level="read_committed", enable_auto_commit=False,
                                 **self.settings.kafka_auth.kafka_python())
        tps = [TopicPartition(topic, p) for topic in (t.payments, t.rejections)
               for p in range(self.settings.partitions)]
        consumer.assign(tps)
        consumer.seek_to_end(*tps)
        decode_s = msgspec.json.Decoder(Settlement).decode
        decode_r = msgspec.json.Decoder(Rejection).decode
        while not self.stopping.is_set():
            for tp, records in consumer.poll(timeout_ms=300).items():
                for record in records:
                    if tp.topic == t.payments:
                        s = decode_s(record.value)
                        kind = type(s).__name__
                        self.settlements[kind] += 1
                        if s.attempt == 1:  # a retry is the same money again
                            self.money[(kind, s.currency)] += s.amount_minor
                        self.pay(s)
                    else:
                        self.rejections[decode_r(record.value).reason.value] += 1
        consumer.close()

    def pay(self, s: Settlement) -> None:
        if self.payer is None:
            return
        result = "failed" if self.rng.random() < 0.1 else "settled"
        self.results[result] += 1
        command = ReportPayment(command_id=f"result:{s.settlement_id}:{s.attempt}",
                                certificate_id=s.certificate_id, at_ms=int(time.time() * 1000),
                                settlement_id=s.settlement_id, attempt=s.attempt,
                                result=result, reason=None if result == "settled" else "declined")
        body = _encode(command)
        self.payer.send_raw(s.certificate_id.encode(), body,
                            headers=self.payer.keyring.sign(body, self.payer.key_for(command)))


def draw(tty: bool, started: float, feeder: Feeder, tally: Tally, services: Services,
         rate: float) -> None:
    elapsed = time.monotonic() - started
    lines = [
        f"commission engine demo  {elapsed:6.0f} s   (Ctrl-C to stop; `make watch` in "
        "another terminal shows payments)",
        f"web: http://127.0.0.1:{API_PORT}/  (log in as alice / demo-alice)   "
        f"API: http://127.0.0.1:{API_PORT}/openapi.json",
        "",
        f"commands sent   {feeder.sent:>8}   {feeder.sent / max(elapsed, 1e-9):7.1f}/s "
        f"(target {rate:.0f}/s)   offers {feeder.offers}   certificates live {len(feeder.live)}",
        f"settlements     {sum(tally.settlements.values()):>8}   "
        + "  ".join(f"{k} {v}" for k, v in sorted(tally.settlements.items())),
        f"payment system  settled {tally.results['settled']}   failed {tally.results['failed']}"
        "   (a failed attempt is published again; the third failure is parked)",
    ]
    for (kind, currency), amount in sorted(tally.money.items()):
        lines.append(f"    {kind:<18} {amount / 100:>14,.2f} {currency}")
    lines.append(f"rejections      {sum(tally.rejections.values()):>8}   "
                 + "  ".join(f"{k} {v}" for k, v in sorted(tally.rejections.items())))
    lags = {s: services.lag(s) for s in SERVICES}  # one scrape per service
    lines.append("lag (messages)  " + "   ".join(
        f"{s} {'-' if lag is None else lag}" for s, lag in lags.items()))
    if services.restarts:
        lines.append("restarts        " + "  ".join(f"{k} {v}" for k, v in services.restarts.items()))
    try:
        if tty:
            sys.stdout.write("\x1b[2J\x1b[H" + "\n".join(lines) + "\n")
        else:
            sys.stdout.write(" | ".join(line.strip() for line in lines[2:] if line.strip()) + "\n")
        sys.stdout.flush()
    except BrokenPipeError:
        raise KeyboardInterrupt from None  # whoever read our output is gone: stop cleanly


def _interrupt(signum, frame) -> None:
    raise KeyboardInterrupt  # SIGTERM and SIGHUP (terminal closed) stop like Ctrl-C


def main() -> int:
    signal.signal(signal.SIGTERM, _interrupt)
    signal.signal(signal.SIGHUP, _interrupt)
    rate = float(os.environ.get("DEMO_RATE", "100"))
    seconds = float(os.environ.get("DEMO_SECONDS", "0"))
    kafka, redis = default_stack()
    stack_was_up = kafka.running() and redis.running()
    kafka.start()
    redis.start()
    settings = Settings.from_env(bootstrap=kafka.bootstrap)
    ensure_topics(settings, settings.topics.all())
    services = Services(settings, default_run_dir() / "services", redis.url)
    payer = CommandSender(settings, Keyring.from_env())
    payer.topic = settings.topics.payment_results  # the payment system's own topic
    tally = Tally(settings, payer)
    tally.start()
    for name in (*SERVICES, *PLATFORM):
        services.start(name)
    sender = CommandSender(settings, Keyring.from_env())
    feeder = Feeder(sender)
    tty = sys.stdout.isatty()
    started = time.monotonic()
    next_draw = started
    interval = 1.0 / rate
    try:
        while not seconds or time.monotonic() - started < seconds:
            feeder.step()
            now = time.monotonic()
            if now >= next_draw:
                sender.flush()
                services.supervise()
                draw(tty, started, feeder, tally, services, rate)
                next_draw = now + (1.0 if tty else 5.0)
            time.sleep(max(0.0, started + feeder.sent * interval - time.monotonic()))
    except KeyboardInterrupt:
        print("\nstopping: draining the pipeline ...")
    finally:
        sender.flush()
        sender.close()
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and any(services.lag(s) for s in SERVICES):
            time.sleep(0.5)
        services.stop()
        tally.stopping.set()
        tally.join(timeout=5)
    status = 2
    try:
        print("services stopped; running the audit:")
        status = audit([])
    except BrokenPipeError:
        pass
    finally:
        if not stack_was_up:
            redis.stop()
            kafka.stop()
            with contextlib.suppress(BrokenPipeError):
                print("stopped the Kafka broker and Redis this run started")
    return status


if __name__ == "__main__":
    sys.exit(main())
