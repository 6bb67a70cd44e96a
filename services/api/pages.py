"""Server-rendered pages: the catalogue, a certificate, an account.

The session is a cookie holding the same signed token the JSON API takes as a bearer
token (services/api/sessions.py): HttpOnly, SameSite=Lax, Secure over TLS, re-issued
as it is used (idle timeout) and ended by the Log out button. Every form carries the
session's CSRF token (the login form a token bound to a random per-browser cookie),
checked before anything is done, on top of the Origin check every POST gets
(services/api/guard.py). After a login the browser goes back only to a path on this
site. Buttons are plain HTML forms; the script (countdowns, the Copy button) and the
stylesheet are files (services/api/assets.py): the CSP allows nothing inline.

Buy starts a checkout at the payment system (services/api/checkout.py): the browser is
sent to its payment page, and comes back here once the payment is captured; the page
shows the purchase when the pipeline has applied the payment system's report.

What a visitor sees of others: who holds the certificate and the shape of the share
tree, but amounts only of its own gain; others' gains are counted by status, not named.
A command's outcome (``?sent=``) shows only to the account that sent it.
"""

from __future__ import annotations

import asyncio
import html
import secrets
import time
import uuid
from urllib.parse import quote

import msgspec
from aiohttp import web

from domain import CertificateState
from domain.pool import acquisition_amount
from schemas import commands as c
from schemas.commands import AcquisitionPolicy, RandomAmount
from services.api import assets, live
from services.api.certfacts import (
    Earns,
    actions,
    budget_left,
    by_currency,
    funding_words,
    outcome_words,
    refund_words,
    share_earns,
    shared_again,
    status_words,
    why_no_gain,
)
from services.api.earnings import when_html
from services.api.earningspages import Earnings, csv_response, earnings_section, feed_section
from services.api.errors import Problem
from services.api.gains import gain_of, phrase
from services.api.guard import ID, safe_next
from services.api.money import amount, money
from services.api.reads import ReadApi
from services.api.sessions import Session
from services.api.tree import counts_line, share_tree_svg
from services.readmodel.projection import NO_DEADLINE

SESSION_COOKIE = "session"
LOGIN_NONCE_COOKIE = "login_nonce"
SESSION_RECHECK_S = 60  # a live page's stream checks its session again this often
LIVE_CERTIFICATES = 20  # an earnings page watches the seq of this many of its newest

def duration(ms: int) -> str:
    """The same text as the browser's countdown, for the first paint."""
    s = max(0, ms // 1000)
    d, s = divmod(s, 86_400)
    h, s = divmod(s, 3_600)
    m, s = divmod(s, 60)
    parts = [f"{d} d" if d else "", f"{h} h" if d or h else "", f"{m} min" if d or h or m else ""]
    return " ".join(p for p in parts if p) + (" " if any(parts) else "") + f"{s} s"


def esc(value: object) -> str:
    return html.escape(str(value), quote=True)


def age_words(seconds: int) -> str:
    """``86400`` -> "1 day", ``7200`` -> "2 hours": the largest whole unit."""
    for unit, size in (("day", 86_400), ("hour", 3_600), ("minute", 60), ("second", 1)):
        if seconds % size == 0:
            n = seconds // size
            return f"{n} {unit}{'s' if n != 1 else ''}"
    return f"{seconds} seconds"  # pragma: no cover - the loop ends at 1


def who_counts(policy: dict) -> str:
    """Which accounts' shares count toward the threshold and earn (issue #24), in words
    (``policy``: the pool's acquisition policy as the read model keeps it)."""
    words = ["accounts new to this certificate, not its seller or funder"]
    age = policy.get("min_account_age_s")
    if age:
        words.append(f"at least {age_words(int(age))} old")
    if policy.get("verified_only"):
        words.append("verified")
    return ", ".join(words)


def claimable(state: CertificateState | None, account: str | None) -> str | None:
    """What ``account`` may claim on the certificate now, in words, or None."""
    if state is None or account is None or state.pool is None:
        return None
    pool = state.pool
    if state.status != "posted" or pool.status != "open" or account not in pool.claimable:
        return None
    amount = pool.acquisition.amount
    if isinstance(amount, RandomAmount):
        low, high = (min(x, pool.attached_minor) for x in (amount.min_minor, amount.max_minor))
        return (f"a random amount from {money(low, state.currency)} to "
                f"{money(high, state.currency)}")
    return money(acquisition_amount(pool, b""), state.currency)


def catching_up_banner(progress: dict | None) -> str:
    """While the read model rebuilds or catches up (ReadApi.catching_up), in words."""
    if not progress:
        return ""
    what = ("is being rebuilt from the event log" if progress["state"] == "rebuilding"
            else "is catching up with the event log")
    left = progress["seconds_left"]
    eta = "time left unknown" if left is None else f"about {duration(int(left * 1000))} left"
    return (f"<p class='banner' id='catching-up' role='status'>The figures on this site "
            f"{what}: {progress['records_done']:,} of {progress['records_total']:,} records "
            f"({progress['rate_per_s']:,} a second, {eta}). Until then what you see may be "
            f"incomplete or out of date.</p>")


def earns_of(s: dict) -> Earns:
    """What one share of a certificate (its summary) earns now."""
    return share_earns(msgspec.convert(s["acquisition"] or {}, AcquisitionPolicy),
                       s["commission"]["amount_minor"], s["price"]["currency"],
                       s["pool_status"] == "open" and s["status"] == "posted")


class Pages:
    def __init__(self, reads: ReadApi) -> None:
        self.reads = reads
        self.earnings = Earnings(reads)

    async def _session(self, request: web.Request) -> Session | None:
        """The cookie's live session; re-issued (a new cookie) when old enough."""
        if "page_session" in request:
            return request["page_session"]
        sessions = request.app["sessions"]
        found = await request.app["accounts"].session_identity(
            request.cookies.get(SESSION_COOKIE))
        session, request["page_identity"] = found if found else (None, None)
        if session is None and request.cookies.get(SESSION_COOKIE):
            # a cookie whose session is over (idle, logged out elsewhere, password
            # changed): said once on the page, and the cookie goes (errorpages.py's 401
            # says it for a form)
            request["session_ended"] = True
            request.setdefault("set_cookies", []).append((SESSION_COOKIE, "", 0))
        if session is not None:
            fresh = sessions.refreshed(session)
            if fresh is not None:
                request.setdefault("set_cookies", []).append(
                    (SESSION_COOKIE, fresh.token, fresh.expires_s - int(time.time())))
        request["page_session"] = session
        return session

    async def _me(self, request: web.Request) -> str | None:
        session = await self._session(request)
        return session.account if session else None

    def _csrf_field(self, request: web.Request) -> str:
        session = request.get("page_session")
        if session is None:
            return ""
        token = request.app["sessions"].csrf_for(session)
        return f"<input type='hidden' name='csrf' value='{esc(token)}'>"

    def _login_csrf_field(self, request: web.Request) -> str:
        """The login form's token, bound to a random cookie this browser keeps."""
        nonce = request.cookies.get(LOGIN_NONCE_COOKIE, "")
        if not nonce or len(nonce) > 64:
            nonce = secrets.token_urlsafe(16)
            request.setdefault("set_cookies", []).append((LOGIN_NONCE_COOKIE, nonce, 3600))
        token = request.app["sessions"].login_csrf_for(nonce)
        return f"<input type='hidden' name='csrf' value='{esc(token)}'>"

    async def _names(self, request: web.Request, *account_ids: str | None) -> dict[str, str]:
        """Display names to show for account ids (the store's; an erased or unknown
        account shows as its opaque id)."""
        ids = [a for a in account_ids if a]
        found = await request.app["accounts"].display_names(ids)
        return {a: found.get(a, a) for a in ids}

    def _layout(self, request: web.Request, title: str, me: str | None, body: str, back: str,
                status: int = 200) -> web.Response:
        if me:
            identity = request.get("page_identity")
            name = identity.display_name if identity is not None else me
            roles = identity.roles if identity is not None else frozenset()
            tools = ("<a id='console-link' href='/page/console'>console</a> · "
                     if "seller" in roles else "") + (
                "<a id='pools-link' href='/page/pools'>pools I fund</a> · "
                if "funder" in roles else "")  # services/api/console.py
            who = (f'logged in as <b id="me">{esc(name)}</b> · <a href="/page/accounts/{esc(me)}">'
                   f'my earnings</a> · <a id="my-feed" href="/page/accounts/{esc(me)}/feed">'
                   f'my feed</a> · {tools}<a id="my-account" href="/page/me">my account</a> · '
                   f'<form class="inline" method="post" '
                   f'action="/page/logout">{self._csrf_field(request)}'
                   f'<button id="logout">Log out</button></form>')
        else:
            who = (f'<form class="inline" method="post" action="/page/login">'
                   f'{self._login_csrf_field(request)}'
                   f'<input type="hidden" name="next" value="{esc(back)}">'
                   f'<input name="account_id" placeholder="account" aria-label="account" required>'
                   f'<input name="password" type="password" placeholder="password" '
                   f'aria-label="password" required>'
                   f'<button id="login">Log in</button></form> · '
                   f'<a id="signup-link" href="/page/signup">Sign up</a>')
            provider = request.app.get("oidc")
            if provider is not None:  # services/api/oidc_web.py
                who += (f' · <a id="oidc-login" href="/oidc/login?next='
                        f'{esc(quote(back, safe="/"))}">Sign in with '
                        f'{esc(provider.settings.display)}</a>')
        ended = ("<p class='warn' id='session-ended' role='status'>Your session has ended "
                 "(idle too long, logged out elsewhere, or the password changed): log in "
                 "again above.</p>" if request.get("session_ended") and not me else "")
        page = (f"<!doctype html><html lang=en><head><meta charset=utf-8>"
                "<meta name=viewport content='width=device-width, initial-scale=1'>"
                f"<title>{esc(title)}</title>{assets.HEAD}"
                f"</head><body><p><a href='/'>Catalogue</a> · {who}</p>"
                f"{catching_up_banner(request.get('catching_up'))}{ended}{body}</body></html>")
        return web.Response(text=page, content_type="text/html", status=status)

    async def catalogue(self, request: web.Request) -> web.Response:
        """One row per offer: its copies on sale are one line ("n of N left") that
        links to the copy with the most commission; sorted by commission, or by the
        time left (``?sort=time_left``). One table per currency (``?currency=EUR``:
        only that one): a ranking never compares amounts in different currencies."""
        me = await self._me(request)
        keys = self.reads.keys
        by_time = request.query.get("sort") == "time_left"
        only = request.query.get("currency", "")
        only = only if len(only) == 3 and only.isalpha() and only.isupper() else ""
        if by_time:
            ids = await self.reads.redis.zrangebyscore(keys.by_deadline, 0, NO_DEADLINE - 1,
                                                       start=0, num=200)
        else:
            ids = await self.reads.redis.zrevrange(keys.by_commission, 0, 199)
        now = int(time.time() * 1000)
        offers: dict[str, dict] = {}
        for raw in ids:
            s = await self.reads.summary(raw.decode(), now)
            if s is None or s["status"] != "posted" or only and s["price"]["currency"] != only:
                continue
            first = offers.setdefault(s["offer_id"] or s["id"], {**s, "on_sale": 0})
            first["on_sale"] += 1
        for offer in offers.values():
            offer["earns"] = earns_of(offer)
        groups = by_currency(list(offers.values())[:50])
        if not by_time:  # within a currency, by what one share earns now
            groups = [(cur, sorted(rows, key=lambda r: -r["earns"].low_minor))
                      for cur, rows in groups]
        tables = []
        for cur, rows in groups:
            lines = "".join(self._offer_row(s, now) for s in rows)
            heading = f"<h2 id='cur-{esc(cur)}'>Prices in {esc(cur)}</h2>" if len(groups) > 1 or only else ""
            tables.append(
                f"{heading}<div class='scroll'><table class='catalogue' data-currency='{esc(cur)}'>"
                "<tr><th>Product</th><th>Price</th><th>One share earns</th><th>Copies</th>"
                f"<th>Time left</th></tr>{lines}</table></div>")
        sort = f"sort={'time_left' if by_time else 'commission'}"
        filters = " · ".join(f"<a class='cur' href='/?{sort}&currency={esc(cur)}'>{esc(cur)} only</a>"
                             for cur, _ in groups if not only)
        if only:
            filters = f"<a class='cur' href='/?{sort}'>all currencies</a>"
        keep = f"&currency={esc(only)}" if only else ""
        head = (f"<p>Sort by <a id='sort-commission' href='/?sort=commission{keep}'>commission"
                f"</a> · <a id='sort-time' href='/?sort=time_left{keep}'>time left</a>"
                + (f" · {filters}" if len(groups) > 1 or only else "") + "</p>")
        body = "<h1>Catalogue</h1>" + head + ("".join(tables) or "<p>Nothing on sale.</p>")
        return self._layout(request, "Catalogue", me, body, "/")

    @staticmethod
    def _offer_row(s: dict, now: int) -> str:
        earns = s["earns"]
        warn = (" <span class='warn-inline'>⚠ withdrawal near</span>"
                if s["warnings"] and s["pool_status"] == "open" else "")
        left = "" if s["time_left_ms"] is None or s["pool_status"] != "open" else (
            f"<span class='countdown' data-deadline='{now + s['time_left_ms']}'>"
            f"{duration(s['time_left_ms'])}</span>")
        copies = s["on_sale"]  # copies of the offer on sale now
        return (f"<tr class='offer'><td><a class='cert' href='/page/certificates/{esc(s['id'])}'>"
                f"{esc(s['name'] or s['id'])}</a></td><td>{amount(**s['price'])}</td>"
                f"<td><span class='label amount'>{esc(earns.badge)}</span>{warn}</td>"
                f"<td class='copies'>{copies} of {s.get('copies', copies)} left</td>"
                f"<td>{left}</td></tr>")

    async def _load(self, cid: str) -> tuple[dict, CertificateState | None] | None:
        """What a certificate's page is made of (one read, shared by its live watchers)."""
        now = int(time.time() * 1000)
        s = await self.reads.summary(cid, now)
        if s is None:
            return None
        s["loaded_ms"] = now  # time_left_ms is as of then
        return s, await self.reads.state(cid)

    async def certificate(self, request: web.Request) -> web.Response:
        cid = request.match_info["id"]
        me = await self._me(request)
        sent = await self._own_command(request, me)
        outcome = None if sent is None else await self.reads.command_outcome(sent)
        found = await self._load(cid)  # read after the outcome: never older than it
        if found is None:
            raise web.HTTPNotFound(text="no such certificate")
        via = request.query.get("via", "")
        here = f"/page/certificates/{cid}" + (f"?via={via}" if via else "")
        html = await self._certificate_body(request, cid, me, *found, outcome)
        params = {k: request.query.get(k, "") for k in ("via", "did", "checkout")}
        if sent is not None:  # its sender's command: the stream follows it too
            params["sent"] = sent
        return self._layout(request, found[0]["name"] or cid, me,
                            live.block(f"/page/certificates/{cid}/live", html, params), here)

    async def certificate_live(self, request: web.Request) -> web.StreamResponse:
        """The certificate page's live part as Server-Sent Events (services/api/live.py):
        rendered for this visitor's session exactly as the page is."""
        cid = request.match_info["id"]
        if not ID.fullmatch(cid):
            raise Problem(400, "invalid_id", "not a certificate id")
        hub = request.app["live"]
        me = await self._me(request)
        probe = (self.reads.keys.cert(cid), "seq")
        if await self._load(cid) is None:
            raise Problem(404, "unknown_certificate", "no certificate with this id")
        probes = [probe]
        sent = await self._own_command(request, me)
        if sent is not None:
            probes.append((self.reads.keys.outcome(sent), "status"))  # its sender's only
        loop = asyncio.get_running_loop()
        checked = loop.time()
        first = True

        async def render() -> str | None:
            nonlocal checked
            if me and loop.time() - checked > SESSION_RECHECK_S:
                request.pop("page_session", None)  # logged out since? then stop
                if await self._me(request) != me:
                    return None
                checked = loop.time()
            nonlocal first
            outcome = None if sent is None else await self.reads.command_outcome(sent)
            # the shared read is as of the last poll: a stream's first render, and a
            # sender's (the outcome just read must not be newer than the state shown),
            # read afresh
            version = None if first or sent is not None else hub.version(probe)
            first = False
            found = await hub.shared(("cert", cid), version, lambda: self._load(cid))
            if found is None:
                return None
            return await self._certificate_body(request, cid, me, *found, outcome)

        return await live.stream(request, probes, render)

    async def _own_command(self, request: web.Request, me: str | None) -> str | None:
        """The page's ``?sent=`` command id when ``me`` sent it, else None: only the
        account that sent a command sees it and its outcome."""
        sent = request.query.get("sent", "")
        if sent and me and ID.fullmatch(sent) and (
                await request.app["gateway"].owner_of(sent) == me):
            return sent
        return None

    async def _certificate_body(self, request: web.Request, cid: str, me: str | None,
                                s: dict, state: CertificateState | None,
                                outcome: dict | None = None) -> str:
        """The certificate page's content for ``me`` (the page and its live updates);
        ``outcome``: of the command ``me`` sent (_own_command), read before ``s``."""
        via = request.query.get("via", "")
        seller = state.seller_id if state is not None else None
        buyer = state.buyer_id if state is not None else None
        members = state.members if state is not None else {}
        names = await self._names(request, s["holder"], via if via in members else None,
                                  buyer if me in (buyer, seller) else None)
        cur = s["price"]["currency"]
        earns = earns_of(s)
        if buyer is None:
            who = f"held by <b id='holder'>{esc(names.get(s['holder'], '-'))}</b>"
        else:  # who bought it: only the buyer and the seller are told
            whom = ("you" if me == buyer else names[buyer] if me == seller else None)
            who = (f"bought{f' by <b id=buyer>{esc(whom)}</b>' if whom else ''} · last shared "
                   f"by <b id='holder'>{esc(names.get(s['holder'], '-'))}</b>")
        parts = [f"<h1>{esc(s['name'] or cid)}</h1>",
                 f"<p>Price {amount(**s['price'])} · one share earns "
                 f"<span class='label amount' id='commission'>{esc(earns.badge)}</span> · "
                 f"status <b id='status'>{esc(s['status'])}</b> · {who} · "
                 f"{s['chain_length']} circulations</p>"]
        said = status_words(state, s)
        if said:
            ended = s["status"] in ("cancelled", "closed", "refunded")
            parts.append(f"<p class='{'ended' if ended else 'msg'}' id='state-words'>"
                         f"{esc(said)}</p>")
        parts.extend(self._pool_rules(s, earns.sentence))
        if s["status"] == "posted" and s["pool_status"] == "open":
            parts.append(self._progress(s, cur))
        if s["held_until_ms"] is not None:
            until = when_html(s["held_until_ms"])  # in the visitor's time zone (assets.py)
            parts.append(f"<p id='held'>Bought. Commission of {amount(s['held_minor'], cur)} and "
                         f"the seller's price are held until <b>{until}</b>; a refund before "
                         "then reduces them, after it they are paid.</p>")
        refund = refund_words(state, s)
        if refund:
            parts.append(f"<p id='refunded'>{esc(refund)}</p>")
        if s["warnings"] and s["status"] == "posted" and s["pool_status"] == "open":
            parts.append("<p class='warn' id='warning'>The commission on this certificate will "
                         "soon be withdrawn: buy now.</p>")
        if outcome is not None:
            words, kind = outcome_words(outcome, request.query.get("did"))
            parts.append(f"<p class='outcome {kind}' id='outcome' "
                         f"role='{'alert' if kind == 'refused' else 'status'}'>"
                         f"{esc(words)}</p>")
        checkout = request.query.get("checkout")
        if checkout and ID.fullmatch(checkout) and s["status"] == "posted":
            parts.append(f"<p class='msg' id='checkout'>Payment {esc(checkout)} sent by the "
                         "payment system: the purchase shows here as soon as the platform "
                         "has applied it.</p>")
        if state is not None and state.chain:
            parts.append(f"<h2>Who shared it</h2><p id='tree-counts'>{esc(counts_line(state))}"
                         f"</p><div class='scroll'>{share_tree_svg(state, me)}</div>")
        if state is not None and me in members:
            why = why_no_gain(state, me)
            if why:
                parts.append(f"<p class='msg' id='no-gain'>Your share earned nothing: "
                             f"{esc(why)}.</p>")
            if shared_again(state, me):
                parts.append("<p id='repeat'>You shared it more than once: an account earns "
                             "at most once per certificate, so the later shares earned "
                             "nothing more.</p>")
        claim = claimable(state, me)
        csrf = self._csrf_field(request)
        if claim:
            parts.append(
                f"<p class='msg' id='claimable'>You can claim {esc(claim)} on this "
                f"certificate.</p><form class='inline' method='post' "
                f"action='/page/certificates/{esc(cid)}/claim'>{csrf}"
                "<button id='claim'>Claim</button></form>")
        if via and via in members and via != me:
            parts.append(f"<p id='shared-by'>Shared with you by <b>{esc(names[via])}</b>.</p>")
        elif via and via != me and ID.fullmatch(via) and s["status"] == "posted":
            # a link from an account not in the chain would be refused (via_not_in_chain):
            # say so, and share from the catalogue instead
            parts.append("<p class='msg' id='bad-via'>The link you followed is not a share "
                         "link of this certificate (its account has not shared it): if you "
                         "circulate it, your share comes from the catalogue.</p>")
        offered = actions(s, me, seller)
        if me and me in members and s["status"] == "posted" and s["pool_status"] == "open":
            # only an account in the chain can be someone's `via`: a link from anyone
            # else would be refused (via_not_in_chain)
            origin = request["trust"].own_origin(request)
            link = f"{origin}/page/certificates/{cid}?via={me}"
            parts.append(
                f"<p>Your share link: <input id='share' size=60 readonly value='{esc(link)}' "
                "aria-label='your share link'><button id='copy' type='button'>Copy</button></p>")
        elif me and "circulate" in offered:
            parts.append("<p id='share-hint'>Circulate it to your feed to get a share link "
                         "of your own.</p>")
        if me and me == s["holder"] and s["status"] == "posted":
            parts.append("<p id='you-hold'>You hold it now: it is in your feed.</p>")
        send_via = via if via in members and via != me else ""
        for action, button, label in (("circulate", "circulate", "Circulate to my feed"),
                                      ("checkout", "buy", "Buy")):
            if button in offered:
                parts.append(
                    f"<form class='inline' method='post' action='/page/certificates/{esc(cid)}/"
                    f"{action}'>{csrf}<input type='hidden' name='via' value='{esc(send_via)}'>"
                    f"<button id='{button}'>{label}</button></form> ")
        return "".join(parts)

    @staticmethod
    def _progress(s: dict, cur: str) -> str:
        """How close the withdrawal is: the time left ticking, and each threshold."""
        items = []
        if s["time_left_ms"] is not None:
            deadline = s["loaded_ms"] + s["time_left_ms"]
            items.append(f"<li id='time-left'>commission withdrawn in <span class='countdown' "
                         f"data-deadline='{deadline}'>{duration(s['time_left_ms'])}</span></li>")
        count, limit = s["thresholds"].get("circulations", [0, None])
        if limit:
            items.append(f"<li id='progress-circulations'>shares that count: {count} of "
                         f"{limit} ({esc(who_counts(s.get('acquisition') or {}))})</li>")
        acquired, cap = s["thresholds"].get("cumulative_minor", [0, None])
        if cap:
            items.append(f"<li id='progress-cumulative'>commission taken: "
                         f"{amount(acquired, cur)} of {amount(cap, cur)}</li>")
        if not items:
            return ""
        return ("<h2>Until the commission is withdrawn</h2><ul id='progress'>"
                + "".join(items) + "</ul>")

    @staticmethod
    def _pool_rules(s: dict, earns: str) -> list[str]:
        """What a sharer should know before sharing: what a share earns now, is the
        money really there and how much is left, the odds of a random refill, how deep
        does commission go."""
        cur = s["price"]["currency"]
        out = []
        funded = funding_words(s)
        if funded:
            out.append(f"<p id='funding'>{esc(funded)}</p>")
        if s["status"] == "posted" and s["pool_status"] == "open":
            out.append(f"<p id='earns'>{esc(earns)}</p>")
            left = budget_left(s)
            if left:
                out.append(f"<p id='budget-left'>{esc(left)}.</p>")
        for draw in s["odds"]:
            if draw["draw"] == "acquisition":
                continue  # said with what a share earns
            out.append(
                f"<p class='odds' id='odds-{esc(draw['draw'])}'>Each refill adds a random "
                f"amount from {amount(draw['min_minor'], cur)} to "
                f"{amount(draw['max_minor'], cur)}, every amount equally likely (uniform), "
                "drawn by the platform from a secret: nobody can choose or predict it.</p>")
        policy = s.get("acquisition") or {}
        depth = policy.get("max_depth")
        if depth:
            out.append(f"<p id='max-depth'>Only the first {int(depth)} levels of sharing earn "
                       "commission; deeper shares circulate it for free.</p>")
        if policy.get("min_account_age_s") or policy.get("verified_only"):
            out.append(f"<p id='account-rules'>Only {esc(who_counts(policy))} earn and count "
                       "here: newer or unverified accounts can share it, but take nothing and "
                       "count toward no threshold.</p>")
        per_minute = policy.get("max_acquisitions_per_minute")
        if per_minute:
            out.append(f"<p id='velocity'>At most {int(per_minute)} shares a minute earn "
                       "commission; in a rush, the ones beyond that earn nothing.</p>")
        return out

    def _not_yours(self, request: web.Request, me: str | None, account: str,
                   what: str) -> web.Response:
        """An account's private page seen by someone else: log in (again) as it."""
        body = (f"<h1>{esc(account)}</h1><p id='log-in-to-see'>Log in as "
                f"{esc(account)} to see its {what}.</p><p><a href='/'>Back to the "
                "catalogue</a></p>")
        return self._layout(request, account, me, body, request.path_qs)

    async def account(self, request: web.Request) -> web.Response:
        """The account's earnings: totals per currency, one line per gain (issue #27.2:
        services/api/earnings.py), then the certificates it holds or shared."""
        account = request.match_info["id"]
        me = await self._me(request)
        if me != account:
            return self._not_yours(request, me, account, "earnings")
        name = request["page_identity"].display_name
        body = (f"<h1>{esc(name)}</h1><p><a id='account-settings' href='/page/me'>Your account: "
                "password, export your data, erase your account</a></p>")
        body += live.block(f"/page/accounts/{account}/live", await self._account_body(account))
        return self._layout(request, account, me, body, f"/page/accounts/{account}")

    async def _account_body(self, account: str) -> str:
        """The earnings page's live part: the earnings, then the certificates."""
        return (earnings_section(account, await self.earnings.lines(account))
                + await self._certificates_of(account))

    async def account_live(self, request: web.Request) -> web.StreamResponse:
        """The earnings page's live part as Server-Sent Events, to its account only.
        Watched (services/api/live.py): the account's earnings counters (every amount
        that moves), the number of dated steps of its gains and of its payouts (a
        share that earned nothing, a flag, an approval), the number of certificates it
        shared, and the ``seq`` of its newest LIVE_CERTIFICATES of them (their status
        and holder; on a Redis Cluster the account's keys are written before the
        certificates' states, so a render woken by the counters alone could read a
        state one step old)."""
        account = request.match_info["id"]
        me = await self._me(request)
        if me is None or me != account:
            raise Problem(403, "not_yours", "only the account itself follows its earnings")
        k = self.reads.keys
        newest = await self.reads.redis.zrevrange(k.shared(account), 0, LIVE_CERTIFICATES - 1)
        probes = [(k.earnings(account), None), (k.gains(account), live.HLEN),
                  (k.payouts(account), live.HLEN), (k.shared(account), live.ZCARD)]
        probes += [(k.cert(raw.decode()), "seq") for raw in newest]
        return await self._follow(request, me, probes, lambda: self._account_body(account))

    async def _follow(self, request: web.Request, me: str, probes: list,
                      body, every_s: float = 0.0) -> web.StreamResponse:
        """Streams ``body()`` (a page's live part for ``me``) with services/api/live.py,
        checking the session again every SESSION_RECHECK_S: logged out (or the account
        changed) since, the stream ends. ``body`` returning None ends it too."""
        loop = asyncio.get_running_loop()
        checked = loop.time()

        async def render() -> str | None:
            nonlocal checked
            if loop.time() - checked > SESSION_RECHECK_S:
                request.pop("page_session", None)
                if await self._me(request) != me:
                    return None
                checked = loop.time()
            return await body()

        return await live.stream(request, probes, render, every_s)

    async def feed(self, request: web.Request) -> web.Response:
        """The account's feed as a page: what it holds, each share it made and whether
        it counted (and why not), and its recent shares that were refused."""
        account = request.match_info["id"]
        me = await self._me(request)
        if me != account:
            return self._not_yours(request, me, account, "feed")
        now = int(time.time() * 1000)
        ids = await self.reads.redis.zrevrange(self.reads.keys.feed(account), 0, 99)
        items = [s for s in [await self.reads.summary(i.decode(), now) for i in ids] if s]
        body = (f"<h1>Your feed</h1><p><a href='/page/accounts/{esc(account)}'>Your "
                "earnings</a></p>" + feed_section(
                    items, await self.earnings.shares(account),
                    await self.earnings.refused(account)))
        return self._layout(request, "Your feed", me, body, f"/page/accounts/{account}/feed")

    async def earnings_csv(self, request: web.Request) -> web.Response:
        """The earnings page's lines as CSV (the logged-in account's own)."""
        account = request.match_info["id"]
        me = await self._me(request)
        if me != account:
            return self._not_yours(request, me, account, "earnings")
        return csv_response(account, await self.earnings.lines(account))

    async def _product(self, cid: str) -> str:
        """The certificate's product name (its id until the read model has it)."""
        name = await self.reads.redis.hget(self.reads.keys.cert(cid), "name")
        return name.decode() if name else cid

    async def _certificates_of(self, account: str) -> str:
        """Claims waiting, and every certificate the account holds or shared with its
        status and the account's gain on it."""
        redis, keys = self.reads.redis, self.reads.keys
        claims, rows = [], []
        for raw in await redis.zrevrange(keys.claims(account), 0, 99):
            cid = raw.decode()
            what = claimable(await self.reads.state(cid), account)
            if what:
                product = await self._product(cid)
                claims.append(f"<li><a class='claim' href='/page/certificates/{esc(cid)}'>"
                              f"{esc(product)}</a> <small class='ref'>{esc(cid)}</small>: "
                              f"{esc(what)}</li>")
        for raw in await redis.zrevrange(keys.shared(account), 0, 99):
            cid = raw.decode()
            state = await self.reads.state(cid)
            if state is None:
                continue
            gain, how = gain_of(state, account)
            holds = " (you hold it)" if state.holder == account else ""
            kept = 0 if how in ("voided", "declined") else gain  # no gain (any more)
            rows.append(f"<tr class='mine'><td><a href='/page/certificates/{esc(cid)}'>"
                        f"{esc(await self._product(cid))}</a> <small class='ref'>{esc(cid)}"
                        f"</small>{holds}</td><td>{esc(state.status)}</td>"
                        f"<td>{money(kept, state.currency)}</td>"
                        f"<td>{esc(phrase(state, account, how))}</td></tr>")
        out = ""
        if claims:
            out += f"<h2>You can claim</h2><ul id='claims'>{''.join(claims)}</ul>"
        out += ("<h2>Certificates you hold or shared</h2><div class='scroll'><table id='mine'>"
                "<tr><th>Product</th><th>Status</th><th>Your gain</th><th>Where it stands</th>"
                f"</tr>{''.join(rows)}</table></div>")
        return out

    async def login(self, request: web.Request) -> web.Response:
        form = await request.post()
        target = safe_next(str(form.get("next", "/")))  # never off-site
        sessions = request.app["sessions"]
        if not sessions.login_csrf_ok(request.cookies.get(LOGIN_NONCE_COOKIE, ""),
                                      str(form.get("csrf", ""))):
            raise Problem(403, "csrf", "the login form's token is missing or wrong; "
                          "reload the page and log in again")
        try:
            session = await request.app["accounts"].login(
                str(form.get("account_id", ""))[:64], str(form.get("password", ""))[:256],
                request["trust"].client_address(request))
        except Problem as exc:
            if exc.response.status != 429:
                raise
            return self._layout(request, "Log in", None,
                                "<p class='warn' id='throttled'>Too many failed logins: "
                                "try again in a few minutes.</p>", target, status=429)
        if session is None:  # said, with the form again (the page's header) and a way back
            return self._layout(
                request, "Wrong account or password", None,
                "<h1>Wrong account or password</h1><p class='warn' id='wrong-password' "
                "data-error=\"bad_credentials\">The account name or the password is wrong: "
                "try again in the form above.</p><p><a id='way-back' "
                f"href='{esc(target)}'>Back to the page you were on</a></p>", target,
                status=401)
        request.setdefault("set_cookies", []).append(
            (SESSION_COOKIE, session.token, session.expires_s - int(time.time())))
        raise web.HTTPSeeOther(target)

    async def _form(self, request: web.Request) -> tuple[Session, dict]:
        """The posted form of a logged-in visitor whose CSRF token matches: 401/403
        before anything is sent."""
        session = await self._session(request)
        if session is None:
            raise Problem(401, "unauthenticated", "log in to do this")
        form = await request.post()
        if not request.app["sessions"].csrf_ok(session, str(form.get("csrf", ""))):
            raise Problem(403, "csrf", "the form's token is missing or wrong; reload the page")
        return session, dict(form)

    async def logout(self, request: web.Request) -> web.Response:
        session, _ = await self._form(request)
        await request.app["accounts"].end_session(session)
        request.setdefault("set_cookies", []).append((SESSION_COOKIE, "", 0))
        raise web.HTTPSeeOther("/")

    async def act(self, request: web.Request) -> web.Response:
        cid = request.match_info["id"]
        action = request.match_info["action"]
        if action not in ("circulate", "claim", "checkout"):
            raise web.HTTPNotFound()
        gateway = request.app["gateway"]
        session, form = await self._form(request)
        me = await gateway.admit(session.account)
        if action == "checkout":
            _, url = await gateway.start_checkout(request, me, cid)
            raise web.HTTPSeeOther(url)
        via = str(form.get("via") or "") or None
        if via is not None and not ID.fullmatch(via):
            raise Problem(400, "invalid_id", "via is not an account id")
        command_id = f"web-{uuid.uuid4().hex}"
        if action == "circulate":
            await gateway.send_for(me, c.Circulate, cid, command_id,
                                   request.get("page_identity"),
                                   via=via if via != me else None)
        else:
            await gateway.send_for(me, c.Claim, cid, command_id)
        raise web.HTTPSeeOther(f"/page/certificates/{cid}?sent={command_id}&did={action}")


def with_banner(reads: ReadApi, handler):
    """A page handler that first learns whether the read model is catching up (the
    page's banner says so: its figures may be behind)."""
    async def page(request: web.Request) -> web.Response:
        request["catching_up"] = await reads.catching_up()
        return await handler(request)
    return page


def routes(app: web.Application, reads: ReadApi) -> None:
    pages = Pages(reads)

    def banner(handler):
        return with_banner(reads, handler)

    app.router.add_get("/", banner(pages.catalogue))
    app.router.add_get("/page/certificates/{id}", banner(pages.certificate))
    app.router.add_get("/page/certificates/{id}/live", pages.certificate_live)
    live.install(app, reads.redis)  # one poller for every live page (services/api/live.py)
    app.router.add_get("/page/accounts/{id}", banner(pages.account))
    app.router.add_get("/page/accounts/{id}/live", pages.account_live)
    app.router.add_get("/page/accounts/{id}/feed", banner(pages.feed))
    app.router.add_get("/page/accounts/{id}/earnings.csv", pages.earnings_csv)
    app.router.add_post("/page/login", pages.login)
    app.router.add_post("/page/logout", pages.logout)
    app.router.add_post("/page/certificates/{id}/{action}", pages.act)
