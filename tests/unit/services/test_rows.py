"""Table rows in the changelog (services/common/rows.py): head plus append-only segments.

For any command sequence, writing the changes after every accepted command into a
compacted topic (the last value of every key) and assembling it gives back the
state, byte for byte; a write sends the head and only the segments that changed.
"""

from __future__ import annotations

import msgspec
import pytest
from hypothesis import given
from hypothesis import strategies as st

from domain import Accepted, handle
from domain.draw import entropy_at
from schemas import commands as c
from services.common import rows
from services.common.rows import CorruptRow, RowStore, assemble, encode_row
from tests.unit.domain.scenario import DRAW_SECRET
from tests.unit.domain.test_properties import CERT, SETTINGS, T0, scenarios

pytestmark = pytest.mark.unit

encode = msgspec.msgpack.Encoder().encode
KEY = CERT.encode()


def apply(state, command):
    return handle(state, command, entropy_at(DRAW_SECRET, state, command.certificate_id))


def replay_into_changelog(commands, store: RowStore, compacted: dict[bytes, bytes],
                          state=None):
    """Apply the commands; after each accepted one, write its changes. Returns the
    state and the number of records each write sent."""
    sent = []
    for command in commands:
        outcome = apply(state, command)
        if isinstance(outcome, Accepted):
            state = outcome.state
            records = store.changes(KEY, state)
            compacted.update(records)
            sent.append(len(records))
            assert encode(assemble(compacted)[KEY]) == encode(state)
    return state, sent


@pytest.mark.parametrize("segment", [1, 3, rows.SEGMENT])
def test_compacted_changelog_assembles_to_the_state(segment):
    original = rows.SEGMENT
    rows.SEGMENT = segment
    try:
        check_round_trip()
    finally:
        rows.SEGMENT = original


@SETTINGS
@given(commands=scenarios(), data=st.data())
def check_round_trip(commands, data):
    compacted: dict[bytes, bytes] = {}
    state, _ = replay_into_changelog(commands, RowStore(), compacted)
    # a worker that restores from the changelog mid-way goes on writing where it stopped
    cut = data.draw(st.integers(3, len(commands)))
    halfway: dict[bytes, bytes] = {}
    first, _ = replay_into_changelog(commands[:cut], RowStore(), halfway)
    restored = RowStore()
    restored.restore(halfway)
    assert encode(restored.rows[KEY]) == encode(first)
    assert restored.written == {KEY: rows.lengths(first)}
    second, _ = replay_into_changelog(commands[cut:], restored, halfway,
                                      state=restored.rows[KEY])
    assert encode(second) == encode(state)
    assert encode(assemble(halfway)[KEY]) == encode(state)


def long_chain(hops: int) -> list[c.Command]:
    """One certificate whose pool never runs dry or withdraws: every hop gains."""
    cert = "seller~long-00001"
    base = {"certificate_id": cert, "at_ms": T0}
    commands = [
        c.IssueCertificate(command_id="issue", **base, account_id="seller",
                           offer_id="seller~long", serial=1, copies=1, name="x",
                           price_minor=10_000, currency="EUR", funder_id="funder"),
        c.AttachPool(command_id="attach", **base, account_id="funder", funding_ref="esc",
                     budget_minor=10_000_000, attached_minor=10_000_000, currency="EUR",
                     acquisition=c.AcquisitionPolicy(beneficiary="circulator", trigger="auto",
                                                     amount=c.FixedAmount(amount_minor=1)),
                     replenish=c.ReplenishNone(), thresholds=c.Thresholds()),
        c.ConfirmFunding(command_id="confirm", **base, funding_ref="esc",
                         amount_minor=10_000_000, currency="EUR"),
        c.PostCertificate(command_id="post", **base, account_id="seller"),
    ]
    for i in range(hops):
        commands.append(c.Circulate(command_id=f"share-{i}", **base, account_id=f"acct-{i}",
                                    via=None if i == 0 else f"acct-{i - 1}"))
    return commands


def final_state(commands):
    state = None
    for command in commands:
        outcome = apply(state, command)
        assert isinstance(outcome, Accepted), outcome
        state = outcome.state
    return state


def test_a_write_sends_the_head_and_only_the_segments_that_changed():
    commands = long_chain(40 * rows.SEGMENT)
    store = RowStore()
    compacted: dict[bytes, bytes] = {}
    state = None
    biggest_write = 0
    for command in commands:
        outcome = apply(state, command)
        assert isinstance(outcome, Accepted), outcome
        state = outcome.state
        key = state.certificate_id.encode()
        records = store.changes(key, state)
        compacted.update(records)
        biggest_write = max(biggest_write, sum(len(v) for _, v in records))
    whole = len(encode(state))
    assert encode(assemble(compacted)[state.certificate_id.encode()]) == encode(state)
    # head + at most two segments per part, however long the chain: a fraction of the row
    assert biggest_write * 5 < whole, (biggest_write, whole)


def test_a_missing_segment_is_refused_not_guessed():
    state = final_state(long_chain(3 * rows.SEGMENT))
    key = state.certificate_id.encode()
    records, _ = encode_row(key, state, None)
    compacted = dict(records)
    assert encode(assemble(compacted)[key]) == encode(state)
    del compacted[key + b"#h1"]
    with pytest.raises(CorruptRow, match="segment 1 is missing"):
        assemble(compacted)


def test_a_shrinking_part_is_a_bug():
    state = final_state(long_chain(5))
    key = state.certificate_id.encode()
    _, written = encode_row(key, state, None)
    state.chain.pop()
    with pytest.raises(CorruptRow, match="shrank"):
        encode_row(key, state, written)
