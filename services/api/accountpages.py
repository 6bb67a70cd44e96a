"""Joining and leaving: sign-up, the account's own profile, password change, export and
erasure, as JSON endpoints and as plain web forms that say what they do.

JSON (bearer token, as every write):
    POST /accounts             {"login", "password", "display_name", "roles"?}: 201 with
                               a session token; "roles" only from API_SIGNUP_ROLES
    GET  /accounts/me          the profile
    POST /accounts/me/password {"password", "new_password"}: other sessions end
    GET  /accounts/me/export   profile, certificates, gains, payouts (read model)
    POST /accounts/me/erase    {"password"} ({"confirm": account id} for an account
                               without a password: a provider's)
Pages: /page/signup, /page/me (password, export, erase), /page/me/export (the same
JSON as a download). Forms carry the CSRF tokens of services/api/pages.py.

Erasure: the account store forgets the login name, the display name, the password
hash and the roles, and ends every session (services/api/accountstore.py); the
pages then show the opaque id. The read model never held a name: commands, topics
and the read model carry only the opaque id (``u-...``), so the money records stay
as they were and the audit still reconciles; the account's gains stay, unnamed,
where the books need them.
"""

from __future__ import annotations

import json
import time

import msgspec
from aiohttp import web

from services.api.accountstore import AccountStore
from services.api.errors import Problem
from services.api.gains import gain_of
from services.api.guard import read_body
from services.api.identity import Identity, Role
from services.api.pages import LOGIN_NONCE_COOKIE, SESSION_COOKIE, Pages, esc
from services.api.reads import ReadApi
from services.api.roles import signup_roles
from services.api.sessions import Session

EXPORT_LIMIT = 1000  # certificates per list in an export
ROLE_CHOICES = {Role.SELLER: "I want to sell (issue offers)",
                Role.FUNDER: "I fund commission pools"}


class SignUp(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    login: str
    password: str
    display_name: str
    roles: list[str] = []


class PasswordChange(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    password: str
    new_password: str


class Erase(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    password: str | None = None
    confirm: str | None = None


def chosen_roles(names: list[str]) -> frozenset[Role]:
    """The roles a visitor asked for at sign-up: 403 for one not offered."""
    offered = signup_roles()
    roles = set()
    for name in names:
        role = Role._value2member_map_.get(name)
        if role not in offered:
            raise Problem(403, "role_not_offered", f"{name!r} cannot be chosen at sign-up; "
                          f"an operator grants it (offered: {sorted(map(str, offered))})")
        roles.add(role)
    return frozenset(roles)


async def export_of(store: AccountStore, reads: ReadApi, account_id: str) -> dict:
    """Everything the platform holds about the account, from the store and the read
    model: profile, the certificates it holds, shared or may claim, its gain on each,
    and its payouts by currency and status."""
    redis, keys = reads.redis, reads.keys
    ids: dict[str, set[str]] = {}
    for relation, key in (("holds", keys.feed(account_id)), ("shared", keys.shared(account_id)),
                          ("may_claim", keys.claims(account_id))):
        for raw in await redis.zrevrange(key, 0, EXPORT_LIMIT - 1):
            ids.setdefault(raw.decode(), set()).add(relation)
    certificates, gains = [], []
    now = int(time.time() * 1000)
    for cid, relations in ids.items():
        summary = await reads.summary(cid, now)
        state = await reads.state(cid)
        if summary is None or state is None:
            continue
        amount, status = gain_of(state, account_id)
        certificates.append({"certificate_id": cid, "name": summary["name"],
                             "status": summary["status"], "price": summary["price"],
                             "relations": sorted(relations),
                             "holder": state.holder == account_id})
        if status != "none":
            gains.append({"certificate_id": cid, "amount_minor": amount,
                          "currency": state.currency, "status": status})
    return {"exported_at_ms": now, "profile": await store.profile(account_id),
            "certificates": certificates, "gains": gains,
            "payouts": await reads.earnings_of(account_id)}


class AccountPages(Pages):
    def __init__(self, reads: ReadApi) -> None:
        super().__init__(reads)

    @staticmethod
    def store(request: web.Request) -> AccountStore:
        return request.app["accounts"]

    # --- JSON -------------------------------------------------------------------

    async def _bearer(self, request: web.Request) -> tuple[Session | None, Identity]:
        gateway = request.app["gateway"]
        session = await gateway.session(request)
        return session, await gateway.identity(request)

    async def signup_json(self, request: web.Request) -> web.Response:
        body = await read_body(request, SignUp)
        roles = chosen_roles(body.roles)
        address = request["trust"].client_address(request)
        await self.store(request).throttle.signup(address)
        identity = await self.store(request).create(
            login=body.login, password=body.password, display_name=body.display_name,
            roles=roles)
        session = await self.store(request).start_session(identity.account_id)
        return web.json_response({"account_id": identity.account_id, "token": session.token,
                                  "expires_at_s": session.expires_s,
                                  "display_name": identity.display_name,
                                  "roles": sorted(map(str, identity.roles))}, status=201)

    async def me_json(self, request: web.Request) -> web.Response:
        _, identity = await self._bearer(request)
        return web.json_response(await self.store(request).profile(identity.account_id))

    async def password_json(self, request: web.Request) -> web.Response:
        session, _ = await self._bearer(request)
        if session is None:
            raise Problem(403, "not_a_local_session", "change the password at your "
                          "identity provider")
        body = await read_body(request, PasswordChange)
        await self.store(request).change_password(
            session, body.password, body.new_password, request["trust"].client_address(request))
        return web.json_response({"changed": True, "other_sessions": "ended"})

    async def export_json(self, request: web.Request) -> web.Response:
        _, identity = await self._bearer(request)
        return web.json_response(await export_of(self.store(request), self.reads,
                                                 identity.account_id))

    async def erase_json(self, request: web.Request) -> web.Response:
        _, identity = await self._bearer(request)
        body = await read_body(request, Erase)
        await self._confirm_erase(request, identity, body.password, body.confirm)
        await self.store(request).erase(identity.account_id)
        return web.json_response({"erased": identity.account_id})

    async def _confirm_erase(self, request: web.Request, identity: Identity,
                             password: str | None, confirm: str | None) -> None:
        """The account's password (throttled like a login), or for an account without
        one its id typed back: 403 otherwise; nothing is erased by a stolen cookie
        alone."""
        profile = await self.store(request).profile(identity.account_id)
        if profile and profile["has_password"]:
            await self.store(request).check_password(
                identity.account_id, password or "", request["trust"].client_address(request))
        elif confirm != identity.account_id:
            raise Problem(403, "not_confirmed", "type the account id to confirm the erasure")

    # --- pages ------------------------------------------------------------------

    def _signup_form(self, request: web.Request, error: str = "", form=None) -> str:
        form = form or {}
        choices = "".join(
            f"<p><label><input type='checkbox' name='role' value='{esc(r)}' id='role-{esc(r)}'>"
            f" {esc(ROLE_CHOICES.get(r, str(r)))}</label></p>" for r in sorted(signup_roles()))
        warn = f"<p class='warn' id='error'>{esc(error)}</p>" if error else ""
        return (
            f"<h1>Sign up</h1>{warn}<form method='post' action='/page/signup'>"
            f"{self._login_csrf_field(request)}"
            "<p><label>Login name (3-32 of a-z, 0-9, . _ -; you log in with it) "
            f"<input name='login' id='signup-login' required value='{esc(form.get('login', ''))}'>"
            "</label></p><p><label>Display name (what others see) <input name='display_name' "
            f"id='signup-name' required value='{esc(form.get('display_name', ''))}'></label></p>"
            "<p><label>Password (at least 10 characters) <input type='password' "
            "name='password' id='signup-password' required></label></p>"
            f"{choices}<p><button id='signup'>Sign up</button></p></form>"
            "<p>Your login name and display name stay in the account store and nowhere else: "
            "the platform's records (your shares, gains and payouts) carry only an opaque "
            "account id. You can export your data or erase your account from your account "
            "page at any time.</p>")

    async def signup_page(self, request: web.Request) -> web.Response:
        me = await self._me(request)
        body = self._signup_form(request) if me is None else (
            "<p>You are logged in already: log out to sign up another account.</p>")
        return self._layout(request, "Sign up", me, body, "/")

    async def signup(self, request: web.Request) -> web.Response:
        form = await request.post()
        if not request.app["sessions"].login_csrf_ok(request.cookies.get(LOGIN_NONCE_COOKIE, ""),
                                                     str(form.get("csrf", ""))):
            raise Problem(403, "csrf", "the form's token is missing or wrong; reload the page")
        fields = {k: str(form.get(k, ""))[:300] for k in ("login", "display_name", "password")}
        try:
            roles = chosen_roles([str(r) for r in form.getall("role", [])])
            await self.store(request).throttle.signup(request["trust"].client_address(request))
            identity = await self.store(request).create(
                login=fields["login"], password=fields["password"],
                display_name=fields["display_name"], roles=roles)
        except Problem as exc:
            status = exc.response.status
            detail = json.loads(exc.response.body)["detail"]
            return self._layout(request, "Sign up", None,
                                self._signup_form(request, detail, fields), "/", status=status)
        session = await self.store(request).start_session(identity.account_id)
        request.setdefault("set_cookies", []).append(
            (SESSION_COOKIE, session.token, session.expires_s - int(time.time())))
        raise web.HTTPSeeOther("/page/me?welcome=1")

    async def me_page(self, request: web.Request) -> web.Response:
        me = await self._me(request)
        if me is None:
            body = ("<h1>Your account</h1><p>Log in to see your account, or "
                    "<a href='/page/signup'>sign up</a>.</p>")
            return self._layout(request, "Your account", None, body, "/page/me", status=401)
        profile = await self.store(request).profile(me)
        csrf = self._csrf_field(request)
        notes = {"welcome": "Welcome! Your account is ready.",
                 "changed": "Password changed. Every other session of your account has ended."}
        parts = [f"<p class='msg' id='note'>{esc(t)}</p>" for k, t in notes.items()
                 if request.query.get(k)]
        parts.append(
            f"<h1>Your account</h1><ul id='profile'><li>Display name: "
            f"<b id='display-name'>{esc(profile['display_name'])}</b></li>"
            f"<li>Login name: <b id='login-name'>{esc(profile['login'] or '-')}</b></li>"
            f"<li>Account id (what the platform's records carry): <b id='account-id'>"
            f"{esc(me)}</b></li><li>Roles: <b id='roles'>"
            f"{esc(', '.join(profile['roles']) or 'none')}</b></li></ul>"
            f"<p><a href='/page/accounts/{esc(me)}'>Your earnings and certificates</a></p>")
        if profile["has_password"]:
            parts.append(
                "<h2>Change your password</h2><p>Every other session of your account ends; "
                "this one goes on.</p><form method='post' action='/page/me/password'>"
                f"{csrf}<p><label>Current password <input type='password' name='password' "
                "id='current-password' required></label></p><p><label>New password (at least "
                "10 characters) <input type='password' name='new_password' id='new-password' "
                "required></label></p><button id='change-password'>Change password</button>"
                "</form>")
        confirm = ("<p><label>Your password <input type='password' name='password' "
                   "id='erase-password' required></label></p>" if profile["has_password"] else
                   f"<p><label>Type your account id ({esc(me)}) <input name='confirm' "
                   "id='erase-confirm' required></label></p>")
        parts.append(
            "<h2>Export your data</h2><p>Download everything the platform holds about you as "
            "JSON: your profile, the certificates you hold, shared or may claim, your gain "
            "on each, and your payouts.</p><p><a id='export' href='/page/me/export' download>"
            "Download my data</a></p>"
            "<h2>Erase your account</h2><p>Your login name, display name, password and roles "
            "are deleted and every session ends: you cannot log in again, and the login "
            "name is free for anyone to take. Your shares and payouts stay in the books "
            "under the opaque account id only (the money has to reconcile), no longer "
            "linked to any name. This cannot be undone.</p>"
            f"<form method='post' action='/page/me/erase'>{csrf}{confirm}"
            "<button id='erase'>Erase my account</button></form>")
        return self._layout(request, "Your account", me, "".join(parts), "/page/me")

    async def password_page(self, request: web.Request) -> web.Response:
        session, form = await self._form(request)
        try:
            await self.store(request).change_password(
                session, str(form.get("password", ""))[:300],
                str(form.get("new_password", ""))[:300], request["trust"].client_address(request))
        except Problem as exc:
            return self._refused(request, session, exc)
        raise web.HTTPSeeOther("/page/me?changed=1")

    def _refused(self, request: web.Request, session, exc: Problem) -> web.Response:
        """A refused form on the account page, in words, with the way back."""
        detail = json.loads(exc.response.body)["detail"]
        return self._layout(request, "Your account", session.account,
                            f"<p class='warn' id='error'>{esc(detail)}</p>"
                            "<p><a href='/page/me'>Back to your account</a></p>", "/page/me",
                            status=exc.response.status)

    async def export_page(self, request: web.Request) -> web.Response:
        me = await self._me(request)
        if me is None:
            raise Problem(401, "unauthenticated", "log in to export your data")
        data = await export_of(self.store(request), self.reads, me)
        return web.json_response(data, headers={
            "Content-Disposition": f'attachment; filename="account-{me}.json"'})

    async def erase_page(self, request: web.Request) -> web.Response:
        session, form = await self._form(request)
        identity = request["page_identity"]
        try:
            await self._confirm_erase(request, identity, str(form.get("password", ""))[:300],
                                      str(form.get("confirm", ""))[:64])
        except Problem as exc:
            return self._refused(request, session, exc)
        await self.store(request).erase(identity.account_id)
        request.setdefault("set_cookies", []).append((SESSION_COOKIE, "", 0))
        request["page_session"] = request["page_identity"] = None
        return self._layout(request, "Account erased", None,
                            "<h1>Your account is erased</h1><p id='erased'>Your login name, "
                            "display name and password are gone and you are logged out.</p>",
                            "/")


def routes(app: web.Application, reads: ReadApi) -> None:
    pages = AccountPages(reads)
    app.router.add_post("/accounts", pages.signup_json)
    app.router.add_get("/accounts/me", pages.me_json)
    app.router.add_post("/accounts/me/password", pages.password_json)
    app.router.add_get("/accounts/me/export", pages.export_json)
    app.router.add_post("/accounts/me/erase", pages.erase_json)
    app.router.add_get("/page/signup", pages.signup_page)
    app.router.add_post("/page/signup", pages.signup)
    app.router.add_get("/page/me", pages.me_page)
    app.router.add_post("/page/me/password", pages.password_page)
    app.router.add_get("/page/me/export", pages.export_page)
    app.router.add_post("/page/me/erase", pages.erase_page)

