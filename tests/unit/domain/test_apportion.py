"""Commission scaled down by refunds, without rounding against anyone
(domain/apportion.py)."""

from __future__ import annotations

from fractions import Fraction

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from domain.apportion import scaled


def seat_by_seat(acquired: dict[str, int], total: int) -> dict[str, int]:
    """D'Hondt as the textbook places it: ``total`` units one at a time, each where
    ``acquired / (given + 1)`` is largest, the earlier account on a tie. Slow, and
    independent of the module's shortcut (shares rounded down first, then a heap)."""
    given = dict.fromkeys(acquired, 0)
    order = list(acquired)
    for _ in range(total):
        best = max((a for a in order if acquired[a]),
                   key=lambda a: (Fraction(acquired[a], given[a] + 1), -order.index(a)))
        given[best] += 1
    return given


chains = st.dictionaries(st.text("abcdefgh", min_size=1, max_size=3),
                         st.integers(0, 60), min_size=1, max_size=12)


@settings(max_examples=400, deadline=None)
@given(chains, st.integers(1, 500), st.data())
def test_the_same_as_placing_unit_by_unit(acquired, price, data):
    left = data.draw(st.integers(0, price))
    total = sum(acquired.values()) * left // price
    assert scaled(acquired, left, price) == seat_by_seat(acquired, total)


@settings(max_examples=400, deadline=None)
@given(chains, st.integers(1, 10**6), st.lists(st.integers(0, 10**6), max_size=8))
def test_refunds_only_ever_take_away_and_never_more_than_the_proportion(
        acquired, price, refunds):
    """What the refund rule needs: the total rounded once, every account at least its
    own share rounded down and at most what it acquired, and across refunds that only
    add up, no account's part ever grows (its payout only shrinks, SPEC 9)."""
    whole = sum(acquired.values())
    refunded = 0
    before = dict(acquired)
    for amount in refunds:
        refunded = min(price, refunded + amount)
        left = price - refunded
        now = scaled(acquired, left, price)
        assert sum(now.values()) == whole * left // price
        for account, got in now.items():
            assert acquired[account] * left // price <= got <= acquired[account]
            assert got <= before[account], (account, before[account], got)
        before = now


def test_a_refund_of_one_unit_takes_the_proportion_not_a_unit_from_every_sharer():
    """The attacker's review: 1,000 sharers of 100 on a price of 10,000; a refund of 1
    within the hold took 1 from each (1,000 back to a seller who funds its own pool).
    Now 10 go back, the proportion, and no account loses more than one unit."""
    acquired = {f"s{i:04}": 100 for i in range(1_000)}
    now = scaled(acquired, 9_999, 10_000)
    assert sum(acquired.values()) - sum(now.values()) == 10
    assert sorted(set(now.values())) == [99, 100]
    # the ten who lose a unit: on a tie, the later in the chain (the first keep theirs)
    assert [a for a, v in now.items() if v == 99] == [f"s{i:04}" for i in range(990, 1_000)]


def test_nothing_refunded_is_everything_and_everything_refunded_is_nothing():
    acquired = {"ann": 7, "bob": 0, "cy": 13}
    assert scaled(acquired, 50, 50) == acquired
    assert scaled(acquired, 0, 50) == {"ann": 0, "bob": 0, "cy": 0}


def test_amounts_as_large_as_money_goes_are_exact():
    acquired = {"ann": 10**15 - 1, "bob": 3, "cy": 10**15 // 3}
    price = 10**15
    now = scaled(acquired, price - 1, price)
    assert sum(now.values()) == sum(acquired.values()) * (price - 1) // price
    assert all(acquired[a] * (price - 1) // price <= v <= acquired[a] for a, v in now.items())


@pytest.mark.parametrize("left,price", [(-1, 10), (11, 10), (0, 0)])
def test_a_left_outside_the_price_is_a_bug_not_a_split(left, price):
    with pytest.raises(ValueError):
        scaled({"ann": 1}, left, price)
