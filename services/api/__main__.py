"""`python -m services.api`: the platform's HTTP JSON API.

Reads (from the Redis read model):
    GET  /catalogue?sort=commission|time_left&page=1&size=20
    GET  /certificates/{id}
    GET  /c/{id}?via={account}                 share-link resolution
    GET  /accounts/{id}/feed
    GET  /accounts/{id}/earnings               the logged-in account's own only
Writes (bearer token from POST /login; each answers 202 with command ids):
    POST /login                                {"account_id", "password"}
    POST /offers                               issue an offer of N copies (seller)
    POST /certificates/{id}/pool               attach a commission pool (funder)
    POST /certificates/{id}/post               post to the catalogue (seller)
    POST /certificates/{id}/circulate          {"via": account?}
    POST /certificates/{id}/claim
    POST /certificates/{id}/purchase           {"payment_ref"}
    POST /certificates/{id}/refund             {"amount_minor", "refund_ref"} (seller)
    POST /certificates/{id}/cancel             take an unsold certificate off sale (seller)
    GET  /commands/{id}                        pending | accepted | rejected + reason
    GET  /openapi.json                         this API as OpenAPI 3.1
Operations: GET /metrics (Prometheus), /healthz, /readyz.
Pages (HTML, services/api/pages.py): / (catalogue), /page/certificates/{id},
/page/accounts/{id}, with a login form, share link, circulate and buy buttons.

Errors are JSON {"error": code, "detail": text}: 400 malformed JSON, 401, 404,
422 invalid body, 429 rate limited (with Retry-After). Environment: REDIS_URL,
KAFKA_BOOTSTRAP_SERVERS, COMMISSION_TOPIC_PREFIX, API_PORT (8080), OPS_BIND_HOST,
API_WRITES_PER_S (20 per account), COMMISSION_ACCOUNTS, COMMISSION_KEYS.
"""

from __future__ import annotations

import logging
import os
import time

import redis.asyncio as aioredis
from aiohttp import web
from aiokafka import AIOKafkaProducer

from services.api import pages
from services.api.accounts import Accounts
from services.api.errors import Problem, problem
from services.api.openapi import document
from services.api.reads import ReadApi
from services.api.writes import Gateway
from services.common.auth import Keyring
from services.common.metrics import ApiMetrics, exposition
from services.common.service import setup_logging
from services.common.settings import Settings
from services.readmodel.projection import Keys

log = logging.getLogger("commission.api")


def measured(metrics: ApiMetrics):
    """Counts and times every answer by its route's template (bounded labels)."""

    @web.middleware
    async def middleware(request: web.Request, handler):
        started = time.perf_counter()
        status = 500
        try:
            response = await handler(request)
            status = response.status
            return response
        except web.HTTPException as exc:
            status = exc.status
            raise
        finally:
            resource = request.match_info.route.resource
            route = resource.canonical if resource is not None else "unmatched"
            metrics.requests.labels(route, request.method, str(status)).inc()
            metrics.duration.labels(route).observe(time.perf_counter() - started)

    return middleware


@web.middleware
async def json_errors(request: web.Request, handler):
    """Every error is JSON with a code; an unexpected one is logged, never shown."""
    try:
        return await handler(request)
    except Problem as exc:
        return exc.response
    except web.HTTPException as exc:
        if exc.content_type == "application/json" or exc.status < 400:
            raise
        return web.json_response({"error": exc.reason.lower().replace(" ", "_"),
                                  "detail": exc.text or exc.reason}, status=exc.status)
    except Exception:
        log.exception("unexpected error", extra={"topic": request.path})
        return web.json_response({"error": "internal", "detail": "unexpected error; logged"},
                                 status=500)


def build(settings: Settings, client: aioredis.Redis, keyring: Keyring,
          passwords: dict[str, str], rate_per_s: int) -> web.Application:
    keys = Keys(settings.topics.prefix)
    reads = ReadApi(client, keys)
    metrics = ApiMetrics()
    app = web.Application(middlewares=[measured(metrics), json_errors])

    async def producer_lifecycle(app: web.Application):
        producer = AIOKafkaProducer(bootstrap_servers=settings.bootstrap, acks="all",
                                    enable_idempotence=True, client_id="commission-api",
                                    **settings.kafka_auth.aiokafka())
        await producer.start()
        app["gateway"] = Gateway(client, keys.p, Accounts(client, keys.p, passwords), keyring,
                                 producer, settings.topics.commands, rate_per_s)
        yield
        await producer.stop()

    app.cleanup_ctx.append(producer_lifecycle)

    def write(name: str):
        async def handler(request: web.Request) -> web.Response:
            return await getattr(request.app["gateway"], name)(request)
        return handler

    app.router.add_get("/catalogue", reads.catalogue)
    app.router.add_get("/certificates/{id}", reads.certificate)
    app.router.add_get("/c/{id}", reads.share_link)
    app.router.add_get("/accounts/{id}/feed", reads.feed)
    async def earnings(request: web.Request) -> web.Response:
        # earnings are private: an account sees its own only
        account = request.match_info["id"]
        me = await request.app["gateway"].accounts.account_for(
            request.headers.get("Authorization"))
        if me is None:
            return problem(401, "unauthenticated", "log in to see your earnings")
        if me != account:
            return problem(403, "forbidden", "an account sees only its own earnings")
        return web.json_response({"account_id": account,
                                  "earnings": await reads.earnings_of(account)})

    app.router.add_get("/accounts/{id}/earnings", earnings)
    app.router.add_post("/login", write("login"))
    app.router.add_post("/offers", write("offer"))
    app.router.add_post("/certificates/{id}/pool", write("attach"))
    app.router.add_post("/certificates/{id}/post", write("post"))
    app.router.add_post("/certificates/{id}/circulate", write("circulate"))
    app.router.add_post("/certificates/{id}/claim", write("claim"))
    app.router.add_post("/certificates/{id}/purchase", write("purchase"))
    app.router.add_post("/certificates/{id}/refund", write("refund"))
    app.router.add_post("/certificates/{id}/cancel", write("cancel"))
    app.router.add_get("/commands/{id}", write("outcome"))
    spec = document()

    async def openapi(request: web.Request) -> web.Response:
        return web.json_response(spec)

    app.router.add_get("/openapi.json", openapi)
    pages.routes(app, reads)

    async def healthz(request: web.Request) -> web.Response:
        return web.json_response({"ok": True})

    async def readyz(request: web.Request) -> web.Response:
        try:
            redis_ok = bool(await client.ping())
        except Exception:
            redis_ok = False
        ok = redis_ok and "gateway" in request.app
        return web.json_response({"ok": ok, "redis": redis_ok}, status=200 if ok else 503)

    async def prometheus(request: web.Request) -> web.Response:
        body, headers = exposition(metrics.registry)
        return web.Response(body=body, headers=headers)

    app.router.add_get("/metrics", prometheus)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    return app


def main() -> None:
    settings = Settings.from_env()
    setup_logging("api", settings.log_level)
    client = aioredis.from_url(os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0"))
    app = build(settings, client, Keyring.from_env(), Accounts.passwords_from_env(),
                int(os.environ.get("API_WRITES_PER_S", "20")))
    web.run_app(app, host=os.environ.get("OPS_BIND_HOST", "127.0.0.1"),
                port=int(os.environ.get("API_PORT", "8080")), access_log=None,
                print=lambda *_: None)


if __name__ == "__main__":
    main()
