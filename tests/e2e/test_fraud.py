"""The fraud stage on the real pipeline (issue #24, rule 3): a burst of fresh accounts
acquiring on one seller's certificate is flagged by the running fraud stage, the
flagged commissions are kept back at the end of the hold while honest sharers are
paid, a reviewer's approval pays one, a reviewer's decline voids another back to the
funder, and the audit passes. Amounts by hand: 100 per sharer, price 10,000."""

from __future__ import annotations

import time
from collections import Counter

import msgspec

from schemas import commands as c
from schemas.events import CommissionFlagged, Event, HoldReleased
from schemas.payments import BudgetRelease, CommissionPayout, Settlement
from tests.e2e.certificates import cert_id, paid, setup

decode_event = msgspec.json.Decoder(Event).decode
decode_settlement = msgspec.json.Decoder(Settlement).decode
MINUTE_MS = 60_000
DAY_MS = 86_400_000


def _until(pipeline, read, done, what: str, timeout_s: float = 60):
    deadline = time.monotonic() + timeout_s
    while True:
        got = read()
        if done(got):
            return got
        pipeline.assert_running()
        assert time.monotonic() < deadline, f"{what}: {got}; logs in {pipeline.logs}"
        time.sleep(0.3)


def test_a_burst_of_fresh_accounts_is_flagged_kept_back_and_reviewed(pipeline):
    pipeline.start_all()
    pipeline.start("fraud")
    t = int(time.time() * 1000)
    cid = cert_id("burst", seller="shady")
    burst = [f"fresh-{i}" for i in range(5)]  # created within 5 minutes, an hour ago
    share = lambda who, created_ms, via=None: c.Circulate(  # noqa: E731
        command_id=f"{cid}-{who}", certificate_id=cid, at_ms=t, account_id=who, via=via,
        account=c.AccountFacts(created_ms=created_ms, verified=False))
    pipeline.send(
        *setup(cid, t, price_minor=10_000, budget_minor=2_000, attached_minor=1_000,
               hold_s=1, acquisition=c.AcquisitionPolicy(amount=c.FixedAmount(amount_minor=100))),
        share("ann", t - 400 * DAY_MS),  # a long-standing account
        share("newbie", t - 2 * DAY_MS, via="ann"),  # fresh, but alone: no burst
        *(share(a, t - 60 * MINUTE_MS + i * MINUTE_MS, via="ann") for i, a in enumerate(burst)))

    def events() -> list:
        return [e for e in map(decode_event, pipeline.read(pipeline.topics.certificate_events))
                if e.certificate_id == cid]

    # the fraud stage reads allocation's feed and flags the five, by the burst rule;
    # the purchase waits for the flags (a flag after the hold's end comes too late)
    got = _until(pipeline, events, lambda got: sum(
        isinstance(e, CommissionFlagged) for e in got) >= 5, "flags")
    assert sorted((e.sharer_id, e.rule) for e in got if isinstance(e, CommissionFlagged)) == [
        (a, "fresh-burst") for a in burst]
    pipeline.send(c.Purchase(command_id=f"{cid}-buy", certificate_id=cid,
                             at_ms=int(time.time() * 1000), account_id="bea",
                             **paid(cid, 10_000)))

    # the hold (1 s) ends by the withdrawal timer: ann and newbie are paid, the five kept
    def settlements() -> list[Settlement]:
        return [s for s in map(decode_settlement, pipeline.read(pipeline.topics.payments))
                if s.certificate_id == cid]

    _until(pipeline, settlements, lambda got: sum(
        isinstance(s, CommissionPayout) for s in got) >= 2, "payouts")
    time.sleep(0.5)  # anything paid by mistake with the others would be there by now
    got = settlements()
    assert Counter((type(s).__name__, s.payee_id, s.amount_minor) for s in got) == Counter({
        ("BudgetRelease", "funder", 1_300): 1,  # 2,000 less the 7 acquisitions of 100
        ("SellerPayment", "shady", 10_000): 1,
        ("CommissionPayout", "ann", 100): 1, ("CommissionPayout", "newbie", 100): 1})
    released = [e for e in events() if isinstance(e, HoldReleased)]
    assert [(e.paid_out_minor, e.kept_back_minor) for e in released] == [(200, 500)]

    # a reviewer approves fresh-0 (paid now) and declines fresh-1 (back to the funder);
    # the seller may not approve its own sharers
    now = int(time.time() * 1000)
    pipeline.send(
        c.ApproveCommission(command_id=f"{cid}-seller-ok", certificate_id=cid, at_ms=now,
                            account_id="shady", sharer_id="fresh-2"),
        c.ApproveCommission(command_id=f"{cid}-ok", certificate_id=cid, at_ms=now,
                            account_id="rita", sharer_id="fresh-0", reviewer=True),
        c.DeclineCommission(command_id=f"{cid}-no", certificate_id=cid, at_ms=now,
                            account_id="rita", sharer_id="fresh-1", reason="fraud",
                            reviewer=True))
    _until(pipeline, settlements, lambda got: len(got) >= 6, "review settlements")
    time.sleep(0.5)
    got = settlements()[4:]
    assert sorted((type(s).__name__, s.payee_id, s.amount_minor) for s in got) == [
        ("BudgetRelease", "funder", 100), ("CommissionPayout", "fresh-0", 100)]
    assert next(s for s in got if isinstance(s, BudgetRelease)).reason == "declined"
    rejected = [msgspec.json.decode(r) for r in pipeline.read(pipeline.topics.rejections)]
    assert [r["reason"] for r in rejected if r.get("command_id") == f"{cid}-seller-ok"] == [
        "not_reviewer"]
    report = pipeline.audit()
    assert report.ok, report.problems
    pipeline.assert_running()
