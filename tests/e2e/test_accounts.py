"""A visitor joins and leaves, over the real pipeline: signs up (the store gives it an
opaque id), logs in, may not issue offers (no seller role; the seller may), shares a
certificate that is then bought through its link, exports its data, erases its
account; afterwards no page, no export and no key of the store or the read model
shows its login or display name, its sessions are over, and the audit reconciles
the books, which keep its gain under the opaque id."""

from __future__ import annotations

import time

import redis

from deploy.localstack import free_port
from schemas import commands as c
from tests.e2e.certificates import cert_id, paid
from tests.e2e.certificates import setup as certificate
from tests.e2e.http import call, get, login, outcome, page, wait_for

CID = cert_id("accounts-lamp")
LOGIN, NAME, PASSWORD = "zoe.visitor", "Zoë Visitor", "a long own password"


def names_left(client: redis.Redis, prefix: str) -> list[str]:
    """Keys of the store or the read model whose name or value holds the login or the
    display name."""
    found = []
    for pattern in (f"acct:{prefix}*", f"rm:{prefix}*"):
        for key in client.scan_iter(pattern):
            kind = client.type(key).decode()
            if kind == "hash":
                values = [b"".join(kv) for kv in client.hgetall(key).items()]
            elif kind == "zset":
                values = client.zrange(key, 0, -1)
            else:
                values = [client.get(key) or b""]
            blob = key + b"".join(values)
            if LOGIN.encode() in blob or NAME.encode() in blob:
                found.append(key.decode())
    return found


def test_a_visitor_signs_up_shares_exports_and_erases_and_the_books_still_reconcile(
        pipeline, stack, names):
    port = free_port()
    pipeline.start_all()
    pipeline.start("readmodel")
    pipeline.start("api", API_PORT=str(port), API_OPS_PORT=str(free_port()))
    t = int(time.time() * 1000)
    pipeline.send(*certificate(CID, t, price_minor=4_000, budget_minor=1_000,
                               attached_minor=100, hold_s=0))
    wait_for(port, f"/certificates/{CID}", lambda b: b["status"] == "posted",
             pipeline=pipeline)

    status, joined, _ = call(port, "POST", "/accounts", {
        "login": LOGIN, "password": PASSWORD, "display_name": NAME})
    assert status == 201 and joined["roles"] == [], joined
    me = joined["account_id"]
    assert me.startswith("u-") and LOGIN not in me
    status, again, _ = call(port, "POST", "/accounts", {
        "login": "Zoe.Visitor", "password": PASSWORD, "display_name": "Other"})
    assert (status, again["error"]) == (409, "login_taken")
    status, logged, _ = call(port, "POST", "/login", {"account_id": LOGIN,
                                                      "password": PASSWORD})
    assert status == 200 and logged["account_id"] == me
    token = logged["token"]

    # roles: a visitor without the seller role may not issue; the seller may
    offer = {"offer_id": "acc", "name": "Chair", "price_minor": 900, "currency": "EUR"}
    status, refused, _ = call(port, "POST", "/offers", offer, token)
    assert (status, refused["error"], refused["required_roles"]) == (
        403, "missing_role", ["seller"])
    status, _, _ = call(port, "POST", f"/certificates/{CID}/pool",
                        {"funding_ref": "x", "budget_minor": 1, "attached_minor": 1,
                         "currency": "EUR"}, token)
    assert status == 403  # neither a funder nor its seller
    status, issued, _ = call(port, "POST", "/offers", offer, login(port, "seller"))
    assert status == 202 and issued["offer_id"] == "seller~acc"

    # the visitor shares; bob comes through its link and the certificate is bought
    _, shared, _ = call(port, "POST", f"/certificates/{CID}/circulate", {}, token)
    assert outcome(port, token, shared["command_ids"][0])["status"] == "accepted"
    bob = login(port, "bob")
    _, html = page(port, f"/page/certificates/{CID}?via={me}", bob)
    assert f"Shared with you by <b>{NAME}</b>" in html  # the pages name it
    _, via, _ = call(port, "POST", f"/certificates/{CID}/circulate", {"via": me}, bob)
    assert outcome(port, bob, via["command_ids"][0])["status"] == "accepted"
    pipeline.send(c.Purchase(command_id="capture:acc-1", certificate_id=CID,
                             at_ms=int(time.time() * 1000), account_id="carol",
                             **paid(CID, 4_000, "acc-1")))
    wait_for(port, f"/accounts/{me}/earnings",
             lambda b: b["earnings"].get("EUR", {}).get("payable_minor") == 100, token=token)

    status, export, _ = call(port, "GET", "/accounts/me/export", token=token)
    assert status == 200
    assert {k: export["profile"][k] for k in ("account_id", "login", "display_name")} == {
        "account_id": me, "login": LOGIN, "display_name": NAME}
    assert [(x["certificate_id"], x["relations"]) for x in export["certificates"]] == [
        (CID, ["shared"])]
    assert export["gains"] == [{"certificate_id": CID, "amount_minor": 100,
                                "currency": "EUR", "status": "paid"}]
    assert export["payouts"]["EUR"]["payable_minor"] == 100
    status, html = page(port, "/page/me", token)
    assert status == 200 and NAME in html and "Erase my account" in html

    # leaving: a wrong password erases nothing; the right one erases
    status, body, _ = call(port, "POST", "/accounts/me/erase", {"password": "not mine!"}, token)
    assert (status, body["error"]) == (403, "wrong_password")
    status, body, _ = call(port, "POST", "/accounts/me/erase", {"password": PASSWORD}, token)
    assert (status, body) == (200, {"erased": me})

    assert get(port, "/accounts/me/export", token)[0] == 401  # its sessions are over
    assert call(port, "POST", "/login", {"account_id": LOGIN, "password": PASSWORD})[0] == 401
    for path in (f"/page/certificates/{CID}?via={me}", f"/page/accounts/{me}"):
        status, html = page(port, path, bob)
        assert status == 200 and NAME not in html and LOGIN not in html, path
    client = redis.Redis.from_url(stack.redis_url)
    try:
        assert names_left(client, f"{names.prefix}.") == []
    finally:
        client.close()
    # the books keep the gain under the opaque id, and reconcile
    assert get(port, f"/certificates/{CID}")[1]["status"] == "purchased"
    report = pipeline.audit()
    assert report.ok, report.problems
    # the name is free again, for a new account with a new id
    status, newcomer, _ = call(port, "POST", "/accounts", {
        "login": LOGIN, "password": PASSWORD, "display_name": "Someone else"})
    assert status == 201 and newcomer["account_id"] != me
    pipeline.assert_running()
