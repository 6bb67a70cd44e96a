"""How a table row is stored in its changelog: a small head plus append-only segments.

A certificate's state grows with its traffic: the chain of hops, the command ids it
applied, and the accounts that gained. The core only ever appends to those three
(`members` and `depth` are derived from the chain). Rewriting the whole row on every batch made
the changelogs the bulk of what the broker wrote: in a 79,000-command benchmark run
242 MB of changelog against 75 MB for every other topic together, and the hot rows,
the largest ones (up to 177 kB), are the ones rewritten in nearly every batch.

So one row is several changelog records, all with the row's partition and all sent
in the same transaction:

    key            value (msgpack)
    {id}           Head: the state with those three parts empty, and their lengths
    {id}#h{n}      hops n*SEGMENT ... (n+1)*SEGMENT-1 of the chain
    {id}#a{n}      the same slice of the applied command ids, as (id, digest) pairs
    {id}#g{n}      the same slice of the gains, as (account, amount) pairs

A write sends the head and only the segments that changed since the row was last
written (the last, partly filled one and any new ones), however long the chain:
~600 B per command on the benchmark's traffic when every command is its own batch
(1,860 B with 32-item segments and a head with field names; segments of 8 keep the
rewritten part small, and restoring reads more, smaller records). ``#`` cannot occur in a certificate id (schemas.types.Id), so segment keys
never collide with row keys. Compaction keeps the last record of every key, which
is exactly the newest head and the newest version of every segment.
"""

from __future__ import annotations

from collections.abc import Iterable
from itertools import islice
from typing import NamedTuple

import msgspec

from domain import CertificateState
from domain.state import Hop

SEGMENT = 8
_SEP = b"#"
# Keys starting with "@" are the runner's own records in a changelog, not rows (no
# certificate id starts with "@", schemas.types.Id): the partition's position.
RUNNER_PREFIX = b"@"
POSITION_KEY = b"@position"

_encode = msgspec.msgpack.Encoder().encode


class Head(msgspec.Struct, array_like=True):
    state: CertificateState
    hops: int
    applied: int
    gains: int


_decode_head = msgspec.msgpack.Decoder(Head).decode
_decode_hops = msgspec.msgpack.Decoder(list[Hop]).decode
_decode_applied = msgspec.msgpack.Decoder(list[tuple[str, bytes]]).decode
_decode_gains = msgspec.msgpack.Decoder(list[tuple[str, int]]).decode


class Lengths(NamedTuple):
    """How many hops, applied ids and gains the changelog holds for a row."""

    hops: int
    applied: int
    gains: int


class CorruptRow(RuntimeError):
    """The changelog does not hold what a row's head says it holds."""


def lengths(state: CertificateState) -> Lengths:
    return Lengths(len(state.chain), len(state.applied),
                   0 if state.pool is None else len(state.pool.acquired))


def head_of(state: CertificateState) -> CertificateState:
    """The state without its append-only parts (what the head record holds)."""
    pool = state.pool
    return msgspec.structs.replace(
        state, chain=[], members={}, applied={}, depth={},
        pool=None if pool is None else msgspec.structs.replace(pool, acquired={}))


def _segments(tag: bytes, key: bytes, items: Iterable, written: int, now: int
              ) -> list[tuple[bytes, bytes]]:
    """The segments holding items written..now-1 of ``items`` (the first segment may
    be partly old: it is written whole)."""
    if now == written:
        return []
    first = written // SEGMENT
    it = islice(items, first * SEGMENT, None)
    out = []
    for n in range(first, (now - 1) // SEGMENT + 1):
        chunk = list(islice(it, SEGMENT))
        out.append((key + _SEP + tag + str(n).encode(), _encode(chunk)))
    return out


def encode_row(key: bytes, state: CertificateState, written: Lengths | None
               ) -> tuple[list[tuple[bytes, bytes]], Lengths]:
    """The changelog records that bring the row from ``written`` to ``state``."""
    old = written or Lengths(0, 0, 0)
    now = lengths(state)
    if now.hops < old.hops or now.applied < old.applied or now.gains < old.gains:
        raise CorruptRow(f"{key!r}: an append-only part shrank ({old} -> {now})")
    records = [(key, _encode(Head(head_of(state), *now)))]
    records += _segments(b"h", key, state.chain, old.hops, now.hops)
    records += _segments(b"a", key, state.applied.items(), old.applied, now.applied)
    if state.pool is not None:
        records += _segments(b"g", key, state.pool.acquired.items(), old.gains, now.gains)
    return records, now


def assemble(records: dict[bytes, bytes]) -> dict[bytes, CertificateState]:
    """Rows from the last value of every changelog key (as a compacted topic holds)."""
    heads: dict[bytes, Head] = {}
    parts: dict[bytes, dict[bytes, dict[int, bytes]]] = {}
    for key, value in records.items():
        if key.startswith(RUNNER_PREFIX):
            continue
        base, sep, rest = key.partition(_SEP)
        if not sep:
            heads[base] = _decode_head(value)
        else:
            parts.setdefault(base, {}).setdefault(rest[:1], {})[int(rest[1:])] = value
    rows = {}
    for key, head in heads.items():
        mine = parts.get(key, {})
        state = head.state
        state.chain = _collect(key, mine.get(b"h", {}), head.hops, _decode_hops)
        members: dict[str, int] = {}
        depth: dict[str, int] = {}
        for index, hop in enumerate(state.chain):
            members[hop.account_id] = index
            # the core gives an account the level of its first hop (domain.handlers)
            if hop.account_id not in depth:
                depth[hop.account_id] = 1 if hop.via is None else depth[hop.via] + 1
        state.members = members
        state.depth = depth
        state.applied = dict(_collect(key, mine.get(b"a", {}), head.applied, _decode_applied))
        gains = _collect(key, mine.get(b"g", {}), head.gains, _decode_gains)
        if state.pool is not None:
            state.pool.acquired = dict(gains)
        elif gains:
            raise CorruptRow(f"{key!r}: gains without a pool")
        rows[key] = state
    return rows


def _collect(key: bytes, segments: dict[int, bytes], count: int, decode) -> list:
    items: list = []
    for n in range((count + SEGMENT - 1) // SEGMENT):
        if n not in segments:
            raise CorruptRow(f"{key!r}: segment {n} is missing")
        items.extend(decode(segments[n]))
    if len(items) < count:
        raise CorruptRow(f"{key!r}: {len(items)} items where the head says {count}")
    return items[:count]


class RowStore:
    """One partition's rows and what the changelog holds of each."""

    def __init__(self) -> None:
        self.rows: dict[bytes, CertificateState] = {}
        self.written: dict[bytes, Lengths] = {}

    def restore(self, records: dict[bytes, bytes]) -> None:
        self.rows = assemble(records)
        self.written = {key: lengths(state) for key, state in self.rows.items()}

    def changes(self, key: bytes, state: CertificateState) -> list[tuple[bytes, bytes]]:
        records, self.written[key] = encode_row(key, state, self.written.get(key))
        return records


class WholeRowStore:
    """Rows of another kind (an account's ledger) kept whole: one changelog record per
    row, rewritten when it changes. For rows that stay small."""

    def __init__(self, row_type: type) -> None:
        self.rows: dict[bytes, object] = {}
        self._decode = msgspec.msgpack.Decoder(row_type).decode

    def restore(self, records: dict[bytes, bytes]) -> None:
        self.rows = {key: self._decode(value) for key, value in records.items()}

    def changes(self, key: bytes, row: object) -> list[tuple[bytes, bytes]]:
        return [(key, _encode(row))]
