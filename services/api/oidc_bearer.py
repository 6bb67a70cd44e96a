"""The provider's access tokens as bearer tokens on the JSON API.

The account store asks ``store.bearer_verifier`` about a bearer token that is not one
of our sessions (services/api/accountstore.py, ``identify``); with a provider
configured, that is :func:`verifier`'s function: the provider's access token
(services/api/oidc.py: signature by the JWKS, issuer, audience, expiry), a person's
or a shop back end's client-credentials token (its service account) alike. The
identity its claims give is kept in the account store (created on first use, name,
roles and verified updated from the provider's word), so the gateway's role checks
read it like any other account's; the provider's token stays the credential (it is
never swapped for one of our sessions; when it expires the client gets a new one).

A token that is a JWT but fails a check is a 401 with that check's code
(``token_expired``, ``token_issuer``, ...); an erased account's token is a 403
``account_erased``; anything that is not a JWT is no identity (the caller's usual 401
``unauthenticated``).
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable

from services.api.accountstore import AccountErased, AccountStore
from services.api.errors import Problem
from services.api.identity import Identity
from services.api.oidc import Provider, TokenRefused

# an identity is written to the store at most this often per account while the
# provider's word about it is unchanged (a client sends many requests with one token)
REFRESH_PROFILE_S = 60
MAX_REMEMBERED = 10_000


def verifier(provider: Provider, store: AccountStore
             ) -> Callable[[str], Awaitable[Identity | None]]:
    recent: dict[str, tuple[float, Identity, Identity]] = {}

    async def kept(identity: Identity) -> Identity:
        """The identity as the store keeps it (its first use's created_ms)."""
        now = time.monotonic()
        seen = recent.get(identity.account_id)
        if seen is not None and now - seen[0] < REFRESH_PROFILE_S and seen[1] == identity:
            return seen[2]
        try:
            stored = await store.upsert_external(identity)
        except AccountErased:
            raise Problem(403, "account_erased", "this account was erased") from None
        if len(recent) >= MAX_REMEMBERED:
            recent.clear()
        recent[identity.account_id] = (now, identity, stored)
        return stored

    async def verify(token: str) -> Identity | None:
        if token.count(".") != 2:
            return None  # not a JWT: not the provider's
        try:
            claims = await provider.verify_access_token(token)
        except TokenRefused as refused:
            raise Problem(401, refused.code, refused.detail,
                          **{"WWW-Authenticate": f'Bearer error="invalid_token", '
                                                 f'error_description="{refused.code}"'}) from None
        return await kept(provider.identity(claims))

    return verify
