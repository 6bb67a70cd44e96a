"""The peer `make bench` measures the runner against, in the same run: Kafka Streams.

The runner passthrough's topology (commands -> accepted -> allocations, withdrawals,
payments) as four Kafka Streams 3.9.1 applications in one JVM
(benchmarks/kstreams/Hops.java): each hop copies its records and counts them per key
in an in-memory, changelogged store, under exactly_once_v2 with one stream thread
and Kafka Streams' defaults (commit.interval.ms 100 under exactly-once).

The jars come from Maven Central once (dependency:copy-dependencies into a cache
folder outside git, as for the broker) and Hops.java is compiled there with javac.
A run is complete when every command's copy is readable (read_committed) on each of
the three output topics: Kafka Streams has no counter that is published only with
its commit, as the runner's are.
"""

from __future__ import annotations

import shutil
import signal
import subprocess
import threading
import time
from pathlib import Path

from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition

from benchmarks.generator import Item
from benchmarks.pipeline import Deployment
from deploy.localstack import cache_dir, maven_runtime

KSTREAMS_VERSION = "3.9.1"
HERE = Path(__file__).resolve().parent / "kstreams"
SOURCE = HERE / "src" / "main" / "java" / "commission" / "bench" / "Hops.java"
ROUTES = (("commands", "accepted"), ("accepted", "allocations"),
          ("accepted", "withdrawals"), ("accepted", "payments"))
OUTPUTS = ("allocations", "withdrawals", "payments")
JVM = ("-Xms128m", "-Xmx512m")


def ensure_kstreams() -> list[str]:
    """The java command line of the peer: its jars fetched once, Hops.java compiled."""
    root = cache_dir().parent / f"kstreams-{KSTREAMS_VERSION}"
    libs = maven_runtime(HERE / "pom.xml", root, KSTREAMS_VERSION, "the Kafka Streams jars")
    classes = root / "classes"
    shutil.rmtree(classes, ignore_errors=True)
    subprocess.run(["javac", "-d", str(classes), "-cp", f"{libs}/*", str(SOURCE)], check=True)
    log4j = root / "log4j.properties"
    log4j.write_text("log4j.rootLogger=WARN, out\n"
                     "log4j.appender.out=org.apache.log4j.ConsoleAppender\n"
                     "log4j.appender.out.layout=org.apache.log4j.PatternLayout\n"
                     "log4j.appender.out.layout.ConversionPattern=%d %p %c: %m%n\n")
    return ["java", *JVM, f"-Dlog4j.configuration=file:{log4j}", "-cp", f"{classes}:{libs}/*",
            "commission.bench.Hops"]


class OutputCounter(threading.Thread):
    """Counts the records readable (read_committed) on each output topic."""

    def __init__(self, bootstrap: str, topics: list[str], partitions: int) -> None:
        super().__init__(daemon=True)
        self.consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": "bench-outputs",
                                  "isolation.level": "read_committed",
                                  "enable.auto.commit": False})
        self.consumer.assign([TopicPartition(t, p, OFFSET_BEGINNING)
                              for t in topics for p in range(partitions)])
        self.counts = dict.fromkeys(topics, 0)
        self.stopping = threading.Event()

    def run(self) -> None:
        counts = self.counts
        while not self.stopping.is_set():
            for m in self.consumer.consume(10_000, 0.05):
                if m.error() is None:
                    counts[m.topic()] += 1
        self.consumer.close()

    def least(self) -> int:
        return min(self.counts.values())


class KafkaStreamsDeployment(Deployment):
    """The scenario's topics and generator as for the runner passthrough; the Kafka
    Streams peer instead of the runner's processes."""

    def __init__(self, bootstrap: str, prefix: str, logs: Path, partitions: int,
                 jit_warmup: list[Item], jit_rounds: int = 4, commit_ms: int = 100) -> None:
        super().__init__(bootstrap, prefix, "benchmarks.passthrough", logs, partitions)
        self.commit_ms = commit_ms
        self.jit_warmup = jit_warmup
        self.jit_rounds = jit_rounds
        self.outputs: OutputCounter | None = None

    def start(self) -> None:
        java = ensure_kstreams()
        t = self.settings.topics
        routes = [f"{t.name(a)}:{t.name(b)}" for a, b in ROUTES]
        argv = [*java, self.settings.bootstrap, self.prefix, str(self.commit_ms),
                str(self.logs / f"{self.prefix}-state"), *routes]
        with open(self.logs / f"{self.prefix}-kstreams.log", "ab") as log:
            self.procs["kstreams"] = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT)
        self.outputs = OutputCounter(self.settings.bootstrap, [t.name(o) for o in OUTPUTS],
                                     self.settings.partitions)
        self.outputs.start()

    def done(self, expected: int) -> tuple[int, bool]:
        least = self.outputs.least() if self.outputs else 0
        return least, least >= expected

    def wait_ready(self, warmup: list[Item]) -> None:
        """The common warm-up, then ``jit_warmup`` flat out ``jit_rounds`` times: a
        fresh JVM runs its first ~100,000 records interpreted and compiling (here:
        12,862 commands/s after 40,000, 27,211 after 150,000); the runner's processes
        have no JIT to warm."""
        prepared = self.sender.prepare_now(self.jit_warmup)
        sent = 0
        for batch in [self.sender.prepare_now(warmup), *[prepared] * self.jit_rounds]:
            self.sender.send_prepared(batch)
            sent += len(batch)
            deadline = time.monotonic() + 180
            while not self.done(sent)[1]:
                if self.procs["kstreams"].poll() is not None:
                    raise RuntimeError(f"Kafka Streams exited; see {self.logs}")
                if time.monotonic() > deadline:
                    raise RuntimeError(f"Kafka Streams did not copy {sent} commands in 180 s")
                time.sleep(0.3)

    def stop(self) -> None:
        proc = self.procs["kstreams"]
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
        if self.outputs is not None:
            self.outputs.stopping.set()
            self.outputs.join(10)
        self.sender.close()
        shutil.rmtree(self.logs / f"{self.prefix}-state", ignore_errors=True)


if __name__ == "__main__":  # fetch and compile only: python -m benchmarks.peers
    print(" ".join(ensure_kstreams()))
