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


def writes(commands, store: RowStore):
    """Apply the commands (every one accepted) and write each one's changes:
    (state, records) after each."""
    state = None
    for command in commands:
        outcome = apply(state, command)
        assert isinstance(outcome, Accepted), outcome
        state = outcome.state
        yield state, store.changes(state.certificate_id.encode(), state)


def test_a_write_sends_the_head_and_only_the_segments_that_changed():
    commands = long_chain(40 * rows.SEGMENT)
    compacted: dict[bytes, bytes] = {}
    biggest_write = 0
    written = list(writes(commands, RowStore()))
    for _, records in written:
        compacted.update(records)
        biggest_write = max(biggest_write, sum(len(v) for _, v in records))
    state = written[-1][0]
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


def test_a_write_is_the_head_and_each_segment_that_filled_up_once():
    """The partly filled last segment of every part travels in the head: a write is
    one record, plus one for each segment that filled up since the last write (each
    full segment is sent exactly once)."""
    commands = long_chain(10 * rows.SEGMENT)
    compacted: dict[bytes, bytes] = {}
    before = rows.Lengths(0, 0, 0)
    sent_alone = 0
    for state, records in writes(commands, RowStore()):
        now = rows.lengths(state)
        filled = sum(a // rows.SEGMENT - b // rows.SEGMENT for a, b in zip(now, before,
                                                                            strict=True))
        assert len(records) == 1 + filled
        assert sorted(k for k, _ in records[1:]) == sorted(set(k for k, _ in records[1:]))
        assert all(k not in compacted for k, _ in records[1:]), "a full segment sent twice"
        compacted.update(records)
        sent_alone += len(records) == 1
        before = now
    assert encode(assemble(compacted)[state.certificate_id.encode()]) == encode(state)
    assert sent_alone >= len(commands) * 3 // 4  # most writes: one record


def _old_format(key, state, written):
    """What encode_row wrote before tails were in the head: every part's partly
    filled segment as a record of its own, rewritten on every write."""
    old = written or rows.Lengths(0, 0, 0)
    now = rows.lengths(state)
    head = msgspec.msgpack.encode([rows.head_of(state), *now])  # four fields: no tails
    records = [(key, head)]
    gains = {} if state.pool is None else state.pool.acquired
    for tag, items, before, count in ((b"h", state.chain, old.hops, now.hops),
                                      (b"a", list(state.applied.items()), old.applied,
                                       now.applied),
                                      (b"g", list(gains.items()), old.gains, now.gains)):
        if count == before:
            continue
        for n in range(before // rows.SEGMENT, (count - 1) // rows.SEGMENT + 1):
            chunk = list(items[n * rows.SEGMENT:(n + 1) * rows.SEGMENT])
            records.append((key + b"#" + tag + str(n).encode(), encode(chunk)))
    return records, now


def test_a_changelog_written_before_tails_restores_and_goes_on():
    """An upgrade: rows written in the old format (partial segments as records)
    assemble as before, and the new writes on top of them (tails in the head, the
    stale partial segment left until its full version replaces it) assemble to the
    state after every command."""
    commands = long_chain(5 * rows.SEGMENT + 3)
    cut = 4 + 2 * rows.SEGMENT + 5  # mid-segment
    compacted: dict[bytes, bytes] = {}
    state, written = None, None
    for command in commands[:cut]:
        outcome = apply(state, command)
        assert isinstance(outcome, Accepted), outcome
        state = outcome.state
        key = state.certificate_id.encode()
        records, written = _old_format(key, state, written)
        compacted.update(records)
    assert encode(assemble(compacted)[key]) == encode(state)
    store = RowStore()
    store.restore(compacted)
    # new writes on top, assembled after every command
    replay_into_changelog(commands[cut:], store, compacted, state=store.rows[key])


def test_tails_that_do_not_fit_the_lengths_are_refused():
    state = final_state(long_chain(rows.SEGMENT + 3))
    key = state.certificate_id.encode()
    records, _ = encode_row(key, state, None)
    compacted = dict(records)
    head = msgspec.msgpack.decode(compacted[key], type=rows.Head)
    head.tails[0].pop()  # a hop fewer than the head counts
    compacted[key] = encode(head)
    with pytest.raises(CorruptRow, match="tails"):
        assemble(compacted)
