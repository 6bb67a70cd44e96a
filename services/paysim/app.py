"""A simulated payment system for the demo: checkouts, a card form, captures.

This is a simulator, not a payment system: no card is charged, nothing is stored on
disk, and every checkout lives in this process's memory only (a restart forgets the
open ones; at most ``MAX_CHECKOUTS``, each for ``CHECKOUT_TTL_S``). What it does is
what a real one does for the engine:

1. ``POST /checkouts`` -- from the API only, server to server, with
   ``Authorization: Bearer <CHECKOUT_TOKEN>`` (the secret both share; a request without
   it gets 401): {certificate_id, seller_id, buyer_id, amount_minor, currency,
   return_url, description?} -> 201 {checkout_id, url}.
2. ``GET /checkouts/{id}`` -- the page the buyer's browser is sent to: what is being
   bought, the amount, a card form with the test card prefilled, and plainly that
   the payment is simulated.
3. ``POST /checkouts/{id}/pay`` -- "captures" the payment: a new ``payment_ref``
   (``pay_`` + random), reported to the engine by services/paysim/sender.py
   (``PaymentSystem.capture``, signed with the payment system's Ed25519 private key,
   on ``payment-results``), then the browser goes back to ``return_url`` with
   ``?checkout={id}``. A checkout is captured once; paying it again only goes back.
   The card ``4000 0000 0000 0002`` is declined (nothing is captured).

**Escrow** (the funder's side, the same way): ``POST /escrows`` from the API with the
same token: {funder_id, currency, return_url, description?, holds: [{certificate_id,
funding_ref, amount_minor}]} (the amounts are the pools' budgets, read by the API
from the engine's state, never typed in a browser) -> 201 {escrow_id, url};
``GET /escrows/{id}`` the funder's page; ``POST /escrows/{id}/pay`` holds the money
and reports one ``ConfirmFunding`` per pool (command id ``escrow:{funding_ref}``,
signed with the payment system's key), then back to ``return_url?escrow={id}``. A
funding reference is held once: a second escrow for it is refused (409), paying
again only goes back, and the engine's captures stage admits one confirmation per
reference whatever is replayed.

The checkout id is 128 random bits: knowing it is what lets a browser see and pay
the checkout. Keys: ``PAYMENT_SYSTEM_KEYS(_FILE)`` -- the payment system's own keys
only; it refuses to start holding any engine key (gateway, session, system, draw).
Environment: PAYSIM_PORT (8090), PAYSIM_BIND_HOST (127.0.0.1), PAYSIM_PUBLIC_URL
(http://127.0.0.1:{port}: the address browsers use), CHECKOUT_TOKEN(_FILE), and the
Kafka settings every process reads.
"""

from __future__ import annotations

import asyncio
import hmac
import html
import logging
import os
import secrets
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import Annotated, Protocol
from urllib.parse import urlencode, urlsplit, urlunsplit

import msgspec
from aiohttp import web

from schemas.types import Currency, Id, PositiveAmountMinor, ShortText
from services.api import assets
from services.api.checkout import checkout_token_from_env
from services.api.errors import Problem, problem
from services.api.guard import MAX_BODY_BYTES, check_json, origin_of
from services.api.money import money
from services.common.auth import Keyring
from services.common.service import setup_logging
from services.common.settings import Settings

log = logging.getLogger("commission.paysim")

MAX_CHECKOUTS = 10_000
MAX_HOLDS = 100  # pools funded by one escrow payment (an offer's copies)
CHECKOUT_TTL_S = 3600
TEST_CARD = "4242 4242 4242 4242"
DECLINED_CARD = "4000 0000 0000 0002"


class Capturer(Protocol):
    def capture(self, *, certificate_id: str, seller_id: str, buyer_id: str, payment_ref: str,
                captured_minor: int, currency: str) -> str: ...

    def confirm_funding(self, *, certificate_id: str, funding_ref: str, amount_minor: int,
                        currency: str) -> str: ...

    def close(self) -> None: ...


class NewCheckout(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    certificate_id: Id
    seller_id: Id
    buyer_id: Id
    amount_minor: PositiveAmountMinor
    currency: Currency
    return_url: str
    description: ShortText | None = None


class Hold(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    certificate_id: Id
    funding_ref: Id
    amount_minor: PositiveAmountMinor


class NewEscrow(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    funder_id: Id
    currency: Currency
    return_url: str
    holds: Annotated[list[Hold], msgspec.Meta(min_length=1, max_length=MAX_HOLDS)]
    description: ShortText | None = None


@dataclass
class Escrow:
    checkout_id: str  # the escrow id (named as a checkout's: the same page plumbing)
    order: NewEscrow
    created_s: float
    status: str = "open"  # open -> holding -> held


@dataclass
class Checkout:
    checkout_id: str
    order: NewCheckout
    created_s: float
    status: str = "open"  # open -> capturing -> captured
    payment_ref: str | None = None
    command_id: str | None = None


def _esc(value: object) -> str:
    return html.escape(str(value), quote=True)


def _back(return_url: str, checkout_id: str, name: str = "checkout") -> str:
    parts = urlsplit(return_url)
    query = (parts.query + "&" if parts.query else "") + urlencode({name: checkout_id})
    return urlunsplit((parts.scheme, parts.netloc, parts.path, query, ""))


class Simulator:
    def __init__(self, capturer: Capturer, token: str, public_url: str) -> None:
        self.capturer = capturer
        self.token = token
        self.public_url = public_url.rstrip("/")
        self.checkouts: OrderedDict[str, Checkout] = OrderedDict()
        self.escrows: OrderedDict[str, Escrow] = OrderedDict()
        self.held_refs: set[str] = set()  # funding references held (in this process)

    def _forget_old(self) -> None:
        horizon = time.time() - CHECKOUT_TTL_S
        for open_ in (self.checkouts, self.escrows):
            while open_ and (len(open_) >= MAX_CHECKOUTS
                             or next(iter(open_.values())).created_s < horizon):
                open_.popitem(last=False)

    def _find(self, request: web.Request) -> Checkout:
        found = self.checkouts.get(request.match_info["id"])
        if found is None:
            raise Problem(404, "unknown_checkout", "no such checkout (or it expired)")
        return found

    # --- the API's call -------------------------------------------------------------

    async def _order(self, request: web.Request, kind: type):
        """The API's order (checkout or escrow): its shared token, a valid body."""
        given = request.headers.get("Authorization", "")
        if not hmac.compare_digest(given.encode(), f"Bearer {self.token}".encode()):
            raise Problem(401, "unauthenticated", "only the platform opens checkouts")
        raw = await request.read()
        check_json(raw)
        try:
            order = msgspec.json.decode(raw, type=kind)
        except msgspec.ValidationError as err:
            raise Problem(422, "invalid_body", str(err)) from None
        except msgspec.DecodeError:
            raise Problem(400, "malformed_json", "the body is not JSON") from None
        if origin_of(order.return_url) is None or len(order.return_url) > 512:
            raise Problem(422, "invalid_body", "return_url must be an http(s) URL")
        return order

    async def create(self, request: web.Request) -> web.Response:
        order = await self._order(request, NewCheckout)
        self._forget_old()
        checkout_id = f"co_{secrets.token_hex(16)}"
        self.checkouts[checkout_id] = Checkout(checkout_id, order, time.time())
        log.info("checkout opened", extra={"topic": order.certificate_id})
        return web.json_response({"checkout_id": checkout_id,
                                  "url": f"{self.public_url}/checkouts/{checkout_id}"},
                                 status=201)

    # --- the buyer's browser --------------------------------------------------------

    def _page(self, title: str, body: str, checkout: Checkout | Escrow | None = None,
              status: int = 200) -> web.Response:
        page = (f"<!doctype html><html lang=en><head><meta charset=utf-8>"
                "<meta name=viewport content='width=device-width, initial-scale=1'>"
                f"<title>{_esc(title)}</title>"
                f"<link rel=stylesheet href='{assets.CSS_PATH}'></head><body>"
                "<p><b>Payment system</b> (simulated)</p>"
                "<p class='sim' id='simulated'>This is a simulated payment: no card is "
                "charged and no money moves. It stands in for a real payment system in the "
                "demo.</p>"
                f"{body}</body></html>")
        response = web.Response(text=page, content_type="text/html", status=status)
        if checkout is not None:  # the form may go back to the shop after paying
            response.headers["Content-Security-Policy"] = self._csp(checkout)
        return response

    @staticmethod
    def _csp(checkout: Checkout | Escrow | None) -> str:
        back = origin_of(checkout.order.return_url) if checkout else None
        return ("default-src 'none'; style-src 'self'; img-src 'self'; "
                f"form-action 'self'{' ' + back if back else ''}; frame-ancestors 'none'; "
                "base-uri 'none'")

    async def show(self, request: web.Request) -> web.Response:
        checkout = self._find(request)
        order = checkout.order
        what = order.description or order.certificate_id
        amount = money(order.amount_minor, order.currency)
        if checkout.status == "captured":
            body = (f"<h1>Paid</h1><p id='paid'>{_esc(amount)} for {_esc(what)} was captured "
                    f"(payment {_esc(checkout.payment_ref)}).</p>"
                    f"<p><a id='back' href='{_esc(_back(order.return_url, checkout.checkout_id))}'>"
                    "Back to the shop</a></p>")
            return self._page("Paid", body, checkout)
        body = (f"<h1>Pay {_esc(amount)}</h1><div class='card'>"
                f"<p id='what'>For <b>{_esc(what)}</b> (certificate "
                f"{_esc(order.certificate_id)}), to seller {_esc(order.seller_id)}, bought "
                f"by account <b id='buyer'>{_esc(order.buyer_id)}</b>.</p>"
                f"<p id='amount'>Amount: <b>{_esc(amount)}</b></p>"
                f"<form method='post' action='/checkouts/{_esc(checkout.checkout_id)}/pay'>"
                f"<p><label>Card number <input name='card' id='card' value='{TEST_CARD}' "
                "aria-label='card number' autocomplete='off' required></label></p>"
                "<p><label>Expiry <input name='expiry' value='12/34' size=5 "
                "aria-label='expiry'></label> <label>CVC <input name='cvc' value='123' size=4 "
                "aria-label='CVC'></label></p>"
                f"<button id='pay'>Pay {_esc(amount)}</button></form>"
                f"<p>Test cards: {TEST_CARD} pays, {DECLINED_CARD} is declined.</p></div>")
        return self._page(f"Pay {amount}", body, checkout)

    async def pay(self, request: web.Request) -> web.Response:
        checkout = self._find(request)
        origin = request.headers.get("Origin")
        if origin is not None and origin.lower() != self.public_origin(request):
            return problem(403, "cross_origin", "a payment is made on this site's own page")
        form = await request.post()
        back = _back(checkout.order.return_url, checkout.checkout_id)
        if checkout.status != "open":  # captured (or being captured): once only
            raise web.HTTPSeeOther(back)
        card = "".join(str(form.get("card", "")).split())
        if card == "".join(DECLINED_CARD.split()) or not card.isdigit():
            return self._page("Declined", "<h1>Declined</h1><p id='declined'>The card was "
                              "declined (simulated). Nothing was captured.</p>"
                              f"<p><a href='/checkouts/{_esc(checkout.checkout_id)}'>"
                              "Try again</a></p>", checkout, status=402)
        checkout.status = "capturing"
        payment_ref = f"pay_{secrets.token_hex(12)}"
        order = checkout.order
        try:
            command_id = await asyncio.get_running_loop().run_in_executor(
                None, lambda: self.capturer.capture(
                    certificate_id=order.certificate_id, seller_id=order.seller_id,
                    buyer_id=order.buyer_id, payment_ref=payment_ref,
                    captured_minor=order.amount_minor, currency=order.currency))
        except Exception:
            checkout.status = "open"
            log.exception("capture not sent", extra={"topic": order.certificate_id})
            return self._page("Try again", "<h1>Not captured</h1><p>The payment could not be "
                              "reported; nothing was captured. Try again.</p>", checkout,
                              status=503)
        checkout.status, checkout.payment_ref, checkout.command_id = (
            "captured", payment_ref, command_id)
        log.info("captured", extra={"topic": order.certificate_id})
        raise web.HTTPSeeOther(back)

    # --- escrow: the funder holds a pool's budget ------------------------------------

    async def create_escrow(self, request: web.Request) -> web.Response:
        order = await self._order(request, NewEscrow)
        refs = [h.funding_ref for h in order.holds]
        if len(set(refs)) != len(refs) or self.held_refs.intersection(refs):
            return problem(409, "funding_ref_held", "a funding reference is held only once")
        self._forget_old()
        escrow_id = f"es_{secrets.token_hex(16)}"
        self.escrows[escrow_id] = Escrow(escrow_id, order, time.time())
        log.info("escrow opened", extra={"topic": order.holds[0].certificate_id})
        return web.json_response({"escrow_id": escrow_id,
                                  "url": f"{self.public_url}/escrows/{escrow_id}"}, status=201)

    def _escrow(self, request: web.Request) -> Escrow:
        found = self.escrows.get(request.match_info["id"])
        if found is None:
            raise Problem(404, "unknown_escrow", "no such escrow (or it expired)")
        return found

    async def show_escrow(self, request: web.Request) -> web.Response:
        escrow = self._escrow(request)
        order = escrow.order
        total = money(sum(h.amount_minor for h in order.holds), order.currency)
        what = order.description or order.holds[0].certificate_id
        back = _back(order.return_url, escrow.checkout_id, "escrow")
        if escrow.status == "held":
            body = (f"<h1>Held in escrow</h1><p id='held'>{_esc(total)} for {_esc(what)} is "
                    "held in escrow; the platform was told.</p>"
                    f"<p><a id='back' href='{_esc(back)}'>Back to the shop</a></p>")
            return self._page("Held", body, escrow)
        rows = "".join(f"<li>{_esc(h.certificate_id)}: "
                       f"{_esc(money(h.amount_minor, order.currency))}</li>" for h in order.holds)
        body = (f"<h1>Hold {_esc(total)} in escrow</h1><div class='card'>"
                f"<p id='what'>Commission budget for <b>{_esc(what)}</b>, funded by account "
                f"<b id='funder'>{_esc(order.funder_id)}</b>: the payment system holds it "
                "and pays sharers from it; what is not earned goes back to you.</p>"
                f"<ul id='holds'>{rows}</ul><p id='amount'>Amount: <b>{_esc(total)}</b></p>"
                f"<form method='post' action='/escrows/{_esc(escrow.checkout_id)}/pay'>"
                f"<p><label>Card number <input name='card' id='card' value='{TEST_CARD}' "
                "aria-label='card number' autocomplete='off' required></label></p>"
                f"<button id='hold'>Hold {_esc(total)}</button></form></div>")
        return self._page(f"Hold {total}", body, escrow)

    async def pay_escrow(self, request: web.Request) -> web.Response:
        escrow = self._escrow(request)
        origin = request.headers.get("Origin")
        if origin is not None and origin.lower() != self.public_origin(request):
            return problem(403, "cross_origin", "an escrow is paid on this site's own page")
        form = await request.post()
        order = escrow.order
        back = _back(order.return_url, escrow.checkout_id, "escrow")
        if escrow.status != "open":  # held (or being held): once only
            raise web.HTTPSeeOther(back)
        card = "".join(str(form.get("card", "")).split())
        if card == "".join(DECLINED_CARD.split()) or not card.isdigit():
            return self._page("Declined", "<h1>Declined</h1><p id='declined'>The card was "
                              "declined (simulated). Nothing is held.</p>", escrow,
                              status=402)
        refs = {h.funding_ref for h in order.holds}
        if self.held_refs & refs:
            return problem(409, "funding_ref_held", "a funding reference is held only once")
        escrow.status = "holding"
        loop = asyncio.get_running_loop()
        try:
            for h in order.holds:
                await loop.run_in_executor(None, lambda h=h: self.capturer.confirm_funding(
                    certificate_id=h.certificate_id, funding_ref=h.funding_ref,
                    amount_minor=h.amount_minor, currency=order.currency))
        except Exception:
            escrow.status = "open"  # resent as a whole: each confirmation is once only
            log.exception("escrow not reported", extra={"topic": order.holds[0].certificate_id})
            return self._page("Try again", "<h1>Not held</h1><p>The escrow could not be "
                              "reported; try again.</p>", escrow, status=503)
        self.held_refs |= refs
        escrow.status = "held"
        log.info("escrow held", extra={"topic": order.holds[0].certificate_id})
        raise web.HTTPSeeOther(back)

    def public_origin(self, request: web.Request) -> str:
        return origin_of(self.public_url) or f"{request.scheme}://{request.host}"


@web.middleware
async def errors(request: web.Request, handler):
    try:
        return await handler(request)
    except Problem as exc:
        return exc.response
    except web.HTTPRequestEntityTooLarge:
        return problem(413, "body_too_large", f"a body is at most {MAX_BODY_BYTES} bytes")


async def _headers(request: web.Request, response: web.StreamResponse) -> None:
    h = response.headers
    h.setdefault("Content-Security-Policy", Simulator._csp(None))
    h.setdefault("X-Content-Type-Options", "nosniff")
    h.setdefault("X-Frame-Options", "DENY")
    h.setdefault("Referrer-Policy", "same-origin")
    h.setdefault("Cache-Control", "no-store")


def build(simulator: Simulator) -> web.Application:
    app = web.Application(middlewares=[errors], client_max_size=MAX_BODY_BYTES)
    app.on_response_prepare.append(_headers)

    async def healthz(request: web.Request) -> web.Response:
        return web.json_response({"ok": True, "checkouts": len(simulator.checkouts)})

    async def closing(app: web.Application):
        yield
        simulator.capturer.close()

    app.cleanup_ctx.append(closing)
    app.router.add_post("/checkouts", simulator.create)
    app.router.add_get("/checkouts/{id}", simulator.show)
    app.router.add_post("/checkouts/{id}/pay", simulator.pay)
    app.router.add_post("/escrows", simulator.create_escrow)
    app.router.add_get("/escrows/{id}", simulator.show_escrow)
    app.router.add_post("/escrows/{id}/pay", simulator.pay_escrow)
    app.router.add_get("/healthz", healthz)
    assets.routes(app, script=False)
    return app


def payment_system_only(keyring: Keyring) -> Keyring:
    """The simulator holds the payment system's keys and nothing of the engine's."""
    foreign = sorted(k.key_id for k in keyring.keys.values() if k.scope != "payments")
    if foreign:
        raise SystemExit(f"the payment system holds only payments keys; remove {foreign}")
    return keyring


def main() -> None:
    from services.paysim.sender import PaymentSystem, payment_system_keyring

    settings = Settings.from_env()
    setup_logging("paysim", settings.log_level)
    port = int(os.environ.get("PAYSIM_PORT", "8090"))
    public = os.environ.get("PAYSIM_PUBLIC_URL", f"http://127.0.0.1:{port}")
    capturer = PaymentSystem(settings, payment_system_only(payment_system_keyring()))
    app = build(Simulator(capturer, checkout_token_from_env(), public))
    web.run_app(app, host=os.environ.get("PAYSIM_BIND_HOST", "127.0.0.1"), port=port,
                access_log=None, print=lambda *_: None)
