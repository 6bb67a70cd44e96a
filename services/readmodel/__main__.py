"""`python -m services.readmodel`: projects ``accepted`` and ``rejections`` into Redis.

faust-streaming runs the worker (its web server answers the probes and /metrics, its
logging, signals and shutdown); the projection itself is a plain aiokafka consumer
loop (services/readmodel/consumer.py) that reads only committed records and projects
each batch in one Redis round trip, with where it stands stored in Redis by the same
script. Why not a faust agent (as before issue #25): faust-streaming 0.15.3's
group offset fell ever further behind on a transactional topic (docs/architecture.md,
"Read side"), so a restart re-read nearly the whole topic; and its per-event path
bounded the rate (docs/benchmarks.md).

The read model publishes nothing, and its effects are made exactly-once by the
sequence number checked with each projection (services/readmodel/store.py).

Environment: as the services, plus REDIS_URL (default redis://127.0.0.1:6379/0; the
password of its user from the file REDIS_PASSWORD_FILE, if set; a Redis Cluster:
redis+cluster://host:port/0 or REDIS_CLUSTER=1, services/common/redisconn.py),
COMMISSION_READMODEL_MAX_RECORDS (records a batch at most, default 2,000: a batch is
what the consumer holds when the last one is planned, never waited for to fill),
COMMISSION_READMODEL_FETCH_WAIT_MS (how long the broker may hold a fetch that finds
nothing committed, default 500: it answers as soon as a transaction commits) and
COMMISSION_READMODEL_GROUP (default "{group prefix}-readmodel"; the positions live
in Redis: with none there, as after a wipe, the topics are projected from the start,
which is how the projections are rebuilt).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import faust

from services.common import gctune
from services.common.auth import Keyring
from services.common.logs import json_handler
from services.common.metrics import ReadModelMetrics, exposition
from services.common.production import refuse_insecure
from services.common.redisconn import connect
from services.common.settings import Settings, redis_url_from_env
from services.readmodel.consumer import Projector
from services.readmodel.projection import Keys
from services.readmodel.store import ReadModelStore

log = logging.getLogger("commission.readmodel")


def build_app(settings: Settings, redis_url: str, group: str) -> faust.App:
    datadir = Path(settings.data_dir) / group
    datadir.mkdir(parents=True, exist_ok=True)  # faust creates only the last level
    # faust's own group (its assignor topic) is not the projection's: the two would
    # join one group with different assignment protocols
    app = faust.App(
        f"{group}-app", broker=f"kafka://{settings.bootstrap}", store="memory://",
        broker_credentials=settings.kafka_auth.faust(),
        # faust's web server answers the probes and /metrics when METRICS_PORT is set
        web_enabled=bool(settings.metrics_port), web_port=settings.metrics_port or 6066,
        web_bind=os.environ.get("OPS_BIND_HOST", "127.0.0.1"),
        topic_partitions=settings.partitions,
        broker_session_timeout=10.0, broker_heartbeat_interval=3.0,
        datadir=str(datadir),
        loghandlers=[json_handler("readmodel")],
    )
    client = connect(redis_url)
    store = ReadModelStore(client, Keys(settings.topics.prefix))
    metrics = ReadModelMetrics()
    # Fault injection (tests): SIGKILL this worker right after the batch that reaches
    # its n-th projection, before the group's offsets are committed.
    kill_after = int(os.environ.get("COMMISSION_READMODEL_KILL_AFTER", "0"))
    projector = Projector(settings, store, metrics, group, kill_after=kill_after)

    @app.page("/metrics")
    async def prometheus(web, request):
        body, headers = exposition(metrics.registry)
        return web.bytes(body, headers=headers)

    @app.page("/healthz")
    async def healthz(web, request):
        return web.json({"ok": True})

    @app.page("/readyz")
    async def readyz(web, request):
        # ready: partitions assigned (not in the middle of a rebalance), and Redis answers
        try:
            redis_ok = bool(await client.ping())
        except Exception:
            redis_ok = False
        ok = redis_ok and not projector.rebalancing
        return web.json({"ok": ok, "redis": redis_ok, "rebalancing": projector.rebalancing},
                        status=200 if ok else 503)

    @app.task
    async def project() -> None:
        try:
            await projector.run()
        except Exception:
            log.critical("the projection loop stopped", exc_info=True)
            os._exit(75)

    return app


def main() -> None:
    gctune.tune()  # its cache of states is a large table (services/common/gctune.py)
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
