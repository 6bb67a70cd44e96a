"""Accounts and logins: who may send commands through the API.

Accounts come from COMMISSION_ACCOUNTS ("id:password,...") or, outside production,
the demo accounts below (for `make run`). Passwords are kept only as scrypt hashes,
and hashing runs on a small thread pool, never on the event loop: one scrypt is
~45-80 ms of CPU here, and 90 bad logins hashed on the loop held every other request
(/healthz too) for seconds. hashlib.scrypt releases the GIL, so the loop keeps
answering while the pool hashes.

A login is refused with 429 before any hashing when its account or its client address
has failed too often in the window (Redis counters that expire with the window). If
Redis is wiped the counters start again from zero (a guesser gets a fresh window);
sessions are not affected: they live in their signed tokens (services/api/sessions.py).
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import os
import secrets
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import redis.asyncio as aioredis

from services.api.errors import Problem
from services.api.sessions import Session, Sessions
from services.common.settings import production

DEMO_ACCOUNTS = ("alice", "bob", "carol", "dave", "seller", "funder")
# failed logins allowed per window, per account and per client address
FAILURES_PER_ACCOUNT = 10
FAILURES_PER_ADDRESS = 50
# an account takes this many times FAILURES_PER_ACCOUNT across all addresses
ACCOUNT_WIDE_FACTOR = 20
FAILURE_WINDOW_S = 300
HASH_WORKERS = 2


def _hash(password: str, salt: bytes) -> bytes:
    return hashlib.scrypt(password.encode(), salt=salt, n=2**14, r=8, p=1, dklen=32)


class Accounts:
    def __init__(self, client: aioredis.Redis, prefix: str, passwords: dict[str, str],
                 sessions: Sessions, *, per_account: int = FAILURES_PER_ACCOUNT,
                 per_address: int = FAILURES_PER_ADDRESS,
                 window_s: int = FAILURE_WINDOW_S) -> None:
        self.redis = client
        self.prefix = prefix
        self.sessions = sessions
        self.per_account, self.per_address, self.window_s = per_account, per_address, window_s
        self._salt = secrets.token_bytes(16)
        self._hashes = {a: _hash(p, self._salt) for a, p in passwords.items()}
        self._pool = ThreadPoolExecutor(max_workers=HASH_WORKERS,
                                        thread_name_prefix="password-hash")

    @staticmethod
    def passwords_from_env() -> dict[str, str]:
        """``COMMISSION_ACCOUNTS`` ("id:password,...") or the file named by
        ``COMMISSION_ACCOUNTS_FILE`` (one "id:password" a line: a mounted secret); the
        demo accounts outside production. Production refuses the demo passwords."""
        path = os.environ.get("COMMISSION_ACCOUNTS_FILE")
        text = Path(path).read_text() if path else os.environ.get("COMMISSION_ACCOUNTS")
        if text is None:
            if production():
                raise SystemExit("COMMISSION_ACCOUNTS or COMMISSION_ACCOUNTS_FILE must be set "
                                 "in production")
            return {a: f"demo-{a}" for a in DEMO_ACCOUNTS}
        entries = (e.strip() for e in text.replace("\n", ",").split(","))
        passwords = dict(e.split(":", 1) for e in entries if e and not e.startswith("#"))
        demo = sorted(a for a, p in passwords.items() if p == f"demo-{a}")
        if demo and production():
            raise SystemExit(f"refusing to run in production: accounts {demo} have their "
                             "published demo password")
        return passwords

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)

    def _keys(self, account_id: str, address: str) -> list[tuple[str, int]]:
        """The counters an attempt moves, with their limits. The account's own limit
        is per client address, so someone guessing from one place locks only that
        place out of the account, not its owner (who logs in from another); across
        all addresses an account takes ACCOUNT_WIDE_FACTOR times as many failures in
        a window, which still bounds a guess spread over many addresses."""
        p = f"{self.prefix}login-fail"
        return [(f"{p}:account:{account_id}:{address}", self.per_account),
                (f"{p}:account:{account_id}", self.per_account * ACCOUNT_WIDE_FACTOR),
                (f"{p}:address:{address}", self.per_address)]

    async def _attempt(self, account_id: str, address: str) -> None:
        """Counts this attempt against the account from this address, the account
        and the address; 429 when one is over its limit (then nothing is hashed).
        Counted before hashing, so parallel attempts cannot all slip in before the
        first failure is recorded."""
        keys = self._keys(account_id, address)
        async with self.redis.pipeline(transaction=True) as tx:
            for key, _ in keys:
                tx.incr(key)
                tx.expire(key, self.window_s, nx=True)
                tx.ttl(key)
            answers = await tx.execute()
        over = [ttl for (_, limit), n, ttl in zip(keys, answers[0::3], answers[2::3],
                                                   strict=True) if n > limit]
        if over:
            raise Problem(429, "login_throttled", "too many failed logins; try again later",
                          **{"Retry-After": str(max(1, *over))})

    async def _forgive(self, account_id: str, address: str) -> None:
        """A login that succeeded does not count as a failure."""
        async with self.redis.pipeline(transaction=True) as tx:
            for key, _ in self._keys(account_id, address):
                tx.decr(key)
            await tx.execute()

    async def login(self, account_id: str, password: str, address: str) -> Session | None:
        """A new session, or None for a wrong account or password; Problem 429 when
        throttled."""
        await self._attempt(account_id, address)
        known = self._hashes.get(account_id)
        loop = asyncio.get_running_loop()
        given = await loop.run_in_executor(self._pool, _hash, password, self._salt)
        if known is None or not hmac.compare_digest(known, given):
            return None
        await self._forgive(account_id, address)
        return self.sessions.issue(account_id)

    async def account_for(self, authorization: str | None) -> str | None:
        """The account of a ``Bearer`` token (signed, unexpired, not revoked)."""
        session = await self.session_for(authorization)
        return session.account if session else None

    async def session_for(self, authorization: str | None) -> Session | None:
        if not authorization or not authorization.startswith("Bearer "):
            return None
        return await self.sessions.check(authorization[len("Bearer "):])
