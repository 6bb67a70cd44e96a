"""The audit's check of the netting hop (services/audit/netting.py)."""

from __future__ import annotations

import msgspec

from domain.netting import replay
from services.audit.netting import check_netting
from tests.unit.domain.test_netting import clawback, payout

encode = msgspec.json.Encoder().encode


def topics(settlements, partition=0):
    """(settlements topic records, honest payments)"""
    records = [(partition, i, encode(s)) for i, s in enumerate(settlements)]
    return records, [encode(s) for s in replay(settlements)[1]]


def test_honest_netting_reconciles_and_each_way_of_cheating_is_reported():
    settlements = [clawback("c1", "amy", 30), payout("c2", "amy", 100), payout("c3", "bob", 5)]
    records, payments = topics(settlements)
    assert check_netting(records, payments) == []
    # paid in full although amy owes 30
    full = msgspec.structs.replace(settlements[1], gross_minor=100, offset_minor=0)
    forged, lost = check_netting(records, [payments[0], encode(full), payments[2]])
    assert "not the netting of a settlement" in forged and "missing from payments" in lost
    # a payment twice
    problems = check_netting(records, [*payments, payments[1]])
    assert len(problems) == 1 and "again" in problems[0]
    # a netted payout missing from payments
    [problem] = check_netting(records, payments[:2])
    assert "missing from payments" in problem


def test_a_settlement_beyond_nettings_position_may_still_be_on_its_way():
    records, payments = topics([payout("c2", "amy", 100), payout("c3", "amy", 7)])
    assert check_netting(records, payments[:1], done={0: 1}) == []
    assert check_netting(records, payments[:1], done={0: 2}) != []


def test_offsets_are_checked_without_the_core_too():
    # a payments topic whose payouts do not add up, or take more than was clawed back,
    # is reported even when the settlements topic was forged to match it
    bad = msgspec.structs.replace(payout("c2", "amy", 100), amount_minor=60, gross_minor=100,
                                  offset_minor=30)
    problems = check_netting([(0, 0, encode(payout("c2", "amy", 100)))], [encode(bad)])
    assert any("pays 60 with offset 30 of gross 100" in p for p in problems)
    greedy = msgspec.structs.replace(payout("c2", "amy", 100), amount_minor=70, gross_minor=100,
                                     offset_minor=30)
    problems = check_netting([], [encode(greedy)])
    assert any("30 offset from payouts, only 0 clawed back" in p for p in problems)


def test_a_record_written_before_a_field_was_added_is_the_same_settlement():
    """Fields are only added, with defaults (schemas/payments.py): a payout on
    ``payments`` from before ``reissue_of`` existed lacks it, and is still the netting
    of its settlement (found by `make run` on a broker kept from an earlier version)."""
    records, payments = topics([clawback("c1", "amy", 30), payout("c2", "amy", 100)])
    older = [msgspec.json.encode({k: v for k, v in msgspec.json.decode(raw).items()
                                  if k not in ("reissue_of", "cancels")}) for raw in payments]
    assert older != payments  # the fields are really gone from the older records
    assert check_netting(records, older) == []
