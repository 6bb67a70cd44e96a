"""The fraud stage's rules, pure: what one acquisition does to one row, and which
acquisitions it flags. No I/O; services/fraud/stage.py runs it on the runner.

Input and keying (the choice, issue #24 rule 3). Knowing who *acquired* takes the
core; the allocation stage runs it and publishes every acquisition on ``allocations``.
It also publishes a small :class:`Seen` record per acquisition on the internal topic
``fraud-feed``, under the keys of :func:`feed_keys`, so that each rule finds in one
row everything it needs, whatever certificate the acquisition was on:

* ``a:{account}``: every acquisition of one account. **velocity** (distinct
  certificates in the last minute) and **rings** (the record carries the
  certificate's latest earlier acquirers, ``co``: an account that acquired together
  with the same other account on ``ring_min`` of one seller's certificates among its
  latest ``RECENT`` acquisitions is in a ring; both are flagged on those certificates).
* ``b0:{created // 1 h}`` and ``b1:{(created + 30 min) // 1 h}``: every acquisition of
  the accounts *created* in that hour (two tilings offset by half an hour, so any
  burst created within 30 minutes falls whole into one row). An account's creation
  time never changes, so the row sees all of its acquisitions and can tell that it
  only ever acquired in one seller's (or one funder's) chains. **fresh-burst**: at
  least ``burst_min`` accounts created within ``burst_window_s`` of each other,
  fresh (the first acquisition within ``fresh_s`` of creation), each only ever in
  the same seller's or the same funder's chains. Only acquisitions of accounts at most
  30 days old go there (``FEED_FRESH_MS``: the rule is about fresh accounts, and most
  acquisitions are by older ones); accounts whose facts the gateway did not attest
  (no ``created_ms``) have no born row.

Flags are :class:`Flag` (certificate, sharer, rule, detail); the stage sends each as a
``flag_commission`` command with the id ``fraud:{rule}:{sharer}``, unique per
certificate, so a repeat (the other tiling, a replay) is a ``duplicate`` there. Once an
account is flagged by a rule in a row, its later acquisitions seen by that row are
flagged by the same rule.

Memory is bounded: a row keeps at most ``MAX_ACCOUNTS`` accounts (born rows; the
least recently active go) and ``RECENT`` acquisitions per account, each with at
most ``CO_MAX`` earlier acquirers (account rows).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import NamedTuple, Union

import msgspec

HOUR_MS = 3_600_000
BORN_TILE_MS = HOUR_MS
CO_MAX = 8  # earlier acquirers of the certificate carried on a Seen
# only acquisitions of accounts at most this old go to the born rows (the burst rule
# is about fresh accounts: Thresholds.fresh_s may not exceed it)
FEED_FRESH_MS = 30 * 86_400_000
RECENT = 32  # certificates remembered per account
MAX_ACCOUNTS = 512  # accounts remembered per born row
RULES = ("velocity", "fresh-burst", "ring")


class Seen(msgspec.Struct, array_like=True, frozen=True):
    """One acquisition, as the allocation stage saw it (topic ``fraud-feed``)."""

    certificate_id: str
    account_id: str
    seller_id: str
    funder_id: str
    at_ms: int
    seq: int
    created_ms: int | None = None  # the gateway's attested account facts, if any
    verified: bool = False
    co: tuple[str, ...] = ()  # the certificate's latest earlier acquirers (<= CO_MAX)


def feed_keys(seen: Seen) -> list[bytes]:
    """The rows one acquisition goes to (the fraud-feed keys)."""
    keys = [f"a:{seen.account_id}".encode()]
    if seen.created_ms is not None and seen.at_ms - seen.created_ms <= FEED_FRESH_MS:
        c = seen.created_ms
        keys.append(f"b0:{c // BORN_TILE_MS}".encode())
        keys.append(f"b1:{(c + BORN_TILE_MS // 2) // BORN_TILE_MS}".encode())
    return keys


@dataclass(frozen=True)
class Thresholds:
    """The rules' settings (COMMISSION_FRAUD_* in services/fraud/stage.py)."""

    velocity_per_minute: int = 8  # distinct certificates an account acquires on per minute
    fresh_s: int = 7 * 86_400  # an account is fresh if it first acquires this soon
    burst_window_s: int = 600  # accounts created this close together form a burst
    burst_min: int = 5  # ... of at least this many accounts
    ring_min: int = 3  # a pair on this many certificates of one seller is a ring

    def __post_init__(self) -> None:
        if self.fresh_s * 1000 > FEED_FRESH_MS:
            raise ValueError(f"fresh_s must be at most {FEED_FRESH_MS // 1000}")
        if self.velocity_per_minute > RECENT:
            raise ValueError(f"velocity_per_minute must be at most {RECENT}")
        if not 2 * self.burst_window_s * 1000 <= BORN_TILE_MS:
            raise ValueError("burst_window_s must be at most a quarter hour")
        if min(self.velocity_per_minute, self.burst_min, self.ring_min) < 2:
            raise ValueError("counts must be at least 2")

    def detail(self, rule: str) -> str:
        """A flag's detail: the same for every flag of a rule (a flag is sent once per
        certificate and sharer, and any row that sends it again must send the very
        same command, or the sequencer would answer duplicate_conflict)."""
        if rule == "velocity":
            return f"acquired on at least {self.velocity_per_minute} certificates in a minute"
        if rule == "fresh-burst":
            return (f"one of at least {self.burst_min} accounts created within "
                    f"{self.burst_window_s}s, fresh, only in one seller's or funder's chains")
        return f"acquired with the same account on {self.ring_min} of a seller's certificates"


class Flag(NamedTuple):
    certificate_id: str
    sharer_id: str
    rule: str
    detail: str


# --- rows ----------------------------------------------------------------------------

class AccountRow(msgspec.Struct, array_like=True, tag="a"):
    """``a:{account}``: its latest ``RECENT`` acquisitions, as flat lists (newest last).

    Written to the changelog whenever it changes (once per round), so it holds only
    what the rules read: when, on which certificate (the replay guard is ``cert in
    certs``), whose certificate, and the certificate's earlier acquirers then (``co``).
    A ring is found by looking back over these, so an account seen once (most of
    them) costs an append, not a partner table."""

    at: list[int] = msgspec.field(default_factory=list)
    certs: list[str] = msgspec.field(default_factory=list)
    sellers: list[str] = msgspec.field(default_factory=list)
    co: list[tuple[str, ...]] = msgspec.field(default_factory=list)
    flagged: list[str] = msgspec.field(default_factory=list)  # rules that flagged it


class Trail(msgspec.Struct, array_like=True):
    """One account in a born row."""

    created_ms: int
    first_ms: int
    last_ms: int
    sellers: list[str]
    funders: list[str]
    certificates: list[str]  # newest last, <= RECENT
    flagged: bool = False


class BornRow(msgspec.Struct, array_like=True, tag="b"):
    """``b0:`` / ``b1:`` tile: the accounts created in it and where they acquired."""

    accounts: dict[str, Trail] = msgspec.field(default_factory=dict)


Row = Union[AccountRow, BornRow]


# --- one acquisition ---------------------------------------------------------------------

def apply(row: Row | None, key: bytes, seen: Seen, th: Thresholds
          ) -> tuple[Row | None, bool, list[Flag]]:
    """What ``seen`` does to the row under ``key``: (row, changed, flags)."""
    if key.startswith(b"a:"):
        return _account(row if isinstance(row, AccountRow) else None, seen, th)
    if key.startswith((b"b0:", b"b1:")):
        return _born(row if isinstance(row, BornRow) else None, seen, th)
    raise ValueError(f"no rule reads key {key!r}")


def _account(row: AccountRow | None, seen: Seen, th: Thresholds
             ) -> tuple[AccountRow, bool, list[Flag]]:
    row = row or AccountRow()
    cert, me, seller = seen.certificate_id, seen.account_id, seen.seller_id
    certs, times, sellers, cos = row.certs, row.at, row.sellers, row.co
    if cert in certs:
        return row, False, []  # an account acquires once per certificate: a replay
    flags: list[Flag] = []
    flagged = row.flagged

    # rings: a partner on >= ring_min of one seller's certificates (within RECENT)
    ringed = "ring" in flagged
    if seen.co and seller in sellers:
        ring_min = th.ring_min
        earlier = [i for i, s in enumerate(sellers) if s == seller]
        if len(earlier) + 1 >= ring_min:
            for partner in seen.co:
                if partner == me:
                    continue
                shared = [certs[i] for i in earlier if partner in cos[i]]
                if len(shared) + 1 < ring_min:
                    continue
                # the first time: both on every certificate they share; then this one
                on = [*shared, cert] if len(shared) + 1 == ring_min else [cert]
                ringed = True
                detail = th.detail("ring")
                flags += [Flag(c, a, "ring", detail) for c in on for a in (me, partner)]

    certs.append(cert)
    times.append(seen.at_ms)
    sellers.append(seller)
    cos.append(seen.co)
    if len(certs) > RECENT:
        del certs[0], times[0], sellers[0], cos[0]

    # velocity: distinct certificates in the minute up to this acquisition
    if "velocity" in flagged:
        flags.append(Flag(cert, me, "velocity", th.detail("velocity")))
    else:
        since, n = seen.at_ms - 60_000, th.velocity_per_minute
        # the latest n acquisitions all within the minute
        if len(times) >= n and min(times[-n:]) > since:
            flagged.append("velocity")
            detail = th.detail("velocity")
            flags += [Flag(c, me, "velocity", detail)
                      for at, c in zip(times, certs, strict=True) if at > since]

    if ringed:
        flags.append(Flag(cert, me, "ring", th.detail("ring")))
        if "ring" not in flagged:
            flagged.append("ring")
    return row, True, _unique(flags) if flags else flags


def _born(row: BornRow | None, seen: Seen, th: Thresholds
          ) -> tuple[BornRow, bool, list[Flag]]:
    row = row or BornRow()
    me = seen.account_id
    trail = row.accounts.get(me)
    if trail is None:
        trail = row.accounts[me] = Trail(seen.created_ms or 0, seen.at_ms, seen.at_ms, [], [], [])
    elif seen.certificate_id in trail.certificates:
        return row, False, []  # a replay
    trail.last_ms = max(trail.last_ms, seen.at_ms)
    for parties, who in ((trail.sellers, seen.seller_id), (trail.funders, seen.funder_id)):
        if who not in parties and len(parties) < 2:
            parties.append(who)  # two are enough to know "more than one"
    trail.certificates.append(seen.certificate_id)
    del trail.certificates[:-RECENT]
    if len(row.accounts) > MAX_ACCOUNTS:
        oldest = min(row.accounts, key=lambda a: row.accounts[a].last_ms)
        del row.accounts[oldest]
    if trail.flagged:
        return row, True, [Flag(seen.certificate_id, me, "fresh-burst",
                                th.detail("fresh-burst"))]
    if not _fresh(trail, th):
        return row, True, []
    window_ms = th.burst_window_s * 1000
    for kind, party in (("seller", trail.sellers), ("funder", trail.funders)):
        if len(party) != 1:
            continue
        attr = "sellers" if kind == "seller" else "funders"
        group = [a for a, t in row.accounts.items()
                 if getattr(t, attr) == party and _fresh(t, th)
                 and abs(t.created_ms - trail.created_ms) <= window_ms]
        if len(group) < th.burst_min:
            continue
        detail = th.detail("fresh-burst")
        flags = []
        for a in group:
            t = row.accounts[a]
            if not t.flagged:
                t.flagged = True
                flags += [Flag(c, a, "fresh-burst", detail) for c in t.certificates]
        return row, True, flags
    return row, True, []


def _fresh(t: Trail, th: Thresholds) -> bool:
    return t.first_ms - t.created_ms <= th.fresh_s * 1000


def _unique(flags: list[Flag]) -> list[Flag]:
    """One flag a (certificate, sharer), the first rule's: the sequencer refuses a
    second one of the pair (already_flagged), whatever its rule."""
    seen: set[tuple[str, str]] = set()
    out = []
    for f in flags:
        k = (f.certificate_id, f.sharer_id)
        if k not in seen:
            seen.add(k)
            out.append(f)
    return out


def command_id(flag: Flag) -> str:
    """The flag's command id: one per (certificate, sharer, rule); a sharer id too long
    for an id (64 characters) is replaced by its hash."""
    plain = f"fraud:{flag.rule}:{flag.sharer_id}"
    if len(plain) <= 64:
        return plain
    return f"fraud:{flag.rule}:{hashlib.sha256(flag.sharer_id.encode()).hexdigest()[:40]}"
