"""Writes: authenticated requests become signed commands on `commands`.

Every write answers 202 with the command id; the outcome (accepted, or rejected with
its reason) is readable afterwards at /commands/{id}, once the pipeline decided, by
the account that sent it only. The account id of a command is always the logged-in
account, never taken from the body. A client that retries sends the same
``Idempotency-Key`` header: the command id derives from it, so the pipeline applies
the command once.

A purchase is not a command the API sends: the buyer starts a checkout
(``POST /certificates/{id}/checkout``) and the payment system reports the captured
payment with its own key (services/api/checkout.py).

Writes are limited per account by a generic cell rate (GCRA, in Redis): ``rate``
writes per second with bursts of one second's worth; an offer of N copies costs N.
"""

from __future__ import annotations

import hashlib
import math
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
from services.api.accountstore import AccountStore
from services.api.checkout import PaymentSystemClient
from services.api.earningspages import record_share_sent
from services.api.errors import Problem, problem
from services.api.guard import Trust, read_body
from services.api.identity import Identity, Role
from services.api.roles import require
from services.api.sessions import Session
from services.common.auth import Keyring
from services.readmodel import statecopy
from services.readmodel.projection import Keys

_encode = msgspec.json.Encoder().encode
_validate = msgspec.json.Decoder(c.Command).decode
# how long the API remembers who sent a command (only its sender reads its outcome)
OWNER_TTL_S = 7 * 24 * 3600

# GCRA: KEYS[1] holds the account's theoretical arrival time (ms, Redis's clock).
# ARGV: cost (ms of the account's allowance this write uses), burst (ms). A write is
# admitted when the account is idle (any cost: a large offer goes through, then the
# account waits it out) or when it fits within the burst; answers 0, or the ms to wait.
_GCRA = """
local t = redis.call('TIME')
local now = t[1] * 1000 + math.floor(t[2] / 1000)
local tat = tonumber(redis.call('GET', KEYS[1]) or '0')
if tat < now then tat = now end
local cost, burst = tonumber(ARGV[1]), tonumber(ARGV[2])
if tat > now and tat + cost - now > burst then
  return tat + cost - now - burst
end
local new = tat + cost
redis.call('SET', KEYS[1], new, 'PX', new - now + 1000)
return 0
"""


# --- request bodies: strict, so a typo is a 422, not a silent default --------------


class _Body(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    pass


class Login(_Body, kw_only=True):
    account_id: Id
    password: str


class CirculateBody(_Body, kw_only=True):
    via: Id | None = None


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


class DeclineBody(_Body, kw_only=True):
    sharer_id: Id
    reason: c.DeclineReason
    note: ShortText | None = None


class ApproveBody(_Body, kw_only=True):
    sharer_id: Id


def account_facts(identity: Identity | None) -> c.AccountFacts | None:
    """What the gateway attests about the sharer (issue #24: a pool's account rules
    read it): from the account store or the provider's claims, never the request."""
    if identity is None or identity.created_ms <= 0:
        return None
    return c.AccountFacts(created_ms=identity.created_ms, verified=identity.verified)


class Gateway:
    def __init__(self, client: aioredis.Redis, keys: Keys, accounts: AccountStore,
                 keyring: Keyring, producer: AIOKafkaProducer, commands_topic: str,
                 rate_per_s: int, trust: Trust, payments: PaymentSystemClient) -> None:
        self.redis = client
        self.keys = keys
        self.prefix = keys.p
        self.accounts = accounts
        self.sessions = accounts.sessions
        self.keyring = keyring
        self.key = keyring.first("gateway")
        self.producer = producer
        self.topic = commands_topic
        self.rate_per_s = rate_per_s
        self.trust = trust
        self.payments = payments
        self._gcra = client.register_script(_GCRA)

    # --- plumbing -----------------------------------------------------------------

    async def _body(self, request: web.Request, kind: type):
        return await read_body(request, kind)

    async def session(self, request: web.Request) -> Session | None:
        """The bearer token's session (its account's Identity in
        ``request["identity"]``); a re-issued token goes back in the
        ``Session-Token`` header (sliding idle timeout)."""
        auth = request.headers.get("Authorization", "")
        found = await self.accounts.session_identity(
            auth[len("Bearer "):] if auth.startswith("Bearer ") else None)
        session, request["identity"] = found if found else (None, None)
        if session is not None:
            fresh = self.sessions.refreshed(session)
            if fresh is not None:
                request["session_token"] = fresh.token
        return session

    async def identity(self, request: web.Request) -> Identity:
        """Who sends this request (the session's account, or the identity provider's
        token when one is set up); 401 when nobody."""
        if "identity" not in request:
            await self.session(request)
        identity = request["identity"]
        if identity is None and self.accounts.bearer_verifier is not None:
            identity = request["identity"] = await self.accounts.identify(request)
        if identity is None:
            raise Problem(401, "unauthenticated",
                          "log in at POST /login and send Authorization: Bearer <token>")
        return identity

    async def _account(self, request: web.Request, cost: int = 1) -> str:
        return await self.admit((await self.identity(request)).account_id, cost)

    async def admit(self, account: str | None, cost: int = 1) -> str:
        """The account, if logged in and within its rate (``cost`` writes; 0: no
        limit); else the HTTP error."""
        if account is None:
            raise Problem(401, "unauthenticated",
                          "log in at POST /login and send Authorization: Bearer <token>")
        if cost <= 0:
            return account
        wait_ms = await self._gcra(keys=[f"{self.prefix}rate:{account}"],
                                   args=[cost * 1000 // self.rate_per_s, 1000])
        if int(wait_ms) > 0:
            raise Problem(429, "rate_limited", f"at most {self.rate_per_s} writes per second "
                          "(an offer of N copies counts N)",
                          **{"Retry-After": str(max(1, math.ceil(int(wait_ms) / 1000)))})
        return account

    def _command_id(self, request: web.Request, account: str) -> str:
        key = request.headers.get("Idempotency-Key")
        if key is None:
            return f"api-{uuid.uuid4().hex}"
        return "api-" + hashlib.sha256(f"{account}\x1f{key}".encode()).hexdigest()[:40]

    async def _send(self, command: c.Command, owner: str) -> None:
        body = _encode(command)
        try:
            _validate(body)  # the contract's limits (ids, lengths), before Kafka sees it
        except msgspec.ValidationError as err:
            raise Problem(400, "invalid_command", str(err)) from None
        await self.redis.set(f"{self.prefix}cmd-owner:{command.command_id}", owner,
                             ex=OWNER_TTL_S)
        await self.producer.send_and_wait(self.topic, key=command.certificate_id.encode(),
                                          value=body, headers=self.keyring.sign(body, self.key))

    async def owner_of(self, command_id: str) -> str | None:
        raw = await self.redis.get(f"{self.prefix}cmd-owner:{command_id}")
        return raw.decode() if raw else None

    def _accepted(self, command_ids: list[str], **extra) -> web.Response:
        return web.json_response(
            {"command_ids": command_ids,
             "status_urls": [f"/commands/{i}" for i in command_ids], **extra}, status=202)

    # --- endpoints ----------------------------------------------------------------

    async def login(self, request: web.Request) -> web.Response:
        body = await self._body(request, Login)
        session = await self.accounts.login(body.account_id, body.password,
                                            self.trust.client_address(request))
        if session is None:
            return problem(401, "bad_credentials", "unknown account or wrong password")
        return web.json_response({"token": session.token, "account_id": session.account,
                                  "expires_at_s": session.expires_s})

    async def logout(self, request: web.Request) -> web.Response:
        session = await self.accounts.session_for(request.headers.get("Authorization"))
        if session is None:
            raise Problem(401, "unauthenticated", "no live session to end")
        await self.accounts.end_session(session)
        return web.json_response({"logged_out": True})

    async def send_for(self, account: str, kind: type, certificate_id: str, command_id: str,
                       identity: Identity | None = None, **fields) -> None:
        """Sign and send one certificate command as ``account`` (API and web pages). A
        share carries the facts the gateway attests about its account (``identity``,
        else the account store's)."""
        if kind is c.Circulate:
            if identity is None or identity.account_id != account:
                identity = await self.accounts.get(account)
            fields["account"] = account_facts(identity)
        await self._send(kind(command_id=command_id, certificate_id=certificate_id,
                              at_ms=int(time.time() * 1000), account_id=account, **fields),
                         owner=account)
        if kind in (c.Circulate, c.Claim):  # the feed says which were refused, and why
            await record_share_sent(self.redis, self.prefix, account, command_id)

    async def _certificate_command(self, request: web.Request, kind: type, body_type: type,
                                   **fields) -> web.Response:
        account = await self._account(request)
        body = await self._body(request, body_type)
        command_id = self._command_id(request, account)
        await self.send_for(account, kind, request.match_info["id"], command_id,
                            request.get("identity"), **msgspec.structs.asdict(body), **fields)
        return self._accepted([command_id])

    async def circulate(self, request: web.Request) -> web.Response:
        return await self._certificate_command(request, c.Circulate, CirculateBody)

    async def claim(self, request: web.Request) -> web.Response:
        return await self._certificate_command(request, c.Claim, EmptyBody)

    async def attach(self, request: web.Request) -> web.Response:
        require(await self.identity(request), Role.FUNDER,
                or_seller_of=request.match_info["id"])
        return await self._certificate_command(request, c.AttachPool, PoolBody)

    async def post(self, request: web.Request) -> web.Response:
        return await self._certificate_command(request, c.PostCertificate, EmptyBody)

    async def refund(self, request: web.Request) -> web.Response:
        # the seller's refund (the payment system sends its own, signed with its key)
        return await self._certificate_command(request, c.Refund, RefundBody, by="seller")

    async def cancel(self, request: web.Request) -> web.Response:
        return await self._certificate_command(request, c.CancelCertificate, EmptyBody)

    async def decline(self, request: web.Request) -> web.Response:
        """Review: decline a sharer's commission that is not paid yet (the seller of the
        certificate, or a reviewer). The core decides whether it still can be."""
        identity = await self.identity(request)
        require(identity, Role.REVIEWER, or_seller_of=request.match_info["id"])
        return await self._certificate_command(request, c.DeclineCommission, DeclineBody,
                                               reviewer=identity.has(Role.REVIEWER))

    async def approve(self, request: web.Request) -> web.Response:
        """Review: clear a fraud flag (a reviewer only; never a seller)."""
        require(await self.identity(request), Role.REVIEWER)
        return await self._certificate_command(request, c.ApproveCommission, ApproveBody,
                                               reviewer=True)

    async def start_checkout(self, request: web.Request, account: str,
                             certificate_id: str) -> tuple[str, str]:
        """Open a checkout at the payment system for ``account`` buying the
        certificate at its price: (checkout id, the payment page's URL)."""
        cert = await statecopy.load_one(self.redis, self.keys, certificate_id)
        page = await self.redis.hgetall(self.keys.cert(certificate_id))
        if cert is None or not page:
            raise Problem(404, "unknown_certificate", "no certificate with this id")
        if cert.status != "posted":
            raise Problem(409, "not_for_sale", f"the certificate is {cert.status}")
        if account == cert.seller_id:
            raise Problem(409, "own_certificate", "a seller cannot buy its own certificate")
        back = f"{self.trust.own_origin(request)}/page/certificates/{certificate_id}"
        return await self.payments.create(
            certificate_id=certificate_id, seller_id=cert.seller_id, buyer_id=account,
            amount_minor=cert.price_minor, currency=cert.currency, return_url=back,
            description=page.get(b"name", certificate_id.encode()).decode())

    async def checkout(self, request: web.Request) -> web.Response:
        account = await self._account(request)
        await self._body(request, EmptyBody)
        cid = request.match_info["id"]
        checkout_id, url = await self.start_checkout(request, account, cid)
        return web.json_response({"checkout_id": checkout_id, "checkout_url": url,
                                  "certificate_id": cid}, status=201,
                                 headers={"Location": url})

    async def purchase_moved(self, request: web.Request) -> web.Response:
        return problem(410, "use_checkout", "a purchase is reported by the payment system: "
                       "start one with POST /certificates/{id}/checkout")

    async def offer(self, request: web.Request) -> web.Response:
        identity = await self.identity(request)
        require(identity, Role.SELLER)
        body = await self._body(request, OfferBody)
        account = await self.admit(identity.account_id, cost=body.copies)  # N copies count N
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
            await self._send(command, owner=account)
        return self._accepted([x.command_id for x in commands], offer_id=offer_id,
                              certificate_ids=[x.certificate_id for x in commands])

    async def outcome(self, request: web.Request) -> web.Response:
        account = await self._account(request, cost=0)
        command_id = request.match_info["id"]
        if await self.owner_of(command_id) != account:
            # another account's command and a command never sent look the same
            return problem(404, "unknown_command", "no command of yours with this id")
        raw = await self.redis.hgetall(self.keys.outcome(command_id))
        if not raw:
            return web.json_response({"status": "pending"})
        return web.json_response({k.decode(): v.decode() for k, v in raw.items()})
