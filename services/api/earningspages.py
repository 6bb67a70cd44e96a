"""The sharer's earnings and feed as pages, JSON and CSV (issue #27.2), read from the
read model: the certificates the account shared (``shared:{account}``), their states,
names, the dates of each step (``gains:{account}``) and the payouts as the netting
stage published them (``payout:{account}``). The lines themselves are made by
services/api/earnings.py (pure), so the page, the JSON and the CSV agree.

Also the account's recent shares that were refused (a bad link, a withdrawn pool):
the gateway keeps the ids of an account's last shares (``shares-sent:{account}``,
services/api/writes.py), and their outcomes are the read model's ``cmd:{id}``.

Reads are one pipeline per kind of key (GET, HGET, HGETALL), so they work on one Redis
and on a Redis Cluster alike. At most LINES certificates are read for a page.
"""

from __future__ import annotations

import html
import time

from aiohttp import web

from services.api.earnings import (
    GainLine,
    Payout,
    ShareOutcome,
    dated_html,
    gain_line,
    refusal_words,
    share_outcome,
    to_csv,
    totals,
    when_html,
)
from services.api.money import money
from services.api.reads import ReadApi
from services.readmodel import statecopy

LINES = 500  # certificates read for one page (newest first)
SHARES_SENT = 50  # an account's last shares the gateway keeps the ids of
SHARES_SENT_TTL_S = 7 * 24 * 3600


def shares_sent_key(prefix: str, account: str) -> str:
    return f"{prefix}shares-sent:{{{account}}}"


async def _each(redis, calls) -> list:
    """Run ``(method, *args)`` calls in one pipeline (no transaction: Cluster-safe)."""
    if not calls:
        return []
    async with redis.pipeline(transaction=False) as p:
        for method, *args in calls:
            getattr(p, method)(*args)
        return await p.execute()


def _text(raw) -> str:
    return raw.decode() if isinstance(raw, bytes) else (raw or "")


class Earnings:
    """What the read model holds of one account's gains and shares."""

    def __init__(self, reads: ReadApi) -> None:
        self.reads = reads
        self.redis = reads.redis
        self.keys = reads.keys

    async def _shared(self, account: str, limit: int = LINES):
        """(certificate id, when shared, state, product name) of the account's shares,
        newest first (a certificate not projected yet is left out)."""
        k = self.keys
        ids = await self.redis.zrevrange(k.shared(account), 0, limit - 1, withscores=True)
        cids = [(_text(c), int(score)) for c, score in ids]
        states = await statecopy.load(self.redis, k, [c for c, _ in cids])
        names = await _each(self.redis, [("hget", k.cert(c), "name") for c, _ in cids])
        return [(cid, at, states[cid][0], _text(name) or cid)
                for (cid, at), name in zip(cids, names, strict=True)
                if states[cid][0] is not None]

    async def _dates(self, account: str) -> dict[str, dict[str, str]]:
        raw = await self.redis.hgetall(self.keys.gains(account))
        out: dict[str, dict[str, str]] = {}
        for f, v in raw.items():
            cid, _, step = _text(f).rpartition("|")
            out.setdefault(cid, {})[step] = _text(v)
        return out

    async def _payouts(self, account: str) -> dict[str, Payout]:
        raw = await self.redis.hgetall(self.keys.payouts(account))
        return {_text(sid): Payout.parse(_text(sid), _text(v)) for sid, v in raw.items()}

    async def lines(self, account: str) -> list[GainLine]:
        """One line per gain, newest share first."""
        shared = await self._shared(account)
        dates, payouts = await self._dates(account), await self._payouts(account)
        out = []
        for cid, _at, state, name in shared:
            line = gain_line(state, account, dates.get(cid, {}), payouts, name)
            if line is not None:
                out.append(line)
        return out

    async def shares(self, account: str) -> list[tuple[str, str, int, ShareOutcome]]:
        """(certificate id, product, when shared, outcome) of each certificate the
        account shared: counted, or why not."""
        shared = await self._shared(account)
        dates = await self._dates(account)
        return [(cid, name, at, share_outcome(state, account, dates.get(cid, {}).get("why")))
                for cid, at, state, name in shared]

    async def refused(self, account: str) -> list[dict]:
        """The account's recent shares and claims the engine refused, with why."""
        key = shares_sent_key(self.keys.p, account)
        sent = await self.redis.zrevrange(key, 0, SHARES_SENT - 1, withscores=True)
        ids = [(_text(i), int(score)) for i, score in sent]
        outcomes = await _each(self.redis, [("hgetall", self.keys.outcome(i)) for i, _ in ids])
        out = []
        for (command_id, at), raw in zip(ids, outcomes, strict=True):
            got = {_text(f): _text(v) for f, v in raw.items()}
            if got.get("status") != "rejected":
                continue
            cid = got.get("certificate_id", "")
            name = _text(await self.redis.hget(self.keys.cert(cid), "name")) if cid else ""
            out.append({"command_id": command_id, "certificate_id": cid,
                        "product": name or cid, "at_ms": at, "reason": got.get("reason", ""),
                        "words": refusal_words(got.get("reason", ""))})
        return out


async def record_share_sent(redis, prefix: str, account: str, command_id: str) -> None:
    """The gateway keeps an account's last shares, so the feed can say which were
    refused and why (capped, and gone a week after the last one)."""
    key = shares_sent_key(prefix, account)
    await _each(redis, [("zadd", key, {command_id: int(time.time() * 1000)}),
                        ("zremrangebyrank", key, 0, -SHARES_SENT - 1),
                        ("expire", key, SHARES_SENT_TTL_S)])


# --- HTML ------------------------------------------------------------------------------

def _esc(value: object) -> str:
    return html.escape(str(value), quote=True)


def product_link(cid: str, product: str) -> str:
    """The product's name, linking to the certificate, with its id small beside it."""
    return (f"<a href='/page/certificates/{_esc(cid)}'>{_esc(product)}</a> "
            f"<small class='ref'>{_esc(cid)}</small>")


_TOTAL_HEADS = {
    "pending_minor": ("pending", "Pending (not bought yet)"),
    "held_minor": ("held", "Held (bought; until the hold ends)"),
    "being_paid_minor": ("payable", "Being paid"),
    "paid_minor": ("paid", "Paid (gross)"),
    "offset_minor": ("offset", "Offset against clawbacks"),
    "net_paid_minor": ("net", "Paid net"),
    "failed_minor": ("failed", "Payment failed"),
    "voided_minor": ("voided", "Voided or declined"),
    "clawed_back_minor": ("clawed", "Clawed back"),
}


def totals_table(lines: list[GainLine]) -> str:
    heads = "".join(f"<th>{_esc(h)}</th>" for _, h in _TOTAL_HEADS.values())
    rows = "".join(
        f"<tr id='earn-{_esc(cur)}'><td>{_esc(cur)}</td>" + "".join(
            f"<td class='{cls}'>{money(t[name], cur)}</td>"
            for name, (cls, _) in _TOTAL_HEADS.items()) + "</tr>"
        for cur, t in totals(lines).items())
    # a region that may scroll on a phone, with nothing focusable in it: focusable
    # itself, so a keyboard can scroll it (axe: scrollable-region-focusable)
    return (f"<div class='scroll' tabindex='0' role='region' aria-label='Totals per "
            f"currency'><table id='totals'><tr><th>Currency</th>{heads}</tr>{rows}"
            "</table></div>")


def lines_table(lines: list[GainLine]) -> str:
    rows = []
    for g in lines:
        cur = g.currency
        history = "".join(f"<li>{when_html(at) or 'date not known'}: "
                          f"{dated_html(what, g.held_until_ms)}</li>" for at, what in g.history)

        def cell(cls: str, amount: int | None, cur: str = cur) -> str:
            return f"<td class='{cls}'>{'' if amount is None else money(amount, cur)}</td>"
        rows.append(
            f"<tr class='gain' id='gain-{_esc(g.certificate_id)}' data-status='{g.status}'>"
            f"<td>{product_link(g.certificate_id, g.product)}</td>"
            f"<td class='date'>{when_html(g.acquired_ms)}</td>"
            f"<td class='amount'>{money(g.amount_minor, cur)}</td>"
            f"<td class='state'>{dated_html(g.state, g.held_until_ms)}"
            f"<details id='history-{_esc(g.certificate_id)}'><summary>History</summary>"
            f"<ol>{history}</ol></details></td>"
            + cell("gross", g.gross_minor) + cell("offset", g.offset_minor)
            + cell("net", g.net_minor) + "</tr>")
    if not rows:
        return "<p id='no-gains'>No gains yet: share a certificate from the catalogue.</p>"
    return ("<div class='scroll'><table id='gains'><tr><th>Product</th><th>Date</th>"
            "<th>Amount</th><th>Where it stands</th><th>Payout gross</th><th>Offset</th>"
            f"<th>Net</th></tr>{''.join(rows)}</table></div>")


def earnings_section(account: str, lines: list[GainLine]) -> str:
    return ("<h2>Earnings</h2><p>Totals per currency, never added across currencies. "
            f"<a id='earnings-csv' href='/page/accounts/{_esc(account)}/earnings.csv'>"
            "Download as CSV</a> · <a id='feed-link' "
            f"href='/page/accounts/{_esc(account)}/feed'>Your feed and shares</a></p>"
            + totals_table(lines) + "<h2>Your gains</h2>" + lines_table(lines))


def feed_section(reads_items: list[dict], shares, refused: list[dict]) -> str:
    held = "".join(
        f"<tr class='held-cert'><td>{product_link(s['id'], s['name'] or s['id'])}</td>"
        f"<td>{money(**s['price'])}</td><td>{money(**s['commission'])}</td>"
        f"<td>{_esc(s['status'])}</td></tr>" for s in reads_items)
    out = ("<h2>In your feed (you hold them)</h2>"
           + (f"<div class='scroll'><table id='feed'><tr><th>Product</th><th>Price</th>"
              f"<th>Commission</th><th>Status</th></tr>{held}</table></div>" if held
              else "<p>Nothing in your feed.</p>"))
    rows = "".join(
        f"<tr class='share' id='share-{_esc(cid)}' data-why='{_esc(o.why or '')}'>"
        f"<td>{product_link(cid, name)}</td><td>{when_html(at)}</td>"
        f"<td class='{'counted' if o.counted else 'not-counted'}'>"
        f"{'Counted' if o.counted else 'Did not count'}: {_esc(o.words)}</td></tr>"
        for cid, name, at, o in shares)
    out += ("<h2>Your shares: did they count?</h2>"
            + (f"<div class='scroll'><table id='shares'><tr><th>Product</th><th>Shared</th>"
               f"<th>Why</th></tr>{rows}</table></div>" if rows
               else "<p>You have not shared anything yet.</p>"))
    if refused:
        items = "".join(
            f"<li class='refused' data-reason='{_esc(r['reason'])}'>"
            f"{product_link(r['certificate_id'], r['product'])}, {when_html(r['at_ms'])}: "
            f"refused: {_esc(r['words'])}</li>" for r in refused)
        out += f"<h2>Shares that did not go through</h2><ul id='refused'>{items}</ul>"
    return out


# --- JSON and CSV ------------------------------------------------------------------------

async def earnings_json(earnings: Earnings, account: str) -> dict:
    """The JSON earnings' additions: each gain's line and the totals per currency."""
    lines = await earnings.lines(account)
    return {"gains": [g.as_json() for g in lines], "totals": totals(lines)}


async def feed_json(earnings: Earnings, account: str, items: list[dict]) -> dict:
    """The JSON feed's additions: each item's ``your_share`` (counted, or why not);
    every certificate the account shared, with the same; the shares refused."""
    shared = await earnings.shares(account)
    outcomes = {cid: o for cid, _, _, o in shared}
    for item in items:
        found = outcomes.get(item["id"])
        if found is not None:
            item["your_share"] = found.as_json()
    return {"items": items,
            "shares": [{"certificate_id": cid, "product": name, "shared_at_ms": at,
                        "your_share": o.as_json()} for cid, name, at, o in shared],
            "refused_shares": await earnings.refused(account)}


def csv_response(account: str, lines: list[GainLine]) -> web.Response:
    return web.Response(
        body=to_csv(lines).encode(), content_type="text/csv", charset="utf-8",
        headers={"Content-Disposition": f'attachment; filename="earnings-{account}.csv"',
                 "Cache-Control": "no-store"})

