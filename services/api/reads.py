"""Reads, served from the Redis read model (services/readmodel)."""

from __future__ import annotations

import json
import re
import time

import redis.asyncio as aioredis
from aiohttp import web

from domain import CertificateState
from services.api.errors import Problem, problem
from services.readmodel import statecopy
from services.readmodel.projection import NO_DEADLINE, Keys

MAX_PAGE_SIZE = 100


# schemas.types.Id
_ACCOUNT_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:@~-]{0,63}")


def _int_param(request: web.Request, name: str, default: int, lo: int, hi: int) -> int:
    raw = request.query.get(name, str(default))
    if not raw.isdigit() or not lo <= int(raw) <= hi:
        raise Problem(400, "invalid_parameter", f"{name} must be an integer in {lo}..{hi}")
    return int(raw)


def summarise(cid: str, page: dict[str, str], now_ms: int) -> dict:
    """A certificate's summary from its read-model page (projection.page): what the
    JSON API answers and the pages show; no I/O, so the pages' words can be tested on
    a state the domain core produced."""
    out: dict = {
        "id": cid, "name": page.get("name", ""), "status": page["status"],
        "offer_id": page.get("offer_id", ""),
        "price": {"amount_minor": int(page["price_minor"]), "currency": page["currency"]},
        "commission": {"amount_minor": int(page.get("attached_minor", 0))
                       if page.get("pool_status") == "open" else 0,
                       "currency": page["currency"]},
        "pool_status": page.get("pool_status"), "holder": page.get("holder") or None,
        "chain_length": int(page["chain_length"]),
        "warnings": json.loads(page.get("warnings", "[]")),
        "thresholds": json.loads(page.get("thresholds", "{}")),
        "funding_confirmed": page.get("funding_confirmed") == "true",
        # random amounts: their range and that every amount is equally likely
        "odds": json.loads(page.get("odds", "[]")),
        "acquisition": json.loads(page.get("acquisition", "null")),
        "share_link": f"/c/{cid}",
    }
    # after the purchase: held until (None: no hold pending), refunded so far
    held_until = page.get("held_until_ms")
    out["held_until_ms"] = int(held_until) if held_until else None
    out["held_minor"] = int(page.get("held_minor", 0)) if held_until else 0
    out["refunded_minor"] = int(page.get("refunded_minor", 0))
    # the funder's budget and what of it sharers can still earn (attached + reserve)
    has_pool = "budget_minor" in page
    out["budget_minor"] = int(page["budget_minor"]) if has_pool else None
    out["budget_left_minor"] = (int(page["attached_minor"]) + int(page["reserve_minor"])
                                if has_pool else None)
    closes = page.get("closes_at_ms")
    out["closes_at_ms"] = int(closes) if closes else None
    deadline = page.get("display_deadline_ms")
    out["time_left_ms"] = max(0, int(deadline) - now_ms) if deadline else None
    return out


class ReadApi:
    def __init__(self, client: aioredis.Redis, keys: Keys) -> None:
        self.redis = client
        self.keys = keys

    async def catching_up(self) -> dict | None:
        """While the read model rebuilds (Redis lost its data) or stands far behind the
        topics, how far it is (services/readmodel/progress.py); None when it is live.
        Every JSON read carries it as ``catching_up``, every page as a banner, so a
        reader knows the figures are incomplete rather than taking them as they are."""
        raw = await self.redis.hgetall(self.keys.progress)
        fields = {k.decode(): v.decode() for k, v in raw.items()}
        if fields.get("state") not in ("rebuilding", "catching_up"):
            return None
        done, left = int(fields.get("done") or 0), int(fields.get("behind") or 0)
        seconds = fields.get("left_s")
        return {"state": fields["state"], "records_done": done, "records_total": done + left,
                "rate_per_s": int(fields.get("rate_per_s") or 0),
                "seconds_left": float(seconds) if seconds else None}

    async def respond(self, body: dict) -> web.Response:
        """A JSON read, with ``catching_up`` while the read model is not live."""
        progress = await self.catching_up()
        return web.json_response(body if progress is None else {**body, "catching_up": progress})

    async def summary(self, cid: str, now_ms: int) -> dict | None:
        raw = await self.redis.hgetall(self.keys.cert(cid))
        if not raw:
            return None
        page = {k.decode(): v.decode() for k, v in raw.items()}
        out = summarise(cid, page, now_ms)
        offer = await self.redis.hgetall(self.keys.offer(page["offer_id"]))
        if offer:
            copies = int(offer.get(b"copies", 0))
            out["copies_left"] = copies - int(offer.get(b"purchased", 0))
            out["copies"] = copies
        return out

    async def catalogue(self, request: web.Request) -> web.Response:
        sort = request.query.get("sort", "commission")
        if sort not in ("commission", "time_left"):
            return problem(400, "invalid_parameter", "sort is commission or time_left")
        page = _int_param(request, "page", 1, 1, 10**6)
        size = _int_param(request, "size", 20, 1, MAX_PAGE_SIZE)
        start, stop = (page - 1) * size, page * size - 1
        if sort == "commission":
            ids = await self.redis.zrevrange(self.keys.by_commission, start, stop)
            total = await self.redis.zcard(self.keys.by_commission)
        else:
            ids = await self.redis.zrangebyscore(self.keys.by_deadline, 0, NO_DEADLINE - 1,
                                                 start=start, num=size)
            total = await self.redis.zcount(self.keys.by_deadline, 0, NO_DEADLINE - 1)
        now = int(time.time() * 1000)
        items = [s for s in [await self.summary(i.decode(), now) for i in ids] if s]
        return await self.respond({"sort": sort, "page": page, "size": size, "total": total,
                                   "items": items})

    async def unknown_certificate(self) -> web.Response:
        """404, unless the read model is rebuilding: then the certificate may exist and
        not be projected yet, and the answer says so."""
        progress = await self.catching_up()
        if progress is None:
            return problem(404, "unknown_certificate", "no certificate with this id")
        return web.json_response({"error": "unknown_certificate",
                                  "detail": "no certificate with this id yet: the read model "
                                            "is catching up", "catching_up": progress},
                                 status=404)

    async def certificate(self, request: web.Request) -> web.Response:
        found = await self.summary(request.match_info["id"], int(time.time() * 1000))
        if found is None:
            return await self.unknown_certificate()
        return await self.respond(found)

    async def state(self, cid: str) -> CertificateState | None:
        return await statecopy.load_one(self.redis, self.keys, cid)

    async def members(self, cid: str) -> dict[str, int]:
        """The accounts in a certificate's chain (only they can be a ``via``)."""
        state = await self.state(cid)
        return state.members if state is not None else {}

    async def command_outcome(self, command_id: str) -> dict[str, str]:
        raw = await self.redis.hgetall(self.keys.outcome(command_id))
        return {k.decode(): v.decode() for k, v in raw.items()}

    async def share_link(self, request: web.Request) -> web.Response:
        cid = request.match_info["id"]
        found = await self.summary(cid, int(time.time() * 1000))
        if found is None:
            return await self.unknown_certificate()
        via = request.query.get("via")
        valid = via is not None and via in await self.members(cid)
        return await self.respond({"certificate": found, "via": via, "via_valid": valid,
                                   "circulate": {"certificate_id": cid,
                                                 "via": via if valid else None}})

    async def feed(self, request: web.Request) -> web.Response:
        account = request.match_info["id"]
        if not _ACCOUNT_ID.fullmatch(account):
            return problem(400, "invalid_parameter", "not an account id: 1-64 characters "
                           "of [A-Za-z0-9._:@~-]")
        ids = await self.redis.zrevrange(self.keys.feed(account), 0, MAX_PAGE_SIZE - 1)
        now = int(time.time() * 1000)
        items = [s for s in [await self.summary(i.decode(), now) for i in ids] if s]
        return await self.respond({"account_id": account, "items": items})

    async def earnings_of(self, account: str) -> dict[str, dict[str, int]]:
        raw = await self.redis.hgetall(self.keys.earnings(account))
        sums: dict[str, dict[str, int]] = {}
        for k, v in raw.items():
            currency, kind = k.decode().split(":")
            sums.setdefault(currency, {"acquired": 0, "held": 0, "payable": 0, "paid": 0,
                                       "failed": 0, "voided": 0, "clawed_back": 0})[kind] = int(v)
        # pending: acquired on a certificate not bought yet; held: bought, payable
        # when the hold ends; payable: sent to the payment system; paid: it reported
        # the payout settled; failed: every attempt failed (an operator looks at it);
        # clawed back: owed back after a refund after the hold
        return {c: {"pending_minor": s["acquired"] - s["held"] - s["payable"] - s["paid"]
                    - s["failed"] - s["voided"],
                    "held_minor": s["held"], "payable_minor": s["payable"],
                    "paid_minor": s["paid"], "failed_minor": s["failed"],
                    "voided_minor": s["voided"], "clawed_back_minor": s["clawed_back"]}
                for c, s in sorted(sums.items())}
