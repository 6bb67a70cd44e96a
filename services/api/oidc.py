"""The shop's identity provider (OpenID Connect): its settings, keys and tokens.

One class, :class:`Provider`, knows the provider: its discovery document, its signing
keys (JWKS) and the checks every token of it must pass. The web sign-in
(services/api/oidc_web.py) asks it to verify an ID token; the JSON API asks it to
verify a bearer access token (a person's, or a shop back end's client-credentials
token). Both end in the same :class:`~services.api.identity.Identity`.

What a token must be, in the order checked (the first failure is the 401's code):

* a compact JWS (``token_malformed``) whose ``alg`` is on the allow-list
  (``token_algorithm``): asymmetric algorithms only, never ``none``, never an HMAC
  one (a public key must not be usable as a shared secret);
* issued by the configured issuer (``token_issuer``), read before the signature so a
  token of another provider says so plainly (nothing is trusted until verified);
* signed by a key in the provider's JWKS (``token_key_unknown``, ``token_signature``).
  The JWKS is cached for ``OIDC_JWKS_TTL_S`` (300 s); a token naming a key the cache
  lacks makes it fetch the JWKS again, at most once per ``OIDC_JWKS_MIN_REFETCH_S``
  (10 s) so a stream of made-up key ids cannot make us hammer the provider. A key the
  provider removed goes out of use at the next fetch (a new key id, or the TTL);
* unexpired (``token_expired``), already valid (``token_not_yet_valid``), with the
  clocks allowed to differ by ``OIDC_CLOCK_SKEW_S`` (30 s, at most 300);
* for us (``token_audience``): an access token's ``aud`` holds ``OIDC_AUDIENCE``, an ID
  token's holds the client id (and ``azp`` is the client id when ``aud`` has others);
* with a subject (``token_claims``), and for an ID token the sign-in's nonce.

Account ids: ``o-`` and 26 base32 characters of SHA-256(issuer, subject). Stable (the
subject is the provider's immutable id for the person), scoped by issuer (two
providers' subjects never collide), and it carries no personal data: the id goes into
Kafka's commands, which cannot be edited or erased, while the name and e-mail stay in
the account store, which can be.

Roles come from the claim ``OIDC_ROLES_CLAIM`` (a dotted path: Keycloak's realm roles
are ``realm_access.roles``; a list or a space-separated string), mapped by
``OIDC_ROLE_MAP`` ("provider-role:role,..."; without a map, provider roles named
seller, funder or reviewer count as themselves). A shop back end's client-credentials
token is its service account's: the same claims, the same mapping.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import logging
import os
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

import aiohttp
from joserfc import jwk, jws, jwt
from joserfc.errors import (
    BadSignatureError,
    ExpiredTokenError,
    InvalidClaimError,
    JoseError,
    MissingClaimError,
)
from joserfc.jwt import JWTClaimsRegistry

from services.api.identity import Identity, Role

log = logging.getLogger("commission.api.oidc")

# asymmetric signatures only; "none" and the HMAC family are never accepted
SAFE_ALGORITHMS = ("RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384",
                   "ES512", "EdDSA")
MAX_TOKEN_CHARS = 16_384
MAX_SKEW_S = 300
HTTP_TIMEOUT_S = 10


class TokenRefused(Exception):
    """A token that is not good: ``code`` is the machine-readable reason."""

    def __init__(self, code: str, detail: str) -> None:
        super().__init__(detail)
        self.code, self.detail = code, detail


def account_id_for(issuer: str, subject: str) -> str:
    """The engine's account id of the provider's subject: opaque, stable, per issuer."""
    digest = hashlib.sha256(issuer.encode() + b"\x00" + subject.encode()).digest()
    return "o-" + base64.b32encode(digest).decode().lower()[:26]


def _secret(name: str) -> str:
    path = os.environ.get(f"{name}_FILE")
    if path:
        return Path(path).read_text().strip()
    return os.environ.get(name, "")


def _role_map(text: str) -> dict[str, Role]:
    if not text.strip():
        return {r.value: r for r in Role}
    out = {}
    for pair in text.split(","):
        if not pair.strip():
            continue
        theirs, _, ours = pair.strip().rpartition(":")
        if not theirs:
            raise SystemExit(f"OIDC_ROLE_MAP: '{pair}' is not provider-role:role")
        try:
            out[theirs] = Role(ours)
        except ValueError:
            raise SystemExit(f"OIDC_ROLE_MAP: '{ours}' is not one of "
                             f"{', '.join(r.value for r in Role)}") from None
    return out


@dataclass(frozen=True)
class OidcSettings:
    issuer: str
    client_id: str
    client_secret: str
    audience: str  # what an access token's aud must hold to be for this API
    display: str = ""  # the provider's name on the sign-in link
    redirect_base: str = ""  # this site as the provider sends browsers back to it
    scopes: str = "openid profile email"
    roles_claim: str = "realm_access.roles"
    role_map: dict[str, Role] = field(default_factory=lambda: {r.value: r for r in Role})
    verified_claim: str = "email_verified"
    created_claim: str = ""  # e.g. a mapped user attribute holding the account's age
    name_claims: tuple[str, ...] = ("name", "preferred_username", "azp")
    algorithms: tuple[str, ...] = SAFE_ALGORITHMS
    skew_s: int = 30
    jwks_ttl_s: int = 300
    jwks_min_refetch_s: float = 10.0

    @classmethod
    def from_env(cls, production: bool = False) -> OidcSettings | None:
        """The settings when ``OIDC_ISSUER`` is set, else None (no provider)."""
        issuer = os.environ.get("OIDC_ISSUER", "").strip().rstrip("/")
        if not issuer:
            return None
        env = os.environ.get
        client_id = env("OIDC_CLIENT_ID", "").strip()
        if not client_id:
            raise SystemExit("OIDC_ISSUER is set but OIDC_CLIENT_ID is not")
        if not _secret("OIDC_CLIENT_SECRET"):
            raise SystemExit("OIDC_ISSUER is set but OIDC_CLIENT_SECRET(_FILE) is not: the "
                             "web sign-in is a confidential client")
        if production and urlsplit(issuer).scheme != "https":
            raise SystemExit("OIDC_ISSUER must be an https URL in production")
        algorithms = tuple(a.strip() for a in env("OIDC_ALGORITHMS", ",".join(SAFE_ALGORITHMS))
                           .split(",") if a.strip())
        unsafe = sorted(set(algorithms) - set(SAFE_ALGORITHMS))
        if unsafe or not algorithms:
            raise SystemExit(f"OIDC_ALGORITHMS: {unsafe or 'empty'} not allowed; choose from "
                             f"{', '.join(SAFE_ALGORITHMS)}")
        skew = int(env("OIDC_CLOCK_SKEW_S", "30"))
        if not 0 <= skew <= MAX_SKEW_S:
            raise SystemExit(f"OIDC_CLOCK_SKEW_S must be 0..{MAX_SKEW_S}")
        return cls(
            issuer=issuer, client_id=client_id, client_secret=_secret("OIDC_CLIENT_SECRET"),
            audience=env("OIDC_AUDIENCE", "").strip() or client_id,
            display=env("OIDC_DISPLAY_NAME", "").strip() or urlsplit(issuer).netloc,
            redirect_base=(env("OIDC_REDIRECT_BASE", "") or env("API_PUBLIC_URL", ""))
            .strip().rstrip("/"),
            scopes=env("OIDC_SCOPES", cls.scopes),
            roles_claim=env("OIDC_ROLES_CLAIM", cls.roles_claim).strip(),
            role_map=_role_map(env("OIDC_ROLE_MAP", "")),
            verified_claim=env("OIDC_VERIFIED_CLAIM", cls.verified_claim).strip(),
            created_claim=env("OIDC_CREATED_CLAIM", "").strip(),
            algorithms=algorithms, skew_s=skew,
            jwks_ttl_s=int(env("OIDC_JWKS_TTL_S", "300")),
            jwks_min_refetch_s=float(env("OIDC_JWKS_MIN_REFETCH_S", "10")))


def _claim(claims: dict, path: str):
    value = claims
    for part in path.split(".") if path else ():
        if not isinstance(value, dict):
            return None
        value = value.get(part)
    return value


def _strings(value) -> Iterable[str]:
    if isinstance(value, str):
        return value.split()
    if isinstance(value, list):
        return (v for v in value if isinstance(v, str))
    return ()


class Provider:
    """The provider's discovery document, JWKS and token checks."""

    def __init__(self, settings: OidcSettings, http: aiohttp.ClientSession | None = None,
                 clock=time.time) -> None:
        self.settings = settings
        self._http = http
        self._clock = clock
        self._metadata: dict | None = None
        self._keys: dict[str, jwk.Key] = {}
        self._fetched_at = float("-inf")  # monotonic time of the last JWKS fetch
        self._lock = asyncio.Lock()

    # --- HTTP -----------------------------------------------------------------------

    def http(self) -> aiohttp.ClientSession:
        if self._http is None or self._http.closed:
            self._http = aiohttp.ClientSession(
                timeout=aiohttp.ClientTimeout(total=HTTP_TIMEOUT_S))
        return self._http

    async def close(self) -> None:
        if self._http is not None:
            await self._http.close()

    async def _get_json(self, url: str) -> dict:
        async with self.http().get(url, headers={"Accept": "application/json"}) as r:
            r.raise_for_status()
            return await r.json(content_type=None)

    async def metadata(self) -> dict:
        """The discovery document (fetched once); its issuer must be ours exactly."""
        if self._metadata is None:
            doc = await self._get_json(
                f"{self.settings.issuer}/.well-known/openid-configuration")
            if doc.get("issuer", "").rstrip("/") != self.settings.issuer:
                raise RuntimeError(f"the discovery document names issuer {doc.get('issuer')!r}"
                                   f", not {self.settings.issuer!r}")
            self._metadata = doc
        return self._metadata

    async def token_request(self, form: dict[str, str]) -> dict:
        """POST to the token endpoint as the confidential client (client_secret_basic)."""
        endpoint = (await self.metadata())["token_endpoint"]
        auth = aiohttp.BasicAuth(self.settings.client_id, self.settings.client_secret)
        async with self.http().post(endpoint, data=form, auth=auth) as r:
            body = await r.json(content_type=None)
            if r.status != 200:
                raise TokenRefused("provider_refused",
                                   f"the provider answered {r.status}: {body.get('error')}")
            return body

    # --- keys -----------------------------------------------------------------------

    async def _fetch_keys(self) -> None:
        doc = await self._get_json((await self.metadata())["jwks_uri"])
        keys: dict[str, jwk.Key] = {}
        for entry in doc.get("keys", []):
            if entry.get("use", "sig") != "sig" or not entry.get("kid"):
                continue  # encryption keys, and keys no token can name
            try:
                keys[entry["kid"]] = jwk.import_key(entry)
            except JoseError:
                log.warning("skipping a JWKS key we cannot read", extra={"topic": entry["kid"]})
        self._keys = keys
        self._fetched_at = time.monotonic()

    async def key(self, kid: str) -> jwk.Key | None:
        """The provider's signing key ``kid``: from the cache while it is fresh, else
        from a new fetch (rate limited)."""
        s = self.settings
        async with self._lock:
            age = time.monotonic() - self._fetched_at
            stale = age >= s.jwks_ttl_s
            if (kid not in self._keys or stale) and age >= s.jwks_min_refetch_s:
                try:
                    await self._fetch_keys()
                except (TimeoutError, aiohttp.ClientError, KeyError, ValueError):
                    # the provider unreachable: keep the keys we have, ask again later
                    log.warning("could not fetch the provider's JWKS; keeping the cached keys")
                    self._fetched_at = time.monotonic()
            return self._keys.get(kid)

    # --- tokens ---------------------------------------------------------------------

    async def verify(self, token: str, *, audience: str, nonce: str | None = None) -> dict:
        """The claims of ``token`` when it passes every check (module docstring), else
        :class:`TokenRefused` with the first failed check's code."""
        s = self.settings
        if not token or len(token) > MAX_TOKEN_CHARS or token.count(".") != 2:
            raise TokenRefused("token_malformed", "not a compact JWT")
        try:
            unverified = jws.extract_compact(token.encode())
            header = unverified.headers()
            peek = json.loads(unverified.payload)
        except (JoseError, ValueError, TypeError):
            raise TokenRefused("token_malformed", "not a compact JWT") from None
        if header.get("alg") not in s.algorithms:
            raise TokenRefused("token_algorithm",
                               f"alg {header.get('alg')!r} is not accepted")
        if not isinstance(peek, dict) or peek.get("iss") != s.issuer:
            raise TokenRefused("token_issuer", "the token is not from this API's provider")
        kid = header.get("kid")
        key = await self.key(kid) if isinstance(kid, str) else None
        if key is None:
            raise TokenRefused("token_key_unknown", "the token's key is not the provider's")
        try:
            claims = jwt.decode(token, key, algorithms=list(s.algorithms)).claims
        except BadSignatureError:
            raise TokenRefused("token_signature", "the signature does not verify") from None
        except JoseError as err:
            raise TokenRefused("token_malformed", f"unreadable token: {err}") from None
        registry = JWTClaimsRegistry(
            now=lambda: int(self._clock()), leeway=s.skew_s,
            iss={"essential": True, "value": s.issuer},
            sub={"essential": True}, exp={"essential": True},
            aud={"essential": True, "value": audience})
        try:
            registry.validate(claims)
        except ExpiredTokenError:
            raise TokenRefused("token_expired", "the token has expired") from None
        except (MissingClaimError, InvalidClaimError) as err:
            if err.claim == "aud":
                raise TokenRefused("token_audience",
                                   "the token is not meant for this API") from None
            if err.claim in ("nbf", "iat"):
                raise TokenRefused("token_not_yet_valid", "the token is not valid yet") from None
            raise TokenRefused("token_claims", str(err)) from None
        if nonce is not None and claims.get("nonce") != nonce:
            raise TokenRefused("token_nonce", "the ID token is not for this sign-in")
        return claims

    async def verify_access_token(self, token: str) -> dict:
        return await self.verify(token, audience=self.settings.audience)

    async def verify_id_token(self, token: str, nonce: str) -> dict:
        claims = await self.verify(token, audience=self.settings.client_id, nonce=nonce)
        aud = claims.get("aud")
        if isinstance(aud, list) and len(aud) > 1 and claims.get("azp") != self.settings.client_id:
            raise TokenRefused("token_audience", "the ID token was issued to another client")
        return claims

    # --- identity -------------------------------------------------------------------

    def identity(self, claims: dict) -> Identity:
        """Who the verified ``claims`` say is asking."""
        s = self.settings
        roles = frozenset(s.role_map[r] for r in _strings(_claim(claims, s.roles_claim))
                          if r in s.role_map)
        name = next((str(claims[c]) for c in s.name_claims
                     if isinstance(claims.get(c), str) and claims[c].strip()), "")
        created = _claim(claims, s.created_claim) if s.created_claim else None
        if isinstance(created, str) and created.isdigit():
            created = int(created)
        if isinstance(created, int) and not isinstance(created, bool) and created > 0:
            created_ms = created if created > 10**11 else created * 1000  # s or ms
        else:
            created_ms = 0  # unknown: the account store sets its first sign-in's
        return Identity(account_id=account_id_for(s.issuer, claims["sub"]),
                        display_name=name[:64], roles=roles, created_ms=created_ms,
                        verified=_claim(claims, s.verified_claim) is True,
                        source=s.issuer)
