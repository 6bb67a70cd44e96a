"""The runner tunes one aiokafka internal (services/common/runner.py): the wait
after CONCURRENT_TRANSACTIONS, which aiokafka hard-codes to 20 ms. If an aiokafka
upgrade renames or drops it, this fails instead of every transaction silently
getting 20 ms slower again."""

from __future__ import annotations

import inspect

import pytest
from aiokafka.producer import sender

from services.common import runner

pytestmark = pytest.mark.unit


def test_the_concurrent_transactions_backoff_is_the_runners():
    assert sender.BACKOFF_OVERRIDE == runner.TXN_CONCURRENT_BACKOFF_MS / 1000
    # and aiokafka still reads it where it answers CONCURRENT_TRANSACTIONS
    source = inspect.getsource(sender.AddPartitionsToTxnHandler)
    assert "ConcurrentTransactions" in source and "BACKOFF_OVERRIDE" in source
