"""How far the read model stands behind the topics: in its log, its metrics and Redis.

A rebuild (partitions with no position in Redis: a new Redis, flushed, or restarted
without its data) and any catching up of more than ``LOUD_BEHIND`` records log, every
``EVERY_S``, the records projected so far, the rate, the records left and the time
left; the gauges say the same at every scrape. ``rm:{prefix}progress`` (a hash,
expiring when the read model stops writing it) carries it for the pages and the API:
``state`` is ``rebuilding``, ``catching_up`` or ``live``; ``done`` the records
projected since the rebuild (or the catching up) began, ``behind`` those left,
``rate_per_s`` and ``left_s`` (empty: unknown); the API's reads carry it
(services/api/reads.py).
"""

from __future__ import annotations

import logging
import time

from prometheus_client import CollectorRegistry, Gauge

log = logging.getLogger("commission.readmodel")
EVERY_S = 5.0
LOUD_BEHIND = 10_000


class Progress:
    def __init__(self, registry: CollectorRegistry, every_s: float = EVERY_S) -> None:
        self.behind_g = Gauge("commission_readmodel_behind_records",
                              "Records of accepted and rejections not projected yet: the "
                              "partitions' end offsets (as last fetched) less the read "
                              "model's positions.", registry=registry)
        self.rebuilding_g = Gauge("commission_readmodel_rebuilding",
                                  "1 while the read model projects partitions that had no "
                                  "position in Redis from their start.", registry=registry)
        self.rate_g = Gauge("commission_readmodel_projection_rate",
                            "Records projected per second over the last interval.",
                            registry=registry)
        self.left_g = Gauge("commission_readmodel_catch_up_seconds",
                            "Time left to project what stands behind at the current rate "
                            "(0: caught up).", registry=registry)
        self.every_s = every_s
        self.rebuilding = False
        self.rebuild_started = 0.0
        self.rebuild_records = 0
        self.records = 0  # projected since the start
        self.last_at = time.monotonic()
        self.last_records = 0
        self.rate = 0.0
        self.behind = 0
        self.state = "live"
        self.catch_up_records = 0  # records when the catching up began
        self.due = False  # publish at the next tick (a rebuild started)

    def rebuild(self, partitions: int) -> None:
        """Partitions start from the beginning: a rebuild (logged when it starts)."""
        if not self.rebuilding:
            self.rebuilding = True
            self.rebuild_started = time.monotonic()
            self.rebuild_records = self.records
            self.due = True
            log.warning("rebuilding: no position in Redis for %d partitions; projecting "
                        "them from the start", partitions,
                        extra={"partitions": partitions})
        self.rebuilding_g.set(1)

    def projected(self, n: int) -> None:
        self.records += n

    def tick(self, behind: int, known: bool = True) -> dict | None:
        """Called after each batch and each idle fetch with the records left (``known``:
        every partition's end was fetched already); every ``every_s`` returns what to
        publish in Redis (None meanwhile)."""
        self.behind = behind
        self.behind_g.set(behind)
        now = time.monotonic()
        if not known:
            behind = max(behind, 1)  # not caught up before every end is known
        if self.rebuilding and behind == 0:
            took = now - self.rebuild_started
            n = self.records - self.rebuild_records
            log.warning("rebuilt: %d records in %.1f s (%.0f/s)", n, took, n / took if took else 0,
                        extra={"records": n, "seconds": round(took, 1)})
            self.rebuilding = False
            self.rebuilding_g.set(0)
        if (now - self.last_at < self.every_s and not self.due
                and not (behind == 0 and self.state != "live")):
            return None
        self.due = False
        span = now - self.last_at
        self.rate = (self.records - self.last_records) / span if span > 0 else 0.0
        self.last_at, self.last_records = now, self.records
        left = behind / self.rate if self.rate > 0 else (0.0 if behind == 0 else float("inf"))
        self.rate_g.set(self.rate)
        self.left_g.set(left if left != float("inf") else -1)
        state = ("rebuilding" if self.rebuilding else
                 "catching_up" if behind > LOUD_BEHIND else "live")
        if state == "catching_up" and self.state != "catching_up":
            self.catch_up_records = self.records  # counted from here
        self.state = state
        if self.state != "live":
            log.warning("%s: %d records projected, %.0f/s, %d left, %s",
                        self.state, self.records - (self.rebuild_records if self.rebuilding
                                                    else 0),
                        self.rate, behind,
                        "time left unknown" if left == float("inf") else f"{left:.0f} s left",
                        extra={"projected": self.records, "rate_per_s": round(self.rate),
                               "behind": behind,
                               "left_s": None if left == float("inf") else round(left, 1)})
        done = self.records - (self.rebuild_records if self.rebuilding else self.catch_up_records)
        return {"state": self.state, "behind": str(behind), "rate_per_s": str(round(self.rate)),
                "done": str(done),
                "left_s": "" if left == float("inf") else str(round(left, 1)),
                "at_ms": str(int(time.time() * 1000))}
