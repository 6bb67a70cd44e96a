"""The console's pure parts (issue #27): program figures from certificate states
(per currency, never mixed), what a share earns in words, amounts typed by people,
the CSV (no formula injection), the chart, and an outcome in words."""

from __future__ import annotations

import time

import pytest

from domain import CertificateState
from domain.state import Hop, Pool
from schemas import commands as c
from services.api.outcomes import outcome_message
from services.api.program import (
    acquisition_from_form,
    buckets,
    chart_svg,
    csv_of,
    figures_of,
    funding_words,
    parse_amount,
    pool_from_form,
    share_earns_words,
)

pytestmark = pytest.mark.unit
T = 1_700_000_000_000


def state(cid: str, currency: str = "EUR", *, bought: bool = False, **pool) -> CertificateState:
    """A posted copy shared by ann then ben (ann via the catalogue, ben via ann); ann
    acquired 200, ben 100; bought: both held."""
    s = CertificateState(certificate_id=cid, offer_id=cid.rpartition("-")[0], serial=1,
                         seller_id="sel", price_minor=4_500, currency=currency,
                         status="purchased" if bought else "posted", posted_at_ms=T,
                         chain=[Hop("ann", None, T + 1_000), Hop("ben", "ann", T + 2_000)])
    s.pool = Pool(funder_id="sel", funding_ref="f", budget_minor=2_000,
                  initial_attached_minor=500, attached_minor=500, reserve_minor=1_200,
                  acquisition=c.AcquisitionPolicy(), replenish=c.ReplenishMatch(),
                  thresholds=c.Thresholds(), funding_confirmed=True,
                  acquired={"ann": 200, "ben": 100}, pending_minor=300, **pool)
    if bought:
        s.purchased_at_ms, s.held_until_ms = T + 3_000, T + 10**9
        s.pool.pending_minor, s.pool.held_minor = 0, 300
        s.pool.attached_minor, s.pool.reserve_minor, s.pool.released_minor = 0, 0, 1_700
        s.pool.payouts = {"ann": 200, "ben": 100}
    return s


def test_figures_are_per_currency_and_add_up_to_the_budget():
    figs = figures_of([state("sel~a-00001", bought=True), state("sel~a-00002"),
                       state("sel~b-00001", "USD")])
    assert list(figs) == ["EUR", "USD"]  # never one sum over two currencies
    eur = figs["EUR"]
    assert (eur.copies, eur.funded, eur.shares, len(eur.sharers), eur.purchases) == (
        2, 2, 4, 2, 1)
    assert (eur.pending, eur.held, eur.paid, eur.spent, eur.left, eur.returned) == (
        300, 300, 0, 300, 1_700, 1_700)
    assert eur.budget == eur.left + eur.pending + eur.spent + eur.returned
    assert eur.conversion == "25.0 %" and eur.cost_per_sale == 300
    # ann: 2 shares, 200 held + 200 pending; ben the same less 100 each
    assert eur.top_sharers() == [("ann", 2, 400), ("ben", 2, 200)]
    usd = figs["USD"]
    assert (usd.copies, usd.purchases, usd.cost_per_sale, usd.conversion) == (1, 0, None, "0.0 %")
    assert figures_of([]) == {}


def test_the_funding_state_in_words_follows_the_copy():
    s = state("sel~a-00001")
    assert funding_words(s) == "funded: the budget is held in escrow"
    s.pool.funding_confirmed = False
    assert funding_words(s).startswith("not funded yet")
    assert funding_words(state("sel~a-00002", bought=True)).startswith(
        "funded: the commission earned is held")
    s.pool = None
    assert funding_words(s) == "no pool attached"


def test_a_declined_commission_is_no_sharers_gain():
    s = state("sel~a-00001", bought=True)
    s.pool.declined = {"ann": 200}
    assert figures_of([s])["EUR"].top_sharers() == [("ben", 1, 100), ("ann", 1, 0)]


def test_what_one_share_earns_in_words():
    words = lambda amount: share_earns_words(amount, 500, 2_000, "EUR")  # noqa: E731
    assert words(c.FixedAmount(amount_minor=200)) == (
        "Each share that counts earns a fixed 2.00 EUR; 5.00 EUR on show, topped up from a "
        "budget of 20.00 EUR: about 10 shares earn before the budget runs out.")
    assert words(c.FixedAmount(amount_minor=900)).startswith(
        "Each share that counts earns a fixed 5.00 EUR (capped at the 5.00 EUR on show)")
    assert words(c.PercentOfAttached(basis_points=2_550)).startswith(
        "Each share that counts earns 25.5 % of what is on show: 1.27 EUR of 5.00 EUR;")
    assert "nothing" in share_earns_words(c.PercentOfAttached(basis_points=1), 50, 100, "EUR")
    said = words(c.RandomAmount(min_minor=100, max_minor=300))
    assert "from 1.00 EUR to 3.00 EUR, every amount equally likely" in said
    assert "odds of 1 in 201" in said and "between 6 and 20 shares" in said
    assert words(c.AllAttached()).startswith(
        "The first share that counts takes everything on show, 5.00 EUR")
    assert share_earns_words(c.FixedAmount(amount_minor=200), 500, 2_000, "JPY").startswith(
        "Each share that counts earns a fixed 200 JPY")


def test_amounts_typed_by_people_are_exact_or_refused():
    assert parse_amount("45", "EUR") == 4_500
    assert parse_amount(" 1,234.5 ", "EUR") == 123_450
    assert parse_amount("1000", "JPY") == 1_000
    assert parse_amount("0.001", "BHD") == 1
    for bad, currency in (("1.234", "EUR"), ("1.5", "JPY"), ("0", "EUR"), ("-1", "EUR"),
                          ("abc", "EUR"), ("", "EUR"), ("NaN", "EUR"), ("1e30", "EUR")):
        with pytest.raises(ValueError):
            parse_amount(bad, currency)
    form = {"budget": "20", "attached": "5", "earn": "random", "earn_min": "1",
            "earn_max": "3", "max_shares": "10"}
    pool = pool_from_form(form, "EUR")
    assert (pool.budget_minor, pool.attached_minor, pool.max_shares) == (2_000, 500, 10)
    assert pool.amount == c.RandomAmount(min_minor=100, max_minor=300)
    assert pool.words("EUR").endswith("withdrawn after 10 shares that count.")
    assert acquisition_from_form({"earn": "percent", "earn_percent": "12.5"}, "EUR") == (
        c.PercentOfAttached(basis_points=1_250))
    assert acquisition_from_form({"earn": "all"}, "EUR") == c.AllAttached()
    for bad in ({**form, "attached": "21"}, {**form, "earn_min": "4"},
                {**form, "max_shares": "x"}, {**form, "earn": "lots"},
                {**form, "earn": "percent", "earn_percent": "101"}):
        with pytest.raises(ValueError):
            pool_from_form(bad, "EUR")


def test_the_csv_has_one_row_per_copy_in_minor_units_and_no_formulas():
    text = csv_of([state("sel~a-00001", bought=True)], {"sel~a": "=HYPERLINK(\"x\")"})
    header, row = text.strip().split("\r\n")
    assert header.split(",")[:3] == ["certificate_id", "offer_id", "name"]
    assert row == ("sel~a-00001,sel~a,\"'=HYPERLINK(\"\"x\"\")\",purchased,EUR,4500,"
                   "confirmed,2,2,1,2000,0,300,0,0,300,0,1700")


def test_the_chart_counts_per_bucket_and_is_plain_svg():
    size, first, (shares, bought) = buckets([[0, 60_000, 61_000], [120_000]], 180_000)
    assert (size, first, shares, bought) == (60_000, 0, [1, 2, 0, 0], [0, 0, 1, 0])
    # a week of traffic: hourly is too many bars, so days
    size, _, (week,) = buckets([[0, 6 * 86_400_000]], 7 * 86_400_000)
    assert size == 86_400_000 and sum(week) == 2
    svg = chart_svg([T, T + 1_000], [T + 2_000], T + 3_000)
    assert svg.startswith("<svg id='chart'") and svg.count("<rect") == 2
    assert "style=" not in svg and "<script" not in svg
    # its dates: UTC without script, the instant for the script to show in local time
    stamp = time.strftime("%Y-%m-%d %H:%M", time.gmtime(T / 1000 - T / 1000 % 60))
    iso = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(T / 1000 - T / 1000 % 60))
    assert f"data-datetime='{iso}'>{stamp} UTC</text>" in svg, svg


def test_an_outcome_is_said_in_words_never_as_a_bare_code():
    assert outcome_message("Post", [{"status": "accepted"}]) == ("ok", "Post: done.")
    assert outcome_message("Post", [{}]) == (
        "pending", "Post: sent; 0 of 1 applied so far (this page updates itself).")
    kind, text = outcome_message("Post", [{"status": "rejected",
                                           "reason": "funding_not_confirmed"}])
    assert kind == "refused" and text == (
        "Post: refused: the pool is not funded yet: hold its budget in escrow first.")
    assert outcome_message("Create", [{"status": "accepted"}, {"status": "rejected",
                                                               "reason": "odd_thing"}]) == (
        "refused", "Create: refused: odd thing (1 of 2 done).")
