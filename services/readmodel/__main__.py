"""`python -m services.readmodel`: a faust-streaming app projecting ``accepted`` into Redis.

Why faust here and not in the money path: the read model publishes nothing, and its
effects are made exactly-once by the sequence number stored with each projection
(services/readmodel/store.py), so faust's at-least-once agent is all it needs.

The app reads only committed records (``services/readmodel/committed.py``: faust
would read uncommitted ones outside its exactly-once mode, and a record of an
aborted transaction is not always decided the same way again).

Environment: as the services, plus REDIS_URL (default redis://127.0.0.1:6379/0; the
password of its user from the file REDIS_PASSWORD_FILE, if set) and
COMMISSION_READMODEL_GROUP (default "{group prefix}-readmodel"; a new group replays
the topic from the start, which is how the projections are rebuilt).
"""

from __future__ import annotations

import logging
import os
import signal
import time
from pathlib import Path

import faust
import msgspec
import redis.asyncio as aioredis

from schemas.commands import AcceptedCommand
from schemas.rejections import Rejection
from services.common.auth import Keyring
from services.common.logs import json_handler
from services.common.metrics import ReadModelMetrics, exposition
from services.common.production import refuse_insecure
from services.common.settings import Settings, redis_url_from_env
from services.readmodel.committed import CommittedApp
from services.readmodel.projection import Keys
from services.readmodel.store import ReadModelStore

log = logging.getLogger("commission.readmodel")
_decode = msgspec.json.Decoder(AcceptedCommand).decode
_decode_rejection = msgspec.json.Decoder(Rejection).decode


def build_app(settings: Settings, redis_url: str, group: str) -> faust.App:
    datadir = Path(settings.data_dir) / group
    datadir.mkdir(parents=True, exist_ok=True)  # faust creates only the last level
    app = CommittedApp(
        group, broker=f"kafka://{settings.bootstrap}", store="memory://",
        broker_credentials=settings.kafka_auth.faust(),
        # faust's web server answers the probes and /metrics when METRICS_PORT is set
        web_enabled=bool(settings.metrics_port), web_port=settings.metrics_port or 6066,
        web_bind=os.environ.get("OPS_BIND_HOST", "127.0.0.1"),
        topic_partitions=settings.partitions, consumer_auto_offset_reset="earliest",
        # a killed worker's partitions move after 10 s (as the services', aiokafka's
        # default), not faust's 60 s, during which the pages would stand still
        broker_session_timeout=10.0, broker_heartbeat_interval=3.0,
        datadir=str(datadir),
        loghandlers=[json_handler("readmodel")],
    )
    source = app.topic(settings.topics.accepted, key_type=bytes, value_type=bytes,
                       key_serializer="raw", value_serializer="raw")
    client = aioredis.from_url(redis_url)
    store = ReadModelStore(client, Keys(settings.topics.prefix))
    metrics = ReadModelMetrics()
    projected = metrics.commands.labels("projected")
    skipped = metrics.commands.labels("skipped")
    # Fault injection (tests): SIGKILL this worker right after its n-th projection,
    # before faust can commit that record's offset: a restart must meet it again.
    kill_after = int(os.environ.get("COMMISSION_READMODEL_KILL_AFTER", "0"))
    count = [0]

    @app.page("/metrics")
    async def prometheus(web, request):
        body, headers = exposition(metrics.registry)
        return web.bytes(body, headers=headers)

    @app.page("/healthz")
    async def healthz(web, request):
        return web.json({"ok": True})

    @app.page("/readyz")
    async def readyz(web, request):
        # ready: not in the middle of a rebalance, and Redis answers
        try:
            redis_ok = bool(await client.ping())
        except Exception:
            redis_ok = False
        ok = redis_ok and not app.rebalancing
        return web.json({"ok": ok, "redis": redis_ok, "rebalancing": app.rebalancing},
                        status=200 if ok else 503)

    refused = app.topic(settings.topics.rejections, key_type=bytes, value_type=bytes,
                        key_serializer="raw", value_serializer="raw")

    @app.agent(refused)
    async def record_rejections(stream):
        async for value in stream:
            await store.reject(_decode_rejection(value))
            metrics.rejections.inc()

    @app.agent(source)  # concurrency 1: each partition's records in order
    async def project_accepted(stream):
        async for event in stream.events():
            accepted = _decode(event.value)
            accepted_ms = int(event.message.timestamp * 1000)
            # An exception here would still see the record acknowledged (faust #315):
            # let it stop the worker instead, so that the record is redelivered.
            try:
                applied = await store.apply(accepted, accepted_ms)
            except Exception:
                log.critical("projection failed; stopping", exc_info=True,
                             extra={"certificate_id": accepted.command.certificate_id,
                                    "command_id": accepted.command.command_id})
                os._exit(75)
            if applied:
                projected.inc()
                metrics.trail.observe(max(0.0, time.time() - accepted_ms / 1000))
                count[0] += 1
                if count[0] == kill_after:  # no await since the projection: uncommitted
                    os.kill(os.getpid(), signal.SIGKILL)
            else:
                skipped.inc()

    return app


def main() -> None:
    settings = Settings.from_env()
    refuse_insecure(settings, Keyring({}))  # it holds no keys
    redis_url = redis_url_from_env()
    group = os.environ.get("COMMISSION_READMODEL_GROUP", f"{settings.group_prefix}-readmodel")
    app = build_app(settings, redis_url, group)
    level = {"warning": "warn", "critical": "crit"}.get(settings.log_level, settings.log_level)
    worker = faust.Worker(app, loglevel=level)
    worker.execute_from_commandline()


if __name__ == "__main__":
    main()
