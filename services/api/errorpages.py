"""Errors for people (issue #27.5): on the browser's routes an error is an HTML page
that says what happened in words and gives a way back; the JSON API keeps its JSON.

Content negotiation by route, not by guesswork: the pages (``/``, ``/page/...``,
``/oidc/...``) always answer errors in HTML; an address that matches no route gets
HTML when the client asks for it (a browser's ``Accept: text/html``) and JSON
otherwise; every JSON API route answers JSON whatever it is asked, so API clients
and the OpenAPI contract see no change. The page keeps the error's code
(``data-error="..."``) and its status, and headers such as ``Retry-After``.

The middleware sits outside the JSON error middleware (services/api/__main__.py): it
turns the JSON error that middleware or the request guard made into the page, so
every refusal has one code whichever way it is shown.
"""

from __future__ import annotations

import html
import json
from urllib.parse import urlsplit

from aiohttp import web

from services.api import assets
from services.api.guard import safe_next

PAGE_PREFIXES = ("/page/", "/oidc/")
KEPT_HEADERS = ("Retry-After",)

# code -> (title, what happened and what to do, in words)
WORDS: dict[str, tuple[str, str]] = {
    "not_found": ("Page not found", "There is no page at this address: the link may be "
                  "mistyped or out of date."),
    "unknown_certificate": ("Certificate not found", "There is no certificate with this id: "
                            "the link may be mistyped, or the certificate is not in the "
                            "catalogue yet."),
    "unauthenticated": ("Please log in again", "You are not logged in, or your session "
                        "ended (you logged out, or it was idle too long). Log in again, "
                        "then do it once more."),
    "bad_credentials": ("Wrong account or password", "The account name or the password is "
                        "wrong. Try again."),
    "login_throttled": ("Too many failed logins", "Too many failed logins: wait a few minutes "
                        "before trying again."),
    "rate_limited": ("Slow down", "Too many actions in a short time: wait a moment and try "
                     "again."),
    "signup_throttled": ("Too many sign-ups", "Too many sign-ups from your address: try "
                         "again later."),
    "csrf": ("This form is out of date", "The form was opened before your last log in, or in "
             "another session: go back, reload the page and try again."),
    "cross_origin": ("Refused", "This form was sent from another site, so it was refused "
                     "and nothing was done."),
    "forbidden": ("Not yours", "This belongs to another account."),
    "missing_role": ("Not allowed", "Your account does not have the role this needs."),
    "invalid_id": ("Not a valid address", "The address holds an id that is not valid."),
    "invalid_parameter": ("Not a valid address", "The address has a value that is not "
                          "valid."),
    "body_too_large": ("Too large", "What was sent is too large."),
    "internal": ("Something went wrong", "Something went wrong on our side; it has been "
                 "logged. Try again in a moment."),
}


def is_page(request: web.Request) -> bool:
    """Errors of this request are shown as a page."""
    path = request.path
    if path == "/" or path.startswith(PAGE_PREFIXES):
        return True
    unmatched = request.match_info.http_exception is not None
    return unmatched and "text/html" in request.headers.get("Accept", "")


def way_back(request: web.Request, code: str) -> tuple[str, str]:
    """(link, label): the page the visitor came from on this site, else the catalogue.
    Never another site's address (only a Referer of this host, as a path)."""
    referer = urlsplit(request.headers.get("Referer", ""))
    if code not in ("not_found", "unknown_certificate") and referer.netloc == request.host:
        back = safe_next(referer.path + (f"?{referer.query}" if referer.query else ""))
        if back != "/" and back != request.path_qs:
            return back, "Back to the page you were on"
    return "/", "Back to the catalogue"


async def logout_button(request: web.Request) -> str:
    """A signed-in visitor's Log out button, on an error page as on every other page
    (issue #27.6): the page's session if a handler looked it up, else the cookie's."""
    if "page_session" in request:
        session = request["page_session"]
    else:
        cookie, accounts = request.cookies.get("session"), request.app.get("accounts")
        if not cookie or accounts is None:
            return ""
        try:
            found = await accounts.session_identity(cookie)
        except Exception:  # noqa: BLE001 - the error page must render even if the store is down
            return ""
        session = found[0] if found else None
    if session is None:
        return ""
    token = request.app["sessions"].csrf_for(session)
    return (" · <form class='inline' method='post' action='/page/logout'>"
            f"<input type='hidden' name='csrf' value='{html.escape(token)}'>"
            "<button id='logout'>Log out</button></form>")


def render(request: web.Request, status: int, code: str, detail: str,
           headers: dict[str, str] | None = None, logout: str = "") -> web.Response:
    """The error as a page: its title and words, the code, a way back."""
    if code == "not_found" and request.path.startswith("/page/certificates/"):
        code = "unknown_certificate"
    title, words = WORDS.get(code, ("Refused", detail or "This was refused."))
    back, label = way_back(request, code)
    extra = ""
    retry = (headers or {}).get("Retry-After")
    if retry:
        extra = f" Try again in {html.escape(retry)} s."
    if detail and code not in WORDS:
        words = detail
    elif detail and code in ("missing_role", "invalid_id", "invalid_parameter"):
        extra += f" ({html.escape(detail)})"
    e = html.escape
    page = (f"<!doctype html><html lang=en><head><meta charset=utf-8>"
            "<meta name=viewport content='width=device-width, initial-scale=1'>"
            f"<title>{e(title)}</title>{assets.HEAD}</head><body>"
            f"<p><a href='/'>Catalogue</a>{logout}</p>"
            f"<h1 id='error-title'>{e(title)}</h1>"
            f"<p class='warn' id='error' data-error=\"{e(code)}\" data-status=\"{status}\">"
            f"{e(words)}{extra}</p>"
            f"<p><a id='way-back' href='{e(back)}'>{e(label)}</a></p>"
            f"<p><small class='ref'>Error {status}: <code>{e(code)}</code></small></p>"
            "</body></html>")
    kept = {h: v for h, v in (headers or {}).items() if h in KEPT_HEADERS}
    return web.Response(text=page, content_type="text/html", status=status, headers=kept)


@web.middleware
async def middleware(request: web.Request, handler):
    try:
        response = await handler(request)
    except web.HTTPException as exc:
        if exc.status < 400 or not is_page(request):
            raise
        try:
            body = json.loads(exc.text or "{}")
        except ValueError:
            body = {}
        code = body.get("error") or exc.reason.lower().replace(" ", "_")
        return render(request, exc.status, code, body.get("detail") or exc.text or "",
                      dict(exc.headers), await logout_button(request))
    if (response.status >= 400 and response.content_type == "application/json"
            and is_page(request)):
        try:
            body = json.loads(response.body)
        except (TypeError, ValueError):
            return response
        return render(request, response.status, str(body.get("error", "")),
                      str(body.get("detail", "")), dict(response.headers),
                      await logout_button(request))
    return response
