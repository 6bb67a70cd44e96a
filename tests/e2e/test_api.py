"""The read API, as a client sees it, over the pipeline and the read model."""

from __future__ import annotations

import time

from deploy.localstack import free_port
from schemas import commands as c
from services.common.metrics import scrape, total
from tests.e2e.certificates import cert_id
from tests.e2e.http import get, login, wait_for
from tests.e2e.test_seed_flows import paid, setup

A, B = cert_id("api-a"), cert_id("api-b")


def test_catalogue_certificate_share_link_feed_and_earnings(pipeline):
    port, ops_port = free_port(), free_port()
    pipeline.start_all()
    pipeline.start("readmodel")
    pipeline.start("api", API_PORT=str(port), API_OPS_PORT=str(ops_port))
    t = int(time.time() * 1000)
    pipeline.send(
        *setup(A), *setup(B, thresholds=c.Thresholds(max_circulations=3), hold_s=0),
        c.Circulate(command_id="a-s1", certificate_id=A, at_ms=t, account_id="alice"),
        c.Circulate(command_id="a-s2", certificate_id=A, at_ms=t, account_id="bob",
                    via="alice"),
        c.Circulate(command_id="b-s1", certificate_id=B, at_ms=t, account_id="alice"),
        c.Purchase(command_id="b-buy", certificate_id=B, at_ms=t, account_id="cat",
                   **paid(B)),
    )
    catalogue = wait_for(port, "/catalogue?sort=commission",
                         lambda b: [i["id"] for i in b["items"]] == [A], pipeline=pipeline)
    [item] = catalogue["items"]
    assert item["commission"] == {"amount_minor": 10_000, "currency": "USD"}
    assert (item["holder"], item["chain_length"], item["status"]) == ("bob", 2, "posted")
    assert item["copies_left"] == 1 and item["share_link"] == f"/c/{A}"

    status, bought = get(port, f"/certificates/{B}")
    assert status == 200 and bought["status"] == "purchased" and bought["copies_left"] == 0

    _, link = get(port, f"/c/{A}?via=alice")
    assert link["via_valid"] and link["circulate"] == {"certificate_id": A, "via": "alice"}
    _, forged = get(port, f"/c/{A}?via=mallory")
    assert not forged["via_valid"] and forged["circulate"]["via"] is None

    alice = login(port, "alice")
    # a feed is its account's own (tests/e2e/test_api_trust.py: no one else's)
    feed = wait_for(port, "/accounts/alice/feed", lambda b: len(b["items"]) == 1, token=alice)
    assert [i["id"] for i in feed["items"]] == [B]  # A moved on to bob
    # B's payout is published (no hold) but no payment system reported it: being paid
    earnings = wait_for(port, "/accounts/alice/earnings",
                        lambda b: b["earnings"].get("USD", {}).get("payable_minor"), token=alice)
    assert earnings["earnings"] == {"USD": {"pending_minor": 10_000, "held_minor": 0,
                                            "payable_minor": 10_000, "paid_minor": 0,
                                            "failed_minor": 0, "voided_minor": 0,
                                            "clawed_back_minor": 0}}

    assert get(port, "/readyz") == (200, {"ok": True, "redis": True})
    assert get(port, "/healthz") == (200, {"ok": True})
    assert get(port, "/accounts/alice/earnings")[0] == 401
    assert get(port, "/accounts/bob/earnings", alice) == (
        403, {"error": "forbidden", "detail": "an account sees only its own earnings"})
    assert get(port, "/certificates/nope") == (
        404, {"error": "unknown_certificate", "detail": "no certificate with this id"})
    status, body = get(port, "/catalogue?size=5000")
    assert status == 400 and body["error"] == "invalid_parameter"
    status, body = get(port, "/catalogue?sort=price")
    assert status == 400 and body["error"] == "invalid_parameter"

    # what an SRE dashboard scrapes (on the ops port, not the public one): answers by
    # route template and status, no raw paths
    assert get(ops_port, "/readyz") == (200, {"ok": True, "redis": True})
    samples = scrape(ops_port)
    requests = [x for x in samples if x.name == "commission_api_requests_total"]

    def answered(route: str, status: str, method: str = "GET") -> float:
        return total(requests, "commission_api_requests_total", route=route, method=method,
                     status=status)

    assert answered("/catalogue", "400") == 2
    assert answered("/certificates/{id}", "404") == 1
    assert answered("/certificates/{id}", "200") == 1
    assert answered("/accounts/{id}/earnings", "401") == 1
    assert answered("/accounts/{id}/earnings", "403") == 1
    assert answered("/login", "200", method="POST") == 1
    assert not [x for x in requests if "api-" in x.labels["route"] or "nope" in x.labels["route"]]
    assert total(samples, "commission_api_request_seconds_count", route="/catalogue") >= 3
