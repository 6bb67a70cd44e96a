"""Sign-in through the shop's identity provider: the authorization code flow.

``GET /oidc/login?next=/path`` starts it: a random ``state``, ``nonce`` and PKCE
verifier (S256) are kept in Redis under the state for ``FLOW_TTL_S`` and the state in a
cookie of this browser (HttpOnly, SameSite=Lax: the provider's redirect back is a
top-level GET, which carries it); the browser goes to the provider's authorization
endpoint (from its discovery document).

``GET /oidc/callback?code&state`` finishes it: the state must be this browser's
cookie's and still in Redis (taken with GETDEL: a flow is used once), so a link
someone else started cannot sign this browser into their account (login CSRF). The
code is exchanged at the token endpoint as the confidential client with the PKCE
verifier; the ID token is verified (services/api/oidc.py, with the flow's nonce);
the identity it gives is kept in the account store (services/api/accountstore.py:
created on the first sign-in, name, roles and verified from the provider's word), and
the store starts the API's own session, as for a password login (services/api/sessions.py):
after the sign-in nothing asks the provider again until the session ends. The
browser goes back to ``next`` (a path on this site only).

Every refusal is a 4xx JSON error with a code (``sign_in_state``, ``provider_refused``,
``token_*``, ``account_erased``: an erased account's subject cannot sign in again under
the same id); nothing is signed in.
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import secrets
import time
from urllib.parse import urlencode

from aiohttp import web

from services.api.accountstore import AccountErased, AccountStore
from services.api.errors import Problem
from services.api.guard import safe_next
from services.api.oidc import OidcSettings, Provider, TokenRefused
from services.api.oidc_bearer import verifier
from services.api.pages import SESSION_COOKIE

log = logging.getLogger("commission.api.oidc")

FLOW_COOKIE = "oidc_flow"
FLOW_TTL_S = 600  # a sign-in left at the provider's page longer than this starts again
CALLBACK = "/oidc/callback"


def _challenge(verifier: str) -> str:
    """PKCE S256 (RFC 7636): base64url(SHA-256(verifier)) without padding."""
    return base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).rstrip(
        b"=").decode()


class SignIn:
    def __init__(self, provider: Provider, store: AccountStore) -> None:
        self.provider = provider
        self.settings = provider.settings
        self.store = store
        self.redis = store.redis
        self.prefix = store.prefix

    def _flow_key(self, state: str) -> str:
        return f"{self.prefix}oidc-flow:{state}"

    def _redirect_uri(self, request: web.Request) -> str:
        base = self.settings.redirect_base or request["trust"].own_origin(request)
        return base + CALLBACK

    async def login(self, request: web.Request) -> web.Response:
        target = safe_next(request.query.get("next", "/"))
        state, nonce = secrets.token_urlsafe(32), secrets.token_urlsafe(32)
        verifier = secrets.token_urlsafe(64)  # 86 characters (RFC 7636: 43-128)
        await self.redis.set(self._flow_key(state), json.dumps(
            {"nonce": nonce, "verifier": verifier, "next": target}), ex=FLOW_TTL_S)
        endpoint = (await self.provider.metadata())["authorization_endpoint"]
        query = urlencode({"response_type": "code", "client_id": self.settings.client_id,
                           "redirect_uri": self._redirect_uri(request),
                           "scope": self.settings.scopes, "state": state, "nonce": nonce,
                           "code_challenge": _challenge(verifier),
                           "code_challenge_method": "S256"})
        request.setdefault("set_cookies", []).append((FLOW_COOKIE, state, FLOW_TTL_S))
        raise web.HTTPSeeOther(f"{endpoint}?{query}")

    async def callback(self, request: web.Request) -> web.Response:
        began = time.perf_counter()
        query = request.query
        state = query.get("state", "")
        request.setdefault("set_cookies", []).append((FLOW_COOKIE, "", 0))  # used once
        if not state or len(state) > 128 or request.cookies.get(FLOW_COOKIE) != state:
            raise Problem(400, "sign_in_state", "this sign-in was not started in this "
                          "browser; start again from the sign-in link")
        raw = await self.redis.getdel(self._flow_key(state))
        if raw is None:
            raise Problem(400, "sign_in_state", "this sign-in has expired or was used; "
                          "start again from the sign-in link")
        flow = json.loads(raw)
        if "error" in query or not query.get("code"):
            raise Problem(401, "provider_refused",
                          f"the provider did not sign you in: {query.get('error', 'no code')}"[:200])
        try:
            tokens = await self.provider.token_request({
                "grant_type": "authorization_code", "code": query["code"][:2048],
                "redirect_uri": self._redirect_uri(request),
                "code_verifier": flow["verifier"]})
            claims = await self.provider.verify_id_token(str(tokens.get("id_token", "")),
                                                         flow["nonce"])
        except TokenRefused as refused:
            raise Problem(401, refused.code, refused.detail) from None
        try:
            identity = await self.store.upsert_external(self.provider.identity(claims))
        except AccountErased:
            raise Problem(403, "account_erased", "this account was erased") from None
        session = await self.store.start_session(identity.account_id)
        if session is None:
            raise Problem(403, "account_erased", "this account was erased")
        request["set_cookies"].append(
            (SESSION_COOKIE, session.token, session.expires_s - int(time.time())))
        log.info("signed in through the provider",
                 extra={"topic": f"{(time.perf_counter() - began) * 1000:.0f} ms"})
        raise web.HTTPSeeOther(safe_next(flow["next"]))


def install(app: web.Application, settings: OidcSettings | None) -> None:
    """The provider's routes, ``app["oidc"]`` and the account store's bearer verifier
    (the JSON API's provider tokens), when ``settings`` is not None."""
    if settings is None:
        return
    provider = Provider(settings)
    store: AccountStore = app["accounts"]
    sign_in = SignIn(provider, store)
    app["oidc"] = provider
    store.bearer_verifier = verifier(provider, store)
    app.router.add_get("/oidc/login", sign_in.login)
    app.router.add_get(CALLBACK, sign_in.callback)

    async def close(app: web.Application) -> None:
        await provider.close()

    app.on_cleanup.append(close)
