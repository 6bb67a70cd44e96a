"""The simulated payment system's escrow page (issue #27): only the platform opens an
escrow (its token), the amounts are the order's (the platform's, read from the pools),
the browser only says "hold" on the payment system's own page, each pool's funding is
reported once, and a funding reference is held once."""

from __future__ import annotations

import asyncio

import pytest
from aiohttp.test_utils import TestClient, TestServer

from services.paysim.app import DECLINED_CARD, Simulator, build

pytestmark = pytest.mark.unit
TOKEN = "checkout-token-0123456789"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


class Reporter:
    def __init__(self) -> None:
        self.confirmed: list[dict] = []

    def capture(self, **kw) -> str:  # pragma: no cover - not an escrow's
        raise AssertionError("a capture from an escrow")

    def confirm_funding(self, **kw) -> str:
        self.confirmed.append(kw)
        return f"escrow:{kw['funding_ref']}"

    def close(self) -> None:
        pass


def order(*refs: str) -> dict:
    return {"funder_id": "seller", "currency": "EUR", "description": "Desk lamp",
            "return_url": "http://127.0.0.1:8080/page/console/offers/seller~lamp",
            "holds": [{"certificate_id": f"seller~lamp-0000{i + 1}", "funding_ref": ref,
                       "amount_minor": 2_000} for i, ref in enumerate(refs)]}


def test_an_escrow_is_opened_by_the_platform_held_once_and_reported_once_per_pool():
    reporter = Reporter()

    async def run():
        app = build(Simulator(reporter, TOKEN, "http://127.0.0.1:8090"))
        async with TestClient(TestServer(app)) as client:
            assert (await client.post("/escrows", json=order("f1", "f2"))).status == 401
            bad = {**order("f1"), "holds": [{"certificate_id": "x", "funding_ref": "f1",
                                              "amount_minor": 0}]}
            assert (await client.post("/escrows", json=bad, headers=AUTH)).status == 422
            twice = await client.post("/escrows", json=order("f1", "f1"), headers=AUTH)
            assert twice.status == 409
            opened = await client.post("/escrows", json=order("f1", "f2"), headers=AUTH)
            assert opened.status == 201
            escrow = (await opened.json())["escrow_id"]
            page = await (await client.get(f"/escrows/{escrow}")).text()
            assert "Hold 40.00 EUR in escrow" in page and "Desk lamp" in page
            pay = f"/escrows/{escrow}/pay"
            assert (await client.post(pay, data={"card": DECLINED_CARD})).status == 402
            foreign = await client.post(pay, data={"card": "4242"},
                                        headers={"Origin": "http://evil.example"})
            assert foreign.status == 403 and not reporter.confirmed
            for _ in range(2):  # held twice: reported once, both go back to the shop
                held = await client.post(pay, data={"card": "4242 4242 4242 4242",
                                                    "amount_minor": "1"},
                                         allow_redirects=False)
                assert held.status == 303
                assert held.headers["Location"].endswith(f"seller~lamp?escrow={escrow}")
            # the amounts are the platform's order, whatever the form says
            assert [(r["funding_ref"], r["amount_minor"], r["currency"])
                    for r in reporter.confirmed] == [("f1", 2_000, "EUR"), ("f2", 2_000, "EUR")]
            # a reference held is never held again (a second escrow for it is refused)
            again = await client.post("/escrows", json=order("f2"), headers=AUTH)
            assert again.status == 409
            assert (await client.get("/escrows/es_nope")).status == 404

    asyncio.run(run())
