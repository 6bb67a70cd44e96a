"""The operations endpoint of a service, on METRICS_PORT, served from its event loop:

* ``/metrics``: Prometheus exposition of the service's registry;
* ``/healthz`` (liveness): the consume loop went round within ``LIVE_WITHIN_S``; a
  stuck loop (or a blocked event loop, which cannot answer at all) fails it;
* ``/readyz`` (readiness): the consumer has joined its group and received an
  assignment (possibly empty: a spare worker is ready), and the loop went round
  within ``READY_WITHIN_S``.

Both answer JSON with the reason, so a probe failure explains itself.
"""

from __future__ import annotations

import time

from aiohttp import web

from services.common.metrics import Metrics, exposition
from services.common.runner import StageRunner

LIVE_WITHIN_S = 120.0
READY_WITHIN_S = 30.0


def _status(runner: StageRunner, within_s: float, need_join: bool) -> tuple[bool, dict]:
    idle = time.monotonic() - runner.last_loop_monotonic
    info = {"loop_seconds_ago": round(idle, 1), "joined": runner.assigned_event.is_set(),
            "partitions": sorted(runner.producers)}
    ok = idle <= within_s and (runner.assigned_event.is_set() or not need_join)
    return ok, info


async def start_ops_server(port: int, runner: StageRunner, metrics: Metrics) -> web.AppRunner:
    async def metrics_view(request: web.Request) -> web.Response:
        body, headers = exposition(metrics.registry)
        return web.Response(body=body, headers=headers)

    async def healthz(request: web.Request) -> web.Response:
        ok, info = _status(runner, LIVE_WITHIN_S, need_join=False)
        return web.json_response({"ok": ok, **info}, status=200 if ok else 503)

    async def readyz(request: web.Request) -> web.Response:
        ok, info = _status(runner, READY_WITHIN_S, need_join=True)
        return web.json_response({"ok": ok, **info}, status=200 if ok else 503)

    app = web.Application()
    app.router.add_get("/metrics", metrics_view)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app_runner = web.AppRunner(app, access_log=None)
    await app_runner.setup()
    await web.TCPSite(app_runner, host=_bind_host(), port=port).start()
    return app_runner


def _bind_host() -> str:
    import os

    # 127.0.0.1 on a developer machine; 0.0.0.0 in a container, so probes and
    # Prometheus can reach it (set OPS_BIND_HOST).
    return os.environ.get("OPS_BIND_HOST", "127.0.0.1")
