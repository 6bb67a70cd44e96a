"""Writes: authenticated requests become signed commands on `commands`.

Every write answers 202 with the command id; the outcome (accepted, or rejected with
its reason) is readable afterwards at /commands/{id}, once the pipeline decided.
The account id of a command is always the logged-in account, never taken from the
body. A client that retries sends the same ``Idempotency-Key`` header: the command
id derives from it, so the pipeline applies the command once.
"""

from __future__ import annotations

import hashlib
import time
import uuid

import msgspec
import redis.asyncio as aioredis
from aiohttp import web
from aiokafka import AIOKafkaProducer

from domain import issue_offer
from domain.offer import offer_id_for
from schemas import commands as c
from schemas.types import (
    Count,
    Currency,
    DurationS,
    HoldS,
    Id,
    PositiveAmountMinor,
    ShortText,
)
from services.api.accounts import Accounts
from services.api.errors import Problem, problem
from services.common.auth import Keyring

_encode = msgspec.json.Encoder().encode


# --- request bodies: strict, so a typo is a 422, not a silent default --------------


class _Body(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    pass


class Login(_Body, kw_only=True):
    account_id: Id
    password: str


class CirculateBody(_Body, kw_only=True):
    via: Id | None = None


class PurchaseBody(_Body, kw_only=True):
    payment_ref: Id


class OfferBody(_Body, kw_only=True):
    # the offer's name; its id is "{seller}~{offer_id}" (domain.offer): yours alone
    offer_id: Id | None = None
    # the account allowed to attach the commission pool besides the seller
    funder_id: Id | None = None
    name: ShortText
    price_minor: PositiveAmountMinor
    currency: Currency
    copies: Count = 1
    terms: c.Terms = c.Terms()
    time_limit_s: DurationS | None = None


class PoolBody(_Body, kw_only=True):
    funding_ref: Id
    budget_minor: PositiveAmountMinor
    attached_minor: PositiveAmountMinor
    currency: Currency
    acquisition: c.AcquisitionPolicy = c.AcquisitionPolicy()
    replenish: c.ReplenishPolicy = c.ReplenishMatch()
    thresholds: c.Thresholds = c.Thresholds()
    hold_s: HoldS = c.DEFAULT_HOLD_S
    close_after_s: DurationS = c.DEFAULT_CLOSE_AFTER_S


class RefundBody(_Body, kw_only=True):
    amount_minor: PositiveAmountMinor
    refund_ref: Id


class EmptyBody(_Body, kw_only=True):
    pass


class Gateway:
    def __init__(self, client: aioredis.Redis, prefix: str, accounts: Accounts,
                 keyring: Keyring, producer: AIOKafkaProducer, commands_topic: str,
                 rate_per_s: int) -> None:
        self.redis = client
        self.prefix = prefix
        self.accounts = accounts
        self.keyring = keyring
        self.key = keyring.first("gateway")
        self.producer = producer
        self.topic = commands_topic
        self.rate_per_s = rate_per_s

    # --- plumbing -----------------------------------------------------------------

    async def _body(self, request: web.Request, kind: type):
        raw = await request.read()
        try:
            return msgspec.json.decode(raw or b"{}", type=kind)
        except msgspec.ValidationError as err:
            raise Problem(422, "invalid_body", str(err)) from None
        except msgspec.DecodeError:
            raise Problem(400, "malformed_json", "the body is not JSON") from None

    async def _account(self, request: web.Request, limited: bool = True) -> str:
        account = await self.accounts.account_for(request.headers.get("Authorization"))
        return await self.admit(account, limited)

    async def admit(self, account: str | None, limited: bool = True) -> str:
        """The account, if logged in and within its rate; else the HTTP error."""
        if account is None:
            raise Problem(401, "unauthenticated",
                          "log in at POST /login and send Authorization: Bearer <token>")
        if not limited:
            return account
        window = int(time.time())
        key = f"{self.prefix}rate:{account}:{window}"
        async with self.redis.pipeline(transaction=True) as tx:
            tx.incr(key)
            tx.expire(key, 2)
            count, _ = await tx.execute()
        if count > self.rate_per_s:
            raise Problem(429, "rate_limited", f"at most {self.rate_per_s} writes per second",
                          **{"Retry-After": "1"})
        return account

    def _command_id(self, request: web.Request, account: str) -> str:
        key = request.headers.get("Idempotency-Key")
        if key is None:
            return f"api-{uuid.uuid4().hex}"
        return "api-" + hashlib.sha256(f"{account}\x1f{key}".encode()).hexdigest()[:40]

    async def _send(self, command: c.Command) -> None:
        body = _encode(command)
        await self.producer.send_and_wait(self.topic, key=command.certificate_id.encode(),
                                          value=body, headers=self.keyring.sign(body, self.key))

    def _accepted(self, command_ids: list[str], **extra) -> web.Response:
        return web.json_response(
            {"command_ids": command_ids,
             "status_urls": [f"/commands/{i}" for i in command_ids], **extra}, status=202)

    # --- endpoints ----------------------------------------------------------------

    async def login(self, request: web.Request) -> web.Response:
        body = await self._body(request, Login)
        token = await self.accounts.login(body.account_id, body.password)
        if token is None:
            return problem(401, "bad_credentials", "unknown account or wrong password")
        return web.json_response({"token": token, "account_id": body.account_id})

    async def send_for(self, account: str, kind: type, certificate_id: str, command_id: str,
                       **fields) -> None:
        """Sign and send one certificate command as ``account`` (API and web pages)."""
        await self._send(kind(command_id=command_id, certificate_id=certificate_id,
                              at_ms=int(time.time() * 1000), account_id=account, **fields))

    async def _certificate_command(self, request: web.Request, kind: type, body_type: type,
                                   **fields) -> web.Response:
        account = await self._account(request)
        body = await self._body(request, body_type)
        command_id = self._command_id(request, account)
        await self.send_for(account, kind, request.match_info["id"], command_id,
                            **msgspec.structs.asdict(body), **fields)
        return self._accepted([command_id])

    async def circulate(self, request: web.Request) -> web.Response:
        return await self._certificate_command(request, c.Circulate, CirculateBody)

    async def claim(self, request: web.Request) -> web.Response:
        return await self._certificate_command(request, c.Claim, EmptyBody)

    async def purchase(self, request: web.Request) -> web.Response:
        return await self._certificate_command(request, c.Purchase, PurchaseBody)

    async def attach(self, request: web.Request) -> web.Response:
        return await self._certificate_command(request, c.AttachPool, PoolBody)

    async def post(self, request: web.Request) -> web.Response:
        return await self._certificate_command(request, c.PostCertificate, EmptyBody)

    async def refund(self, request: web.Request) -> web.Response:
        # the seller's refund (the payment system sends its own, signed with its key)
        return await self._certificate_command(request, c.Refund, RefundBody, by="seller")

    async def cancel(self, request: web.Request) -> web.Response:
        return await self._certificate_command(request, c.CancelCertificate, EmptyBody)

    async def offer(self, request: web.Request) -> web.Response:
        account = await self._account(request)
        body = await self._body(request, OfferBody)
        command_id = self._command_id(request, account)
        try:
            offer_id = offer_id_for(account, body.offer_id or command_id[4:20])
            commands = issue_offer(offer_id=offer_id, command_id=command_id, seller_id=account,
                                   name=body.name, price_minor=body.price_minor,
                                   currency=body.currency, copies=body.copies,
                                   at_ms=int(time.time() * 1000), terms=body.terms,
                                   time_limit_s=body.time_limit_s, funder_id=body.funder_id)
        except ValueError as err:
            return problem(422, "invalid_body", str(err))
        for command in commands:
            await self._send(command)
        return self._accepted([x.command_id for x in commands], offer_id=offer_id,
                              certificate_ids=[x.certificate_id for x in commands])

    async def outcome(self, request: web.Request) -> web.Response:
        await self._account(request, limited=False)
        raw = await self.redis.hgetall(f"{self.prefix}cmd:{request.match_info['id']}")
        if not raw:
            return web.json_response({"status": "pending"})
        return web.json_response({k.decode(): v.decode() for k, v in raw.items()})
