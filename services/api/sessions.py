"""Session tokens no one can mint without the API's ``session`` key.

A token is ``base64url(payload) "." base64url(HMAC-SHA256(key, payload))``; the
payload carries the key id, the account, a random session id, when the session began
(its absolute lifetime counts from then), when this token was minted and when it
expires (the idle timeout). It is checked with the key *before* anything is asked of
Redis: a made-up token, or one whose account or expiry was edited, is refused without
a lookup. Redis keeps only what cannot be in the token: revocations (a logout revokes
the session id, so every token re-issued for that session goes with it).

Sliding expiry: a token used more than ``REFRESH_AFTER_S`` after it was minted is
re-issued with a new idle expiry (never past the absolute lifetime): the web pages
set it as the cookie again, the JSON API returns it in the ``Session-Token`` header.

What Redis loses, if it is wiped or restored from an old copy: the revocations. Sessions
themselves are unaffected (they live in the tokens), so a token logged out before the
wipe is accepted again until its own idle expiry or absolute lifetime, whichever comes
first: at most ``idle_s`` for a token nobody uses, at most ``max_s`` for a stolen one
that is kept in use. Rotating the session key ends every session at once.
A Redis that does not answer fails closed: the revocation check raises, the request
gets a 500 (logged), never a session that might have been revoked.

The same key derives each session's CSRF token (HMAC of the session id) for the
forms, and the login form's token (HMAC of a random per-browser nonce).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
import secrets
import time
from dataclasses import dataclass

import msgspec
import redis.asyncio as aioredis

from services.common.auth import Key, Keyring

VERSION = "s1"
SCOPE = "session"
IDLE_S = 30 * 60  # a session unused this long has ended
MAX_S = 12 * 3600  # a session ends this long after the login, used or not
REFRESH_AFTER_S = 60  # a token older than this is re-issued when used

# schemas.types.Id: the account in a token is one the API logged in, nothing else
_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:@~-]{0,63}")
_MAX_TOKEN_CHARS = 512  # a token is ~200 characters; longer is not ours

_Payload = tuple[str, str, str, str, int, int, int]
_encode = msgspec.json.Encoder().encode
_decode = msgspec.json.Decoder(_Payload).decode


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


@dataclass(frozen=True)
class Session:
    account: str
    session_id: str
    began_s: int  # the login
    minted_s: int  # this token
    expires_s: int  # this token's idle expiry (<= began_s + max_s)
    token: str


class Sessions:
    def __init__(self, keyring: Keyring, client: aioredis.Redis, prefix: str, *,
                 idle_s: int = IDLE_S, max_s: int = MAX_S,
                 refresh_after_s: int = REFRESH_AFTER_S) -> None:
        self.keys = {k.key_id: k for k in keyring.keys.values() if k.scope == SCOPE}
        self.key = keyring.first(SCOPE)  # the one that mints
        self.redis = client
        self.prefix = prefix
        self.idle_s, self.max_s, self.refresh_after_s = idle_s, max_s, refresh_after_s

    # --- tokens -------------------------------------------------------------------

    @staticmethod
    def _mac(key: Key, purpose: bytes, data: bytes) -> bytes:
        return hmac.new(key.secret, purpose + b"\x00" + data, hashlib.sha256).digest()

    def _mint(self, account: str, session_id: str, began_s: int, now_s: int) -> Session:
        expires = min(now_s + self.idle_s, began_s + self.max_s)
        payload = _encode((VERSION, self.key.key_id, account, session_id, began_s, now_s,
                           expires))
        token = f"{_b64(payload)}.{_b64(self._mac(self.key, b'session', payload))}"
        return Session(account, session_id, began_s, now_s, expires, token)

    def issue(self, account: str, now_s: int | None = None) -> Session:
        """A new session for ``account`` (after a login)."""
        now = int(time.time()) if now_s is None else now_s
        return self._mint(account, secrets.token_urlsafe(16), now, now)

    def parse(self, token: str, now_s: int | None = None) -> Session | None:
        """The session ``token`` carries if the key signed it and it has not expired;
        no Redis lookup (see :meth:`check` for revocation)."""
        if not token or len(token) > _MAX_TOKEN_CHARS or token.count(".") != 1:
            return None
        body, _, mac = token.partition(".")
        try:
            payload, given = _unb64(body), _unb64(mac)
            version, key_id, account, session_id, began, minted, expires = _decode(payload)
        except (ValueError, msgspec.DecodeError):
            return None
        key = self.keys.get(key_id)
        if key is None or version != VERSION:
            return None
        if not hmac.compare_digest(self._mac(key, b"session", payload), given):
            return None
        now = int(time.time()) if now_s is None else now_s
        if now >= expires or now >= began + self.max_s or not _ID.fullmatch(account):
            return None
        return Session(account, session_id, began, minted, expires, token)

    async def check(self, token: str | None) -> Session | None:
        """The live session of ``token``: signed, unexpired, then not revoked."""
        session = self.parse(token or "")
        if session is None:
            return None
        if await self.redis.exists(self._revoked(session.session_id)):
            return None
        return session

    def refreshed(self, session: Session, now_s: int | None = None) -> Session | None:
        """A re-issued token with a new idle expiry, when this one is old enough to
        be worth replacing (and the absolute lifetime leaves room); else None."""
        now = int(time.time()) if now_s is None else now_s
        if now - session.minted_s < self.refresh_after_s:
            return None
        fresh = self._mint(session.account, session.session_id, session.began_s, now)
        return fresh if fresh.expires_s > session.expires_s else None

    async def revoke(self, session: Session) -> None:
        """Logout: the session id is refused from now until its absolute end."""
        left = max(1, session.began_s + self.max_s - int(time.time()) + 60)
        await self.redis.set(self._revoked(session.session_id), b"1", ex=left)

    def _revoked(self, session_id: str) -> str:
        return f"{self.prefix}session-revoked:{session_id}"

    # --- CSRF tokens ----------------------------------------------------------------

    def csrf_for(self, session: Session) -> str:
        """The session's form token: the same for every token of the session."""
        return _b64(self._mac(self.key, b"csrf", session.session_id.encode()))[:32]

    def login_csrf_for(self, nonce: str) -> str:
        """The login form's token, bound to the browser's random ``nonce`` cookie."""
        return _b64(self._mac(self.key, b"login-csrf", nonce.encode()))[:32]

    def csrf_ok(self, session: Session, given: str) -> bool:
        return bool(given) and hmac.compare_digest(self.csrf_for(session), given)

    def login_csrf_ok(self, nonce: str, given: str) -> bool:
        return (bool(nonce) and bool(given)
                and hmac.compare_digest(self.login_csrf_for(nonce), given))
