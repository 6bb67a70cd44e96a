"""A storm of bad logins against a running API while /healthz is timed: what a
password-guessing client does to everyone else's latency (issue 22, point 3)."""

from __future__ import annotations

import json
import statistics
import threading
import time
import urllib.error
import urllib.request


def _post_login(port: int, account: str, password: str, statuses: list[int]) -> None:
    req = urllib.request.Request(
        f"http://127.0.0.1:{port}/login", method="POST",
        data=json.dumps({"account_id": account, "password": password}).encode(),
        headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=60) as r:
            statuses.append(r.status)
    except urllib.error.HTTPError as err:
        statuses.append(err.code)


def _healthz_ms(port: int, path: str = "/healthz") -> float:
    started = time.perf_counter()
    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=30) as r:
        r.read()
    return (time.perf_counter() - started) * 1000


def storm(port: int, n: int = 90, accounts: tuple[str, ...] = ("alice",),
          health_port: int | None = None) -> dict:
    """``n`` bad logins at once (spread over ``accounts``), /healthz polled meanwhile.
    Returns the idle and in-storm /healthz times (ms) and the logins' statuses."""
    health_port = health_port or port
    idle = [_healthz_ms(health_port) for _ in range(20)]
    statuses: list[int] = []
    threads = [threading.Thread(target=_post_login,
                                args=(port, accounts[i % len(accounts)], f"wrong-{i}", statuses))
               for i in range(n)]
    started = time.perf_counter()
    for t in threads:
        t.start()
    during: list[float] = []
    while any(t.is_alive() for t in threads):
        during.append(_healthz_ms(health_port))
        time.sleep(0.01)
    for t in threads:
        t.join()
    took = time.perf_counter() - started

    def q(xs: list[float], p: float) -> float:
        return sorted(xs)[min(len(xs) - 1, int(p * len(xs)))] if xs else float("nan")

    return {"idle_median_ms": statistics.median(idle),
            "storm_median_ms": statistics.median(during) if during else float("nan"),
            "storm_p95_ms": q(during, 0.95), "storm_max_ms": max(during, default=float("nan")),
            "samples": len(during), "storm_s": took,
            "statuses": {s: statuses.count(s) for s in sorted(set(statuses))}}
