"""What a certificate page says about whose shares count (issue #24, rule 4)."""

from __future__ import annotations

import pytest

from services.api.pages import age_words, who_counts

pytestmark = pytest.mark.unit


def test_the_page_says_which_accounts_count_in_words():
    assert who_counts({}) == "accounts new to this certificate, not its seller or funder"
    assert who_counts({"min_account_age_s": 86_400, "verified_only": True}) == (
        "accounts new to this certificate, not its seller or funder, at least 1 day old, "
        "verified")
    assert [age_words(s) for s in (1, 4, 60, 7_200, 90, 172_800)] == [
        "1 second", "4 seconds", "1 minute", "2 hours", "90 seconds", "2 days"]
