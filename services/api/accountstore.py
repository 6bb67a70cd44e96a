"""The built-in account store: sign-up, login, password change, roles, erasure, and
the profiles of accounts that sign in through the shop's identity provider.

Where: Redis, the one the API already uses (a store both API replicas share, that
survives restarts: the server runs with ``appendonly yes`` and ``appendfsync
always``, so a sign-up or a password change the API answered is on the server's disk
before the answer; a Redis crash loses none of them, only a lost disk does: back it
up). Unlike the read model (``rm:`` keys, rebuilt from Kafka), nothing rebuilds these
keys: never flush them. They live under their own namespace, ``acct:{topic prefix}``,
so an ACL can give them to the API's Redis user only (``~acct:*``), never to the read
model's.

Keys (each account's keys share the hash tag ``{account id}``, a login name's key its
own tag; no command spans two tags, so it all runs on Redis Cluster):

    acct:P{id}            hash: login, name (display name), roles ("seller,funder"),
                          created_ms, verified (0/1), source ("local" or the
                          provider's issuer), pw (argon2id PHC string; none for a
                          provider's account), or only erased_ms after an erasure
    acct:P{id}:sessions   sorted set: the account's live session ids, scored by their
                          absolute end (s); a session is live only while it is here
    acct:Plogin:{login}   string: the account id of a login name

Ids: a signed-up account gets ``u-`` and 20 random hex digits; that opaque id, never
the login name or the display name, is what commands, sessions, topics and the read
model carry (Kafka's records are immutable: a name there could never be erased). The
demo accounts keep their ids (``alice`` ...); a provider's account gets the id the
identity provider module derives from issuer and subject.

Sessions: a token (services/api/sessions.py) is checked with the key first, then it
must be in its account's session set: logout removes it, a password change keeps
only the session that changed it, erasure removes the set with the profile. If Redis
loses the set, every session of the account ends (fails closed). At most
``MAX_SESSIONS`` live sessions per account (the oldest ends first).
"""

from __future__ import annotations

import re
import secrets
import time
import unicodedata
from collections.abc import Awaitable, Callable, Iterable

import redis.asyncio as aioredis
from aiohttp import web

from services.api.errors import Problem
from services.api.identity import Identity, Role
from services.api.passwords import Passwords, password_problem
from services.api.sessions import Session, Sessions
from services.api.throttle import LoginThrottle

LOCAL = "local"
MAX_SESSIONS = 50
MAX_DISPLAY_NAME = 64
# a login name, after NFKC and lower-casing: 3-32 of [a-z0-9._-], a letter or digit
# first; "u-" and "o-" are left to the opaque ids so a name never looks like one
LOGIN = re.compile(r"[a-z0-9][a-z0-9._-]{2,31}")
RESERVED_PREFIXES = ("u-", "o-")

# KEYS: profile, sessions. ARGV: password hash the login verified ('' = a provider's
# sign-in, no password), session id, its absolute end (s), now (s), MAX_SESSIONS,
# the set's TTL. 0 when the account is gone, erased, or its password changed since.
_START = """
if redis.call('EXISTS', KEYS[1]) == 0 or redis.call('HEXISTS', KEYS[1], 'erased_ms') == 1 then
  return 0
end
if ARGV[1] ~= '' and redis.call('HGET', KEYS[1], 'pw') ~= ARGV[1] then return 0 end
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', ARGV[4])
redis.call('ZADD', KEYS[2], ARGV[3], ARGV[2])
local n = redis.call('ZCARD', KEYS[2])
if n > tonumber(ARGV[5]) then redis.call('ZPOPMIN', KEYS[2], n - tonumber(ARGV[5])) end
redis.call('EXPIRE', KEYS[2], ARGV[6])
return 1
"""

# KEYS: profile, sessions. ARGV: the old hash, the new one, the session to keep.
_CHANGE = """
if redis.call('HGET', KEYS[1], 'pw') ~= ARGV[1] then return 0 end
redis.call('HSET', KEYS[1], 'pw', ARGV[2])
local keep = redis.call('ZSCORE', KEYS[2], ARGV[3])
redis.call('DEL', KEYS[2])
if keep then redis.call('ZADD', KEYS[2], keep, ARGV[3]) end
return 1
"""

# KEYS: profile, sessions. ARGV: now (ms). Returns the login name it had ('' none).
_ERASE = """
local login = redis.call('HGET', KEYS[1], 'login') or ''
redis.call('DEL', KEYS[1], KEYS[2])
redis.call('HSET', KEYS[1], 'erased_ms', ARGV[1])
return login
"""

# KEYS: a login's key. ARGV: the account id to point it at, the stale id it may
# replace ('' none). 1 when claimed.
_CLAIM = """
local cur = redis.call('GET', KEYS[1])
if not cur or (ARGV[2] ~= '' and cur == ARGV[2]) then
  redis.call('SET', KEYS[1], ARGV[1])
  return 1
end
return 0
"""

# KEYS: a login's key. ARGV: the account id. Deletes it only if it points there.
_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


class AccountErased(Exception):
    """The account was erased: it cannot sign in again under the same id."""


def normal_login(raw: str) -> str:
    """The login name as stored: NFKC, lower case, surrounding spaces gone."""
    return unicodedata.normalize("NFKC", raw).strip().lower()[:64]


def login_problem(login: str) -> str | None:
    if not LOGIN.fullmatch(login):
        return ("a login name is 3-32 characters of a-z, 0-9, '.', '_' or '-', "
                "starting with a letter or digit")
    if login.startswith(RESERVED_PREFIXES):
        return "a login name does not start with 'u-' or 'o-'"
    return None


def display_name_problem(name: str) -> str | None:
    if not name or len(name) > MAX_DISPLAY_NAME:
        return f"a display name is 1-{MAX_DISPLAY_NAME} characters"
    if any(unicodedata.category(ch)[0] == "C" for ch in name):
        return "a display name holds no control characters"
    return None


def new_account_id() -> str:
    return "u-" + secrets.token_hex(10)


def roles_text(roles: Iterable[Role]) -> str:
    return ",".join(sorted(str(r) for r in roles))


def parse_roles(text: str) -> frozenset[Role]:
    return frozenset(Role(r) for r in text.split(",") if r in Role._value2member_map_)


class AccountStore:
    def __init__(self, client: aioredis.Redis, prefix: str, sessions: Sessions | None,
                 throttle: LoginThrottle | None, passwords: Passwords | None = None) -> None:
        # sessions and throttle: None for the operator's command (no logins there)
        self.redis = client
        self.prefix = prefix  # "acct:{topic prefix}"
        self.sessions = sessions
        self.throttle = throttle
        self.passwords = passwords or Passwords()
        # the identity provider module may set this: a bearer token that is not one
        # of our sessions (an access token of the shop's provider) -> its Identity
        self.bearer_verifier: Callable[[str], Awaitable[Identity | None]] | None = None
        self._start = client.register_script(_START)
        self._change = client.register_script(_CHANGE)
        self._erase = client.register_script(_ERASE)
        self._claim = client.register_script(_CLAIM)
        self._release = client.register_script(_RELEASE)

    def close(self) -> None:
        self.passwords.close()

    # --- keys -------------------------------------------------------------------

    def profile_key(self, account_id: str) -> str:
        return f"{self.prefix}{{{account_id}}}"

    def sessions_key(self, account_id: str) -> str:
        return f"{self.prefix}{{{account_id}}}:sessions"

    def login_key(self, login: str) -> str:
        return f"{self.prefix}login:{{{login}}}"

    # --- reading ----------------------------------------------------------------

    async def _profile(self, account_id: str) -> dict[str, str]:
        raw = await self.redis.hgetall(self.profile_key(account_id))
        return {k.decode(): v.decode() for k, v in raw.items()}

    @staticmethod
    def _identity(account_id: str, p: dict[str, str]) -> Identity | None:
        if not p or "erased_ms" in p:
            return None
        return Identity(account_id=account_id, display_name=p.get("name") or account_id,
                        roles=parse_roles(p.get("roles", "")),
                        created_ms=int(p.get("created_ms", 0)),
                        verified=p.get("verified") == "1", source=p.get("source", LOCAL))

    async def get(self, account_id: str) -> Identity | None:
        """The account's identity; None for an unknown or erased account."""
        return self._identity(account_id, await self._profile(account_id))

    async def erased(self, account_id: str) -> bool:
        return bool(await self.redis.hexists(self.profile_key(account_id), "erased_ms"))

    async def profile(self, account_id: str) -> dict | None:
        """What the account's owner may see of it (the export), without the hash."""
        p = await self._profile(account_id)
        identity = self._identity(account_id, p)
        if identity is None:
            return None
        return {"account_id": account_id, "login": p.get("login"),
                "display_name": identity.display_name,
                "roles": sorted(str(r) for r in identity.roles),
                "created_ms": identity.created_ms, "verified": identity.verified,
                "source": identity.source, "has_password": "pw" in p}

    async def display_names(self, account_ids: Iterable[str]) -> dict[str, str]:
        """Each known account's display name (one round trip per account; the
        pages ask for a handful at most)."""
        out = {}
        for account_id in dict.fromkeys(account_ids):
            raw = await self.redis.hget(self.profile_key(account_id), "name")
            if raw is not None:
                out[account_id] = raw.decode()
        return out

    async def account_of(self, login: str) -> str | None:
        raw = await self.redis.get(self.login_key(normal_login(login)))
        return raw.decode() if raw else None

    # --- creating ---------------------------------------------------------------

    async def create(self, *, login: str, password: str | None, display_name: str,
                     roles: Iterable[Role] = (), account_id: str | None = None,
                     verified: bool = False, password_hash: str | None = None) -> Identity:
        """A new local account. 409 ``login_taken`` when the name is someone's; 422
        for a name, display name or password that cannot be. ``account_id`` is for
        the demo and seed accounts (kept as they are); others get an opaque one."""
        login = normal_login(login)
        display_name = display_name.strip()
        # the demo and seed accounts (an id given) are the operator's: their names and
        # passwords are not held to the sign-up rules (demo-bob is 8 characters)
        why = None if account_id is not None else (
            login_problem(login) or display_name_problem(display_name)
            or (password_problem(password) if password is not None else None))
        if why:
            raise Problem(422, "invalid_account", why)
        pw = password_hash or (await self.passwords.hash(password) if password else None)
        account_id = account_id or new_account_id()
        fields = {"login": login, "name": display_name, "roles": roles_text(roles),
                  "created_ms": str(int(time.time() * 1000)),
                  "verified": "1" if verified else "0", "source": LOCAL}
        if pw:
            fields["pw"] = pw
        key = self.profile_key(account_id)
        # the login field first, alone: of two replicas seeding the same account,
        # one creates it, the other gets 409 and touches nothing
        if not await self.redis.hsetnx(key, "login", login):
            raise Problem(409, "account_exists", "an account with this id exists")
        await self.redis.hset(key, mapping=fields)
        # the profile first, then the name: a crash in between leaves a profile no
        # login reaches (harmless), never a name pointing at nothing
        if not await self._claim(keys=[self.login_key(login)],
                                 args=[account_id, await self._stale_owner(login)]):
            await self.redis.delete(key)
            raise Problem(409, "login_taken", "this login name is taken; choose another")
        return self._identity(account_id, fields)

    async def _stale_owner(self, login: str) -> str:
        """The account a login name points at if that account no longer has the
        name (an erasure stopped between its two steps): the name may be taken over."""
        owner = await self.account_of(login)
        if owner is None:
            return ""
        current = await self.redis.hget(self.profile_key(owner), "login")
        return owner if current is None or current.decode() != login else ""

    async def upsert_external(self, identity: Identity) -> Identity:
        """A provider's account, on each sign-in: created the first time (its
        created_ms kept from then on), display name, roles and verified updated
        from the provider's word. No password, no login name. AccountErased when the
        account was erased (its id is derived from the provider's subject, so signing
        in again would tie the erased account's records back to the person)."""
        key = self.profile_key(identity.account_id)
        if await self.erased(identity.account_id):
            raise AccountErased(identity.account_id)
        await self.redis.hsetnx(key, "created_ms", str(identity.created_ms
                                                       or int(time.time() * 1000)))
        await self.redis.hset(key, mapping={
            "name": identity.display_name[:MAX_DISPLAY_NAME], "roles": roles_text(
                identity.roles), "verified": "1" if identity.verified else "0",
            "source": identity.source})
        found = await self.get(identity.account_id)
        assert found is not None
        return found

    async def set_roles(self, account_id: str, roles: Iterable[Role]) -> None:
        if await self.get(account_id) is None:
            raise Problem(404, "unknown_account", "no account with this id")
        await self.redis.hset(self.profile_key(account_id), "roles", roles_text(roles))

    # --- sessions ---------------------------------------------------------------

    async def start_session(self, account_id: str, *, verified_hash: str = "") -> Session | None:
        """A new session for the account (after a login, or a provider's sign-in
        with ``verified_hash`` empty); None if the account is gone, erased, or its
        password changed since it was verified."""
        session = self.sessions.issue(account_id)
        ends = session.began_s + self.sessions.max_s
        ok = await self._start(
            keys=[self.profile_key(account_id), self.sessions_key(account_id)],
            args=[verified_hash, session.session_id, ends, session.began_s, MAX_SESSIONS,
                  self.sessions.max_s + 60])
        return session if ok else None

    async def login(self, login: str, password: str, address: str) -> Session | None:
        """A new session, or None for a wrong login name or password; Problem 429
        when throttled."""
        login = normal_login(login)
        await self.throttle.attempt(login, address)
        account_id = await self.account_of(login) if login else None
        profile = await self._profile(account_id) if account_id else {}
        stored = profile.get("pw") if profile.get("login") == login else None
        if not await self.passwords.verify(stored, password[:300]):
            return None
        await self.throttle.forgive(login, address)
        return await self.start_session(account_id, verified_hash=stored)

    async def end_session(self, session: Session) -> None:
        await self.redis.zrem(self.sessions_key(session.account), session.session_id)

    async def session_identity(self, token: str | None) -> tuple[Session, Identity] | None:
        """The live session of a token and its account's identity: signed and
        unexpired (no Redis asked otherwise), in its account's session set, the
        account not erased."""
        session = self.sessions.parse(token or "")
        if session is None:
            return None
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.zscore(self.sessions_key(session.account), session.session_id)
            pipe.hgetall(self.profile_key(session.account))
            live, raw = await pipe.execute()
        if live is None:
            return None
        identity = self._identity(session.account,
                                  {k.decode(): v.decode() for k, v in raw.items()})
        return (session, identity) if identity is not None else None

    async def identify(self, request_or_token: web.Request | str | None) -> Identity | None:
        """Who is asking: a request's bearer token (ours, or the provider's when a
        verifier is set) or its session cookie, or a token itself."""
        token = request_or_token
        if isinstance(request_or_token, web.Request):
            auth = request_or_token.headers.get("Authorization", "")
            token = (auth[len("Bearer "):] if auth.startswith("Bearer ")
                     else request_or_token.cookies.get("session"))
        if not token:
            return None
        found = await self.session_identity(token)
        if found is not None:
            return found[1]
        if self.bearer_verifier is not None and self.sessions.parse(token) is None:
            return await self.bearer_verifier(token)
        return None

    async def session_for(self, authorization: str | None) -> Session | None:
        """The live session of an ``Authorization: Bearer`` header."""
        if not authorization or not authorization.startswith("Bearer "):
            return None
        found = await self.session_identity(authorization[len("Bearer "):])
        return found[0] if found else None

    # --- changing and leaving ---------------------------------------------------

    async def check_password(self, account_id: str, password: str, address: str) -> str:
        """The stored hash if ``password`` is the account's (throttled like a login);
        Problem 403 ``wrong_password`` otherwise."""
        p = await self._profile(account_id)
        login = p.get("login") or account_id
        await self.throttle.attempt(login, address)
        if not await self.passwords.verify(p.get("pw"), password):
            raise Problem(403, "wrong_password", "the current password is wrong")
        await self.throttle.forgive(login, address)
        return p["pw"]

    async def change_password(self, session: Session, old: str, new: str,
                              address: str) -> None:
        """The new password; every other session of the account ends, this one
        goes on. 403 ``wrong_password``, 422 ``invalid_password``, 409 when the
        password changed meanwhile."""
        why = password_problem(new)
        if why:
            raise Problem(422, "invalid_password", why)
        stored = await self.check_password(session.account, old, address)
        fresh = await self.passwords.hash(new)
        if not await self._change(keys=[self.profile_key(session.account),
                                        self.sessions_key(session.account)],
                                  args=[stored, fresh, session.session_id]):
            raise Problem(409, "password_changed", "the password changed meanwhile; "
                          "log in again")

    async def erase(self, account_id: str) -> None:
        """The account's personal data leaves the store: its profile (login name,
        display name, hash, roles) and every session go at once; only a tombstone
        with the time of erasure stays under the opaque id (the pages say "erased
        account"). The login name is freed: keeping it blocked would mean keeping
        it, the very data that was to go; a new sign-up under it gets a new id, so
        nothing of the erased account passes to it."""
        login = await self._erase(keys=[self.profile_key(account_id),
                                        self.sessions_key(account_id)],
                                  args=[int(time.time() * 1000)])
        login = login.decode() if isinstance(login, bytes) else login
        if login:
            await self._release(keys=[self.login_key(login)], args=[account_id])
