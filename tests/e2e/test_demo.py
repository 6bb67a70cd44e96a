"""`make run`, as a user runs it (stopped by DEMO_SECONDS instead of Ctrl-C), on its
own ports and run folder: it starts everything, moves money, passes the audit and
stops what it started."""

from __future__ import annotations

import contextlib
import json
import os
import re
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from deploy.localstack import free_port, pid_alive, read_pid

ROOT = Path(__file__).resolve().parents[2]


def free_ports_from(count: int) -> int:
    """The first of ``count`` consecutive free ports."""
    for base in range(23100, 24000, count + 1):
        socks = []
        try:
            for p in range(base, base + count):
                s = socket.socket()
                s.bind(("127.0.0.1", p))
                socks.append(s)
            return base
        except OSError:
            continue
        finally:
            for s in socks:
                s.close()
    raise RuntimeError(f"no {count} consecutive free ports")


def prometheus_up(port: str) -> dict[str, float]:
    """{instance: value of `up`} from the demo's Prometheus ({} while it has none)."""
    url = f"http://127.0.0.1:{port}/api/v1/query?query=up"
    with urllib.request.urlopen(url, timeout=2) as r:
        return {v["metric"]["instance"]: float(v["value"][1])
                for v in json.loads(r.read())["data"]["result"]}


def test_make_run_shows_the_system_working_and_stops_cleanly(tmp_path):
    run_dir = tmp_path / "run"
    env = {**os.environ, "DEMO_SECONDS": "30", "DEMO_RATE": "120",
           "COMMISSION_RUN_DIR": str(run_dir), "KAFKA_PORT": str(free_port()),
           "KAFKA_CONTROLLER_PORT": str(free_port()), "REDIS_PORT": str(free_port()),
           "DEMO_METRICS_BASE_PORT": str(free_ports_from(8)), "DEMO_API_PORT": str(free_port()),
           "DEMO_API_OPS_PORT": str(free_port()), "DEMO_PAYSIM_PORT": str(free_port()),
           "DEMO_FRAUD_PORT": str(free_port()),
           "DEMO_PROMETHEUS_PORT": str(free_port())}
    for name in ("KAFKA_BOOTSTRAP_SERVERS", "REDIS_URL", "COMMISSION_TOPIC_PREFIX"):
        env.pop(name, None)
    env["KAFKA_BOOTSTRAP_SERVERS"] = f"127.0.0.1:{env['KAFKA_PORT']}"
    demo = subprocess.Popen([sys.executable, "-m", "services.demo"], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    catalogue = None
    deadline = time.monotonic() + 60
    while demo.poll() is None and time.monotonic() < deadline and not catalogue:
        try:
            url = f"http://127.0.0.1:{env['DEMO_API_PORT']}/catalogue?sort=commission"
            with urllib.request.urlopen(url, timeout=2) as r:
                catalogue = json.loads(r.read())["items"]
        except OSError:
            pass
        time.sleep(1)
    # the demo's Prometheus scrapes every process of it: seven stages (the fraud stage
    # too), the read model, the API and the audit
    up: dict[str, float] = {}
    while demo.poll() is None and time.monotonic() < deadline + 20 and len(up) < 10:
        with contextlib.suppress(OSError):
            up = {k: v for k, v in prometheus_up(env["DEMO_PROMETHEUS_PORT"]).items() if v == 1}
        time.sleep(1)
    # the demo's payment system serves the checkout pages the web Buy leads to
    with urllib.request.urlopen(f"http://127.0.0.1:{env['DEMO_PAYSIM_PORT']}/healthz",
                                timeout=5) as r:
        paysim_status = r.status
    stdout, stderr = demo.communicate(timeout=240)
    out = subprocess.CompletedProcess(demo.args, demo.returncode, stdout, stderr)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    # every command and payment result the demo made reached the broker
    assert "not delivered" not in out.stdout + out.stderr, out.stderr[-3000:]
    assert catalogue, "the read API served no catalogue while the demo ran"
    assert paysim_status == 200
    assert sorted(up) == ["allocation", "api", "audit", "captures", "cashout", "circulation",
                          "fraud", "netting", "readmodel", "withdrawal"], up
    assert f"prometheus http://127.0.0.1:{env['DEMO_PROMETHEUS_PORT']}" in out.stdout
    assert re.search(r"\| prometheus http://\S+ · 10 of 10 targets up", out.stdout), out.stdout[-2000:]
    settled = [int(n) for n in re.findall(r"settlements\s+(\d+)", out.stdout)]
    assert settled and settled[-1] > 0, out.stdout[-2000:]
    assert re.search(r"audit OK: \d+ certificates, [1-9]\d* settlements "
                     r"\(\d+ awaiting a payment result, \d+ certificates in flight, "
                     r"\d+ of them torn\), "
                     r"0 discrepancies",
                     out.stdout), out.stdout[-2000:]
    # the read model's trail (its bucket bounds; the figure itself: make bench)
    assert re.search(r"\| read model trail p50 (<=|>) \d+ (ms|s), p99 (<=|>) \d+ (ms|s) "
                     r"\(\d+ projections\); \d+ records behind", out.stdout), out.stdout[-2000:]
    # the summary line carries the audit's verdict as it goes (every 15 s)
    assert re.search(r"\| audit OK: \d+ certificates", out.stdout), out.stdout[-2000:]
    # the life after the purchase: the payment system settled some settlements
    reported = [int(n) for n in re.findall(r"payment system\s+settled (\d+)", out.stdout)]
    assert reported and reported[-1] > 0, out.stdout[-2000:]
    assert "stopped the Kafka broker and Redis this run started" in out.stdout
    for pidfile in run_dir.rglob("*.pid"):
        pid = read_pid(pidfile)
        assert pid is None or not pid_alive(pid), f"{pidfile} still running"
