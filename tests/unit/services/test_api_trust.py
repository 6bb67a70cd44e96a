"""The API's trust boundaries without infrastructure: signed sessions (minted only
with the key, expiring, sliding, revocable), CSRF tokens, the post-login redirect,
the JSON nesting check, the API's keyring, and the simulated payment system."""

from __future__ import annotations

import asyncio
import base64
import json

import pytest
from aiohttp.test_utils import TestClient, TestServer

from services.api.__main__ import api_keyring
from services.api.guard import MAX_JSON_DEPTH, json_depth_ok, safe_next
from services.api.sessions import Sessions
from services.common.auth import DEV_KEYS, Keyring
from services.paysim.app import DECLINED_CARD, Simulator, build, payment_system_only

pytestmark = pytest.mark.unit
KEYS = Keyring.parse("gw:gateway:gateway-secret-0123456789,s1:session:session-secret-0123456789")


class Revocations:
    """What Sessions asks of Redis: exists and set."""

    def __init__(self) -> None:
        self.keys: dict[str, bytes] = {}

    async def exists(self, key: str) -> int:
        return int(key in self.keys)

    async def set(self, key: str, value: bytes, ex: int) -> None:
        self.keys[key] = value


def sessions(keys: Keyring = KEYS, **kw) -> Sessions:
    return Sessions(keys, Revocations(), "p:", **kw)


def test_a_token_is_checked_with_the_key_and_nothing_else_makes_one():
    s = sessions()
    session = s.issue("alice", now_s=1_000)
    assert s.parse(session.token, now_s=1_001).account == "alice"
    body, mac = session.token.split(".")
    payload = json.loads(base64.urlsafe_b64decode(body + "=" * (-len(body) % 4)))
    payload[2] = "seller"  # another account under the same signature
    forged = base64.urlsafe_b64encode(json.dumps(payload).encode()).rstrip(b"=").decode()
    assert s.parse(f"{forged}.{mac}", now_s=1_001) is None
    other = Keyring.parse("s1:session:another-secret-0123456789")
    assert sessions(other).parse(session.token, now_s=1_001) is None  # same id, other key
    for junk in ("", "x", "a.b.c", "made-up-token", "." * 600, "e30.e30"):
        assert s.parse(junk, now_s=1_001) is None


def test_idle_timeout_slides_and_the_absolute_lifetime_caps_it():
    s = sessions(idle_s=600, max_s=1_500, refresh_after_s=60)
    first = s.issue("bob", now_s=0)
    assert s.parse(first.token, now_s=599) and s.parse(first.token, now_s=600) is None
    assert s.refreshed(first, now_s=30) is None  # too fresh to re-issue
    second = s.refreshed(first, now_s=500)
    assert second.expires_s == 1_100 and second.session_id == first.session_id
    assert s.parse(second.token, now_s=1_000)  # alive past the first token's idle end
    third = s.refreshed(second, now_s=1_000)
    assert third.expires_s == 1_500  # capped by the absolute lifetime
    assert s.parse(third.token, now_s=1_499) and s.parse(third.token, now_s=1_500) is None
    assert s.csrf_for(first) == s.csrf_for(third)  # one form token per session
    assert s.csrf_ok(third, s.csrf_for(first)) and not s.csrf_ok(third, "")
    assert s.csrf_for(s.issue("bob", now_s=0)) != s.csrf_for(first)


def test_logout_revokes_every_token_of_the_session():
    s = sessions()

    async def run():
        session = s.issue("carol")
        assert await s.check(session.token)
        again = s.refreshed(session, now_s=session.minted_s + 120)
        await s.revoke(session)
        assert await s.check(session.token) is None
        assert await s.check(again.token) is None
        assert await s.check(s.issue("carol").token)  # a new login is a new session

    asyncio.run(run())


def test_the_login_form_token_is_bound_to_its_browser_nonce():
    s = sessions()
    token = s.login_csrf_for("nonce-a")
    assert s.login_csrf_ok("nonce-a", token)
    assert not s.login_csrf_ok("nonce-b", token) and not s.login_csrf_ok("", token)
    assert not s.login_csrf_ok("nonce-a", "")


@pytest.mark.parametrize("target", [
    "//evil.example", "//evil.example/path", "https://evil.example", "http:evil.example",
    "/\\evil.example", "\\\\evil.example", "javascript:alert(1)", "/\t/evil.example",
    "/ /evil.example", "evil.example", "", "/%0a/x\n", "///evil.example"])
def test_no_destination_after_login_leaves_the_site(target):
    assert safe_next(target) == "/"


def test_a_path_on_the_site_is_kept():
    assert safe_next("/page/certificates/seller~lamp-00001?via=alice") == (
        "/page/certificates/seller~lamp-00001?via=alice")
    assert safe_next("/") == "/"


def test_the_sites_own_origin_is_its_configured_address_not_the_host_header():
    from aiohttp.test_utils import make_mocked_request

    from services.api.guard import Trust

    request = make_mocked_request("POST", "/page/login", headers={"Host": "evil.example"})
    assert Trust().own_origin(request) == "http://evil.example"  # nothing configured
    pinned = Trust(public_origin="https://shop.example")
    assert pinned.own_origin(request) == "https://shop.example"
    assert pinned.same_site(request, "https://shop.example")
    assert not pinned.same_site(request, "http://evil.example")
    proxied = make_mocked_request("GET", "/", headers={"X-Forwarded-Proto": "https"})
    assert not Trust().is_tls(proxied)  # no trusted proxy: the header is ignored
    assert Trust(tls=True).is_tls(proxied)


def test_json_nesting_is_measured_on_the_bytes():
    assert json_depth_ok(b"[" * MAX_JSON_DEPTH + b"]" * MAX_JSON_DEPTH)
    assert not json_depth_ok(b"[" * (MAX_JSON_DEPTH + 1) + b"]" * (MAX_JSON_DEPTH + 1))
    assert not json_depth_ok(b'{"a":' * 10_000)  # no decoder recursion needed to say so
    assert json_depth_ok(b'{"a": "' + b"[{" * 1_000 + b'", "b": "\\"[["}')  # in strings


def test_the_api_keeps_only_its_gateway_and_session_keys():
    dev = Keyring.parse(DEV_KEYS)
    kept = api_keyring(dev, production=False)
    assert {k.scope for k in kept.keys.values()} == {"gateway", "session"}
    with pytest.raises(SystemExit, match="only gateway and session keys"):
        api_keyring(dev, production=True)
    assert api_keyring(KEYS, production=True).keys == KEYS.keys


def test_the_payment_system_refuses_engine_keys():
    with pytest.raises(SystemExit, match="only payments keys"):
        payment_system_only(KEYS)


class Capturer:
    def __init__(self) -> None:
        self.captured: list[dict] = []

    def capture(self, **kw) -> str:
        self.captured.append(kw)
        return f"capture:{kw['payment_ref']}"

    def close(self) -> None:
        pass


ORDER = {"certificate_id": "seller~lamp-00001", "seller_id": "seller", "buyer_id": "carol",
         "amount_minor": 4_500, "currency": "EUR", "description": "Desk lamp",
         "return_url": "http://127.0.0.1:8080/page/certificates/seller~lamp-00001"}


def test_the_simulated_payment_system_opens_checkouts_for_the_api_only_and_captures_once():
    capturer = Capturer()

    async def run():
        app = build(Simulator(capturer, "checkout-token-0123456789", "http://127.0.0.1:8090"))
        async with TestClient(TestServer(app)) as client:
            refused = await client.post("/checkouts", json=ORDER)
            assert refused.status == 401
            wrong = await client.post("/checkouts", json=ORDER,
                                      headers={"Authorization": "Bearer guess"})
            assert wrong.status == 401
            opened = await client.post(
                "/checkouts", json=ORDER,
                headers={"Authorization": "Bearer checkout-token-0123456789"})
            assert opened.status == 201
            answer = await opened.json()
            assert answer["url"] == f"http://127.0.0.1:8090/checkouts/{answer['checkout_id']}"
            page = await client.get(f"/checkouts/{answer['checkout_id']}")
            text = await page.text()
            assert "simulated payment" in text and "45.00 EUR" in text and "Desk lamp" in text
            assert "form-action 'self' http://127.0.0.1:8080" in page.headers[
                "Content-Security-Policy"]
            pay = f"/checkouts/{answer['checkout_id']}/pay"
            declined = await client.post(pay, data={"card": DECLINED_CARD})
            assert declined.status == 402 and not capturer.captured
            foreign = await client.post(pay, data={"card": "4242"},
                                        headers={"Origin": "http://evil.example"})
            assert foreign.status == 403 and not capturer.captured
            for _ in range(2):  # paid twice: captured once, both go back to the shop
                paid = await client.post(pay, data={"card": "4242 4242 4242 4242"},
                                         allow_redirects=False)
                assert paid.status == 303
                assert paid.headers["Location"] == (
                    f"{ORDER['return_url']}?checkout={answer['checkout_id']}")
            [captured] = capturer.captured
            assert captured["captured_minor"] == 4_500 and captured["buyer_id"] == "carol"
            assert captured["payment_ref"].startswith("pay_")
            assert (await client.get("/checkouts/co_nope")).status == 404

    asyncio.run(run())
