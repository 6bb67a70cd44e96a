"""The seller's console on the real stack, as a browser uses it (HTML forms with the
session cookie and CSRF token, no script): the seller creates an offer after a preview
in words, funds its pool through the payment system's escrow page, posts it; a share
and a purchase show in the program figures; the seller declines a commission with a
reason and refunds, and downloads the CSV. Attacks: a funding confirmation signed by
anyone but the payment system changes nothing; a non-seller cannot use the console's
actions."""

from __future__ import annotations

import re
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid

import msgspec
import pytest
import redis

from deploy.localstack import free_port
from schemas import commands as c
from services.readmodel import statecopy
from tests.e2e.http import call, live_updates, login, page, wait_for


class NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args, **kwargs):
        return None


OPENER = urllib.request.build_opener(NoRedirect)


def post_form(url: str, fields: dict, token: str | None = None,
              origin: str | None = None) -> tuple[int, str, str]:
    """(status, Location, body) of a form POST as a browser sends it."""
    req = urllib.request.Request(url, data=urllib.parse.urlencode(fields).encode(),
                                 method="POST")
    req.add_header("Content-Type", "application/x-www-form-urlencoded")
    if token:
        req.add_header("Cookie", f"session={token}")
    if origin:
        req.add_header("Origin", origin)
    try:
        with OPENER.open(req, timeout=10) as r:
            return r.status, r.headers.get("Location", ""), r.read().decode()
    except urllib.error.HTTPError as err:
        return err.code, err.headers.get("Location", ""), err.read().decode()


def csrf(html: str) -> str:
    return re.search(r"name='csrf' value='([^']+)'", html)[1]


def text_of(html: str, element_id: str) -> str:
    found = re.search(rf"id='{re.escape(element_id)}'[^>]*>(.*?)</", html, re.S)
    return re.sub(r"<[^>]+>", "", found[1]) if found else ""


def row_of(html: str, element_id: str) -> str:
    found = re.search(rf"id='{re.escape(element_id)}'(.*?)</tr>", html, re.S)
    return re.sub(r"<[^>]+>", " ", found[1]) if found else ""


def until(port: int, path: str, token: str, check, timeout_s: float = 30) -> str:
    deadline = time.monotonic() + timeout_s
    while True:
        status, html = page(port, path, token)
        if status == 200 and check(html):
            return html
        if time.monotonic() > deadline:
            raise AssertionError(f"{path}: not as expected; page was:\n{html[:3000]}")
        time.sleep(0.3)


def test_a_seller_runs_an_offer_from_the_console(pipeline, stack, names):
    port, paysim_port = free_port(), free_port()
    base, paysim = f"http://127.0.0.1:{port}", f"http://127.0.0.1:{paysim_port}"
    shared = {"CHECKOUT_TOKEN": f"checkout-{uuid.uuid4().hex}"}
    pipeline.start_all()
    pipeline.start("readmodel")
    pipeline.start("paysim", PAYSIM_PORT=str(paysim_port), **shared)
    pipeline.start("api", API_PORT=str(port), API_OPS_PORT=str(free_port()),
                   PAYMENT_SYSTEM_URL=paysim, **shared)
    wait_for(paysim_port, "/healthz", lambda b: b["ok"], pipeline=pipeline)
    wait_for(port, "/readyz", lambda b: b["ok"], pipeline=pipeline)
    seller = login(port, "seller")
    html = until(port, "/page/console", seller, lambda h: "Create an offer" in h)
    offer = {"csrf": csrf(html), "name": "Desk lamp", "price": "45.00", "currency": "EUR",
             "copies": "1", "funder": "", "budget": "20.00", "attached": "5.00",
             "earn": "fixed", "earn_amount": "2.00"}
    # the preview says what a share earns; nothing is sent
    status, _, html = post_form(f"{base}/page/console/offers", {**offer, "step": "preview"},
                                seller, base)
    assert status == 200, html
    assert text_of(html, "earns") == (
        "Each share that counts earns a fixed 2.00 EUR; 5.00 EUR on show, topped up from a "
        "budget of 20.00 EUR: about 10 shares earn before the budget runs out.")
    status, where, html = post_form(f"{base}/page/console/offers",
                                    {**offer, "step": "create"}, seller, base)
    assert status == 303, html
    offer_page = urllib.parse.urlsplit(where).path
    offer_id = offer_page.rsplit("/", 1)[1]
    cid = f"{offer_id}-00001"
    # a second offer names the demo funder: it attaches and funds the pools itself
    status, where_b, _ = post_form(f"{base}/page/console/offers",
                                   {**offer, "name": "Bike bell", "copies": "2",
                                    "funder": "funder", "step": "create"}, seller, base)
    assert status == 303
    html = until(port, where, seller, lambda h: "Fund 20.00 EUR" in h)
    assert text_of(html, "outcome") == "Create the offer: done (2 of 2)."
    assert "not funded yet" in row_of(html, "copy-1")

    # a funding confirmation the payment system did not sign (the gateway's key, the
    # key the seller's own commands carry) is refused and funds nothing
    state = redis.Redis.from_url(stack.redis_url)
    ref = statecopy.decode(state.hgetall(f"rm:{names.prefix}.row:{{{cid}}}")).pool.funding_ref
    forged = c.ConfirmFunding(command_id="forged-escrow", certificate_id=cid,
                              at_ms=int(time.time() * 1000), funding_ref=ref,
                              amount_minor=2_000, currency="EUR")
    body = msgspec.json.encode(forged)
    pipeline.sender.send_raw(cid.encode(), body, headers=pipeline.keyring.sign(
        body, pipeline.keyring.first("gateway")))
    pipeline.sender.flush()

    # funding: the payment system's escrow page, the budget from the pool
    status, escrow_url, _ = post_form(f"{base}{offer_page}/fund", {"csrf": csrf(html)},
                                      seller, base)
    assert status == 303 and escrow_url.startswith(f"{paysim}/escrows/es_"), escrow_url
    status, escrow = page(paysim_port, urllib.parse.urlsplit(escrow_url).path)
    assert status == 200 and "Hold 20.00 EUR in escrow" in escrow and "Desk lamp" in escrow
    # a browser that says another amount changes nothing: the order's is reported
    status, back, _ = post_form(f"{escrow_url}/pay", {"card": "4242 4242 4242 4242",
                                                      "amount_minor": "1"}, origin=paysim)
    assert status == 303 and back.startswith(f"{base}{offer_page}?escrow=es_"), back
    back = back[len(base):]
    _, html = page(port, back, seller)
    if "not funded yet" in row_of(html, "copy-1"):  # until the pipeline has confirmed it
        assert "budget is held in escrow" in text_of(html, "funding-state"), html
    html = until(port, back, seller, lambda h: "class='post'" in h)
    assert "funded: the budget is held in escrow" in row_of(html, "copy-1")
    forged_outcome = {k.decode(): v.decode() for k, v in state.hgetall(
        f"rm:{names.prefix}.cmd:{{forged-escrow}}").items()}
    assert forged_outcome.get("status") == "rejected", forged_outcome
    # a replayed escrow payment: back to the shop, nothing reported again
    status, _, _ = post_form(f"{escrow_url}/pay", {"card": "4242 4242 4242 4242"},
                             origin=paysim)
    assert status == 303

    status, where, _ = post_form(f"{base}/page/console/certificates/{cid}/post",
                                 {"csrf": csrf(html)}, seller, base)
    assert status == 303
    html = until(port, where, seller, lambda h: text_of(h, "outcome") == "Post: done.")
    assert "posted" in row_of(html, "copy-1")

    # the funder's pools page: it attaches the pool to both copies and funds them
    funder = login(port, "funder")
    until(port, "/page/pools", funder, lambda h: "Bike bell" in h)
    bell = urllib.parse.urlsplit(where_b).path
    html = until(port, bell, funder, lambda h: "id='attach'" in h)
    status, where, _ = post_form(f"{base}{bell}/attach", {
        "csrf": csrf(html), "earn": "fixed", "budget": "5.00", "attached": "1.00",
        "earn_amount": "0.50"}, funder, base)
    assert status == 303
    html = until(port, where, funder, lambda h: "Fund 10.00 EUR" in h)
    assert text_of(html, "outcome") == "Attach the pool: done (2 of 2)."
    assert "fund-button" not in page(port, bell, seller)[1]  # the funder's to fund
    status, escrow_url, _ = post_form(f"{base}{bell}/fund", {"csrf": csrf(html)}, funder, base)
    assert status == 303
    # the pools page updates itself (issue #27.4): its stream, open before the payment
    # system confirms the hold, sends the funded copies once the pipeline applied it;
    # to its funder only (the page is the visitor's own pools)
    with pytest.raises(urllib.error.HTTPError) as refused:
        live_updates(port, "/page/pools/live", None)
    assert refused.value.code == 401
    stream, updates = live_updates(port, "/page/pools/live", funder)
    with stream:
        assert text_of(next(updates), "pools-EUR-funded") == "0"
        status, _, _ = post_form(f"{escrow_url}/pay", {"card": "4242 4242 4242 4242"},
                                 origin=paysim)
        assert status == 303
        assert any(text_of(u, "pools-EUR-funded") == "2" for u in updates)
    html = until(port, "/page/pools", funder, lambda h: text_of(h, "pools-EUR-funded") == "2")
    assert text_of(html, "pools-EUR-budget") == "10.00 EUR"

    # a share and a purchase (alice shares, carol pays at the payment system)
    alice, carol = login(port, "alice"), login(port, "carol")
    assert call(port, "POST", f"/certificates/{cid}/circulate", {}, token=alice)[0] == 202
    until(port, offer_page, seller, lambda h: text_of(h, "offer-EUR-shares") == "1")
    status, opened, _ = call(port, "POST", f"/certificates/{cid}/checkout", token=carol)
    assert status == 201, opened
    status, _, _ = post_form(f"{opened['checkout_url']}/pay",
                             {"card": "4242 4242 4242 4242"}, origin=paysim)
    assert status == 303
    html = until(port, offer_page, seller,
                 lambda h: text_of(h, "offer-EUR-purchases") == "1"
                 and text_of(h, "offer-EUR-held") == "2.00 EUR")
    assert text_of(html, "offer-EUR-sharers") == "1"
    assert text_of(html, "offer-EUR-conversion") == "100.0 %"
    assert text_of(html, "offer-EUR-cps") == "2.00 EUR"
    assert text_of(html, "offer-EUR-left") == "0.00 EUR"  # the rest went back on purchase
    assert "alice: 1 share, 2.00 EUR" in html
    assert "<rect" in html and "<script" not in html.split("</head>")[1]

    # attacker: alice (no seller role) tries the console's actions with her own token
    status, alice_html = page(port, "/page/console", alice)
    assert status == 403
    _, me_html = page(port, "/page/me", alice)
    for action, fields in (("cancel", {}), ("refund", {"amount": "45.00", "refund_ref": "r1"}),
                           ("decline", {"sharer_id": "alice", "reason": "policy"})):
        status, _, refused = post_form(f"{base}/page/console/certificates/{cid}/{action}",
                                       {"csrf": csrf(me_html), **fields}, alice, base)
        assert status == 403 and "refused" in refused, (action, refused)
    status, _, _ = post_form(f"{base}/page/console/offers",
                             {**offer, "csrf": csrf(me_html), "step": "create"}, alice, base)
    assert status == 403

    # review: decline alice's held commission with a reason, then refund the buyer
    status, where, _ = post_form(f"{base}/page/console/certificates/{cid}/decline",
                                 {"csrf": csrf(html), "sharer_id": "alice",
                                  "reason": "self_referral", "note": "same card as buyer"},
                                 seller, base)
    assert status == 303
    # the outcome is the sequencer's verdict; the figures are the read model's, which
    # may trail it by a moment (CI once read the page between the two): both, then
    html = until(port, where, seller, lambda h: text_of(h, "outcome") == "Decline: done."
                 and text_of(h, "offer-EUR-held") == "0.00 EUR")
    assert text_of(html, "offer-EUR-returned") == "20.00 EUR"
    refund_ref = re.search(r"name='refund_ref' value='([^']+)'", html)[1]
    status, where, _ = post_form(f"{base}/page/console/certificates/{cid}/refund",
                                 {"csrf": csrf(html), "refund_ref": refund_ref,
                                  "amount": "45.00"}, seller, base)
    assert status == 303
    html = until(port, where, seller, lambda h: text_of(h, "outcome") == "Refund 45.00 EUR: done."
                 and "refunded" in row_of(h, "copy-1"))
    assert "ended: what was not paid out went back to the funder" in row_of(html, "copy-1")
    status, where, _ = post_form(f"{base}/page/console/certificates/{cid}/cancel",
                                 {"csrf": csrf(html)}, seller, base)
    html = until(port, where, seller, lambda h: "msg refused" in h or "msg ok" in h)
    assert "Cancel: refused: it has ended" in text_of(html, "outcome"), text_of(html, "outcome")

    status, sheet = page(port, f"{offer_page}/csv", seller)
    assert status == 200
    header, row = sheet.strip().splitlines()
    assert header.startswith("certificate_id,offer_id,name,status,currency,price_minor")
    assert row.startswith(f"{cid},{offer_id},Desk lamp,refunded,EUR,4500,confirmed,1,1,1,"
                          "2000,0,0,0,0,0,0,2000"), row
    pipeline.assert_running()
