"""The share tree SVG: how a certificate was shared, the viewer's own gain (others
unnamed, counted by status), and a 500-hop chain summarised to a readable picture."""

from __future__ import annotations

import xml.etree.ElementTree as ET

import pytest

from schemas import commands as c
from services.api.gains import PHRASES, gain_of, phrase
from services.api.tree import MAX_NODES, counts_line, share_tree_svg
from tests.unit.domain.scenario import Scenario

pytestmark = pytest.mark.unit
SVG = "{http://www.w3.org/2000/svg}"


def drawn(svg: str) -> list[tuple[str, str]]:
    root = ET.fromstring(svg)  # well-formed XML, or this raises
    return [(g.get("data-account"), " ".join(t.text or "" for t in g.iter(f"{SVG}text")))
            for g in root.iter(f"{SVG}g")]


def nodes(svg: str) -> dict[str, str]:
    """The named nodes (the catalogue and the viewer) by name."""
    return {name: text for name, text in drawn(svg) if name}


def test_the_viewer_sees_its_own_gain_and_others_only_as_unnamed_nodes():
    s = Scenario()
    s.setup(price_minor=10_000, budget_minor=1_000, attached_minor=300,
            acquisition=c.AcquisitionPolicy(amount=c.FixedAmount(amount_minor=100)))
    s.circulate("ann")
    s.circulate("bob", via="ann")
    s.circulate("cy", via="ann")
    s.circulate("ann", via="cy")  # a repeat: ann stays where she first joined
    svg = share_tree_svg(s.state, "ann")
    assert nodes(svg) == {"catalogue": "catalogue 3 accounts", "ann": "ann 1.00 USD pending"}
    others = [text for name, text in drawn(svg) if not name]
    assert others == ["an account", "an account"]  # bob and cy: no name, no amount
    assert "bob" not in svg and "cy" not in svg and svg.count("1.00 USD") == 1
    assert counts_line(s.state) == "3 accounts shared it: 3 pending"
    assert len(list(ET.fromstring(svg).iter(f"{SVG}line"))) == 3  # catalogue-ann, ann-bob, ann-cy
    # a visitor outside the chain (or logged out) sees no name and no amount at all
    for viewer in (None, "mallory"):
        anonymous = share_tree_svg(s.state, viewer)
        assert nodes(anonymous) == {"catalogue": "catalogue 3 accounts"}
        assert "USD" not in anonymous and "ann" not in anonymous


def test_a_chain_of_500_hops_is_summarised():
    s = Scenario()
    s.setup(price_minor=10_000, budget_minor=100_000, attached_minor=300,
            acquisition=c.AcquisitionPolicy(amount=c.FixedAmount(amount_minor=1)))
    for i in range(500):  # a long line of shares, and a few fans
        s.circulate(f"u{i}", via=f"u{i - 1}" if i % 7 else None)
    svg = share_tree_svg(s.state)
    got = drawn(svg)
    assert len(got) == MAX_NODES + 1  # the accounts drawn, and the catalogue
    hidden = [text for _, text in got if "more below" in text]
    assert hidden  # what was not drawn is counted where it hangs
    assert len(svg) < 60_000


def test_the_longest_chain_allowed_draws_without_deep_recursion():
    s = Scenario()
    s.setup(price_minor=10_000, budget_minor=100_000, attached_minor=300,
            acquisition=c.AcquisitionPolicy(amount=c.FixedAmount(amount_minor=1)))
    for i in range(3_000):  # one straight line of shares: 3,000 levels deep
        s.circulate(f"u{i}", via=f"u{i - 1}" if i else None)
    got = nodes(share_tree_svg(s.state, "u39"))
    assert got["u39"].endswith("+2960 more below")


def test_the_tree_and_the_account_page_say_the_same_of_a_clawed_back_gain():
    s = Scenario()
    s.setup(price_minor=10_000, budget_minor=1_000, attached_minor=300,
            acquisition=c.AcquisitionPolicy(amount=c.FixedAmount(amount_minor=100)))
    s.circulate("ann")
    s.purchase()  # no hold: paid at once
    # after the hold only the payment system's chargeback claws commission back
    s.must(c.Refund, by="payment_system", amount_minor=5_000, refund_ref="rf-1",
           chargeback_reason="fraudulent")
    assert gain_of(s.state, "ann") == (50, "clawed")  # paid 100, half clawed back
    assert nodes(share_tree_svg(s.state, "ann"))["ann"] == "ann 0.50 USD paid, part clawed"
    assert PHRASES["clawed"] == "paid out (part clawed back by a chargeback)"


def test_a_gain_says_whether_it_is_in_review_declined_or_locked():
    s = Scenario()
    s.setup(price_minor=10_000, budget_minor=1_000, attached_minor=300, hold_s=3_600,
            acquisition=c.AcquisitionPolicy(amount=c.FixedAmount(amount_minor=100)))
    for account in ("ann", "bea", "cy"):
        s.circulate(account)
    s.must(c.FlagCommission, sharer_id="bea", rule="burst")
    assert gain_of(s.state, "bea") == (100, "flagged")
    s.purchase()
    s.must(c.DeclineCommission, account_id="seller", sharer_id="cy", reason="self_referral")
    assert [gain_of(s.state, a) for a in ("ann", "bea", "cy")] == [
        (100, "held"), (100, "flagged"), (100, "declined")]
    s.advance(3_600_000)
    s.must(c.ReleaseHold)
    assert [gain_of(s.state, a) for a in ("ann", "bea")] == [(100, "paid"), (100, "kept_back")]
    assert "locked" in PHRASES["paid"] and "reviewer" in PHRASES["kept_back"]
    assert phrase(s.state, "cy", "declined") == "declined in review: self_referral"
    assert nodes(share_tree_svg(s.state, "bea"))["bea"] == "bea 1.00 USD in review"
