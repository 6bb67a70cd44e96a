"""Failed logins and sign-ups, counted in Redis so both API replicas see the same
counts.

A login is refused with 429 before any hashing when its login name or its client
address has failed too often in the window (counters that expire with the window).
The login name appears in a counter's key only as a 16-byte digest, so a key holds no
login name (an erased account's name is nowhere in Redis; the counter itself goes
with its window). If Redis is wiped the counters start again from zero (a guesser
gets a fresh window). Sign-ups are counted per client address (a flood of accounts
from one place is refused with 429 ``signup_throttled``).

Each counter is its own key with no multi-key command across them (the pipeline is
not a transaction), so they may live in different Redis Cluster slots.
"""

from __future__ import annotations

import hashlib

import redis.asyncio as aioredis

from services.api.errors import Problem

# failed logins allowed per window, per account and per client address
FAILURES_PER_ACCOUNT = 10
FAILURES_PER_ADDRESS = 50
# an account takes this many times FAILURES_PER_ACCOUNT across all addresses
ACCOUNT_WIDE_FACTOR = 20
FAILURE_WINDOW_S = 300
SIGNUPS_PER_ADDRESS = 20  # per SIGNUP_WINDOW_S
SIGNUP_WINDOW_S = 3600


def digest(login: str) -> str:
    return hashlib.sha256(b"login\x00" + login.encode()).hexdigest()[:32]


class LoginThrottle:
    def __init__(self, client: aioredis.Redis, prefix: str, *,
                 per_account: int = FAILURES_PER_ACCOUNT,
                 per_address: int = FAILURES_PER_ADDRESS,
                 window_s: int = FAILURE_WINDOW_S,
                 signups_per_address: int = SIGNUPS_PER_ADDRESS) -> None:
        self.redis = client
        self.prefix = prefix
        self.per_account, self.per_address, self.window_s = per_account, per_address, window_s
        self.signups_per_address = signups_per_address

    def _keys(self, login: str, address: str) -> list[tuple[str, int]]:
        """The counters an attempt moves, with their limits. The account's own limit
        is per client address, so someone guessing from one place locks only that
        place out of the account, not its owner (who logs in from another); across
        all addresses an account takes ACCOUNT_WIDE_FACTOR times as many failures in
        a window, which still bounds a guess spread over many addresses."""
        p, who = f"{self.prefix}login-fail", digest(login)
        return [(f"{p}:account:{who}:{address}", self.per_account),
                (f"{p}:account:{who}", self.per_account * ACCOUNT_WIDE_FACTOR),
                (f"{p}:address:{address}", self.per_address)]

    async def _count(self, keys: list[tuple[str, int]], window_s: int) -> list[int]:
        """INCR each counter (its window starts with its first count); the TTLs of
        those over their limit."""
        async with self.redis.pipeline(transaction=False) as tx:
            for key, _ in keys:
                tx.incr(key)
                tx.expire(key, window_s, nx=True)
                tx.ttl(key)
            answers = await tx.execute()
        return [ttl for (_, limit), n, ttl in zip(keys, answers[0::3], answers[2::3],
                                                   strict=True) if n > limit]

    async def attempt(self, login: str, address: str) -> None:
        """Counts this attempt; 429 when a counter is over its limit (then nothing is
        hashed). Counted before hashing, so parallel attempts cannot all slip in
        before the first failure is recorded."""
        over = await self._count(self._keys(login, address), self.window_s)
        if over:
            raise Problem(429, "login_throttled", "too many failed logins; try again later",
                          **{"Retry-After": str(max(1, *over))})

    async def forgive(self, login: str, address: str) -> None:
        """A login that succeeded does not count as a failure."""
        async with self.redis.pipeline(transaction=False) as tx:
            for key, _ in self._keys(login, address):
                tx.decr(key)
            await tx.execute()

    async def signup(self, address: str) -> None:
        over = await self._count([(f"{self.prefix}signup:address:{address}",
                                   self.signups_per_address)], SIGNUP_WINDOW_S)
        if over:
            raise Problem(429, "signup_throttled", "too many sign-ups from this address; "
                          "try again later", **{"Retry-After": str(max(1, *over))})
