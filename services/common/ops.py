"""The operations endpoint of a service, on METRICS_PORT, served from a thread:

* ``/metrics``: Prometheus exposition of the service's registry;
* ``/healthz`` (liveness): the consume loop went round within ``LIVE_WITHIN_S``; a
  stuck loop fails it;
* ``/readyz`` (readiness): the consumer has joined its group and received an
  assignment (possibly empty: a spare worker is ready), the loop went round within
  ``READY_WITHIN_S``, no partition is parked (a record that cannot be applied:
  the answer names the partition and why), and no transaction step is waiting on
  the cluster (``blocked``: e.g. too few in-sync replicas; the answer says which
  step, for how long and why).

Both answer JSON with the reason, so a probe failure explains itself.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from services.common.metrics import Metrics, exposition
from services.common.runner import StageRunner

log = logging.getLogger("commission.ops")

LIVE_WITHIN_S = 120.0
READY_WITHIN_S = 30.0


def _status(runner: StageRunner, within_s: float, readiness: bool) -> tuple[bool, dict]:
    idle = time.monotonic() - runner.last_loop_monotonic
    info = {"loop_seconds_ago": round(idle, 1), "joined": runner.joined.is_set(),
            "partitions": sorted(runner.parts),
            "parked": {str(p): why for p, why in sorted(runner.parked.items())}}
    blocked = runner.blocked
    if blocked is not None:
        info["blocked"] = blocked.info()
    ok = idle <= within_s
    if readiness:
        ok = ok and runner.joined.is_set() and not runner.parked and blocked is None
    return ok, info


class _Server(ThreadingHTTPServer):
    def handle_error(self, request, client_address) -> None:
        # a client that gave up (a probe's timeout) is not an error of the service;
        # anything else is logged as a JSON line like the rest, never a bare traceback
        error = sys.exc_info()[1]
        if not isinstance(error, (BrokenPipeError, ConnectionResetError)):
            log.warning("ops endpoint failed", exc_info=True)


def start_ops_server(port: int, runner: StageRunner, metrics: Metrics) -> ThreadingHTTPServer:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 - the http.server spelling
            if self.path == "/metrics":
                body, headers = exposition(metrics.registry)
                self._send(200, body, headers)
            elif self.path in ("/healthz", "/readyz"):
                ok, info = (_status(runner, LIVE_WITHIN_S, False) if self.path == "/healthz"
                            else _status(runner, READY_WITHIN_S, True))
                self._send(200 if ok else 503, json.dumps({"ok": ok, **info}).encode(),
                           {"Content-Type": "application/json"})
            else:
                self._send(404, b"not found", {"Content-Type": "text/plain"})

        def _send(self, status: int, body: bytes, headers: dict[str, str]) -> None:
            self.send_response(status)
            for name, value in headers.items():
                self.send_header(name, value)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args) -> None:
            pass  # probes every few seconds are not news

    # 127.0.0.1 on a developer machine; 0.0.0.0 in a container, so probes and
    # Prometheus can reach it (set OPS_BIND_HOST).
    server = _Server((os.environ.get("OPS_BIND_HOST", "127.0.0.1"), port), Handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, name="ops", daemon=True).start()
    return server
