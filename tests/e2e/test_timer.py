"""The withdrawal timer fires on time when no message arrives for the certificate."""

from __future__ import annotations

import time

import msgspec

from schemas import commands as c
from schemas.events import Event, PoolWithdrawn, WithdrawalWarned
from schemas.payments import BudgetRelease, Settlement
from tests.e2e.certificates import cert_id, setup

decode_event = msgspec.json.Decoder(Event).decode
decode_settlement = msgspec.json.Decoder(Settlement).decode


def test_time_limit_withdraws_the_pool_without_any_further_message(pipeline):
    # the 1.5-s warning needs the timer running when the certificate is posted
    pipeline.start_all(ready=True)
    t = int(time.time() * 1000)
    cid = cert_id("timed")
    pipeline.send(
        *setup(cid, t, name="Lamp", price_minor=9_000, time_limit_s=3, budget_minor=2_000,
               attached_minor=400, thresholds=c.Thresholds(warn_at_bp=5_000)),
        c.Circulate(command_id="t-s1", certificate_id=cid, at_ms=t, account_id="ann"),
    )
    posted = time.time()
    events = [decode_event(r) for r in pipeline.wait_for(pipeline.topics.withdrawals, 2, 60)]
    warned, withdrawn = events
    assert isinstance(warned, WithdrawalWarned) and warned.threshold == "display_time"
    assert isinstance(withdrawn, PoolWithdrawn) and withdrawn.threshold == "display_time"
    assert withdrawn.voided_minor == 400 and withdrawn.released_minor == 2_000
    # the timer acted on time: 1.5 s and 3 s after posting, checked every 0.5 s
    assert 1_500 <= warned.at_ms - t <= 1_500 + 3_000
    assert 3_000 <= withdrawn.at_ms - t <= 3_000 + 3_000
    assert time.time() - posted < 30
    [release] = [decode_settlement(r) for r in pipeline.wait_for(pipeline.topics.payments, 1)]
    assert isinstance(release, BudgetRelease)
    assert (release.payee_id, release.amount_minor, release.reason) == ("funder", 2_000,
                                                                         "withdrawal")
    assert release.command_id.startswith("expire:")
