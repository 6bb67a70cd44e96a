"""Issue 22's attacks on the API and the web pages, each against the real broker and
Redis, all sharing one running site (pipeline, read model, API, simulated payment
system) to keep the module fast:

- a session minted by writing Redis gets 401; a logged-out token is dead;
- ``next=//evil.example`` (and the like) after login stays on the site;
- a cross-site form post (foreign Origin) and a post without the CSRF token are
  refused, and nothing reaches Kafka;
- a 3,000-character id is refused with 400 and never reaches ``commands``;
- an oversized or deeply nested body gets 413/400 and nothing reaches Kafka;
- another account cannot read someone's feed or command outcome;
- every response carries the security headers; /metrics is on the ops port only;
- an offer of N copies counts N against the write limit;
- 90 bad logins at once leave /healthz answering (hashing off the event loop, and
  throttled per account and per address);
- Buy is a checkout: the payment page of the payment system, the capture it
  reports with its own key, and the certificate purchased.
"""

from __future__ import annotations

import hashlib
import http.client
import re
import time
import urllib.parse
import uuid
from dataclasses import dataclass, field

import pytest
import redis

from deploy.localstack import free_port
from services.common.metrics import scrape
from tests.e2e.certificates import cert_id, setup
from tests.e2e.http import call, get, login, outcome, wait_for
from tests.e2e.loginstorm import storm
from tests.e2e.pipeline import Pipeline

CID = cert_id("trust-lamp")
LONG_ID = "x" * 3_000


@dataclass
class Site:
    pipeline: Pipeline
    port: int
    ops_port: int
    paysim_port: int
    redis: redis.Redis
    prefix: str

    @property
    def origin(self) -> str:
        return f"http://127.0.0.1:{self.port}"


@pytest.fixture(scope="module")
def site(stack, tmp_path_factory):
    prefix = f"t-trust-{uuid.uuid4().hex[:8]}"
    pipeline = Pipeline(stack.bootstrap, prefix, tmp_path_factory.mktemp("trust") / "logs",
                        extra_env={"REDIS_URL": stack.redis_url})
    port, ops_port, paysim_port = free_port(), free_port(), free_port()
    shared = {"CHECKOUT_TOKEN": f"checkout-{uuid.uuid4().hex}"}
    try:
        pipeline.start_all()
        pipeline.start("readmodel")
        pipeline.start("paysim", PAYSIM_PORT=str(paysim_port), **shared)
        pipeline.start("api", API_PORT=str(port), API_OPS_PORT=str(ops_port),
                       PAYMENT_SYSTEM_URL=f"http://127.0.0.1:{paysim_port}", **shared)
        wait_for(port, "/readyz", lambda b: b["ok"], pipeline=pipeline)
        client = redis.Redis.from_url(stack.redis_url)
        yield Site(pipeline, port, ops_port, paysim_port, client, f"rm:{prefix}.")
    finally:
        pipeline.stop_all()
        pipeline.sender.close()


# --- a browser, by hand: cookies, forms, no redirects followed --------------------------


@dataclass
class Browser:
    port: int
    cookies: dict[str, str] = field(default_factory=dict)

    def request(self, method: str, path: str, form: dict | None = None,
                headers: dict | None = None, port: int | None = None
                ) -> tuple[int, dict[str, str], str]:
        conn = http.client.HTTPConnection("127.0.0.1", port or self.port, timeout=30)
        body = urllib.parse.urlencode(form).encode() if form is not None else None
        sent = {**({"Content-Type": "application/x-www-form-urlencoded"} if body else {}),
                **({"Cookie": "; ".join(f"{k}={v}" for k, v in self.cookies.items())}
                   if self.cookies else {}), **(headers or {})}
        conn.request(method, path, body=body, headers=sent)
        response = conn.getresponse()
        text = response.read().decode()
        for name, value in response.getheaders():
            if name.lower() == "set-cookie":
                cookie, _, attributes = value.partition(";")
                key, _, val = cookie.partition("=")
                if "max-age=0" in attributes.lower() or not val:
                    self.cookies.pop(key.strip(), None)
                else:
                    self.cookies[key.strip()] = val.strip()
        conn.close()
        return response.status, {k.lower(): v for k, v in response.getheaders()}, text

    def login(self, account: str, next_path: str = "/") -> tuple[int, dict[str, str]]:
        _, _, page = self.request("GET", "/")
        status, headers, _ = self.request(
            "POST", "/page/login", {"account_id": account, "password": f"demo-{account}",
                                    "next": next_path, "csrf": csrf_of(page)},
            headers={"Origin": f"http://127.0.0.1:{self.port}"})
        return status, headers


def csrf_of(page: str) -> str:
    """The page's form token ('' on a page that has none: what a form without one
    posts, so the attack itself is what a test checks)."""
    found = re.search(r"name='csrf' value='([^']+)'", page)
    return found.group(1) if found else ""


def commands_holding(site: Site, marker: bytes) -> list[bytes]:
    return [v for v in site.pipeline.read(site.pipeline.topics.commands) if marker in v]


# --- sessions -----------------------------------------------------------------------------


def test_a_session_written_into_redis_is_not_a_session(site):
    made_up = "made-up-token-" + uuid.uuid4().hex
    # what minted a session before: SHA-256(token) -> account in Redis
    site.redis.set(f"{site.prefix}session:{hashlib.sha256(made_up.encode()).hexdigest()}",
                   "seller", ex=600)
    assert get(site.port, "/accounts/seller/earnings", made_up)[0] == 401
    browser = Browser(site.port, {"session": made_up})
    _, _, page = browser.request("GET", "/page/accounts/seller")
    assert 'id="me"' not in page
    # a real login works, and its logout ends it (for the bearer and for the cookie)
    token = login(site.port, "seller")
    assert get(site.port, "/accounts/seller/earnings", token)[0] == 200
    assert call(site.port, "POST", "/logout", {}, token)[0:2] == (200, {"logged_out": True})
    assert get(site.port, "/accounts/seller/earnings", token)[0] == 401
    browser = Browser(site.port)
    assert browser.login("bob")[0] == 303
    _, _, page = browser.request("GET", "/")
    assert 'id="me"' in page
    status, headers, _ = browser.request("POST", "/page/logout", {"csrf": csrf_of(page)},
                                         headers={"Origin": site.origin})
    assert status == 303 and "session" not in browser.cookies
    _, _, page = browser.request("GET", "/")
    assert 'id="me"' not in page


def test_the_session_cookie_is_httponly_samesite_and_secure_behind_tls(site):
    browser = Browser(site.port)
    status, headers = browser.login("alice")
    assert status == 303
    cookie = headers["set-cookie"].lower()
    assert "httponly" in cookie and "samesite=lax" in cookie and "secure" not in cookie
    assert "strict-transport-security" not in headers
    # X-Forwarded-Proto from an address that is not a trusted proxy changes nothing
    _, headers, _ = browser.request("GET", "/", headers={"X-Forwarded-Proto": "https"})
    assert "strict-transport-security" not in headers


# --- the web pages ------------------------------------------------------------------------


@pytest.mark.parametrize("target", ["//evil.example", "https://evil.example/x",
                                    "/\\evil.example", "//evil.example/%2f.."])
def test_after_login_the_browser_stays_on_the_site(site, target):
    status, headers = Browser(site.port).login("carol", next_path=target)
    assert status == 303 and headers["location"] == "/", headers
    status, headers = Browser(site.port).login("carol", next_path="/page/accounts/carol")
    assert headers["location"] == "/page/accounts/carol"


def test_a_cross_site_form_post_is_refused_and_sends_nothing(site):
    browser = Browser(site.port)
    browser.login("dave")
    _, _, page = browser.request("GET", "/")
    token = csrf_of(page)
    marker = f"csrf-{uuid.uuid4().hex[:8]}"
    action = f"/page/certificates/{CID}/circulate"
    # another site's page posting the form with the visitor's cookie
    status, _, body = browser.request("POST", action, {"csrf": token, "via": marker},
                                      headers={"Origin": "https://evil.example"})
    assert status == 403 and '"cross_origin"' in body
    status, _, body = browser.request("POST", action, {"via": marker},
                                      headers={"Referer": "https://evil.example/page"})
    assert status == 403 and '"cross_origin"' in body
    # same site, but no (or another session's) CSRF token
    for form in ({"via": marker}, {"via": marker, "csrf": "x" * 32}):
        status, _, body = browser.request("POST", action, form,
                                          headers={"Origin": site.origin})
        assert status == 403 and '"csrf"' in body
    # a login form posted from another site
    status, _, _ = Browser(site.port).request(
        "POST", "/page/login", {"account_id": "dave", "password": "demo-dave"},
        headers={"Origin": "https://evil.example"})
    assert status == 403
    # the JSON API with a bearer token: a foreign Origin is refused too
    token_dave = login(site.port, "dave")
    status, body, _ = call(site.port, "POST", f"/certificates/{CID}/circulate",
                           {"via": marker}, token_dave, headers={"Origin": "https://evil.example"})
    assert (status, body["error"]) == (403, "cross_origin")
    # the same form from the site itself goes through
    status, headers, _ = browser.request("POST", action, {"csrf": token},
                                         headers={"Origin": site.origin})
    assert status == 303 and "sent=web-" in headers["location"]
    assert not commands_holding(site, marker.encode())


def test_every_response_carries_the_security_headers_and_metrics_are_not_public(site):
    for path in ("/", f"/page/certificates/{CID}", "/catalogue", "/certificates/nope"):
        _, headers, _ = Browser(site.port).request("GET", path)
        csp = headers["content-security-policy"]
        assert "frame-ancestors 'none'" in csp and "script-src 'self'" in csp
        assert "unsafe-inline" not in csp
        assert headers["x-content-type-options"] == "nosniff"
        assert headers["referrer-policy"] == "same-origin"
    _, _, page = Browser(site.port).request("GET", "/")
    assert "<script>" not in page and "<style>" not in page and "onclick" not in page
    status, _, _ = Browser(site.port).request("GET", "/metrics")
    assert status == 404
    assert any(s.name == "commission_api_requests_total" for s in scrape(site.ops_port))
    assert get(site.ops_port, "/healthz") == (200, {"ok": True})
    assert get(site.port, "/healthz") == (200, {"ok": True})


# --- the JSON API ---------------------------------------------------------------------------


def test_a_3000_character_id_is_refused_and_never_reaches_commands(site):
    alice = login(site.port, "alice")
    for method, path, body in (("POST", f"/certificates/{LONG_ID}/circulate", {}),
                               ("POST", f"/certificates/{CID}/circulate", {"via": LONG_ID}),
                               ("GET", f"/certificates/{LONG_ID}", None),
                               ("GET", f"/commands/{LONG_ID}", None),
                               ("GET", f"/c/{CID}?via={LONG_ID}", None)):
        status, answer, _ = call(site.port, method, path, body, alice)
        assert status in (400, 422) and answer["error"] in ("invalid_id", "invalid_body"), (
            path[:80], status, answer)
    browser = Browser(site.port)
    browser.login("alice")
    _, _, page = browser.request("GET", "/")
    status, _, _ = browser.request("POST", f"/page/certificates/{CID}/circulate",
                                   {"csrf": csrf_of(page), "via": LONG_ID},
                                   headers={"Origin": site.origin})
    assert status == 400
    assert not commands_holding(site, LONG_ID[:100].encode())


def test_oversized_and_deeply_nested_bodies_are_refused_before_decoding(site):
    alice = login(site.port, "alice")
    marker = f"big-{uuid.uuid4().hex[:8]}"
    big = ('{"via": "' + marker + '", "pad": "' + "x" * 100_000 + '"}').encode()
    status, body, _ = call(site.port, "POST", f"/certificates/{CID}/circulate", raw=big,
                           token=alice)
    assert (status, body["error"]) == (413, "body_too_large")
    deep = b'{"via": "' + marker.encode() + b'", "x": ' + b"[" * 5_000 + b"]" * 5_000 + b"}"
    status, body, _ = call(site.port, "POST", f"/certificates/{CID}/circulate", raw=deep,
                           token=alice)
    assert (status, body["error"]) == (400, "too_deep")
    status, body, _ = call(site.port, "POST", "/login", raw=b"[" * 100_000)
    assert status in (400, 413)
    assert not commands_holding(site, marker.encode())
    assert get(site.port, "/healthz") == (200, {"ok": True})


def test_feeds_and_command_outcomes_are_their_owners_only(site):
    alice, bob = login(site.port, "alice"), login(site.port, "bob")
    _, sent, _ = call(site.port, "POST", f"/certificates/{CID}/circulate", {}, alice)
    [command_id] = sent["command_ids"]
    assert call(site.port, "GET", f"/commands/{command_id}", token=alice)[0] == 200
    status, body, _ = call(site.port, "GET", f"/commands/{command_id}", token=bob)
    assert (status, body["error"]) == (404, "unknown_command")
    assert get(site.port, "/accounts/alice/feed", alice)[0] == 200
    assert get(site.port, "/accounts/alice/feed", bob)[0] == 403
    assert get(site.port, "/accounts/alice/feed")[0] == 401
    # the page shows a command's outcome to its sender only
    browser = Browser(site.port)
    browser.login("bob")
    _, _, page = browser.request("GET", f"/page/certificates/{CID}?sent={command_id}")
    assert command_id not in page


def test_an_offer_of_n_copies_counts_n_writes(site):
    seller = login(site.port, "seller")
    time.sleep(1.1)  # the seller's allowance is whole
    started = time.monotonic()
    status, _, _ = call(site.port, "POST", "/offers",
                        {"offer_id": f"many-{uuid.uuid4().hex[:6]}", "name": "Many",
                         "price_minor": 100, "currency": "EUR", "copies": 400}, seller)
    assert status == 202
    # 400 copies at 20 writes/s use 20 s of the seller's allowance (1 s of burst): the
    # next write is refused however long the 400 sends took on a busy machine (a
    # second or two here; with 100 copies a loaded CI ran past the 5 s they cost)
    elapsed = time.monotonic() - started
    assert elapsed < 15, f"the offer took {elapsed:.1f} s"
    status, body, headers = call(site.port, "POST", f"/certificates/{CID}/claim", {}, seller)
    assert (status, body.get("error")) == (429, "rate_limited"), (status, body)
    assert int(headers["Retry-After"]) >= 19 - (time.monotonic() - started)


def test_bad_logins_in_parallel_leave_healthz_answering(site):
    figures = storm(site.port, 90, accounts=tuple(f"guess{i}" for i in range(9)))
    print("login storm:", figures)
    # per address: 50 failures in the window, then 429 without hashing anything
    assert figures["statuses"].get(401, 0) <= 50 and figures["statuses"].get(429, 0) >= 40
    # hashing on the event loop (before issue 22): median ~2,000 ms, p95 ~3,900 ms here
    assert figures["storm_median_ms"] < 100 and figures["storm_p95_ms"] < 300, figures
    status, body, headers = call(site.port, "POST", "/login",
                                 {"account_id": "alice", "password": "demo-alice"})
    assert (status, body["error"]) == (429, "login_throttled")  # this address is throttled
    assert int(headers["Retry-After"]) > 0
    # a wiped counter (or its window passing) lets the address in again
    for key in site.redis.scan_iter(f"{site.prefix}login-fail:*"):
        site.redis.delete(key)
    assert login(site.port, "alice")


# --- Buy: a checkout at the payment system --------------------------------------------------


def test_buy_is_a_checkout_paid_at_the_payment_system(site):
    t = int(time.time() * 1000)
    site.pipeline.send(*setup(CID, t, name="Desk lamp", price_minor=4_500, budget_minor=2_000,
                              attached_minor=250))
    wait_for(site.port, f"/certificates/{CID}", lambda b: b["status"] == "posted",
             pipeline=site.pipeline)
    alice = login(site.port, "alice")
    _, shared, _ = call(site.port, "POST", f"/certificates/{CID}/circulate", {}, alice)
    assert outcome(site.port, alice, shared["command_ids"][0])["status"] == "accepted"
    # the JSON API no longer takes a purchase from the buyer
    carol = login(site.port, "carol")
    status, body, _ = call(site.port, "POST", f"/certificates/{CID}/purchase",
                           {"payment_ref": "never-paid-anything"}, carol)
    assert (status, body["error"]) == (410, "use_checkout")
    status, started, _ = call(site.port, "POST", f"/certificates/{CID}/checkout", {}, carol)
    assert status == 201 and started["checkout_url"].startswith(
        f"http://127.0.0.1:{site.paysim_port}/checkouts/")
    # the web Buy button: a checkout too, the browser sent to the payment page
    browser = Browser(site.port)
    browser.login("carol")
    _, _, page = browser.request("GET", f"/page/certificates/{CID}")
    status, headers, _ = browser.request("POST", f"/page/certificates/{CID}/checkout",
                                         {"csrf": csrf_of(page)},
                                         headers={"Origin": site.origin})
    assert status == 303
    pay_page = urllib.parse.urlsplit(headers["location"])
    assert pay_page.port == site.paysim_port
    payer = Browser(site.paysim_port)
    status, _, page = payer.request("GET", pay_page.path)
    assert status == 200 and "simulated payment" in page and "45.00 EUR" in page
    status, headers, _ = payer.request(
        "POST", f"{pay_page.path}/pay", {"card": "4242 4242 4242 4242"},
        headers={"Origin": f"http://127.0.0.1:{site.paysim_port}"})
    assert status == 303
    back = urllib.parse.urlsplit(headers["location"])
    assert (back.port, back.path) == (site.port, f"/page/certificates/{CID}")
    # the capture went through the payment system's key and the pipeline: purchased
    bought = wait_for(site.port, f"/certificates/{CID}", lambda b: b["status"] == "purchased",
                      pipeline=site.pipeline)
    assert bought["holder"] == "alice"
    _, _, page = browser.request("GET", f"{back.path}?{back.query}")
    assert "id='status'>purchased<" in page
    site.pipeline.assert_running()


def test_guessing_a_password_from_one_place_does_not_lock_its_owner_out(site):
    # behind a proxy (the test's own address, trusted by this second API instance, so
    # X-Forwarded-For names the client): an attacker fails 11 times at bob's password
    # from one address: that address is throttled for bob; bob, from his own, logs in
    port, ops_port = free_port(), free_port()
    site.pipeline.start("api", instance=1, API_PORT=str(port), API_OPS_PORT=str(ops_port),
                        API_TRUSTED_PROXIES="127.0.0.1")
    wait_for(port, "/readyz", lambda b: b["ok"], pipeline=site.pipeline)
    attacker, owner = {"X-Forwarded-For": "203.0.113.7"}, {"X-Forwarded-For": "198.51.100.2"}
    statuses = [call(port, "POST", "/login", {"account_id": "bob", "password": "guess"},
                     headers=attacker)[0] for _ in range(11)]
    assert statuses == [401] * 10 + [429]
    status, body, _ = call(port, "POST", "/login",
                           {"account_id": "bob", "password": "demo-bob"}, headers=owner)
    assert status == 200 and body["token"], body


# --- errors for people (issue #27.5) ------------------------------------------------------


def test_wrong_passwords_unknown_pages_and_ended_sessions_get_pages_with_a_way_back(site):
    origin = {"Origin": site.origin}
    browser = Browser(site.port)
    _, _, page = browser.request("GET", "/")
    status, _, wrong = browser.request(
        "POST", "/page/login", {"account_id": "dave", "password": "not dave's",
                                "next": f"/page/certificates/{CID}", "csrf": csrf_of(page)},
        headers=origin)
    assert status == 401 and "Wrong account or password" in wrong
    assert f"id='way-back' href='/page/certificates/{CID}'" in wrong
    assert csrf_of(wrong) and "id=\"login\"" in wrong  # the form again, to try once more
    assert "session" not in browser.cookies
    for path, title in ((f"/page/certificates/{CID}x", "Certificate not found"),
                        ("/page/nowhere", "Page not found")):
        status, headers, text = browser.request("GET", path)
        assert status == 404 and headers["content-type"].startswith("text/html"), path
        assert title in text and "id='way-back' href='/'" in text, text
    # a browser asking for an address that does not exist gets a page; the API JSON
    status, _, text = browser.request("GET", "/nowhere", headers={"Accept": "text/html"})
    assert status == 404 and "Page not found" in text
    status, body = get(site.port, "/nowhere")
    assert (status, body["error"]) == (404, "not_found")
    assert get(site.port, f"/certificates/{CID}x")[1]["error"] == "unknown_certificate"
    # a form sent after the session ended: a page that says so, back to where it was
    browser.login("dave")
    _, _, page = browser.request("GET", "/")
    token, ended = csrf_of(page), browser.cookies["session"]
    assert browser.request("POST", "/page/logout", {"csrf": token}, headers=origin)[0] == 303
    # a page seen with the ended session's cookie says so once, and drops the cookie
    browser.cookies["session"] = ended
    assert "id='session-ended'" in browser.request("GET", "/")[2]
    assert "session" not in browser.cookies
    assert "id='session-ended'" not in browser.request("GET", "/")[2]
    status, _, text = browser.request(
        "POST", f"/page/certificates/{CID}/circulate", {"csrf": token},
        headers={**origin, "Referer": f"{site.origin}/page/certificates/{CID}"})
    assert status == 401 and "Please log in again" in text
    assert f"href='/page/certificates/{CID}'" in text
