"""Sign-in through a real Keycloak (deploy/keycloak.py: from Maven Central, the realms
of deploy/keycloak imported), against the whole pipeline.

One test, one Keycloak (module-scoped), one pipeline, in the order a shop meets it:
a sharer signs in on Keycloak's own login page in headless Chromium and circulates a
certificate from the web page; the seller calls the JSON API with its Keycloak access
token and the shop's back end with a client-credentials token, and their commands are
accepted; the realm's signing key is rotated through Keycloak's admin REST API (a new
key provider with a higher priority, then the old one removed): the new key's tokens
are accepted, the removed key's refused; a token of another issuer, an expired one,
one for another audience and an unsigned one (``alg: none``) are refused with their
codes. Prints Keycloak's start time and the sign-in latency (`-s` shows them)."""

from __future__ import annotations

import base64
import json
import shutil
import time
import urllib.parse
import urllib.request

import pytest
import redis

from deploy.keycloak import Keycloak
from deploy.localstack import free_port
from services.api.oidc import account_id_for
from tests.e2e.certificates import cert_id, setup
from tests.e2e.http import call, outcome, wait_for

CHROMIUM, DRIVER = shutil.which("chromium"), shutil.which("chromedriver")
REALM = "shop"
SECRETS = {"commission-web": "commission-web-local-secret",
           "shop-backend": "shop-backend-local-secret",
           "other-app": "other-app-local-secret",
           "short-lived": "short-lived-local-secret",
           "realm-keys": "realm-keys-local-secret",
           "commission-api-lookalike": "lookalike-local-secret"}
KEY_PROVIDER = "org.keycloak.keys.KeyProvider"


@pytest.fixture(scope="module")
def keycloak(tmp_path_factory):
    kc = Keycloak(tmp_path_factory.mktemp("keycloak"), free_port())
    try:
        kc.start()
        print(f"\nKeycloak started in {kc.started_in_s:.1f} s")
        yield kc
    finally:
        kc.stop()


def _post_form(url: str, form: dict, token: str | None = None) -> dict:
    req = urllib.request.Request(url, data=urllib.parse.urlencode(form).encode())
    if token:
        req.add_header("Authorization", f"Bearer {token}")
    with urllib.request.urlopen(req, timeout=20) as r:
        return json.loads(r.read())


def _token(kc: Keycloak, client: str, realm: str = REALM, **grant) -> str:
    form = {"client_id": client, "client_secret": SECRETS[client],
            "grant_type": "password" if "username" in grant else "client_credentials",
            **({"scope": "openid"} if "username" in grant else {}), **grant}
    return _post_form(f"{kc.issuer(realm)}/protocol/openid-connect/token", form)["access_token"]


def _admin(kc: Keycloak, method: str, path: str, body=None) -> tuple[int, object, dict]:
    token = _token(kc, "realm-keys")
    req = urllib.request.Request(f"{kc.url}/admin/realms/{REALM}{path}", method=method,
                                 data=None if body is None else json.dumps(body).encode(),
                                 headers={"Authorization": f"Bearer {token}",
                                          "Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=20) as r:
        raw = r.read()
        return r.status, json.loads(raw) if raw else None, dict(r.headers)


def _claims(token: str) -> dict:
    """The payload of a token the test got from Keycloak itself (not verified here)."""
    part = token.split(".")[1]
    return json.loads(base64.urlsafe_b64decode(part + "=" * (-len(part) % 4)))


def _header(token: str) -> dict:
    part = token.split(".")[0]
    return json.loads(base64.urlsafe_b64decode(part + "=" * (-len(part) % 4)))


def _holder(port: int, cid: str) -> str:
    return call(port, "GET", f"/certificates/{cid}")[1]["holder"]


def _refused(port: int, token: str) -> str:
    status, body, _ = call(port, "GET", "/commands/api-none", token=token)
    assert status == 401, (status, body)
    return body["error"]


def _rotate(kc: Keycloak) -> tuple[str, str]:
    """A new RSA key provider above the imported one, then the imported one removed:
    (the old key id, the new key id)."""
    _, realm, _ = _admin(kc, "GET", "")
    _, before, _ = _admin(kc, "GET", "/keys")
    old_kid = next(k["kid"] for k in before["keys"]
                   if k["algorithm"] == "RS256" and k["status"] == "ACTIVE")
    _, providers, _ = _admin(kc, "GET", f"/components?type={KEY_PROVIDER}")
    old = [p for p in providers if p["providerId"] == "rsa-generated"]
    status, _, headers = _admin(kc, "POST", "/components", {
        "name": "rotated-rsa", "providerId": "rsa-generated", "providerType": KEY_PROVIDER,
        "parentId": realm["id"], "config": {"priority": ["200"], "keySize": ["2048"]}})
    assert status == 201, headers
    for provider in old:
        _admin(kc, "DELETE", f"/components/{provider['id']}")
    _, after, _ = _admin(kc, "GET", "/keys")
    kids = {k["kid"] for k in after["keys"] if k["algorithm"] == "RS256"}
    assert old_kid not in kids and len(kids) == 1
    return old_kid, kids.pop()


def _browser(tmp_path):
    if CHROMIUM is None or DRIVER is None:
        pytest.skip("chromium and chromedriver are not installed (deploy/install-system.sh)")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--disable-dev-shm-usage", "--window-size=1000,1200",
                 f"--user-data-dir={tmp_path / 'chrome'}"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(DRIVER), options=options)
    driver.set_page_load_timeout(30)
    return driver


def test_keycloak_sign_in_api_tokens_key_rotation_and_refusals(keycloak, pipeline, stack,
                                                                tmp_path):
    from selenium.common.exceptions import StaleElementReferenceException
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    kc, issuer = keycloak, keycloak.issuer(REALM)
    secret = tmp_path / "oidc-client-secret"
    secret.write_text(SECRETS["commission-web"] + "\n")
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    pipeline.start_all()
    pipeline.start("readmodel")
    pipeline.start("api", API_PORT=str(port), API_OPS_PORT=str(free_port()),
                   OIDC_ISSUER=issuer, OIDC_CLIENT_ID="commission-web",
                   OIDC_CLIENT_SECRET_FILE=str(secret), OIDC_AUDIENCE="commission-api",
                   OIDC_DISPLAY_NAME="Keycloak", OIDC_ROLES_CLAIM="realm_access.roles",
                   OIDC_ROLE_MAP="shop-seller:seller,shop-funder:funder,"
                                 "shop-reviewer:reviewer",
                   OIDC_CLOCK_SKEW_S="1", OIDC_JWKS_MIN_REFETCH_S="1")
    t, cid = int(time.time() * 1000), cert_id("oidc-lamp")
    pipeline.send(*setup(cid, t, name="OIDC lamp", price_minor=4_000, budget_minor=1_000,
                         attached_minor=100))
    wait_for(port, f"/certificates/{cid}", lambda b: b["status"] == "posted", pipeline=pipeline)
    profiles = redis.Redis.from_url(stack.redis_url)
    prefix = f"acct:{pipeline.topics.prefix}"  # the account store's profiles

    # --- the web pages: Keycloak's own login page, then our session ----------------
    ada_sub = _claims(_token(kc, "commission-web", username="ada.sharer",
                             password="ada-local-pass"))["sub"]
    ada = account_id_for(issuer, ada_sub)
    browser = _browser(tmp_path)
    try:
        browser.get(f"{base}/page/certificates/{cid}")
        link = browser.find_element(By.ID, "oidc-login")
        assert link.text == "Sign in with Keycloak"
        link.click()
        WebDriverWait(browser, 30).until(lambda d: d.find_elements(By.ID, "kc-login"))
        assert browser.current_url.startswith(f"{issuer}/protocol/openid-connect/auth?")
        sent = urllib.parse.parse_qs(urllib.parse.urlsplit(browser.current_url).query)
        assert sent["code_challenge_method"] == ["S256"] and sent["nonce"] and sent["state"]
        browser.find_element(By.ID, "username").send_keys("ada.sharer")
        browser.find_element(By.ID, "password").send_keys("ada-local-pass")
        began = time.perf_counter()
        browser.find_element(By.ID, "kc-login").click()
        WebDriverWait(browser, 30).until(lambda d: d.find_elements(By.ID, "me"))
        latency_ms = (time.perf_counter() - began) * 1000
        print(f"\nsign-in latency (Keycloak's login form submitted to our signed-in "
              f"page): {latency_ms:.0f} ms")
        # back where she started, signed in (her name from the claims) under an id
        # that names nobody
        assert browser.current_url == f"{base}/page/certificates/{cid}"
        assert browser.find_element(By.ID, "me").text == "Ada Sharer"
        kept = profiles.hgetall(f"{prefix}{{{ada}}}")
        assert kept[b"name"] == b"Ada Sharer" and kept[b"verified"] == b"1"
        assert kept[b"roles"] == b"" and kept[b"source"] == issuer.encode()
        browser.find_element(By.ID, "circulate").click()
        WebDriverWait(browser, 20).until(lambda d: "sent=" in d.current_url)
        def outcome_line() -> str:
            """The outcome line, "" while there is none (the page updates itself: an
            element found a moment ago can be replaced before its text is read)."""
            try:
                found = browser.find_elements(By.ID, "outcome")
                return found[0].text if found else ""
            except StaleElementReferenceException:
                return ""

        deadline = time.monotonic() + 60
        while not outcome_line() or outcome_line().startswith("Sent:"):  # applied yet?
            assert time.monotonic() < deadline, browser.page_source[:2000]
            time.sleep(0.5)
            browser.refresh()
        assert browser.find_element(By.ID, "outcome").text == (
            "Shared: the certificate is in your feed and you hold it now.")
        assert browser.find_element(By.ID, "holder").text == "Ada Sharer"
        assert _holder(port, cid) == ada  # the id in the commands and the read model
        # a replayed callback (the same state and code) signs nobody in
        browser.delete_all_cookies()
        browser.get(f"{base}/oidc/callback?state={sent['state'][0]}&code=replayed")
        assert '"sign_in_state"' in browser.page_source
    finally:
        browser.quit()

    # --- the JSON API: a person's access token, a back end's client credentials -----
    sam_token = _token(kc, "commission-web", username="sam.seller", password="sam-local-pass")
    sam = account_id_for(issuer, _claims(sam_token)["sub"])
    status, offer, _ = call(port, "POST", "/offers", {"offer_id": "vase", "name": "Vase",
                                                      "price_minor": 2_000, "currency": "EUR"},
                            sam_token)
    assert status == 202, offer
    assert offer["offer_id"] == f"{sam}~vase"
    assert outcome(port, sam_token, offer["command_ids"][0])["status"] == "accepted"
    assert profiles.hget(f"{prefix}{{{sam}}}", "roles") == b"funder,seller"
    backend_token = _token(kc, "shop-backend")
    backend = account_id_for(issuer, _claims(backend_token)["sub"])
    status, shared, _ = call(port, "POST", f"/certificates/{cid}/circulate", {}, backend_token)
    assert status == 202, shared
    assert outcome(port, backend_token, shared["command_ids"][0])["status"] == "accepted"
    assert profiles.hget(f"{prefix}{{{backend}}}", "roles") == b"seller"
    # another account's command is not the back end's to read
    assert call(port, "GET", f"/commands/{offer['command_ids'][0]}",
                token=backend_token)[0] == 404

    # --- key rotation: the new key's tokens in, the removed key's out -------------
    old_kid, new_kid = _rotate(kc)
    assert _header(sam_token)["kid"] == old_kid
    fresh = _token(kc, "commission-web", username="sam.seller", password="sam-local-pass")
    assert _header(fresh)["kid"] == new_kid
    status, body, _ = call(port, "GET", f"/accounts/{sam}/earnings", token=fresh)
    assert status == 200, body
    assert _refused(port, sam_token) == "token_key_unknown"  # still unexpired
    # the expired token (the new key's): Keycloak's "short-lived" client issues tokens
    # for 1 s, and the API allows 1 s of skew
    short_lived = _token(kc, "short-lived", username="ada.sharer", password="ada-local-pass")
    assert _header(short_lived)["kid"] == new_kid

    # --- tokens that are not for us ------------------------------------------------
    elsewhere = _token(kc, "commission-api-lookalike", realm="elsewhere")
    aud = _claims(elsewhere)["aud"]
    assert "commission-api" in ([aud] if isinstance(aud, str) else aud)  # right audience
    assert _refused(port, elsewhere) == "token_issuer"
    other_app = _token(kc, "other-app", username="sam.seller", password="sam-local-pass")
    assert _refused(port, other_app) == "token_audience"
    # past the 1 s of skew on a whole-second clock
    time.sleep(max(0.0, _claims(short_lived)["exp"] + 2.1 - time.time()))
    assert _refused(port, short_lived) == "token_expired"
    header = base64.urlsafe_b64encode(json.dumps(
        {**_header(fresh), "alg": "none"}).encode()).rstrip(b"=").decode()
    unsigned = f"{header}.{fresh.split('.')[1]}."
    assert _refused(port, unsigned) == "token_algorithm"
    # and the good token is still good: each refusal was about its own token
    assert call(port, "GET", f"/accounts/{sam}/earnings", token=fresh)[0] == 200
    # writes are refused the same way, before anything is signed or sent
    assert call(port, "POST", f"/certificates/{cid}/claim", {}, unsigned)[0] == 401
    assert call(port, "POST", "/offers", {"name": "X", "price_minor": 1, "currency": "EUR"},
                elsewhere)[0] == 401
