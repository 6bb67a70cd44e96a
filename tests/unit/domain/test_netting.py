"""Clawbacks recovered from the account's later payouts (domain/netting.py)."""

from __future__ import annotations

import itertools

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from domain.netting import AccountLedger, NettingViolation, net, replay
from schemas.payments import BudgetRelease, BuyerRefund, Clawback, CommissionPayout, SellerPayment

_ids = itertools.count()


def base(cid: str, payee: str, amount: int, currency: str = "USD", attempt: int = 1,
         sid: str | None = None) -> dict:
    n = next(_ids)
    return dict(settlement_id=sid or f"{n:032x}", certificate_id=cid, command_id=f"cmd-{n}",
                seq=n + 1, at_ms=1_000 + n, funding_ref="f", currency=currency,
                amount_minor=amount, attempt=attempt, payee_id=payee)


def payout(cid, payee, amount, **kw) -> CommissionPayout:
    return CommissionPayout(**base(cid, payee, amount, **kw))


def clawback(cid, payee, amount, **kw) -> Clawback:
    return Clawback(**base(cid, payee, amount, **kw), refund_ref="r", of_kind="commission_payout")


def test_a_clawback_is_recovered_from_the_next_payout_on_another_certificate():
    debit = clawback("c1", "amy", 30)
    ledgers, out = replay([debit, payout("c2", "amy", 100), payout("c3", "amy", 100)])
    assert out[0] == debit  # the debit itself is published as it is
    assert (out[1].amount_minor, out[1].gross_minor, out[1].offset_minor) == (70, 100, 30)
    assert (out[2].amount_minor, out[2].gross_minor, out[2].offset_minor) == (100, 100, 0)
    assert ledgers["amy"].outstanding == {"USD": 0}
    assert ledgers["amy"].recovered == {"USD": 30} and ledgers["amy"].clawed_back == {"USD": 30}


def test_a_debt_larger_than_a_payout_takes_all_of_it_and_the_rest_from_the_next():
    _, out = replay([clawback("c1", "amy", 150), payout("c2", "amy", 100),
                     payout("c3", "amy", 80)])
    assert [(s.amount_minor, s.offset_minor) for s in out[1:]] == [(0, 100), (30, 50)]


def test_a_seller_repays_a_clawed_back_price_from_its_next_sale():
    seller = SellerPayment(**base("c2", "sam", 900), payer_id="bob", payment_ref="p")
    _, out = replay([Clawback(**base("c1", "sam", 400), refund_ref="r", of_kind="seller_payment"),
                     seller])
    assert (out[1].amount_minor, out[1].gross_minor, out[1].offset_minor) == (500, 900, 400)


def test_a_later_attempt_carries_the_first_attempts_offset_whatever_the_balance_now():
    first = payout("c2", "amy", 100, sid="a" * 32)
    clean = payout("c3", "amy", 50, sid="b" * 32)
    _, out = replay([
        clean,  # no debt yet: offset 0
        clawback("c1", "amy", 30),
        first,  # takes 30
        clawback("c4", "amy", 500),
        msgspec.structs.replace(first, attempt=2),  # the same 30, not more
        msgspec.structs.replace(clean, attempt=2),  # still 0, though 500 is owed now
    ])
    assert [(s.attempt, s.amount_minor, s.offset_minor) for s in out if s.payee_id == "amy"
            and isinstance(s, CommissionPayout)] == [(1, 50, 0), (1, 70, 30), (2, 70, 30),
                                                      (2, 50, 0)]


def test_a_clawback_published_again_is_owed_once():
    debit = clawback("c1", "amy", 30)
    ledgers, _ = replay([debit, msgspec.structs.replace(debit, attempt=2)])
    assert ledgers["amy"].outstanding == {"USD": 30}


def test_currencies_are_never_mixed_and_other_settlements_pass_unchanged():
    release = BudgetRelease(**base("c2", "amy", 100), reason="purchase")
    refund = BuyerRefund(**base("c2", "amy", 100), payment_ref="p", refund_ref="r")
    _, out = replay([clawback("c1", "amy", 30, currency="EUR"), release, refund,
                     payout("c3", "amy", 100)])
    assert out[1:3] == [release, refund]
    assert (out[3].amount_minor, out[3].offset_minor) == (100, 0)


def test_a_ledger_applied_to_another_account_is_refused():
    ledger = AccountLedger(account_id="amy")
    with pytest.raises(NettingViolation):
        net(ledger, payout("c1", "bob", 10))


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["claw", "pay", "retry"]),
                          st.sampled_from(["amy", "bob"]), st.sampled_from(["USD", "EUR"]),
                          st.integers(0, 500)), max_size=40))
def test_offsets_never_exceed_what_was_clawed_back_and_every_payout_adds_up(steps):
    settlements, paid = [], []
    for i, (kind, account, currency, amount) in enumerate(steps):
        if kind == "claw":
            settlements.append(clawback(f"c{i}", account, max(amount, 1), currency=currency))
        elif kind == "pay":
            paid.append(payout(f"c{i}", account, amount, currency=currency))
            settlements.append(paid[-1])
        elif paid:
            settlements.append(msgspec.structs.replace(paid[amount % len(paid)],
                                                       attempt=2 + amount % 2))
    ledgers, out = replay(settlements)
    offsets: dict = {}
    firsts: dict = {}
    for s in out:
        if isinstance(s, CommissionPayout):
            assert s.amount_minor >= 0 and s.amount_minor + s.offset_minor == s.gross_minor
            if s.settlement_id in firsts:  # every attempt: the same amounts
                assert (s.amount_minor, s.offset_minor) == firsts[s.settlement_id]
            else:
                firsts[s.settlement_id] = (s.amount_minor, s.offset_minor)
                key = (s.payee_id, s.currency)
                offsets[key] = offsets.get(key, 0) + s.offset_minor
    for (account, currency), taken in offsets.items():
        ledger = ledgers[account]
        assert taken == ledger.recovered.get(currency, 0)
        assert taken <= ledger.clawed_back.get(currency, 0)
        assert ledger.clawed_back.get(currency, 0) == taken + ledger.outstanding.get(currency, 0)
    # and a debt is recovered as soon as a payout can take it: nothing owed while a
    # later first attempt in that currency paid more than 0
    for account, ledger in ledgers.items():
        for currency, owed in ledger.outstanding.items():
            if owed:
                last_claw = max(i for i, s in enumerate(settlements)
                                if isinstance(s, Clawback) and s.payee_id == account
                                and s.currency == currency)
                assert all(s.amount_minor == 0 for s in out[last_claw:]
                           if isinstance(s, CommissionPayout) and s.payee_id == account
                           and s.currency == currency and s.attempt == 1)


def test_the_ledger_given_is_never_changed():
    ledger, _ = net(None, clawback("c1", "amy", 30))
    before = msgspec.msgpack.decode(msgspec.msgpack.encode(ledger), type=AccountLedger)
    after, _ = net(ledger, payout("c2", "amy", 100))
    assert ledger == before and after.outstanding == {"USD": 0}
    same, _ = net(after, payout("c3", "amy", 10))  # nothing owed: nothing changes
    assert same is after
