"""The read API, as a client sees it, over the pipeline and the read model."""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request

from deploy.localstack import free_port
from schemas import commands as c
from tests.e2e.test_seed_flows import setup


def get(port: int, path: str) -> tuple[int, dict]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


def wait_for(port: int, path: str, check, timeout_s: float = 60, pipeline=None) -> dict:
    deadline = time.monotonic() + timeout_s
    while True:
        if pipeline is not None:
            pipeline.assert_running()
        try:
            status, body = get(port, path)
            if status == 200 and check(body):
                return body
        except OSError:
            pass  # not listening yet
        if time.monotonic() > deadline:
            raise AssertionError(f"{path}: not as expected after {timeout_s}s")
        time.sleep(0.5)


def test_catalogue_certificate_share_link_feed_and_earnings(pipeline):
    port = free_port()
    pipeline.start_all()
    pipeline.start("readmodel")
    pipeline.start("api", API_PORT=str(port))
    t = int(time.time() * 1000)
    pipeline.send(
        *setup("api-a"), *setup("api-b", thresholds=c.Thresholds(max_circulations=3)),
        c.Circulate(command_id="a-s1", certificate_id="api-a", at_ms=t, account_id="ann"),
        c.Circulate(command_id="a-s2", certificate_id="api-a", at_ms=t, account_id="ben",
                    via="ann"),
        c.Circulate(command_id="b-s1", certificate_id="api-b", at_ms=t, account_id="ann"),
        c.Purchase(command_id="b-buy", certificate_id="api-b", at_ms=t, account_id="cat",
                   payment_ref="pay-b"),
    )
    catalogue = wait_for(port, "/catalogue?sort=commission",
                         lambda b: [i["id"] for i in b["items"]] == ["api-a"], pipeline=pipeline)
    [item] = catalogue["items"]
    assert item["commission"] == {"amount_minor": 10_000, "currency": "USD"}
    assert (item["holder"], item["chain_length"], item["status"]) == ("ben", 2, "posted")
    assert item["copies_left"] == 1 and item["share_link"] == "/c/api-a"

    status, bought = get(port, "/certificates/api-b")
    assert status == 200 and bought["status"] == "purchased" and bought["copies_left"] == 0

    _, link = get(port, "/c/api-a?via=ann")
    assert link["via_valid"] and link["circulate"] == {"certificate_id": "api-a", "via": "ann"}
    _, forged = get(port, "/c/api-a?via=mallory")
    assert not forged["via_valid"] and forged["circulate"]["via"] is None

    feed = wait_for(port, "/accounts/ann/feed", lambda b: len(b["items"]) == 1)
    assert [i["id"] for i in feed["items"]] == ["api-b"]  # api-a moved on to ben
    earnings = wait_for(port, "/accounts/ann/earnings",
                        lambda b: b["earnings"].get("USD", {}).get("paid_minor"))
    assert earnings["earnings"] == {"USD": {"pending_minor": 10_000, "paid_minor": 10_000,
                                            "voided_minor": 0}}

    assert get(port, "/certificates/nope") == (
        404, {"error": "unknown_certificate", "detail": "no certificate with this id"})
    status, body = get(port, "/catalogue?size=5000")
    assert status == 400 and body["error"] == "invalid_parameter"
    status, body = get(port, "/catalogue?sort=price")
    assert status == 400 and body["error"] == "invalid_parameter"
