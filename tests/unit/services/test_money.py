"""Amounts on the pages use each currency's own minor unit, in integers."""

from __future__ import annotations

import pytest

from services.api.money import money

pytestmark = pytest.mark.unit


@pytest.mark.parametrize(("amount", "currency", "text"), [
    (250, "EUR", "2.50 EUR"),
    (5, "USD", "0.05 USD"),
    (123_456_789, "EUR", "1,234,567.89 EUR"),
    (1_234, "JPY", "1,234 JPY"),
    (1_234, "BHD", "1.234 BHD"),
    (7, "KWD", "0.007 KWD"),
    (10**15, "EUR", "10,000,000,000,000.00 EUR"),  # beyond what a float holds exactly
    (10**15 + 1, "JPY", "1,000,000,000,000,001 JPY"),
])
def test_money_uses_the_currencys_minor_unit(amount, currency, text):
    assert money(amount, currency) == text
