"""What the cluster tests watch while brokers fail: who leads and who is in sync
(``Members``), how fast verdicts become visible (``Watch``), and a supervisor that
restarts what exits (``supervise``; the pipeline counts the restarts)."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field

import msgspec
from confluent_kafka import OFFSET_END, Consumer, KafkaException, TopicPartition
from confluent_kafka.admin import AdminClient

from deploy.localstack import KafkaCluster


class Members:
    """Leaders and in-sync replicas of a pipeline's topics, from the cluster's metadata."""

    def __init__(self, cluster: KafkaCluster, topics: list[str]) -> None:
        self.cluster = cluster
        self.topics = topics
        self.admin = AdminClient({"bootstrap.servers": cluster.bootstrap,
                                  "topic.metadata.refresh.interval.ms": 500})

    def partitions(self) -> dict[tuple[str, int], tuple[int, list[int], list[int]]]:
        """(topic, partition) -> (leader, replicas, in-sync replicas); a refused or
        partial answer (a broker just died) is asked again."""
        for _ in range(20):
            try:
                meta = self.admin.list_topics(timeout=5)
            except KafkaException:
                time.sleep(0.25)
                continue
            out = {(t, p): (pm.leader, list(pm.replicas), list(pm.isrs))
                   for t in self.topics if t in meta.topics
                   for p, pm in meta.topics[t].partitions.items()}
            if out:
                return out
            time.sleep(0.25)
        raise AssertionError("no metadata from the cluster")

    def led_by(self, node: int) -> list[tuple[str, int]]:
        return sorted(k for k, (leader, _, _) in self.partitions().items() if leader == node)

    def wait(self, what: str, condition, timeout_s: float = 60.0) -> float:
        """Seconds until ``condition(partitions)`` holds."""
        started = time.monotonic()
        while not condition(self.partitions()):
            if time.monotonic() - started > timeout_s:
                raise AssertionError(f"{what}: not within {timeout_s:.0f}s: {self.partitions()}")
            time.sleep(0.25)
        return time.monotonic() - started

    def wait_out_of_sync(self, node: int) -> float:
        """Until ``node`` has left every in-sync set (its leaderships moved)."""
        return self.wait(f"node {node} leaves the ISR",
                         lambda parts: all(node not in isr and leader != node
                                           for leader, _, isr in parts.values()))

    def wait_all_in_sync(self) -> float:
        """Until every partition has all its replicas in sync."""
        return self.wait("every replica in sync",
                         lambda parts: all(len(isr) == len(replicas) and leader >= 0
                                           for leader, replicas, isr in parts.values()), 90)


@dataclass
class Window:
    """One failure, from the kill until the cluster is whole again plus a margin."""

    name: str
    start: float  # time.time()
    end: float = 0.0


@dataclass
class Watch:
    """Reads ``accepted`` (read_committed) from its end while the test runs: when each
    verdict became visible, and how long after its command reached the broker."""

    bootstrap: str
    topic: str
    partitions: int
    seen: list[tuple[float, float]] = field(default_factory=list)  # (visible s, latency s)
    stop: threading.Event = field(default_factory=threading.Event)

    def start(self) -> Watch:
        consumer = Consumer({"bootstrap.servers": self.bootstrap, "group.id": "failover-watch",
                             "isolation.level": "read_committed",
                             "enable.auto.commit": False})
        consumer.assign([TopicPartition(self.topic, p, OFFSET_END)
                         for p in range(self.partitions)])
        decode = msgspec.json.decode

        def run() -> None:
            try:
                while not self.stop.is_set():
                    for record in consumer.consume(500, 0.2):
                        if record.error() is not None:
                            continue
                        now = time.time()
                        received_ms = decode(record.value()).get("received_ms")
                        if received_ms:
                            self.seen.append((now, max(0.0, now - received_ms / 1000)))
            finally:
                consumer.close()

        threading.Thread(target=run, daemon=True).start()
        return self

    def figures(self, window: Window) -> dict[str, float]:
        """p99 latency of what became visible in the window, and the longest stretch
        of it with nothing visible (from the kill to the first verdict after it,
        or between two)."""
        inside = [(t, lat) for t, lat in self.seen if window.start <= t <= window.end]
        latencies = sorted(lat for _, lat in inside)
        # the stretch from the kill to the first verdict after it counts, even when
        # that first verdict came after the window
        after = [t for t, _ in self.seen if t > window.end][:1]
        times = [window.start, *(t for t, _ in inside), *(after or [window.end])]
        stall = max((b - a for a, b in zip(times, times[1:], strict=False)), default=0.0)
        p99 = latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))] if latencies else 0.0
        return {"verdicts": len(inside), "p99_s": round(p99, 3), "stall_s": round(stall, 3)}


def supervise(pipeline) -> threading.Event:
    """Start again what exits, every 0.3 s, until the returned event is set (a stage
    exits 75 when a transaction fails; ``pipeline.restarts`` counts the restarts)."""
    pipeline.supervised = True
    stop = threading.Event()

    def run() -> None:
        while not stop.is_set():
            pipeline.restart_exited()
            time.sleep(0.3)

    threading.Thread(target=run, daemon=True).start()
    return stop
