"""The read model's copy of each certificate's state in Redis: a hash of a small head
and append-only segments, as the stages keep their rows (services/common/rows.py).

Why not one msgpack value: the state grows with the certificate's chain (the
benchmark's traffic: 17 kB on average, 248 kB for the hottest certificate), and the
read model rewrote it whole for every certificate in every batch: at half the
pipeline's rate, in small batches, megabytes a second through the script, the AOF
and its fsync, most of it the hot certificates' unchanged chains. Now a batch writes
each certificate's head (~1 kB: the state without its chain, applied command ids
and gains, plus their partly filled last segments) and the segments that filled up
since the last write, each once.

    rm:{prefix}row:{cert}   hash: ``head`` -> rows.Head, ``h{n}``, ``a{n}``, ``g{n}``
                            -> full segments of the hops, applied ids and gains

The key shares its hash tag with ``cert:{cert}``, so the batch script writes it with
the page and the sequence check, in one slot. A state written before this format
(``state:{cert}``, one msgpack value) is still read, and the first batch that writes
the certificate again deletes it.
"""

from __future__ import annotations

import msgspec
import redis.asyncio as aioredis
from redis.asyncio.cluster import RedisCluster

from domain import CertificateState
from services.common.rows import Lengths, assemble, encode_row, lengths
from services.readmodel.projection import Keys

HEAD = "head"
_ROW = b"r"  # the row's name inside assemble(); segments are r#h0, r#a3, ...
_decode_whole = msgspec.msgpack.Decoder(CertificateState).decode


def row_key(keys: Keys, cid: str) -> str:
    return f"{keys.p}row:{{{cid}}}"


def encode(state: CertificateState, written: Lengths | None
           ) -> tuple[list[tuple[str, bytes]], Lengths]:
    """The hash fields that bring the copy in Redis from ``written`` (None: nothing
    known of it, every segment is written) to ``state``; and what it then holds."""
    records, now = encode_row(_ROW, state, written)
    return [(HEAD if k == _ROW else k[len(_ROW) + 1:].decode(), v) for k, v in records], now


def decode(fields: dict[bytes, bytes]) -> CertificateState:
    """A state from its hash (HGETALL); raises rows.CorruptRow on a missing segment."""
    records = {(_ROW if f == HEAD.encode() else _ROW + b"#" + f): v for f, v in fields.items()}
    return assemble(records)[_ROW]


async def load(client: aioredis.Redis | RedisCluster, keys: Keys, cids: list[str]
               ) -> dict[str, tuple[CertificateState | None, Lengths | None, bool]]:
    """Each certificate's copy: (state, what its hash holds, whether it was found in
    the former one-value format); (None, None, False) when Redis has none."""
    if not cids:
        return {}
    async with client.pipeline(transaction=False) as p:  # one round trip
        for cid in cids:
            p.hgetall(row_key(keys, cid))
            p.get(keys.state(cid))
        got = await p.execute()
    out: dict[str, tuple[CertificateState | None, Lengths | None, bool]] = {}
    for cid, fields, whole in zip(cids, got[::2], got[1::2], strict=True):
        if fields:
            state = decode(fields)
            out[cid] = (state, lengths(state), whole is not None)
        elif whole is not None:
            out[cid] = (_decode_whole(whole), None, True)
        else:
            out[cid] = (None, None, False)
    return out


async def load_one(client: aioredis.Redis | RedisCluster, keys: Keys, cid: str
                   ) -> CertificateState | None:
    """One certificate's state as the read model last projected it (the API's reads)."""
    return (await load(client, keys, [cid]))[cid][0]
