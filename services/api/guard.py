"""What every request and response of the public port goes through before a handler
sees it: body limits, id checks, the cross-site check, security headers, cookies.

Choices (issue 22, point 5):

- **TLS.** The API itself listens in plain HTTP behind a TLS-terminating proxy. A
  request counts as served over TLS when ``API_TLS=1`` (the site is only ever served
  over TLS), or when it comes from an address in ``API_TRUSTED_PROXIES`` and says
  ``X-Forwarded-Proto: https``. Only then are cookies ``Secure`` and HSTS sent. The
  same trusted proxies are believed about the client address (``X-Forwarded-For``,
  the last hop not a trusted proxy), which login throttling counts by; anyone else's
  forwarding headers are ignored.
- **Cross-site requests.** Any request that is not GET/HEAD/OPTIONS and carries an
  ``Origin`` that is not this site's own (or ``API_ALLOWED_ORIGINS``) gets 403
  ``cross_origin``: the JSON API too. Browsers send Origin on every cross-site POST;
  non-browser clients usually send none, and are then judged by their bearer token
  alone. This site's own origin is ``API_PUBLIC_URL`` when set (production should
  set it), else the request's scheme and Host. Form posts of the web pages
  (``/page/...``) must in addition carry the session's CSRF token
  (services/api/pages.py); a form post without Origin is judged by its Referer the
  same way. The JSON API authenticates with a bearer token that
  a browser never attaches by itself, so it needs no CSRF token.
- **Bodies.** At most ``MAX_BODY_BYTES`` (413 ``body_too_large``, before reading when
  Content-Length says so; aiohttp stops a chunked body at the same size) and at most
  ``MAX_JSON_DEPTH`` levels of JSON nesting (400 ``too_deep``, checked on the bytes
  before decoding): nothing of such a request reaches Kafka.
- **Ids** in the path (``{id}``) and in ``via``/``sent``/``checkout`` parameters are
  schemas.types.Id (1-64 of ``[A-Za-z0-9._:@~-]``), else 400 ``invalid_id``.
- **Headers** on every response: a CSP with no inline script or style (the pages
  load /static/site.css and /static/site.js), ``frame-ancestors 'none'``, nosniff,
  ``Referrer-Policy: same-origin``, ``Cache-Control: no-store`` whenever the request
  carried a session, and HSTS over TLS.
"""

from __future__ import annotations

import ipaddress
import os
import re
from dataclasses import dataclass
from http.cookies import SimpleCookie
from urllib.parse import urlsplit

import msgspec
from aiohttp import web

from services.api.errors import Problem, problem

MAX_BODY_BYTES = 64 * 1024
MAX_JSON_DEPTH = 16  # the deepest valid body (an offer's terms) nests 3 levels
ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:@~-]{0,63}")
ID_RULE = "an id is 1-64 characters of [A-Za-z0-9._:@~-], starting with a letter or digit"
SAFE_METHODS = ("GET", "HEAD", "OPTIONS")


@dataclass(frozen=True)
class Trust:
    tls: bool = False  # API_TLS=1: always served over TLS
    trusted_proxies: frozenset[str] = frozenset()
    allowed_origins: frozenset[str] = frozenset()
    # where the browser is sent for a checkout (the forms may be redirected there)
    payment_origin: str = ""
    # API_PUBLIC_URL: the site's own address as browsers see it; when set, the Origin
    # check, share links and checkout return addresses use it instead of trusting
    # the request's Host header
    public_origin: str = ""

    @classmethod
    def from_env(cls, payment_public_url: str = "") -> Trust:
        def words(name: str) -> frozenset[str]:
            return frozenset(x.strip() for x in os.environ.get(name, "").split(",") if x.strip())

        return cls(tls=os.environ.get("API_TLS") == "1",
                   trusted_proxies=frozenset(str(ipaddress.ip_address(x))
                                             for x in words("API_TRUSTED_PROXIES")),
                   allowed_origins=words("API_ALLOWED_ORIGINS"),
                   payment_origin=origin_of(payment_public_url) or "",
                   public_origin=origin_of(os.environ.get("API_PUBLIC_URL", "")) or "")

    # --- who is asking, and how -----------------------------------------------------

    def _from_proxy(self, request: web.Request) -> bool:
        return request.remote is not None and request.remote in self.trusted_proxies

    def is_tls(self, request: web.Request) -> bool:
        if self.tls or request.secure:
            return True
        if self._from_proxy(request):
            proto = request.headers.get("X-Forwarded-Proto", "").split(",")[0].strip()
            return proto.lower() == "https"
        return False

    def client_address(self, request: web.Request) -> str:
        if self._from_proxy(request):
            hops = [h.strip() for h in request.headers.get("X-Forwarded-For", "").split(",")
                    if h.strip()]
            for hop in reversed(hops):
                if hop not in self.trusted_proxies:
                    return hop[:64]
        return request.remote or "unknown"

    def own_origin(self, request: web.Request) -> str:
        if self.public_origin:
            return self.public_origin
        host = request.host
        if self._from_proxy(request) and request.headers.get("X-Forwarded-Host"):
            host = request.headers["X-Forwarded-Host"].split(",")[0].strip()
        return f"{'https' if self.is_tls(request) else 'http'}://{host}".lower()

    def same_site(self, request: web.Request, origin: str) -> bool:
        origin = origin.lower().rstrip("/")
        return origin == self.own_origin(request) or origin in self.allowed_origins

    # --- cookies ------------------------------------------------------------------

    def cookie(self, request: web.Request, name: str, value: str, max_age: int) -> str:
        """A Set-Cookie value: HttpOnly, SameSite=Lax, Path=/, Secure over TLS."""
        jar: SimpleCookie = SimpleCookie()
        jar[name] = value
        morsel = jar[name]
        morsel["path"] = "/"
        morsel["httponly"] = True
        morsel["samesite"] = "Lax"
        morsel["max-age"] = str(max_age)
        if self.is_tls(request):
            morsel["secure"] = True
        return morsel.OutputString()

    def set_cookie(self, request: web.Request, response: web.StreamResponse, name: str,
                   value: str, max_age: int) -> None:
        response.headers.add("Set-Cookie", self.cookie(request, name, value, max_age))

    def csp(self) -> str:
        forms = f"'self' {self.payment_origin}".strip()
        return ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "
                f"connect-src 'self'; form-action {forms}; frame-ancestors 'none'; "
                "base-uri 'none'")


def origin_of(url: str) -> str | None:
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        return None
    return f"{parts.scheme}://{parts.netloc}".lower()


def safe_next(target: str) -> str:
    """A post-login destination on this site only: a path, never another host.
    ``//evil``, ``/\\evil``, ``https://evil``, ``javascript:``, control characters and
    anything with a scheme or host fall back to ``/``."""
    if (not target.startswith("/") or target.startswith("//") or "\\" in target
            or len(target) > 512 or any(ord(ch) < 0x21 or ord(ch) == 0x7F for ch in target)):
        return "/"
    parts = urlsplit(target)
    if parts.scheme or parts.netloc:
        return "/"
    return target


def json_depth_ok(raw: bytes, limit: int = MAX_JSON_DEPTH) -> bool:
    """Whether ``raw`` nests at most ``limit`` arrays/objects deep: a scan of the
    bytes (brackets inside strings do not count), before any decoder recurses."""
    depth = 0
    in_string = escaped = False
    for byte in raw:
        if in_string:
            if escaped:
                escaped = False
            elif byte == 0x5C:  # backslash
                escaped = True
            elif byte == 0x22:  # quote
                in_string = False
        elif byte == 0x22:
            in_string = True
        elif byte in (0x5B, 0x7B):  # [ {
            depth += 1
            if depth > limit:
                return False
        elif byte in (0x5D, 0x7D):
            depth -= 1
    return True


def check_json(raw: bytes) -> None:
    """Problem 413/400 for a body too large or nested too deep, before decoding."""
    if len(raw) > MAX_BODY_BYTES:
        raise Problem(413, "body_too_large", f"a body is at most {MAX_BODY_BYTES} bytes")
    if not json_depth_ok(raw):
        raise Problem(400, "too_deep", f"JSON nests at most {MAX_JSON_DEPTH} levels")


def middleware(trust: Trust):
    """The request checks, in order: size, ids, origin. Returns the middleware."""

    @web.middleware
    async def guard(request: web.Request, handler):
        request["trust"] = trust
        if request.method not in SAFE_METHODS:
            length = request.content_length
            if length is not None and length > MAX_BODY_BYTES:
                return problem(413, "body_too_large",
                               f"a body is at most {MAX_BODY_BYTES} bytes")
            origin = request.headers.get("Origin")
            if origin is None and request.path.startswith("/page/"):
                origin = origin_of(request.headers.get("Referer", "")) or None
            if origin is not None and not trust.same_site(request, origin):
                return problem(403, "cross_origin",
                               "a request from another site is refused")
        for name, value in request.match_info.items():
            if name == "id" and not ID.fullmatch(value):
                return problem(400, "invalid_id", ID_RULE)
        for name in ("via", "sent", "checkout"):
            value = request.query.get(name)
            if value and not ID.fullmatch(value):
                return problem(400, "invalid_id", f"{name}: {ID_RULE}")
        try:
            return await handler(request)
        except web.HTTPRequestEntityTooLarge:
            return problem(413, "body_too_large", f"a body is at most {MAX_BODY_BYTES} bytes")

    return guard


def on_prepare(trust: Trust):
    """Adds the security headers (and a re-issued session cookie or token) to every
    response, errors included."""

    async def prepare(request: web.Request, response: web.StreamResponse) -> None:
        h = response.headers
        h.setdefault("Content-Security-Policy", trust.csp())
        h.setdefault("X-Content-Type-Options", "nosniff")
        h.setdefault("X-Frame-Options", "DENY")
        h.setdefault("Referrer-Policy", "same-origin")
        if trust.is_tls(request):
            h.setdefault("Strict-Transport-Security", "max-age=31536000; includeSubDomains")
        if "Authorization" in request.headers or "session" in request.cookies:
            h.setdefault("Cache-Control", "no-store")  # not in a shared cache
        for name, value, max_age in request.get("set_cookies", ()):
            trust.set_cookie(request, response, name, value, max_age)
        if request.get("session_token"):
            h["Session-Token"] = request["session_token"]

    return prepare


async def read_body(request: web.Request, kind: type):
    """The request's JSON body as ``kind``: 400 / 413 / 422 with a code otherwise."""
    raw = await request.read()
    check_json(raw)  # size and nesting, before any decoder sees it
    try:
        return msgspec.json.decode(raw or b"{}", type=kind)
    except msgspec.ValidationError as err:
        raise Problem(422, "invalid_body", str(err)) from None
    except msgspec.DecodeError:
        raise Problem(400, "malformed_json", "the body is not JSON") from None
