"""Accounts and sessions: who may send commands through the API.

Accounts come from COMMISSION_ACCOUNTS ("id:password,...") or, outside production,
the demo accounts below (for `make run`). Passwords are kept only as scrypt hashes.
A login returns a random bearer token; Redis keeps SHA-256(token) -> account id for
SESSION_TTL_S, so a Redis dump holds no usable token.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets

import redis.asyncio as aioredis

SESSION_TTL_S = 12 * 3600
DEMO_ACCOUNTS = ("alice", "bob", "carol", "dave", "seller", "funder")


def _hash(password: str, salt: bytes) -> bytes:
    return hashlib.scrypt(password.encode(), salt=salt, n=2**14, r=8, p=1, dklen=32)


class Accounts:
    def __init__(self, client: aioredis.Redis, prefix: str, passwords: dict[str, str]) -> None:
        self.redis = client
        self.prefix = prefix
        self._salt = secrets.token_bytes(16)
        self._hashes = {a: _hash(p, self._salt) for a, p in passwords.items()}

    @staticmethod
    def passwords_from_env() -> dict[str, str]:
        text = os.environ.get("COMMISSION_ACCOUNTS")
        if text is None:
            if os.environ.get("COMMISSION_ENV") == "production":
                raise SystemExit("COMMISSION_ACCOUNTS must be set in production")
            return {a: f"demo-{a}" for a in DEMO_ACCOUNTS}
        return dict(entry.split(":", 1) for entry in text.split(",") if entry)

    def _key(self, token: str) -> str:
        return f"{self.prefix}session:{hashlib.sha256(token.encode()).hexdigest()}"

    async def login(self, account_id: str, password: str) -> str | None:
        known = self._hashes.get(account_id)
        given = _hash(password, self._salt)
        if known is None or not hmac.compare_digest(known, given):
            return None
        token = secrets.token_urlsafe(32)
        await self.redis.set(self._key(token), account_id, ex=SESSION_TTL_S)
        return token

    async def account_for(self, authorization: str | None) -> str | None:
        if not authorization or not authorization.startswith("Bearer "):
            return None
        account = await self.redis.get(self._key(authorization[len("Bearer "):]))
        return account.decode() if account else None
