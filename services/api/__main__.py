"""`python -m services.api`: the platform's HTTP JSON API and web pages.

Reads (from the Redis read model):
    GET  /catalogue?sort=commission|time_left&page=1&size=20
    GET  /certificates/{id}
    GET  /c/{id}?via={account}                 share-link resolution
    GET  /accounts/{id}/feed                   the logged-in account's own only
    GET  /accounts/{id}/earnings               the logged-in account's own only
Writes (bearer token from POST /login; each answers 202 with command ids):
    POST /accounts                             sign up {"login", "password",
                                               "display_name", "roles"?}: 201 + token
    POST /login                                {"account_id" (the login name),
                                               "password"}: token and account id
    GET  /accounts/me                          the session's own profile
    POST /accounts/me/password                 {"password", "new_password"}
    GET  /accounts/me/export                   profile, certificates, gains, payouts
    POST /accounts/me/erase                    {"password"} (or {"confirm": id})
    POST /logout                               ends the bearer token's session
    POST /offers                               issue an offer of N copies (seller)
    POST /certificates/{id}/pool               attach a commission pool (funder)
    POST /certificates/{id}/post               post to the catalogue (seller)
    POST /certificates/{id}/circulate          {"via": account?}
    POST /certificates/{id}/claim
    POST /certificates/{id}/checkout           201 {"checkout_id", "checkout_url"}: pay
                                               there; the payment system reports the
                                               purchase (/purchase answers 410)
    POST /certificates/{id}/refund             {"amount_minor", "refund_ref"} (seller)
    POST /certificates/{id}/decline            {"sharer_id", "reason", "note"?} (seller or reviewer)
    POST /certificates/{id}/approve            {"sharer_id"} (reviewer: clears a fraud flag)
    POST /certificates/{id}/cancel             take an unsold certificate off sale (seller)
    GET  /commands/{id}                        pending | accepted | rejected + reason
                                               (the sender's own commands only)
    GET  /openapi.json                         this API as OpenAPI 3.1
Pages (HTML, services/api/pages.py): / (catalogue), /page/certificates/{id},
/page/accounts/{id} (earnings: one line per gain; services/api/earningspages.py),
/page/accounts/{id}/feed, /page/accounts/{id}/earnings.csv, with login and logout,
share link, circulate, claim and buy;
sign-up, password change, export and erasure (services/api/accountpages.py); the
seller's console /page/console and the funder's /page/pools (services/api/console.py).
Accounts: the built-in store (services/api/accountstore.py) seeded from
services/api/accounts.py; roles on actions: services/api/roles.py.
Operations on the ops port (API_OPS_PORT, 9109; not the public one): GET /metrics
(Prometheus), /healthz, /readyz. /healthz and /readyz answer on the public port too
(a load balancer's probe sees nothing private in them).

Sessions: signed tokens (services/api/sessions.py), checked before Redis; the request
guard (services/api/guard.py): body limits, id checks, Origin, security headers.

Errors are JSON {"error": code, "detail": text} (on the browser's routes, /page/...,
/ and /oidc/..., and for a browser asking a path that does not exist, the same error
as an HTML page with a way back: services/api/errorpages.py): 400 malformed JSON, invalid id, too
deep; 401, 403 (not yours, cross-site, CSRF), 404, 409, 410, 413 body too large, 422
invalid body, 429 rate limited or login throttled (with Retry-After), 502 payment
system. Environment: REDIS_URL, KAFKA_BOOTSTRAP_SERVERS, COMMISSION_TOPIC_PREFIX,
API_PORT (8080), API_OPS_PORT (9109), OPS_BIND_HOST (127.0.0.1; both ports),
API_WRITES_PER_S (20 per account), API_SESSION_IDLE_S (1800), API_SESSION_MAX_S
(43200), API_LOGIN_FAILURES_PER_ACCOUNT (10), API_LOGIN_FAILURES_PER_ADDRESS (50)
per API_LOGIN_WINDOW_S (300), API_TLS, API_TRUSTED_PROXIES, API_ALLOWED_ORIGINS,
API_PUBLIC_URL,
PAYMENT_SYSTEM_URL, PAYMENT_SYSTEM_PUBLIC_URL, CHECKOUT_TOKEN(_FILE),
COMMISSION_ACCOUNTS(_FILE) (optional seed accounts), API_SIGNUP_ROLES,
COMMISSION_KEYS(_FILE) (the API uses its gateway and session
keys only, and refuses to start in production holding any other).
The shop's identity provider (services/api/oidc.py; README "Sign-in with your
identity provider"): OIDC_ISSUER, OIDC_CLIENT_ID, OIDC_CLIENT_SECRET(_FILE),
OIDC_AUDIENCE, OIDC_DISPLAY_NAME, OIDC_REDIRECT_BASE, OIDC_ROLES_CLAIM, OIDC_ROLE_MAP,
OIDC_VERIFIED_CLAIM, OIDC_CREATED_CLAIM, OIDC_SCOPES, OIDC_ALGORITHMS,
OIDC_CLOCK_SKEW_S, OIDC_JWKS_TTL_S, OIDC_JWKS_MIN_REFETCH_S: GET /oidc/login and
/oidc/callback sign in the web pages; the JSON API takes the provider's access tokens.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import time
from dataclasses import dataclass

import redis.asyncio as aioredis
from aiohttp import web
from aiokafka import AIOKafkaProducer

from services.api import accountpages, assets, console, errorpages, guard, oidc_web, pages
from services.api.accounts import Seed, seed, seeds_from_env
from services.api.accountstore import AccountStore
from services.api.checkout import PaymentSystemClient
from services.api.earningspages import Earnings, earnings_json, feed_json
from services.api.errors import Problem, problem
from services.api.oidc import OidcSettings
from services.api.openapi import document
from services.api.reads import ReadApi
from services.api.sessions import Sessions
from services.api.throttle import LoginThrottle
from services.api.writes import Gateway
from services.common.auth import Keyring
from services.common.metrics import ApiMetrics, exposition
from services.common.production import refuse_insecure
from services.common.redisconn import connect
from services.common.service import setup_logging
from services.common.settings import Settings, production, redis_url_from_env
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


API_SCOPES = ("gateway", "session")


@dataclass(frozen=True)
class ApiConfig:
    rate_per_s: int = 20
    session_idle_s: int = 30 * 60
    session_max_s: int = 12 * 3600
    login_failures_per_account: int = 10
    login_failures_per_address: int = 50
    login_window_s: int = 300

    @classmethod
    def from_env(cls) -> ApiConfig:
        def num(name: str, default: int) -> int:
            return int(os.environ.get(name, str(default)))

        return cls(rate_per_s=num("API_WRITES_PER_S", cls.rate_per_s),
                   session_idle_s=num("API_SESSION_IDLE_S", cls.session_idle_s),
                   session_max_s=num("API_SESSION_MAX_S", cls.session_max_s),
                   login_failures_per_account=num("API_LOGIN_FAILURES_PER_ACCOUNT",
                                                  cls.login_failures_per_account),
                   login_failures_per_address=num("API_LOGIN_FAILURES_PER_ADDRESS",
                                                  cls.login_failures_per_address),
                   login_window_s=num("API_LOGIN_WINDOW_S", cls.login_window_s))


def api_keyring(keyring: Keyring, production: bool) -> Keyring:
    """Only what the API uses: the gateway's signing key and the session keys. In
    production a keyring with anything else (the system key, the draw secret, any
    payments key) is refused; elsewhere (the development keys) the rest is dropped."""
    others = sorted(k.key_id for k in keyring.keys.values() if k.scope not in API_SCOPES)
    if others and production:
        raise SystemExit(f"the API holds only gateway and session keys; remove {others}")
    return Keyring({i: k for i, k in keyring.keys.items() if k.scope in API_SCOPES})


def build(settings: Settings, client: aioredis.Redis, keyring: Keyring,
          seeds: list[Seed], config: ApiConfig, trust: guard.Trust,
          payments: PaymentSystemClient, oidc: OidcSettings | None = None
          ) -> tuple[web.Application, web.Application]:
    """(the public app, the ops app): one process, two ports."""
    keys = Keys(settings.topics.prefix)
    reads = ReadApi(client, keys)
    metrics = ApiMetrics()
    sessions = Sessions(keyring, client, keys.p, idle_s=config.session_idle_s,
                        max_s=config.session_max_s)
    throttle = LoginThrottle(client, keys.p, per_account=config.login_failures_per_account,
                             per_address=config.login_failures_per_address,
                             window_s=config.login_window_s)
    # the built-in account store (its own keys, acct:..., never rebuilt from Kafka)
    accounts = AccountStore(client, f"acct:{settings.topics.prefix}", sessions, throttle)
    # errors as pages for the browser's routes, JSON for the API's (errorpages.py)
    app = web.Application(middlewares=[measured(metrics), errorpages.middleware, json_errors,
                                       guard.middleware(trust)],
                          client_max_size=guard.MAX_BODY_BYTES)
    app.on_response_prepare.append(guard.on_prepare(trust))
    app["sessions"], app["accounts"] = sessions, accounts

    async def producer_lifecycle(app: web.Application):
        producer = AIOKafkaProducer(bootstrap_servers=settings.bootstrap, acks="all",
                                    enable_idempotence=True, client_id="commission-api",
                                    **settings.kafka_auth.aiokafka())
        await producer.start()
        await seed(accounts, seeds)  # the demo or seed accounts not there yet
        app["gateway"] = Gateway(client, keys, accounts, keyring, producer,
                                 settings.topics.commands, config.rate_per_s, trust, payments)
        yield
        await producer.stop()
        await payments.close()
        accounts.close()

    app.cleanup_ctx.append(producer_lifecycle)

    def write(name: str):
        async def handler(request: web.Request) -> web.Response:
            return await getattr(request.app["gateway"], name)(request)
        return handler

    def own(read, what: str):
        """A read of an account's private data: its own session only."""
        async def handler(request: web.Request) -> web.Response:
            account = request.match_info["id"]
            gateway = request.app["gateway"]
            await gateway.session(request)
            identity = request["identity"] or await gateway.accounts.identify(request)
            if identity is None:
                return problem(401, "unauthenticated", f"log in to see your {what}")
            if identity.account_id != account:
                return problem(403, "forbidden", f"an account sees only its own {what}")
            return await read(request, account)
        return handler

    mine = Earnings(reads)

    async def earnings(request: web.Request, account: str) -> web.Response:
        # ``earnings``: the running totals by bucket; ``gains`` and ``totals``: one line
        # per gain with its history, gross, offset and net (services/api/earnings.py)
        return await reads.respond({"account_id": account,
                                    "earnings": await reads.earnings_of(account),
                                    **await earnings_json(mine, account)})

    async def feed(request: web.Request, account: str) -> web.Response:
        response = await reads.feed(request)
        if response.status != 200:
            return response
        body = json.loads(response.body)
        body.update(await feed_json(mine, account, body["items"]))
        return web.json_response(body)

    app.router.add_get("/catalogue", reads.catalogue)
    app.router.add_get("/certificates/{id}", reads.certificate)
    app.router.add_get("/c/{id}", reads.share_link)
    app.router.add_get("/accounts/{id}/feed", own(feed, "feed"))
    app.router.add_get("/accounts/{id}/earnings", own(earnings, "earnings"))
    app.router.add_post("/login", write("login"))
    app.router.add_post("/logout", write("logout"))
    app.router.add_post("/offers", write("offer"))
    app.router.add_post("/certificates/{id}/pool", write("attach"))
    app.router.add_post("/certificates/{id}/post", write("post"))
    app.router.add_post("/certificates/{id}/circulate", write("circulate"))
    app.router.add_post("/certificates/{id}/claim", write("claim"))
    app.router.add_post("/certificates/{id}/checkout", write("checkout"))
    app.router.add_post("/certificates/{id}/purchase", write("purchase_moved"))
    app.router.add_post("/certificates/{id}/refund", write("refund"))
    app.router.add_post("/certificates/{id}/decline", write("decline"))
    app.router.add_post("/certificates/{id}/approve", write("approve"))
    app.router.add_post("/certificates/{id}/cancel", write("cancel"))
    app.router.add_get("/commands/{id}", write("outcome"))
    spec = document()

    async def openapi(request: web.Request) -> web.Response:
        return web.json_response(spec)

    app.router.add_get("/openapi.json", openapi)
    pages.routes(app, reads)
    accountpages.routes(app, reads)
    console.routes(app, reads)  # the seller's console, the funder's pools
    oidc_web.install(app, oidc)  # the shop's provider, when OIDC_ISSUER is set
    assets.routes(app)

    async def healthz(request: web.Request) -> web.Response:
        return web.json_response({"ok": True})

    async def readyz(request: web.Request) -> web.Response:
        try:
            redis_ok = bool(await client.ping())
        except Exception:
            redis_ok = False
        ok = redis_ok and "gateway" in app
        return web.json_response({"ok": ok, "redis": redis_ok}, status=200 if ok else 503)

    async def prometheus(request: web.Request) -> web.Response:
        body, headers = exposition(metrics.registry)
        return web.Response(body=body, headers=headers)

    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    ops = web.Application()
    ops.router.add_get("/metrics", prometheus)
    ops.router.add_get("/healthz", healthz)
    ops.router.add_get("/readyz", readyz)
    return app, ops


async def serve(apps: list[tuple[web.Application, str, int]]) -> None:
    """Runs each app on its own address until SIGTERM or SIGINT, then stops them."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    runners = []
    try:
        for app, host, port in apps:
            runner = web.AppRunner(app, access_log=None)
            await runner.setup()
            runners.append(runner)
            await web.TCPSite(runner, host, port).start()
            log.info("listening", extra={"topic": f"{host}:{port}"})
        await stop.wait()
    finally:
        for runner in reversed(runners):
            await runner.cleanup()


def main() -> None:
    settings = Settings.from_env()
    setup_logging("api", settings.log_level)
    # its own Redis user's password from REDIS_PASSWORD_FILE, as the read model's
    client = connect(redis_url_from_env())  # one Redis or a cluster (the URL says)
    payments = PaymentSystemClient.from_env()
    trust = guard.Trust.from_env(payments.public_url)
    keyring = api_keyring(Keyring.from_env(), production())
    refuse_insecure(settings, keyring)  # published keys, Kafka in the clear
    public, ops = build(settings, client, keyring, seeds_from_env(),
                        ApiConfig.from_env(), trust, payments,
                        OidcSettings.from_env(production()))
    host = os.environ.get("OPS_BIND_HOST", "127.0.0.1")
    apps = [(public, host, int(os.environ.get("API_PORT", "8080")))]
    ops_port = int(os.environ.get("API_OPS_PORT", "9109"))
    if ops_port:
        apps.append((ops, host, ops_port))
    asyncio.run(serve(apps))


if __name__ == "__main__":
    main()
