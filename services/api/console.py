"""The seller's console and the funder's pools page (issue #27, point 1).

- ``/page/console`` (the seller role): its offers with their copies and states, the
  program's figures (services/api/program.py) with a chart and CSV, and a form that
  creates an offer: name, price, copies, the funder, and the pool (the same for every
  copy), with a preview in words of what one share earns before anything is sent.
- ``/page/console/offers/{offer}``: one offer's copies; post, cancel, refund; attach
  the pool (the seller when it funds itself, else the funder it named); fund it
  through the payment system's escrow page; review commissions not paid yet
  (decline with a reason; approve is a reviewer's); its figures and CSV.
- ``/page/pools``: the pools an account funds (offers naming it as funder), the same
  figures.

Every action is a plain form with the session's CSRF token, sent as signed commands
through the gateway (services/api/writes.py): the role checks of services/api/roles.py
come first, the core decides the rest. The page the browser comes back to says the
outcome in words (services/api/outcomes.py).

**Funding.** The console never confirms anything: it asks the payment system (server
to server, services/api/checkout.py) to open an escrow for the pools the visitor funds
and is not funded yet, with each pool's budget read from the engine's state (not from
the browser), and sends the browser to the payment system's page. The payment system
reports each hold to the pipeline signed with its own key; the page shows the funding
as waiting until the pipeline has applied that confirmation.

**Live.** The console, an offer's page and the funder's pools page update themselves (services/api/live.py,
issue #27.4): their changing part (outcome, copies, funding, review, figures, chart)
is re-rendered when the ``seq`` of one of their copies changes (at most LIVE_COPIES
copies watched, the newest offers first), when a new offer is indexed, or when a
command the visitor sent is applied; at most one render a second (a render reads
every copy's state). The create form is not part of it (nothing typed is lost).
"""

from __future__ import annotations

import hashlib
import json
import secrets
import time
import uuid
from collections import Counter

from aiohttp import web

from domain import CertificateState
from domain.offer import certificate_id_for, issue_offer, offer_id_for, offer_owner
from schemas import commands as c
from services.api import live, program
from services.api.errors import Problem
from services.api.gains import PHRASES, gain_of
from services.api.guard import ID
from services.api.identity import Identity, Role
from services.api.money import minor_digits, money
from services.api.outcomes import outcome_message
from services.api.pages import Pages, esc, with_banner
from services.api.program import Figures, figures_of
from services.api.reads import ReadApi
from services.api.roles import require
from services.readmodel import statecopy

MAX_OFFERS = 50  # newest offers on a console page
MAX_COPIES = 200  # copies of one offer read for its page
MAX_STATES = 2_000  # copies read for an overview (the console, the pools page, CSV)
BATCH_TTL_S = 24 * 3600
ESCROW_TTL_S = 3600
DECLINE_REASONS = (("fraud", "fraud"), ("self_referral", "self-referral"),
                   ("policy", "against the program's policy"), ("other", "other (say why)"))
CURRENCIES = ("EUR", "USD", "GBP", "CHF", "JPY")
REVIEWABLE = ("pending", "held", "flagged", "kept_back")
ACTIONS = ("post", "cancel", "refund", "decline", "approve")
LIVE_COPIES = 500  # copies whose changes a live console page watches
LIVE_EVERY_S = 1.0  # at most one render of a live console page a second


def decimal_text(amount_minor: int, currency: str) -> str:
    """Minor units as the form's input takes them back: ``4500`` -> ``45.00``."""
    digits = minor_digits(currency)
    whole, part = divmod(amount_minor, 10**digits)
    return f"{whole}.{part:0{digits}d}" if digits else str(whole)


def refund_ref(state: CertificateState) -> str:
    """The refund form's reference: one per copy and version of its state, so a page
    and its live updates offer the same form (the same state: the same refund, sent
    twice it is refunded once), and a refund after another gets a new one."""
    digest = hashlib.sha256(f"{state.certificate_id}|{state.seq}".encode()).hexdigest()
    return f"rf-{digest[:32]}"


def statuses(states: list[CertificateState]) -> str:
    counts = Counter(s.status for s in states)
    return ", ".join(f"{n} {status}" for status, n in sorted(counts.items()))


def scope(offers: int, copies: int) -> str:
    """Says so when an overview stops at its limits (MAX_OFFERS, MAX_STATES)."""
    if offers < MAX_OFFERS and copies < MAX_STATES:
        return ""
    return (f"<p id='figures-scope'>The figures cover your {offers} newest offers ({copies} "
            f"copies); an offer's own page and CSV cover up to {MAX_COPIES} of its "
            "copies.</p>")


def figures_table(figs: dict[str, Figures], names: dict[str, str], prefix: str) -> str:
    """The figures, one column per currency (money is never summed across them)."""
    if not figs:
        return "<p id='no-figures'>No copies yet.</p>"
    curs = list(figs)
    head = "".join(f"<th>{esc(cur)}</th>" for cur in curs)

    def row(label: str, key: str, value) -> str:
        cells = "".join(f"<td id='{prefix}-{esc(cur)}-{key}'>{value(f, cur)}</td>"
                        for cur, f in figs.items())
        return f"<tr><th>{label}</th>{cells}</tr>"

    def m(attr: str):
        return lambda f, cur: money(getattr(f, attr), cur)

    rows = [row("Copies", "copies", lambda f, _: f.copies),
            row("Funded pools", "funded", lambda f, _: f.funded),
            row("Shares", "shares", lambda f, _: f.shares),
            row("Distinct sharers", "sharers", lambda f, _: len(f.sharers)),
            row("Purchases", "purchases", lambda f, _: f.purchases),
            row("Conversion (purchases per 100 shares)", "conversion",
                lambda f, _: f.conversion),
            row("Commission pending", "pending", m("pending")),
            row("Commission held", "held", m("held")),
            row("Commission paid", "paid", m("paid")),
            row("Clawed back", "clawed", m("clawed_back")),
            row("Budget", "budget", m("budget")),
            row("Budget spent", "spent", m("spent")),
            row("Budget left", "left", m("left")),
            row("Returned to the funder", "returned", m("returned")),
            row("Cost per sale", "cps", lambda f, cur: "-" if f.cost_per_sale is None
                else money(f.cost_per_sale, cur))]
    top = []
    for cur, f in figs.items():
        for account, shares, gain in f.top_sharers():
            top.append(f"<li class='top-sharer'>{esc(names.get(account, account))}: "
                       f"{shares} share{'s' if shares != 1 else ''}, {money(gain, cur)}</li>")
    tops = (f"<h3>Top sharers</h3><ol id='{prefix}-top'>{''.join(top)}</ol>" if top else "")
    # focusable: it may scroll on a phone and holds no link (as earnings' totals)
    return (f"<div class='scroll' tabindex='0' role='region' aria-label='Program figures'>"
            f"<table class='figures' id='{prefix}'><tr><th>Figure</th>"
            f"{head}</tr>{''.join(rows)}</table></div>{tops}")


class Console(Pages):
    def __init__(self, reads: ReadApi) -> None:
        super().__init__(reads)
        self.p = reads.keys.p

    # --- reading ------------------------------------------------------------------

    async def _states(self, cids: list[str]) -> list[CertificateState]:
        found = await statecopy.load(self.reads.redis, self.reads.keys, cids)  # one trip
        return [found[cid][0] for cid in cids if found[cid][0] is not None]

    async def _offer(self, offer_id: str) -> tuple[str, list[CertificateState]]:
        """(name, the states of its copies, at most MAX_COPIES)."""
        keys, redis = self.reads.keys, self.reads.redis
        copies = int(await redis.hget(keys.offer(offer_id), "copies") or 0)
        cids = [certificate_id_for(offer_id, s) for s in range(1, min(copies, MAX_COPIES) + 1)]
        name = await redis.hget(keys.cert(cids[0]), "name") if cids else None
        return (name.decode() if name else offer_id), await self._states(cids)

    async def _offers(self, key: str) -> list[tuple[str, str, list[CertificateState]]]:
        """The newest offers (at most MAX_OFFERS, and no more once MAX_STATES copies
        are read: a page's cost stays bounded whatever a seller issues)."""
        out, read = [], 0
        for raw in await self.reads.redis.zrevrange(key, 0, MAX_OFFERS - 1):
            if read >= MAX_STATES:
                break
            offer_id = raw.decode()
            name, states = await self._offer(offer_id)
            out.append((offer_id, name, states))
            read += len(states)
        return out

    async def _who(self, request: web.Request) -> Identity | None:
        await self._session(request)
        return request.get("page_identity")

    def _page(self, request: web.Request, identity: Identity | None, title: str, body: str,
              back: str, status: int = 200) -> web.Response:
        return self._layout(request, title, identity.account_id if identity else None,
                            body, back, status)

    def _refused(self, request: web.Request, identity: Identity | None, text: str, back: str,
                 status: int) -> web.Response:
        body = (f"<h1>Not done</h1><p class='msg refused' id='outcome' role='alert'>"
                f"{esc(text)}</p><p><a id='back' href='{esc(back)}'>Back</a></p>")
        return self._page(request, identity, "Not done", body, back, status)

    # --- what was sent, and how it went ---------------------------------------------

    async def _batch(self, owner: str, label: str, command_ids: list[str],
                     offer_id: str) -> str:
        batch = secrets.token_hex(12)
        await self.reads.redis.set(f"{self.p}console-batch:{batch}",
                                   json.dumps({"owner": owner, "label": label,
                                               "ids": command_ids, "offer": offer_id}),
                                   ex=BATCH_TTL_S)
        return batch

    async def _sent_batch(self, request: web.Request, me: str) -> dict | None:
        """The page's ``?sent=`` batch when ``me`` sent it (only the account that sent
        it sees it and its outcome), else None."""
        batch = request.query.get("sent", "")
        if not batch or len(batch) != 24 or not all(ch in "0123456789abcdef" for ch in batch):
            return None
        raw = await self.reads.redis.get(f"{self.p}console-batch:{batch}")
        found = json.loads(raw) if raw else None
        return found if found and found["owner"] == me else None

    async def _outcome(self, request: web.Request, me: str) -> str:
        found = await self._sent_batch(request, me)
        if found is None:
            return ""
        outcomes = [await self.reads.command_outcome(i) for i in found["ids"]]
        kind, text = outcome_message(found["label"], outcomes)
        return f"<p class='msg {kind}' id='outcome' role='status'>{esc(text)}</p>"

    async def _sent(self, me: str, label: str, command_ids: list[str], offer_id: str):
        batch = await self._batch(me, label, command_ids, offer_id)
        raise web.HTTPSeeOther(f"/page/console/offers/{offer_id}?sent={batch}")

    # --- the seller's console -------------------------------------------------------

    async def console(self, request: web.Request, form: dict | None = None,
                      said: str = "", status: int = 200) -> web.Response:
        identity = await self._who(request)
        if identity is None:
            return self._refused(request, None, "Log in as a seller to use the console.",
                                 "/page/console", 401)
        if not identity.has(Role.SELLER):
            return self._refused(request, identity, "The console is for sellers: an operator "
                                 "grants the seller role.", "/", 403)
        me = identity.account_id
        html, _ = await self._console_body(request, me)
        body = ("<h1>Seller's console</h1>" + said
                + live.block("/page/console/live", html, {"sent": request.query.get("sent", "")})
                + self._create_form(request, form or {}))
        return self._page(request, identity, "Seller's console", body, "/page/console", status)

    async def _console_body(self, request: web.Request, me: str) -> tuple[str, list[str]]:
        """The console's live part (the outcome, the offers, the figures) and the ids
        of the copies it shows."""
        offers = await self._offers(self.reads.keys.seller_offers(me))
        rows = []
        every: list[CertificateState] = []
        for offer_id, name, states in offers:
            every += states
            figs = figures_of(states)
            f = next(iter(figs.values()), None)
            cur = states[0].currency if states else ""
            rows.append(
                f"<tr class='offer-row'><td><a class='offer' href='/page/console/offers/"
                f"{esc(offer_id)}'>{esc(name)}</a></td>"
                f"<td>{money(states[0].price_minor, cur) if states else '-'}</td>"
                f"<td>{esc(statuses(states))}</td>"
                f"<td>{f.funded if f else 0} of {len(states)}</td>"
                f"<td>{f.shares if f else 0}</td><td>{f.purchases if f else 0}</td>"
                f"<td>{money(f.spent, cur) if f else '-'}</td></tr>")
        table = ("<div class='scroll'><table id='offers'><tr><th>Offer</th><th>Price</th>"
                 "<th>Copies</th><th>Funded</th><th>Shares</th><th>Purchases</th>"
                 f"<th>Spent</th></tr>{''.join(rows)}</table></div>" if rows else
                 "<p id='no-offers'>No offers yet: create one below.</p>")
        html = (await self._outcome(request, me)
                + f"<h2>Offers</h2>{table}{scope(len(offers), len(every))}"
                + await self._figures(request, every, "overall", "/page/console/csv"))
        return html, [s.certificate_id for s in every]

    async def console_live(self, request: web.Request) -> web.StreamResponse:
        """The console's live part as Server-Sent Events, to a seller only."""
        identity = await self._who(request)
        if identity is None or not identity.has(Role.SELLER):
            raise Problem(403, "not_a_seller", "the console is for sellers")
        me = identity.account_id
        keys = self.reads.keys
        fixed = [(keys.seller_offers(me), live.ZCARD)] + await self._batch_probes(request, me)
        _, cids = await self._console_body(request, me)
        probes = fixed + self._copy_probes(cids)

        async def body() -> str | None:
            who = request.get("page_identity")
            if who is None or not who.has(Role.SELLER):
                return None
            html, shown = await self._console_body(request, me)
            probes[:] = fixed + self._copy_probes(shown)  # a new offer: watched too
            return html

        return await self._follow(request, me, probes, body, LIVE_EVERY_S)

    def _copy_probes(self, cids: list[str]) -> list:
        return [(self.reads.keys.cert(cid), "seq") for cid in cids[:LIVE_COPIES]]

    async def _batch_probes(self, request: web.Request, me: str) -> list:
        """The outcomes of the commands ``me`` sent (the page's ``?sent=`` batch)."""
        found = await self._sent_batch(request, me)
        return [] if found is None else [(self.reads.keys.outcome(i), "status")
                                         for i in found["ids"]]

    async def _figures(self, request: web.Request, states: list[CertificateState],
                       prefix: str, csv_url: str) -> str:
        figs = figures_of(states)
        sharers = [a for f in figs.values() for a, _, _ in f.top_sharers()]
        names = await self._names(request, *sharers)
        shares = [h.at_ms for s in states for h in s.chain]
        bought = [s.purchased_at_ms for s in states if s.purchased_at_ms is not None]
        chart = program.chart_svg(shares, bought, int(time.time() * 1000), f"{prefix}-chart")
        return (f"<h2>Program figures</h2>{figures_table(figs, names, prefix)}"
                f"<h3>Over time</h3><p>Shares (blue) and purchases (orange).</p>{chart}"
                f"<p><a id='{prefix}-csv' href='{esc(csv_url)}' download>Download CSV</a> "
                "(one row per copy; amounts in minor units)</p>")

    def _create_form(self, request: web.Request, form: dict) -> str:
        v = lambda k, d="": esc(form.get(k, d))  # noqa: E731
        currency = str(form.get("currency", "EUR"))
        options = "".join(f"<option{' selected' if x == currency else ''}>{x}</option>"
                          for x in CURRENCIES)
        earn = str(form.get("earn", "fixed"))
        kinds = (("fixed", "a fixed amount"), ("percent", "a percentage of what is on show"),
                 ("random", "a random amount in a range"), ("all", "all that is on show"))
        earn_options = "".join(f"<option value='{k}'{' selected' if k == earn else ''}>"
                               f"{w}</option>" for k, w in kinds)

        def field(name: str, label: str, default: str = "", extra: str = "") -> str:
            return (f"<p><label>{label} <input name='{name}' id='f-{name}' "
                    f"value='{v(name, default)}' aria-label='{esc(label)}' {extra}></label></p>")

        return (f"<h2>Create an offer</h2><form method='post' action='/page/console/offers' "
                f"id='create'>{self._csrf_field(request)}"
                + field("name", "Product name", extra="required maxlength=200")
                + field("price", "Price", extra="required inputmode=decimal")
                + f"<p><label>Currency <select name='currency' id='f-currency' "
                  f"aria-label='currency'>{options}</select></label></p>"
                + field("copies", "Copies", "1", "required inputmode=numeric")
                + field("funder", "Funder's login (empty: you fund it yourself)")
                + "<fieldset><legend>Commission pool, per copy (when you fund it)</legend>"
                + field("budget", "Budget", extra="inputmode=decimal")
                + field("attached", "On show at a time", extra="inputmode=decimal")
                + f"<p><label>Each share earns <select name='earn' id='f-earn' aria-label="
                  f"'each share earns'>{earn_options}</select></label></p>"
                + field("earn_amount", "Fixed amount", extra="inputmode=decimal")
                + field("earn_percent", "Percentage", extra="inputmode=decimal")
                + field("earn_min", "Random from", extra="inputmode=decimal")
                + field("earn_max", "Random up to", extra="inputmode=decimal")
                + field("max_shares", "Withdraw after this many shares (optional)",
                        extra="inputmode=numeric")
                + "</fieldset><p><button name='step' value='preview' id='preview-button'>"
                  "Preview</button> <button name='step' value='create' id='create-button'>"
                  "Create the offer</button></p></form>")

    async def create(self, request: web.Request) -> web.Response:
        session, form = await self._form(request)
        identity = request["page_identity"]
        try:
            require(identity, Role.SELLER)
            offer = await self._parse_offer(request, form)
        except Problem as exc:
            return self._refused(request, identity, exc.args[1], "/page/console",
                                 exc.response.status)
        except ValueError as err:
            said = f"<p class='msg refused' id='form-error' role='alert'>{esc(err)}</p>"
            return await self.console(request, form, said, 422)
        name, price, currency, copies, funder, pool = offer
        if form.get("step") != "create":
            words = (pool.words(currency) if pool else
                     "The funder you named attaches the pool and funds it on its pools page.")
            said = (f"<div class='preview' id='preview'><h2>Preview</h2><p>{esc(name)}: "
                    f"{copies} cop{'y' if copies == 1 else 'ies'} at {money(price, currency)}."
                    f"</p><p id='earns'>{esc(words)}</p><p>Nothing is sent until you press "
                    "Create the offer.</p></div>")
            return await self.console(request, form, said)
        gateway = request.app["gateway"]
        me = identity.account_id
        try:
            await gateway.admit(me, cost=copies * (2 if pool else 1))
        except Problem as exc:
            return self._refused(request, identity, exc.args[1], "/page/console",
                                 exc.response.status)
        command_id = f"web-{uuid.uuid4().hex}"
        offer_id = offer_id_for(me, command_id[4:20])
        now = int(time.time() * 1000)
        commands: list[c.Command] = list(issue_offer(
            offer_id=offer_id, command_id=command_id, seller_id=me, name=name,
            price_minor=price, currency=currency, copies=copies, at_ms=now, funder_id=funder))
        if pool is not None:
            commands += [self._attach(me, issue.certificate_id, currency, pool, now)
                         for issue in list(commands)]
        for command in commands:
            await gateway._send(command, owner=me)
        await self._sent(me, "Create the offer", [x.command_id for x in commands], offer_id)

    @staticmethod
    def _attach(me: str, cid: str, currency: str, pool: program.PoolTerms,
                now: int) -> c.AttachPool:
        return c.AttachPool(
            command_id=f"web-{uuid.uuid4().hex}", certificate_id=cid, at_ms=now,
            account_id=me, funding_ref=f"fund-{uuid.uuid4().hex}", currency=currency,
            budget_minor=pool.budget_minor, attached_minor=pool.attached_minor,
            acquisition=c.AcquisitionPolicy(amount=pool.amount),
            thresholds=c.Thresholds(max_circulations=pool.max_shares))

    async def _parse_offer(self, request: web.Request, form: dict):
        name = str(form.get("name", "")).strip()
        if not 1 <= len(name) <= 200:
            raise ValueError("product name: 1 to 200 characters")
        currency = str(form.get("currency", ""))
        if currency not in CURRENCIES:
            raise ValueError(f"currency: one of {', '.join(CURRENCIES)}")
        price = program.parse_amount(str(form.get("price", "")), currency, "price")
        raw = str(form.get("copies", "")).strip()
        if not raw.isdigit() or not 1 <= int(raw) <= MAX_COPIES:
            raise ValueError(f"copies: a whole number from 1 to {MAX_COPIES}")
        login = str(form.get("funder", "")).strip()
        me = request["page_identity"].account_id
        funder = None
        if login:
            funder = await request.app["accounts"].account_of(login[:64])
            found = await request.app["accounts"].get(funder) if funder else None
            if found is None:
                raise ValueError(f"funder: no account with the login {login!r}")
            if not found.has(Role.FUNDER) and funder != me:
                raise ValueError(f"funder: {login} does not have the funder role")
            if funder == me:
                funder = None
        pool = None if funder else program.pool_from_form(form, currency)
        return name, price, currency, int(raw), funder, pool

    # --- one offer ----------------------------------------------------------------

    async def _offer_seen(self, identity: Identity, offer_id: str) -> tuple[
            str, list[CertificateState], tuple[str, str, int] | None]:
        """(name, states, None) of an offer ``identity`` may see (its seller or its
        funder), else ("", [], (why not, where to go back, status))."""
        me = identity.account_id
        name, states = await self._offer(offer_id) if ID.fullmatch(offer_id) else ("", [])
        if not states:
            return "", [], ("No such offer.", "/page/console", 404)
        named = states[0].funder_id
        funder = named == me or any(s.pool and s.pool.funder_id == me for s in states)
        if not (offer_owner(offer_id) == me or funder):
            return "", [], ("Only the offer's seller and its funder see it here.", "/", 403)
        return name, states, None

    async def offer(self, request: web.Request) -> web.Response:
        identity = await self._who(request)
        offer_id = request.match_info["offer"]
        back = f"/page/console/offers/{offer_id}"
        if identity is None:
            return self._refused(request, None, "Log in to see this offer.", back, 401)
        html, name, _, refusal = await self._offer_view(request, identity, offer_id)
        if refusal is not None:
            return self._refused(request, identity, *refusal)
        params = {k: request.query.get(k, "") for k in ("sent", "escrow")}
        return self._page(request, identity, name, live.block(
            f"/page/console/offers/{offer_id}/live", html, params), back)

    async def offer_live(self, request: web.Request) -> web.StreamResponse:
        """An offer's page's live part as Server-Sent Events, to its seller and its
        funder only (or, while it is being created, to the seller who sent it)."""
        identity = await self._who(request)
        offer_id = request.match_info["offer"]
        if identity is None:
            raise Problem(401, "unauthenticated", "log in to see this offer")
        _, _, cids, refusal = await self._offer_view(request, identity, offer_id)
        if refusal is not None:
            raise Problem(refusal[2], "not_shown", refusal[0])
        me = identity.account_id
        fixed = await self._batch_probes(request, me) + [(self.reads.keys.offer(offer_id),
                                                          "copies")]
        probes = fixed + self._copy_probes(cids)

        async def body() -> str | None:
            who = request.get("page_identity")
            if who is None:
                return None
            html, _, shown, refusal = await self._offer_view(request, who, offer_id)
            probes[:] = fixed + self._copy_probes(shown)  # its copies once indexed
            return None if refusal else html

        return await self._follow(request, me, probes, body, LIVE_EVERY_S)

    async def _offer_view(self, request: web.Request, identity: Identity, offer_id: str
                          ) -> tuple[str, str, list[str], tuple[str, str, int] | None]:
        """(the offer page's live part, its title, the ids of the copies shown, None),
        or ("", "", [], a refusal: why, where back, status). Just created (the
        visitor's own ``?sent=`` batch for it) and not in the read model yet: the
        outcome so far, and the offer once it is there."""
        name, states, refusal = await self._offer_seen(identity, offer_id)
        if refusal is not None:
            batch = await self._sent_batch(request, identity.account_id)
            if refusal[2] != 404 or batch is None or batch.get("offer") != offer_id:
                return "", "", [], refusal
            html = ("<h1>Your new offer</h1>" + await self._outcome(request, identity.account_id)
                    + "<p id='offer-waiting' role='status'>The offer shows here as soon as the "
                    "platform has applied it (this page updates itself).</p>")
            return html, "Your new offer", [], None
        html = await self._offer_body(request, identity, offer_id, name, states)
        return html, name, [s.certificate_id for s in states], None

    async def _offer_body(self, request: web.Request, identity: Identity, offer_id: str,
                          name: str, states: list[CertificateState]) -> str:
        """An offer's page's live part: its facts, outcome, funding, copies and their
        actions, the pool form, review, figures."""
        me = identity.account_id
        seller = offer_owner(offer_id) == me
        named = states[0].funder_id
        cur = states[0].currency
        who = named or states[0].seller_id
        funder_name = (await self._names(request, who))[who]
        parts = [f"<h1>{esc(name)}</h1><p id='offer-facts'>{len(states)} "
                 f"cop{'y' if len(states) == 1 else 'ies'} at "
                 f"{money(states[0].price_minor, cur)} · funder: {esc(funder_name)}"
                 f"{'' if named else ' (the seller)'}</p>",
                 await self._outcome(request, me),
                 await self._escrow_state(request, me, offer_id, states)]
        csrf = self._csrf_field(request)
        parts.append(self._copies(states, csrf, seller))
        parts.append(self._fund_form(offer_id, states, me, csrf))
        may_attach = (me == named) or (seller and named is None)
        if may_attach and any(s.pool is None and s.status == "issued" for s in states):
            parts.append(f"<h2>Attach the commission pool</h2><form method='post' "
                         f"action='/page/console/offers/{esc(offer_id)}/attach' id='attach'>"
                         f"{csrf}{self._pool_fields()}<button id='attach-button'>Attach to "
                         "every copy without a pool</button></form>")
        if seller:
            parts.append(await self._review(request, identity, states, csrf))
        parts.append(await self._figures(request, states, "offer",
                                         f"/page/console/offers/{offer_id}/csv"))
        return "".join(parts)

    @staticmethod
    def _pool_fields() -> str:
        fields = (("budget", "Budget per copy"), ("attached", "On show at a time"),
                  ("earn_amount", "Each share earns (fixed amount)"))
        return ("<input type='hidden' name='earn' value='fixed'>" + "".join(
            f"<p><label>{label} <input name='{n}' id='a-{n}' aria-label='{esc(label)}' "
            "required inputmode=decimal></label></p>" for n, label in fields))

    def _copies(self, states: list[CertificateState], csrf: str, seller: bool) -> str:
        rows = []
        for s in states:
            cid = esc(s.certificate_id)
            act = f"/page/console/certificates/{cid}"
            buttons = []
            if seller and s.status == "issued" and s.pool and s.pool.funding_confirmed:
                buttons.append(f"<form class='inline' method='post' action='{act}/post'>{csrf}"
                               "<button class='post'>Post</button></form>")
            if seller and s.status in ("issued", "posted"):
                buttons.append(f"<form class='inline' method='post' action='{act}/cancel'>"
                               f"{csrf}<button class='cancel'>Cancel</button></form>")
            left = s.price_minor - s.refunded_minor
            if seller and s.status == "purchased" and left > 0:
                buttons.append(
                    f"<form class='inline' method='post' action='{act}/refund'>{csrf}"
                    f"<input type='hidden' name='refund_ref' value='{refund_ref(s)}'>"
                    f"<input name='amount' size=8 value='{decimal_text(left, s.currency)}' "
                    f"aria-label='amount to refund'><button class='refund'>Refund</button>"
                    "</form>")
            on_show = money(s.pool.attached_minor, s.currency) if s.pool else "-"
            rows.append(f"<tr class='copy' id='copy-{s.serial}'><td><a href='/page/certificates/"
                        f"{cid}'>#{s.serial}</a></td><td class='status'>{esc(s.status)}</td>"
                        f"<td class='funding'>{esc(program.funding_words(s))}</td>"
                        f"<td>{on_show}</td><td>{' '.join(buttons)}</td></tr>")
        return ("<h2>Copies</h2><div class='scroll'><table id='copies'><tr><th>Copy</th>"
                "<th>Status</th><th>Funding</th><th>On show</th><th>Actions</th></tr>"
                + "".join(rows) + "</table></div>")

    def _fund_form(self, offer_id: str, states: list[CertificateState], me: str,
                   csrf: str) -> str:
        due = [s for s in states if s.pool and s.pool.funder_id == me
               and not s.pool.funding_confirmed and s.status == "issued"]
        if not due:
            return ""
        total = money(sum(s.pool.budget_minor for s in due if s.pool), due[0].currency)
        return (f"<form method='post' action='/page/console/offers/{esc(offer_id)}/fund' "
                f"id='fund'>{csrf}<p>{len(due)} pool{'s' if len(due) != 1 else ''} to fund: "
                f"hold {total} in escrow at the payment system. <button id='fund-button'>"
                f"Fund {total}</button></p></form>")

    async def _escrow_state(self, request: web.Request, me: str, offer_id: str,
                            states: list[CertificateState]) -> str:
        waiting = [s for s in states if s.pool and s.pool.funder_id == me
                   and not s.pool.funding_confirmed]
        if not waiting:
            return ""
        raw = await self.reads.redis.get(f"{self.p}console-escrow:{offer_id}:{me}")
        opened = raw.decode() if raw else None
        # back from the payment system with the escrow this visitor opened (not any id
        # typed into the address bar)
        back = opened is not None and request.query.get("escrow") == opened
        if opened:
            said = ("The payment system says the budget is held in escrow; the pools show as "
                    "funded once the platform has applied its confirmation (this page "
                    "updates itself)." if back else
                    "A funding is open at the payment system: finish it there, or fund again.")
            return f"<p class='msg pending' id='funding-state' role='status'>{esc(said)}</p>"
        return ""

    async def _review(self, request: web.Request, identity: Identity,
                      states: list[CertificateState], csrf: str) -> str:
        rows = []
        found = [(s, a) for s in states if s.pool for a in s.pool.acquired]
        names = await self._names(request, *(a for _, a in found))
        reasons = "".join(f"<option value='{k}'>{esc(w)}</option>" for k, w in DECLINE_REASONS)
        for s, account in found:
            amount, how = gain_of(s, account)
            if how not in REVIEWABLE:
                continue
            act = f"/page/console/certificates/{esc(s.certificate_id)}"
            sharer = f"<input type='hidden' name='sharer_id' value='{esc(account)}'>"
            approve = ""
            if how in ("flagged", "kept_back"):
                approve = (f"<form class='inline' method='post' action='{act}/approve'>{csrf}"
                           f"{sharer}<button class='approve'>Approve</button></form>"
                           if identity.has(Role.REVIEWER) else " (approval: a reviewer's)")
            rows.append(
                f"<tr class='review'><td>#{s.serial}</td><td>{esc(names.get(account))}</td>"
                f"<td>{money(amount, s.currency)}</td><td>{esc(PHRASES[how])}</td><td>"
                f"<form class='inline' method='post' action='{act}/decline'>{csrf}{sharer}"
                f"<select name='reason' aria-label='reason'>{reasons}</select>"
                f"<input name='note' maxlength=200 aria-label='why (up to 200 characters)' "
                f"placeholder='why (optional)'><button class='decline'>Decline</button>"
                f"</form>{approve}</td></tr>")
        if not rows:
            return "<h2>Commissions to review</h2><p id='no-review'>None not paid yet.</p>"
        return ("<h2>Commissions to review</h2><div class='scroll'><table id='review'><tr>"
                "<th>Copy</th><th>Sharer</th><th>Amount</th><th>Where it stands</th>"
                f"<th>Review</th></tr>{''.join(rows)}</table></div>")

    # --- actions on one offer or copy -----------------------------------------------

    async def attach(self, request: web.Request) -> web.Response:
        offer_id = request.match_info["offer"]
        back = f"/page/console/offers/{offer_id}"
        session, form = await self._form(request)
        identity = request["page_identity"]
        _, states = await self._offer(offer_id) if ID.fullmatch(offer_id) else ("", [])
        try:
            if not states:
                raise Problem(404, "unknown_offer", "No such offer.")
            me = identity.account_id
            named = states[0].funder_id
            if not (me == named or (named is None and offer_owner(offer_id) == me)):
                raise Problem(403, "not_authorized", "Only the seller, or the funder it "
                              "named, attaches the pool.")
            require(identity, Role.FUNDER, or_seller_of=states[0].certificate_id)
            pool = program.pool_from_form(form, states[0].currency)
            todo = [s for s in states if s.pool is None and s.status == "issued"]
            await request.app["gateway"].admit(me, cost=max(1, len(todo)))
        except Problem as exc:
            return self._refused(request, identity, exc.args[1], back, exc.response.status)
        except ValueError as err:
            return self._refused(request, identity, str(err), back, 422)
        now = int(time.time() * 1000)
        commands = [self._attach(me, s.certificate_id, s.currency, pool, now) for s in todo]
        for command in commands:
            await request.app["gateway"]._send(command, owner=me)
        await self._sent(me, "Attach the pool", [x.command_id for x in commands], offer_id)

    async def fund(self, request: web.Request) -> web.Response:
        """Open an escrow at the payment system for the visitor's pools of this offer
        that are not funded: the budgets from the engine's state, never the form."""
        offer_id = request.match_info["offer"]
        back = f"/page/console/offers/{offer_id}"
        session, _ = await self._form(request)
        identity = request["page_identity"]
        me = identity.account_id
        name, states = await self._offer(offer_id) if ID.fullmatch(offer_id) else ("", [])
        due = [s for s in states if s.pool and s.pool.funder_id == me
               and not s.pool.funding_confirmed and s.status == "issued"]
        gateway = request.app["gateway"]
        try:
            if not due:
                raise Problem(409, "nothing_to_fund", "Nothing of yours to fund on this "
                              "offer: no pool of yours is waiting for its escrow.")
            await gateway.admit(me)
            escrow_id, url = await gateway.payments.open_escrow(
                funder_id=me, currency=due[0].currency, description=name[:200],
                return_url=f"{request['trust'].own_origin(request)}{back}",
                holds=[{"certificate_id": s.certificate_id, "funding_ref": s.pool.funding_ref,
                        "amount_minor": s.pool.budget_minor} for s in due if s.pool])
        except Problem as exc:
            return self._refused(request, identity, exc.args[1], back, exc.response.status)
        await self.reads.redis.set(f"{self.p}console-escrow:{offer_id}:{me}", escrow_id,
                                   ex=ESCROW_TTL_S)
        raise web.HTTPSeeOther(url)

    async def act(self, request: web.Request) -> web.Response:
        cid, action = request.match_info["id"], request.match_info["action"]
        if action not in ACTIONS or not ID.fullmatch(cid):
            raise web.HTTPNotFound()
        offer_id = cid.rpartition("-")[0]
        back = f"/page/console/offers/{offer_id}"
        session, form = await self._form(request)
        identity = request["page_identity"]
        me = identity.account_id
        gateway = request.app["gateway"]
        try:
            kind, fields, label = await self._command(identity, cid, action, form)
            await gateway.admit(me)
        except Problem as exc:
            return self._refused(request, identity, exc.args[1], back, exc.response.status)
        except ValueError as err:
            return self._refused(request, identity, str(err), back, 422)
        command_id = f"web-{uuid.uuid4().hex}"
        await gateway.send_for(me, kind, cid, command_id, **fields)
        await self._sent(me, label, [command_id], offer_id)

    async def _command(self, identity: Identity, cid: str, action: str, form: dict):
        """(command type, its fields, what the page calls it): roles first (403)."""
        if action in ("post", "cancel", "refund") and offer_owner(cid) != identity.account_id:
            raise Problem(403, "not_your_certificate", "Only the certificate's seller may "
                          f"{action} it.")
        if action == "post":
            return c.PostCertificate, {}, "Post"
        if action == "cancel":
            return c.CancelCertificate, {}, "Cancel"
        sharer = str(form.get("sharer_id", ""))
        if action == "refund":
            state = await self.reads.state(cid)
            if state is None:
                raise Problem(404, "unknown_certificate", "No such certificate.")
            ref = str(form.get("refund_ref", ""))
            if not ID.fullmatch(ref):
                raise ValueError("the refund form's reference is missing: reload the page")
            amount = program.parse_amount(str(form.get("amount", "")), state.currency,
                                          "amount to refund")
            return c.Refund, {"by": "seller", "amount_minor": amount, "refund_ref": ref}, (
                f"Refund {money(amount, state.currency)}")
        if not ID.fullmatch(sharer):
            raise ValueError("the sharer is missing: reload the page")
        if action == "approve":
            require(identity, Role.REVIEWER)
            return c.ApproveCommission, {"sharer_id": sharer, "reviewer": True}, "Approve"
        require(identity, Role.REVIEWER, or_seller_of=cid)
        reason = str(form.get("reason", ""))
        if reason not in dict(DECLINE_REASONS):
            raise ValueError("a reason: fraud, self-referral, policy or other")
        note = str(form.get("note", "")).strip()
        if len(note) > 200:
            raise ValueError("the note is at most 200 characters")
        if reason == "other" and not note:
            raise ValueError("say why in the note when the reason is other")
        return c.DeclineCommission, {"sharer_id": sharer, "reason": reason,
                                     "note": note or None,
                                     "reviewer": identity.has(Role.REVIEWER)}, "Decline"

    # --- the funder's pools, and CSV ------------------------------------------------

    async def pools(self, request: web.Request) -> web.Response:
        identity = await self._who(request)
        if identity is None:
            return self._refused(request, None, "Log in to see the pools you fund.",
                                 "/page/pools", 401)
        html, _ = await self._pools_body(request, identity.account_id)
        return self._page(request, identity, "Pools you fund",
                          "<h1>Pools you fund</h1>" + live.block("/page/pools/live", html, {}),
                          "/page/pools")

    async def pools_live(self, request: web.Request) -> web.StreamResponse:
        """The pools page's live part as Server-Sent Events, to its funder (the visitor:
        the page shows the visitor's own pools only)."""
        identity = await self._who(request)
        if identity is None:
            raise Problem(401, "unauthenticated", "log in to see the pools you fund")
        me = identity.account_id
        fixed = [(self.reads.keys.funder_offers(me), live.ZCARD)]
        _, cids = await self._pools_body(request, me)
        probes = fixed + self._copy_probes(cids)

        async def body() -> str | None:
            html, shown = await self._pools_body(request, me)
            probes[:] = fixed + self._copy_probes(shown)  # a new offer: watched too
            return html

        return await self._follow(request, me, probes, body, LIVE_EVERY_S)

    async def _pools_body(self, request: web.Request, me: str) -> tuple[str, list[str]]:
        """The pools page's live part (the offers naming ``me`` as funder, the figures of
        the copies it funds) and the ids of those copies."""
        rows, every = [], []
        for offer_id, name, states in await self._offers(self.reads.keys.funder_offers(me)):
            mine = self._funded_by(states, me)
            every += mine
            f = next(iter(figures_of(mine).values()), None)
            cur = states[0].currency if states else ""
            rows.append(
                f"<tr class='pool-row'><td><a class='offer' href='/page/console/offers/"
                f"{esc(offer_id)}'>{esc(name)}</a></td><td>{esc(statuses(states))}</td>"
                f"<td>{f.funded if f else 0} of {len(mine)}</td>"
                f"<td>{money(f.budget, cur) if f else '-'}</td>"
                f"<td>{money(f.spent, cur) if f else '-'}</td>"
                f"<td>{money(f.left, cur) if f else '-'}</td></tr>")
        table = ("<div class='scroll'><table id='funded-offers'><tr><th>Offer</th><th>Copies</th>"
                 "<th>Funded</th><th>Budget</th><th>Spent</th><th>Left</th></tr>"
                 f"{''.join(rows)}</table></div>" if rows else
                 "<p id='no-pools'>No offer names you as its funder yet.</p>")
        html = (table + scope(len(rows), len(every))
                + await self._figures(request, every, "pools", "/page/pools/csv"))
        return html, [s.certificate_id for s in every]

    @staticmethod
    def _funded_by(states: list[CertificateState], me: str) -> list[CertificateState]:
        """The copies whose pool ``me`` funds, or will (named, no pool yet)."""
        return [s for s in states if (s.pool.funder_id == me if s.pool else s.funder_id == me)]

    async def csv(self, request: web.Request) -> web.Response:
        identity = await self._who(request)
        if identity is None:
            raise Problem(401, "unauthenticated", "log in to download figures")
        me = identity.account_id
        which = "console" if request.path.startswith("/page/console") else "pools"
        offer_id = request.match_info.get("offer")
        names: dict[str, str] = {}
        if offer_id is not None:
            name, states = await self._offer(offer_id) if ID.fullmatch(offer_id) else ("", [])
            if states and offer_owner(offer_id) != me:
                states = self._funded_by(states, me)
            if not states:
                raise Problem(404, "unknown_offer", "no offer of yours with this id")
            names[offer_id], filename = name, offer_id
        else:
            key = (self.reads.keys.seller_offers(me) if which == "console"
                   else self.reads.keys.funder_offers(me))
            states = []
            for oid, name, found in await self._offers(key):
                names[oid] = name
                states += found if which == "console" else self._funded_by(found, me)
            filename = f"{which}-{me}"
        safe = "".join(ch if ch.isalnum() or ch in "-._" else "_" for ch in filename)
        return web.Response(text=program.csv_of(states, names), content_type="text/csv",
                            headers={"Content-Disposition":
                                     f"attachment; filename=\"{safe}.csv\""})


def routes(app: web.Application, reads: ReadApi) -> None:
    console = Console(reads)

    def banner(handler):
        return with_banner(reads, handler)

    async def overview(request: web.Request) -> web.Response:
        return await console.console(request)

    app.router.add_get("/page/console", banner(overview))
    app.router.add_get("/page/console/live", console.console_live)
    app.router.add_get("/page/console/csv", console.csv)
    app.router.add_post("/page/console/offers", console.create)
    app.router.add_get("/page/console/offers/{offer}", banner(console.offer))
    app.router.add_get("/page/console/offers/{offer}/live", console.offer_live)
    app.router.add_get("/page/console/offers/{offer}/csv", console.csv)
    app.router.add_post("/page/console/offers/{offer}/attach", console.attach)
    app.router.add_post("/page/console/offers/{offer}/fund", console.fund)
    app.router.add_post("/page/console/certificates/{id}/{action}", console.act)
    app.router.add_get("/page/pools", banner(console.pools))
    app.router.add_get("/page/pools/live", console.pools_live)
    app.router.add_get("/page/pools/csv", console.csv)
