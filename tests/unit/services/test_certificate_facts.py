"""What a certificate page says (issue #27.3), on states the domain core produced:
what one share earns now (checked against the next share's real acquisition), the
budget left, ended certificates offering nothing the core would refuse, why a share
earned nothing, outcomes in words, the catalogue grouped by currency; the live
updates' shared poller (issue #27.4); the share tree's text contrast."""

from __future__ import annotations

import asyncio

import msgspec
import pytest

from schemas import commands as c
from schemas.commands import AcquisitionPolicy
from services.api import live
from services.api.certfacts import (
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
from services.api.reads import summarise
from services.api.tree import COLOURS
from services.readmodel.projection import page
from tests.unit.domain.scenario import Scenario

pytestmark = pytest.mark.unit
NOW = 1_700_000_000_000


def summary(s: Scenario) -> dict:
    """The summary the API and pages read, from the read model's page of the state."""
    return summarise(s.state.certificate_id, page(s.state), s.now_ms)


def earns_of(s: Scenario):
    sm = summary(s)
    return share_earns(msgspec.convert(sm["acquisition"], AcquisitionPolicy),
                       sm["commission"]["amount_minor"], "USD", sm["pool_status"] == "open")


def acquired_by_next_share(s: Scenario, account: str) -> int:
    s.circulate(account)
    return s.state.pool.acquired.get(account, 0)


@pytest.mark.parametrize(("amount", "attached", "badge"), [
    (c.FixedAmount(amount_minor=200), 500, "2.00 USD"),  # the pool: not "5.00"
    (c.FixedAmount(amount_minor=200), 150, "1.50 USD"),  # less is attached than a share
    (c.PercentOfAttached(basis_points=2_500), 500, "1.25 USD"),
    (c.AllAttached(), 500, "5.00 USD"),
])
def test_what_one_share_earns_is_what_the_next_share_really_acquires(amount, attached, badge):
    s = Scenario()
    s.setup(price_minor=10_000, budget_minor=attached, attached_minor=attached,
            acquisition=c.AcquisitionPolicy(amount=amount),
            replenish=c.ReplenishNone())
    earns = earns_of(s)
    assert earns.badge == badge
    assert earns.low_minor == acquired_by_next_share(s, "ann")
    assert badge in earns.sentence


def test_a_random_amount_says_its_range_and_odds_and_the_cap_of_what_is_attached():
    s = Scenario()
    s.setup(price_minor=10_000, budget_minor=1_000, attached_minor=1_000,
            acquisition=c.AcquisitionPolicy(amount=c.RandomAmount(min_minor=100,
                                                                  max_minor=300)))
    earns = earns_of(s)
    assert earns.badge == "1.00 USD – 3.00 USD"
    assert earns.sentence == ("Each share that counts earns a random amount from 1.00 USD "
                              "to 3.00 USD, every amount equally likely (uniform): on "
                              "average 2.00 USD.")
    # only 2.00 attached: draws 200..300 (101 of 201 amounts) give 2.00
    capped = share_earns(msgspec.convert(summary(s)["acquisition"], AcquisitionPolicy),
                         200, "USD")
    assert capped.badge == "1.00 USD – 2.00 USD"
    assert "a draw above it gives 2.00 USD (a 50.2 % chance)" in capped.sentence
    assert share_earns(AcquisitionPolicy(amount=c.RandomAmount(min_minor=100, max_minor=300)),
                       50, "USD").badge == "0.50 USD"
    upstream = share_earns(AcquisitionPolicy(beneficiary="upstream", trigger="claim"), 300,
                           "USD")
    assert upstream.sentence == ("The account that shared it with you earns everything "
                                 "attached when it is claimed: 3.00 USD now.")
    assert share_earns(AcquisitionPolicy(), 300, "USD", pool_open=False).low_minor == 0


def test_the_budget_left_is_attached_and_reserve_not_the_attached_badge():
    s = Scenario()
    s.setup(price_minor=10_000, budget_minor=500, attached_minor=500,
            acquisition=c.AcquisitionPolicy(amount=c.FixedAmount(amount_minor=200)),
            replenish=c.ReplenishNone())
    s.circulate("ann")
    assert budget_left(summary(s)) == "3.00 USD of the 5.00 USD budget is left for sharers"
    assert earns_of(s).badge == "2.00 USD"
    s.purchase("bea")  # what is left goes back to the funder at once
    assert budget_left(summary(s)) == "0.00 USD of the 5.00 USD budget is left for sharers"


def test_ended_and_sold_certificates_offer_nothing_the_core_would_refuse():
    s = Scenario()
    s.setup(price_minor=10_000, budget_minor=500, attached_minor=200)
    s.circulate("ann")
    on_sale = summary(s)
    assert actions(on_sale, "bob", "seller") == ["circulate", "buy"]
    assert actions(on_sale, "ann", "seller") == ["buy"]  # the holder: already_holder
    assert actions(on_sale, "seller", "seller") == ["circulate"]  # buyer_is_seller
    assert actions(on_sale, None, "seller") == []
    assert status_words(s.state, on_sale) is None
    assert funding_words(on_sale).startswith("funding confirmed: the budget is held in escrow")
    s.must(c.CancelCertificate, account_id="seller")
    cancelled = summary(s)
    assert actions(cancelled, "bob", "seller") == []
    assert "escrow" not in funding_words(cancelled).replace("no longer in escrow", "")
    assert status_words(s.state, cancelled).startswith("Cancelled by the seller")
    # the core agrees: both would be refused
    assert s.refused(c.Circulate, account_id="bob").reason.value == "certificate_ended"

    sold = Scenario()
    sold.setup(price_minor=10_000, budget_minor=500, attached_minor=200)
    sold.circulate("ann")
    sold.purchase("carol")
    assert actions(summary(sold), "bob", "seller") == []
    assert status_words(sold.state, summary(sold)) == "Sold."
    assert sold.refused(c.Circulate, account_id="bob").reason.value == "certificate_purchased"


def test_a_withdrawn_pool_is_still_for_sale_but_offers_no_circulation():
    s = Scenario()
    s.setup(price_minor=10_000, budget_minor=500, attached_minor=100,
            thresholds=c.Thresholds(max_circulations=1))
    s.circulate("ann")  # meets the threshold: withdrawn before it acquires
    sm = summary(s)
    assert sm["pool_status"] == "withdrawn"
    assert actions(sm, "bob", "seller") == ["buy"]
    assert "withdrawn" in status_words(s.state, sm)
    assert why_no_gain(s.state, "ann").startswith("the commission was withdrawn")


def test_a_partial_refund_within_the_hold_is_said_as_such():
    s = Scenario()
    s.setup(price_minor=10_000, budget_minor=500, attached_minor=200, hold_s=3_600)
    s.circulate("ann")
    s.purchase("carol")
    s.must(c.Refund, by="seller", account_id="seller", amount_minor=2_500, refund_ref="rf-1")
    said = refund_words(s.state, summary(s))
    assert said == ("Partly refunded: 25.00 USD of the 100.00 USD price went back to the "
                    "buyer within the hold, so the held commission was reduced in the same "
                    "proportion (what was taken off went back to the funder).")


def test_why_a_share_earned_nothing():
    s = Scenario()
    s.setup(price_minor=10_000, budget_minor=1_000, attached_minor=100,
            acquisition=c.AcquisitionPolicy(amount=c.FixedAmount(amount_minor=10),
                                             max_depth=1))
    s.circulate("ann")
    s.circulate("bob", via="ann")  # level 2 of at most 1
    s.circulate("ann", via="bob")  # a repeat
    s.circulate("seller")
    assert why_no_gain(s.state, "ann") is None  # ann gained
    assert shared_again(s.state, "ann") and not shared_again(s.state, "bob")
    assert why_no_gain(s.state, "bob") == ("too deep: you came in at level 2 of sharing and "
                                           "only the first 1 earn")
    assert why_no_gain(s.state, "seller").startswith("the seller and the funder never earn")
    assert why_no_gain(s.state, "zed") is None  # not in the chain: nothing to explain


def test_a_commands_outcome_is_said_in_words_a_refusal_styled_as_one():
    assert outcome_words({"status": "accepted"}, "circulate") == (
        "Shared: the certificate is in your feed and you hold it now.", "ok")
    words, kind = outcome_words({"status": "rejected", "reason": "already_holder"},
                                "circulate")
    assert kind == "refused" and words.startswith("Not shared: you already hold")
    assert "already_holder" not in words
    assert outcome_words({"status": "rejected", "reason": "something_new"}, None) == (
        "Refused: something new.", "refused")
    assert outcome_words({}, "claim")[1] == "pending"


def test_the_catalogue_never_ranks_two_currencies_together():
    rows = [{"id": i, "price": {"currency": cur}} for i, cur in
            enumerate(["USD", "EUR", "USD", "JPY", "EUR"])]
    grouped = by_currency(rows)
    assert [(cur, [r["id"] for r in rs]) for cur, rs in grouped] == [
        ("EUR", [1, 4]), ("JPY", [3]), ("USD", [0, 2])]


def test_share_tree_text_meets_wcag_aa_contrast_on_white():
    def luminance(colour: str) -> float:
        channels = [int(colour[i:i + 2], 16) / 255 for i in (1, 3, 5)]
        lin = [x / 12.92 if x <= 0.03928 else ((x + 0.055) / 1.055) ** 2.4 for x in channels]
        return 0.2126 * lin[0] + 0.7152 * lin[1] + 0.0722 * lin[2]

    for status, colour in COLOURS.items():
        ratio = 1.05 / (luminance(colour) + 0.05)
        assert ratio >= 4.5, (status, colour, round(ratio, 2))


class _FakePipeline:
    def __init__(self, store: dict, calls: list) -> None:
        self.store, self.calls, self.ops = store, calls, []

    async def __aenter__(self):
        return self

    async def __aexit__(self, *exc):
        return False

    def hget(self, key, field):
        self.ops.append(self.store.get(key, {}).get(field))

    def hgetall(self, key):
        self.ops.append(dict(self.store.get(key, {})))

    async def execute(self):
        self.calls.append(len(self.ops))
        return self.ops


class _FakeRedis:
    def __init__(self) -> None:
        self.store: dict = {}
        self.calls: list = []

    def pipeline(self, transaction=False):
        return _FakePipeline(self.store, self.calls)


def test_one_poll_serves_every_watcher_and_wakes_only_those_whose_probe_changed():
    async def run():
        redis = _FakeRedis()
        redis.store = {"cert:a": {"seq": b"1"}, "cert:b": {"seq": b"7"}}
        hub = live.LiveHub(redis, poll_s=3600)
        with hub.watch([("cert:a", "seq")]) as w1, hub.watch([("cert:a", "seq")]) as w2, \
                hub.watch([("cert:b", "seq")]) as w3:
            hub.task.cancel()  # polled by hand here
            await hub.poll_once()
            for w in (w1, w2, w3):
                w.changed.clear()
            redis.store["cert:a"]["seq"] = b"2"
            await hub.poll_once()
            assert redis.calls == [2, 2]  # one round trip a poll, one read a certificate
            assert w1.changed.is_set() and w2.changed.is_set() and not w3.changed.is_set()
            loads = []

            async def load():
                loads.append(1)
                return "page"
            version = hub.version(("cert:a", "seq"))
            got = await asyncio.gather(*(hub.shared(("cert", "a"), version, load)
                                         for _ in range(50)))
            assert got == ["page"] * 50 and len(loads) == 1  # one load for 50 watchers
        assert hub.watchers == {}  # gone with their streams

    asyncio.run(run())


def test_a_stream_skips_what_the_page_already_shows_but_not_a_real_change():
    page_html = "<p>held by ann</p><span class='countdown' data-deadline='9'>5 s</span>"
    later = page_html.replace("5 s", "4 s")  # only the countdown ticked
    assert live.fingerprint(page_html) == live.fingerprint(later)
    assert live.fingerprint(page_html) != live.fingerprint(page_html.replace("ann", "bob"))
    block = live.block("/page/certificates/x/live", page_html, {"via": "ann", "sent": ""})
    assert f"?via=ann&amp;v={live.fingerprint(page_html)}'" in block
    assert live.event("update", "a\nb") == b"event: update\ndata: a\ndata: b\n\n"
