"""Commissions that stand (issue #24), played through the API on the real pipeline by
accounts that signed up through the front door: the gateway attests each sharer's
account age, so fresh fake accounts neither take a pool nor trip its threshold; a
burst is capped per minute; the seller declines a held commission (a sharer without
a role may not); only a reviewer approves.

Before #24 the four fakes would have counted toward max_circulations = 4 and voided
the honest sharers' commission, and the burst would have emptied the second pool.

The sharer's earnings on the same stack (issue #27.2): a chargeback claws back half of
a paid commission, the sharer's next payout is netted against it and its page shows
gross, offset and net; the declined commission shows its reason; the CSV holds the
page's lines; a fake account's feed says why its share did not count."""

from __future__ import annotations

import csv
import html as markup
import io
import re
import time

import msgspec

from deploy.localstack import free_port
from schemas import commands as c
from schemas.payments import Clawback, Settlement
from services.api.money import money
from tests.e2e.certificates import cert_id, paid
from tests.e2e.certificates import setup as certificate
from tests.e2e.http import call, login, outcome, page, wait_for

RULES = cert_id("stand-rules")
BURST = cert_id("stand-burst")
REVIEW = cert_id("stand-review")
NET = cert_id("stand-net")
AGE_S = 4  # the pool's minimum account age: the honest accounts are older


def sign_up(port: int, login_name: str) -> tuple[str, str]:
    """(account id, session token) of a new account."""
    status, joined, _ = call(port, "POST", "/accounts", {
        "login": login_name, "password": f"pw of {login_name} 123", "display_name": login_name})
    assert status == 201, joined
    status, logged, _ = call(port, "POST", "/login", {
        "account_id": login_name, "password": f"pw of {login_name} 123"})
    assert status == 200, logged
    return joined["account_id"], logged["token"]


def share(port: int, token: str, cid: str) -> dict:
    status, sent, _ = call(port, "POST", f"/certificates/{cid}/circulate", {}, token)
    assert status == 202, sent
    return outcome(port, token, sent["command_ids"][0])


def gain_rows(html: str) -> dict[str, str]:
    """The earnings page's lines, by certificate id."""
    return {markup.unescape(cid): row for cid, row in re.findall(
        r"<tr class='gain' id='gain-([^']+)'.*?>(.*?)</tr>", html, re.S)}


def clawed_back(pipeline, account: str, timeout_s: float = 30) -> None:
    """Until the netting stage has published the chargeback's clawback of ``account``
    (so the account's next payout is netted against it)."""
    decode = msgspec.json.Decoder(Settlement).decode
    deadline = time.monotonic() + timeout_s
    while not any(isinstance(s, Clawback) and s.payee_id == account
                  for s in map(decode, pipeline.read(pipeline.topics.payments))):
        pipeline.assert_running()
        assert time.monotonic() < deadline, "no clawback published"
        time.sleep(0.3)


def pending(port: int, account: str, token: str) -> int:
    status, body, _ = call(port, "GET", f"/accounts/{account}/earnings", token=token)
    assert status == 200, body
    return body["earnings"].get("EUR", {}).get("pending_minor", 0)


def test_fake_accounts_neither_take_a_pool_nor_trip_its_threshold_and_reviews_hold(
        pipeline):
    port = free_port()
    pipeline.start_all()
    pipeline.start("readmodel")
    pipeline.start("api", API_PORT=str(port), API_OPS_PORT=str(free_port()))
    t = int(time.time() * 1000)
    per_share = c.FixedAmount(amount_minor=100)
    pipeline.send(
        *certificate(NET, t, name="Net lamp", price_minor=10_000, budget_minor=500,
                     attached_minor=100, hold_s=0, acquisition=c.AcquisitionPolicy(
                         amount=per_share)),
        *certificate(RULES, t, price_minor=10_000, budget_minor=1_000, attached_minor=100,
                     hold_s=0, thresholds=c.Thresholds(max_circulations=4),
                     acquisition=c.AcquisitionPolicy(amount=per_share,
                                                     min_account_age_s=AGE_S)),
        *certificate(BURST, t, price_minor=10_000, budget_minor=500, attached_minor=100,
                     hold_s=0, acquisition=c.AcquisitionPolicy(
                         amount=per_share, max_acquisitions_per_minute=2)),
        *certificate(REVIEW, t, price_minor=10_000, budget_minor=500, attached_minor=100,
                     hold_s=600, acquisition=c.AcquisitionPolicy(amount=per_share)))
    for cid in (RULES, BURST, REVIEW, NET):
        wait_for(port, f"/certificates/{cid}", lambda b: b["status"] == "posted",
                 pipeline=pipeline)
    honest = [sign_up(port, f"honest{i}") for i in range(3)]
    time.sleep(AGE_S + 0.5)  # the honest accounts are now older than the pool asks

    # four accounts made a moment ago share first: they move the certificate but count
    # toward nothing and take nothing; the three honest sharers then all gain
    fakes = [sign_up(port, f"fake{i}") for i in range(4)]
    for _, token in fakes:
        assert share(port, token, RULES)["status"] == "accepted"
    for _, token in honest:
        assert share(port, token, RULES)["status"] == "accepted"
    shown = wait_for(port, f"/certificates/{RULES}",
                     lambda b: b["chain_length"] == 7, pipeline=pipeline)
    assert shown["pool_status"] == "open", shown  # 3 counting shares < 4
    assert shown["thresholds"]["circulations"] == [3, 4], shown
    html = page(port, f"/page/certificates/{RULES}")[1]
    assert ("shares that count: 3 of 4 (accounts new to this certificate, not its seller "
            "or funder, at least 4 seconds old)") in html
    assert "Only accounts new to this certificate" in html  # the pool's account rules
    pipeline.send(c.Purchase(command_id="capture:stand-1", certificate_id=RULES,
                             at_ms=int(time.time() * 1000), account_id="carol",
                             **paid(RULES, 10_000, "stand-1")))
    for account, token in honest:
        wait_for(port, f"/accounts/{account}/earnings",
                 lambda b: b["earnings"].get("EUR", {}).get("payable_minor") == 100,
                 token=token, pipeline=pipeline)
    for account, token in fakes:
        status, body, _ = call(port, "GET", f"/accounts/{account}/earnings", token=token)
        assert status == 200 and body["earnings"] == {}, body

    # a fake's feed says why its share did not count
    fake, fake_token = fakes[0]
    feed = page(port, f"/page/accounts/{fake}/feed", fake_token)[1]
    assert ("Did not count: your account did not meet this pool&#x27;s account rules"
            in feed), feed
    _, body, _ = call(port, "GET", f"/accounts/{fake}/feed", token=fake_token)
    [shared] = [s for s in body["shares"] if s["certificate_id"] == RULES]
    assert shared["your_share"]["why"] == "account_rules", body

    # a chargeback of half the price within the window claws back half of each honest
    # sharer's paid commission: a debt their next payout pays off first
    sharer, sharer_token = honest[0]
    pipeline.send(c.Refund(command_id="stand-chargeback", certificate_id=RULES,
                           at_ms=int(time.time() * 1000), by="payment_system",
                           amount_minor=5_000, refund_ref="stand-cb",
                           chargeback_reason="fraudulent"))
    clawed_back(pipeline, sharer)
    assert share(port, sharer_token, NET)["status"] == "accepted"
    pipeline.send(c.Purchase(command_id="capture:stand-3", certificate_id=NET,
                             at_ms=int(time.time() * 1000), account_id="carol",
                             **paid(NET, 10_000, "stand-3")))
    netted = wait_for(port, f"/accounts/{sharer}/earnings",
                      lambda b: any(g["certificate_id"] == NET and g["net_minor"] is not None
                                    for g in b["gains"]), token=sharer_token,
                      pipeline=pipeline)
    [line] = [g for g in netted["gains"] if g["certificate_id"] == NET]
    assert (line["product"], line["gross_minor"], line["offset_minor"], line["net_minor"]) == (
        "Net lamp", 100, 50, 50), line
    row = gain_rows(page(port, f"/page/accounts/{sharer}", sharer_token)[1])[NET]
    assert ("Net lamp" in row and "gross 1.00 EUR, offset 0.50 EUR, net 0.50 EUR" in row
            and "<td class='net'>0.50 EUR</td>" in row), row

    # a burst of five from the same fresh accounts (and one more) within a second:
    # two acquisitions a minute, so three shares take nothing and 300 stays in the pool
    burst = [*fakes, sign_up(port, "fake4")]
    for _, token in burst:
        assert share(port, token, BURST)["status"] == "accepted"
    wait_for(port, f"/certificates/{BURST}", lambda b: b["chain_length"] == 5,
             pipeline=pipeline)  # projected with the acquisitions of the same commands
    assert sorted(pending(port, a, token) for a, token in burst) == [0, 0, 0, 100, 100]

    # review: an honest sharer's commission is held; a sharer with no role may not
    # decline it, nor may the seller approve (only a reviewer clears a flag)
    share(port, honest[1][1], REVIEW)
    assert share(port, sharer_token, REVIEW)["status"] == "accepted"
    pipeline.send(c.Purchase(command_id="capture:stand-2", certificate_id=REVIEW,
                             at_ms=int(time.time() * 1000), account_id="dave",
                             **paid(REVIEW, 10_000, "stand-2")))
    wait_for(port, f"/certificates/{REVIEW}", lambda b: b["status"] == "purchased",
             pipeline=pipeline)
    decline = {"sharer_id": sharer, "reason": "self_referral", "note": "a friend of the buyer"}
    status, refused, _ = call(port, "POST", f"/certificates/{REVIEW}/decline", decline,
                              honest[1][1])
    assert (status, refused["error"]) == (403, "missing_role"), refused
    seller = login(port, "seller")
    status, refused, _ = call(port, "POST", f"/certificates/{REVIEW}/approve",
                              {"sharer_id": sharer}, seller)
    assert (status, refused["error"]) == (403, "missing_role"), refused
    status, sent, _ = call(port, "POST", f"/certificates/{REVIEW}/decline", decline, seller)
    assert status == 202, sent
    assert outcome(port, seller, sent["command_ids"][0])["status"] == "accepted"
    # the sharer sees why, on its own page
    deadline = time.monotonic() + 30
    while "declined in review: self_referral: a friend of the buyer" not in page(
            port, f"/page/accounts/{sharer}", sharer_token)[1]:
        assert time.monotonic() < deadline, "the sharer's page never said why"
        time.sleep(0.3)
    # the CSV export holds exactly the page's lines
    rows = gain_rows(page(port, f"/page/accounts/{sharer}", sharer_token)[1])
    status, text = page(port, f"/page/accounts/{sharer}/earnings.csv", sharer_token)
    exported = list(csv.DictReader(io.StringIO(text)))
    assert status == 200 and sorted(r["certificate_id"] for r in exported) == sorted(rows)
    assert {r["certificate_id"] for r in exported} == {RULES, REVIEW, NET}
    for r in exported:
        shown = rows[r["certificate_id"]]
        assert markup.escape(r["state"], quote=True) in shown, (r, shown)
        assert money(int(r["amount_minor"]), r["currency"]) in shown
        for cell in ("gross", "offset", "net"):
            amount = r[f"{cell}_minor"]
            assert (f"<td class='{cell}'>{money(int(amount), 'EUR') if amount else ''}</td>"
                    in shown), (cell, r, shown)
    # the reviewer's approval of a commission no flag keeps back: refused by the core
    reviewer = login(port, "reviewer")
    status, sent, _ = call(port, "POST", f"/certificates/{REVIEW}/approve",
                           {"sharer_id": honest[1][0]}, reviewer)
    assert status == 202, sent
    refused = outcome(port, reviewer, sent["command_ids"][0])
    assert (refused["status"], refused["reason"]) == ("rejected", "not_flagged"), refused
    report = pipeline.audit()
    assert report.ok, report.problems
    pipeline.assert_running()
