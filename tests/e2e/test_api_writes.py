"""Writes through the API: login, signed commands, outcomes, and every refusal a
client can get (401, 400, 422, 429). The purchase is the payment system's report of
a captured payment (this test plays the payment system, as it does for the escrow
confirmation); tests/e2e/test_api_trust.py drives it through the checkout."""

from __future__ import annotations

import time

import msgspec

from deploy.localstack import free_port
from schemas import commands as c
from schemas.payments import CommissionPayout, Settlement
from tests.e2e.certificates import paid
from tests.e2e.http import call, get, login, outcome, wait_for

decode_settlement = msgspec.json.Decoder(Settlement).decode


def test_a_user_flow_through_the_api(pipeline):
    port = free_port()
    pipeline.start_all()
    pipeline.start("readmodel")
    pipeline.start("api", API_PORT=str(port), API_OPS_PORT=str(free_port()), API_WRITES_PER_S="5")
    wait_for(port, "/catalogue", lambda b: True, pipeline=pipeline)
    seller, funder, alice, bob = (login(port, a) for a in ("seller", "funder", "alice", "bob"))

    status, offer, _ = call(port, "POST", "/offers", {"offer_id": "lamp", "name": "Lamp",
                                                      "price_minor": 5_000, "currency": "EUR",
                                                      "copies": 2, "funder_id": "funder"},
                            seller)
    # the offer id is the seller's own: nobody else can issue copies of it
    assert status == 202 and offer["offer_id"] == "seller~lamp"
    assert offer["certificate_ids"] == ["seller~lamp-00001", "seller~lamp-00002"]
    cid = "seller~lamp-00001"
    # a stranger cannot attach the pool first (no funder role: the gateway refuses it
    # before signing; the core refuses a funder the seller did not name); the funder
    # the seller named can
    status, stranger_pool, _ = call(port, "POST", f"/certificates/{cid}/pool",
                                    {"funding_ref": "made-up", "budget_minor": 1,
                                     "attached_minor": 1, "currency": "EUR"}, alice)
    assert (status, stranger_pool["error"]) == (403, "missing_role")
    _, pool, _ = call(port, "POST", f"/certificates/{cid}/pool",
                      {"funding_ref": "esc-lamp", "budget_minor": 1_000, "attached_minor": 100,
                       "currency": "EUR", "hold_s": 3}, funder)
    assert outcome(port, funder, pool["command_ids"][0])["status"] == "accepted"
    _, early, _ = call(port, "POST", f"/certificates/{cid}/post", {}, seller)
    refused = outcome(port, seller, early["command_ids"][0])
    assert (refused["status"], refused["reason"]) == ("rejected", "funding_not_confirmed")
    # the payment system confirms the escrow hold (its own key, straight to Kafka)
    pipeline.send(c.ConfirmFunding(command_id="esc-lamp-held", certificate_id=cid,
                                   at_ms=int(time.time() * 1000), funding_ref="esc-lamp",
                                   amount_minor=1_000, currency="EUR"))
    wait_for(port, f"/certificates/{cid}", lambda b: b.get("funding_confirmed") is True,
             pipeline=pipeline)
    _, post, _ = call(port, "POST", f"/certificates/{cid}/post", {}, seller)
    _, share, _ = call(port, "POST", f"/certificates/{cid}/circulate", {}, alice)
    again_key = {"Idempotency-Key": "bob-share-1"}
    _, bob_share, _ = call(port, "POST", f"/certificates/{cid}/circulate", {"via": "alice"},
                           bob, headers=again_key)
    _, bob_retry, _ = call(port, "POST", f"/certificates/{cid}/circulate", {"via": "alice"},
                           bob, headers=again_key)
    assert bob_retry["command_ids"] == bob_share["command_ids"]  # same key, same command
    _, twice, _ = call(port, "POST", f"/certificates/{cid}/circulate", {}, bob)

    for response, token in ((pool, funder), (post, seller), (share, alice),
                            (bob_share, bob)):
        assert outcome(port, token, response["command_ids"][0])["status"] == "accepted"
    refused = outcome(port, bob, twice["command_ids"][0])
    assert (refused["status"], refused["reason"]) == ("rejected", "already_holder")
    # carol pays; the payment system reports the captured payment (its own key)
    pipeline.send(c.Purchase(command_id="capture:p-1", certificate_id=cid,
                             at_ms=int(time.time() * 1000), account_id="carol",
                             **paid(cid, 5_000, "p-1")))
    # bought: alice's 100 is held for the pool's 3 s, then the timer releases it
    held = wait_for(port, f"/certificates/{cid}", lambda b: b["held_until_ms"] is not None)
    assert held["status"] == "purchased" and held["held_minor"] == 200  # alice and bob
    earned = wait_for(port, "/accounts/alice/earnings",
                      lambda b: b["earnings"].get("EUR", {}).get("held_minor"), token=alice)
    assert earned["earnings"]["EUR"]["paid_minor"] == 0
    earned = wait_for(port, "/accounts/alice/earnings",
                      lambda b: b["earnings"].get("EUR", {}).get("payable_minor"), token=alice)
    assert earned["earnings"]["EUR"]["paid_minor"] == 0  # paid only once it is settled
    # the payment system reports alice's payout settled (its key, on payment-results)
    [payout] = [s for s in map(decode_settlement, pipeline.read(pipeline.topics.payments))
                if isinstance(s, CommissionPayout) and s.payee_id == "alice"]
    result = c.ReportPayment(command_id=f"result:{payout.settlement_id}:1", certificate_id=cid,
                             at_ms=int(time.time() * 1000), settlement_id=payout.settlement_id,
                             attempt=1, result="settled")
    pipeline.sender.send(result, topic=pipeline.topics.payment_results)
    pipeline.sender.flush()
    earned = wait_for(port, "/accounts/alice/earnings",
                      lambda b: b["earnings"]["EUR"]["paid_minor"], token=alice)
    assert earned["earnings"]["EUR"] == {"pending_minor": 0, "held_minor": 0,
                                         "payable_minor": 0, "paid_minor": 100,
                                         "failed_minor": 0, "voided_minor": 0,
                                         "clawed_back_minor": 0}
    # after the hold the price was paid out: the seller's own refund is refused (it goes
    # through the payment system, which takes it from the seller's side) ...
    _, stranger_refund, _ = call(port, "POST", f"/certificates/{cid}/refund",
                                 {"amount_minor": 1_000, "refund_ref": "rf-x"}, alice)
    _, refund, _ = call(port, "POST", f"/certificates/{cid}/refund",
                        {"amount_minor": 1_000, "refund_ref": "rf-1"}, seller)
    refused = outcome(port, alice, stranger_refund["command_ids"][0])
    assert (refused["status"], refused["reason"]) == ("rejected", "not_authorized")
    refused = outcome(port, seller, refund["command_ids"][0])
    assert (refused["status"], refused["reason"]) == ("rejected", "refund_after_hold")
    # ... which refunds a fifth: commission is locked, the refund is the seller's cost
    # (alice keeps her 100)
    pipeline.send(c.Refund(command_id="ps-refund-1", certificate_id=cid,
                           at_ms=int(time.time() * 1000), by="payment_system",
                           amount_minor=1_000, refund_ref="rf-1"))
    wait_for(port, f"/certificates/{cid}", lambda b: b["refunded_minor"] == 1_000)
    assert get(port, "/accounts/alice/earnings", alice)[1]["earnings"]["EUR"][
        "clawed_back_minor"] == 0
    # the payment system reports a chargeback of half the price within the pool's
    # window: half of alice's commission is clawed back
    pipeline.send(c.Refund(command_id="chargeback-1", certificate_id=cid,
                           at_ms=int(time.time() * 1000), by="payment_system",
                           amount_minor=2_500, refund_ref="cb-1",
                           chargeback_reason="fraudulent"))
    earned = wait_for(port, "/accounts/alice/earnings",
                      lambda b: b["earnings"]["EUR"]["clawed_back_minor"], token=alice)
    assert earned["earnings"]["EUR"]["clawed_back_minor"] == 50
    assert get(port, f"/certificates/{cid}")[1]["refunded_minor"] == 3_500
    # the other copy, unsold, is taken off sale by its seller
    _, cancel, _ = call(port, "POST", "/certificates/seller~lamp-00002/cancel", {}, seller)
    assert outcome(port, seller, cancel["command_ids"][0])["status"] == "accepted"
    assert get(port, "/certificates/seller~lamp-00002")[1]["status"] == "cancelled"

    # every refusal is JSON with a machine-readable code
    assert call(port, "POST", f"/certificates/{cid}/circulate", {})[0:2] == (401, {
        "error": "unauthenticated",
        "detail": "log in at POST /login and send Authorization: Bearer <token>"})
    assert call(port, "POST", "/login", {"account_id": "alice", "password": "x"})[0] == 401
    status, body, _ = call(port, "POST", f"/certificates/{cid}/circulate", raw=b"{nope",
                           token=alice)
    assert (status, body["error"]) == (400, "malformed_json")
    status, body, _ = call(port, "POST", f"/certificates/{cid}/circulate",
                           {"via": "bob", "price_minor": 1}, alice)
    assert (status, body["error"]) == (422, "invalid_body")
    status, body, _ = call(port, "POST", "/offers", {"name": "x", "price_minor": -1,
                                                     "currency": "EUR"}, seller)
    assert (status, body["error"]) == (422, "invalid_body")
    statuses = [call(port, "POST", "/certificates/seller~lamp-00002/circulate", {}, alice)
                for _ in range(12)]  # 12 in well under 2 s: one second sees >= 6
    limited = [s for s in statuses if s[0] == 429]
    assert limited and limited[0][1]["error"] == "rate_limited"
    assert limited[0][2]["Retry-After"] == "1"
    assert get(port, "/certificates/seller~lamp-00002")[0] == 200
