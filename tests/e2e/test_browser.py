"""The web page in headless Chromium (Debian's chromium + chromedriver, via selenium):
alice circulates from the catalogue, bob follows alice's share link and circulates,
carol buys: Buy takes her to the (simulated) payment system's page, she pays, and is
back on the certificate, purchased once the payment system's capture is applied;
alice's earnings page then shows her commission held until the hold ends. Every
page runs under the CSP (no inline script): the countdown still ticks. The
certificate page updates itself (Server-Sent Events, issue #27.4): alice's page shows
bob's share without a reload, a refusal in words styled as one; a cancelled
certificate offers nothing; another visitor's stream shows no one's amounts.
The catalogue groups copies, the withdrawal countdown ticks. A seller, entirely on
the web: creates an offer in the console after a preview, funds it at the payment
system's escrow page, posts it; a share shows on the sharer's earnings page and a
purchase on the console without a reload (issue #27.4); the seller refunds it from
the console. Every page visited passes axe-core's checks (no serious or critical
violation, contrast included) at 1280 and at 390 px, where nothing is wider than the
screen, no amount breaks across lines and every control is labelled; a signed-in
visitor has a Log out button on each (error pages too), and dates read in the
visitor's time zone, the console's chart too (issue #27.6). `make screenshots`
(SCREENSHOTS=1) writes each page shown in the README to docs/screenshots, full
length, at both widths (``<name>-1280.png``, ``<name>-390.png``)."""

from __future__ import annotations

import base64
import os
import shutil
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from datetime import datetime
from functools import cache
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from deploy.localstack import free_port
from schemas import commands as c
from tests.e2e.certificates import cert_id, setup
from tests.e2e.http import call, live_updates, login, wait_for

CHROMIUM, DRIVER = shutil.which("chromium"), shutil.which("chromedriver")
ROOT = Path(__file__).resolve().parents[2]
# axe-core, installed by `make install` (npm ci --prefix deploy/tools); AXE_CORE_JS
# points elsewhere (a worktree whose node_modules lacks it)
AXE = Path(os.environ.get("AXE_CORE_JS")
           or ROOT / "deploy" / "tools" / "node_modules" / "axe-core" / "axe.min.js")
AXE_RUN = """const done = arguments[arguments.length - 1];
axe.run(document, {resultTypes: ['violations']}).then(r => done(r.violations
  .filter(v => v.impact === 'serious' || v.impact === 'critical')
  .map(v => v.id + ' (' + v.impact + '): ' + v.help + ' at ' +
       v.nodes.slice(0, 4).map(n => n.target.join(' ')).join(', '))))
  .catch(e => done(['axe failed: ' + e]));"""


WIDTHS = ((1280, 1000), (390, 844))  # a desktop and a phone (the window's default first)
SCREENSHOTS = os.environ.get("SCREENSHOTS") == "1"
PHONE_CHECKS = """const w = document.documentElement.scrollWidth;
return [w, [...document.querySelectorAll('.amount')]
  .filter(e => e.getClientRects().length > 1).map(e => e.textContent),
 [...document.querySelectorAll('input:not([type=hidden]), select')]
  .filter(e => !e.getAttribute('aria-label') && !e.getAttribute('placeholder'))
  .map(e => e.outerHTML)];"""


@cache
def axe_source() -> str:
    assert AXE.is_file(), f"{AXE} missing: run `npm ci --prefix deploy/tools` (make install)"
    return AXE.read_text()


def accessible(driver, signed_in: bool = True) -> None:
    """The page as loaded passes axe-core (no serious or critical violation, colour
    contrast included) at 1280 and at 390 px; at 390 nothing is wider than the
    screen, no amount is broken across two lines, every control is labelled; a
    signed-in visitor is offered its Log out button."""
    from selenium.webdriver.common.by import By

    where = driver.current_url
    if signed_in:
        assert driver.find_elements(By.ID, "logout"), f"{where}: no Log out button"
    driver.execute_script(axe_source())
    try:
        for width, height in WIDTHS:
            driver.set_window_size(width, height)
            if width < 600:
                wide, split, unlabelled = driver.execute_script(PHONE_CHECKS)
                assert wide <= width, f"{where} is {wide} px wide at {width}"
                assert not split, (where, split)
                assert not unlabelled, (where, unlabelled)
            found = driver.execute_async_script(AXE_RUN)
            assert not found, (f"{where} at {width} px: accessibility violations:\n"
                               + "\n".join(found))
    finally:
        driver.set_window_size(*WIDTHS[0])


@pytest.fixture
def browser(tmp_path):
    if CHROMIUM is None or DRIVER is None:
        pytest.skip("chromium and chromedriver are not installed (deploy/install-system.sh)")
    webdriver = pytest.importorskip("selenium.webdriver")
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic",
                 "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync",
                 "--disable-dev-shm-usage", f"--window-size={WIDTHS[0][0]},{WIDTHS[0][1]}",
                 f"--user-data-dir={tmp_path / 'chrome'}"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(DRIVER), options=options)
    driver.set_page_load_timeout(30)
    driver.set_script_timeout(30)
    yield driver
    driver.quit()


def until(driver, url: str, check, timeout_s: float = 60):
    from selenium.common.exceptions import StaleElementReferenceException

    deadline = time.monotonic() + timeout_s
    while True:
        driver.get(url)
        try:
            found = check(driver)
        except StaleElementReferenceException:  # a live update swapped it: look again
            found = None
        if found:
            return found
        if time.monotonic() > deadline:
            raise AssertionError(f"{url}: not as expected; page was:\n{driver.page_source[:2000]}")
        time.sleep(0.5)


def shot(driver, tmp_path, name: str) -> None:
    """A screenshot: of the window into the test's folder; with SCREENSHOTS=1 (`make
    screenshots`) of the whole page at each width into docs/screenshots."""
    if not SCREENSHOTS:
        driver.save_screenshot(str(tmp_path / f"{name}.png"))
        return
    folder = ROOT / "docs" / "screenshots"
    folder.mkdir(parents=True, exist_ok=True)
    try:
        for width, height in WIDTHS:
            driver.set_window_size(width, height)
            size = driver.execute_cdp_cmd("Page.getLayoutMetrics", {})["cssContentSize"]
            png = driver.execute_cdp_cmd("Page.captureScreenshot", {
                "format": "png", "captureBeyondViewport": True,
                "clip": {"x": 0, "y": 0, "width": width, "scale": 1,
                         "height": min(max(size["height"], height), 4_000)}})["data"]
            (folder / f"{name}-{width}.png").write_bytes(base64.b64decode(png))
    finally:
        driver.set_window_size(*WIDTHS[0])


def log_in(driver, base: str, account: str) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    driver.delete_all_cookies()
    driver.get(base + "/")
    driver.find_element(By.NAME, "account_id").send_keys(account)
    driver.find_element(By.NAME, "password").send_keys(f"demo-{account}")
    driver.find_element(By.ID, "login").click()
    # the click returns before the redirect after login has loaded
    WebDriverWait(driver, 20).until(lambda d: d.find_elements(By.ID, "me"))
    assert driver.find_element(By.ID, "me").text == account


def first_update(port: int, path: str, token: str | None = None) -> str:
    """The first ``update`` event of a live page's stream, as ``token``'s browser
    (its session cookie) gets it."""
    stream, updates = live_updates(port, path, token)
    with stream:
        for update in updates:
            return update
    raise AssertionError(f"{path}: the stream ended without an update")


def live_wait(driver, check, timeout_s: float = 20):
    """Waits for ``check`` on a live page: an element read while an update swaps the
    page's live part in is stale, and is simply read again."""
    from selenium.common.exceptions import StaleElementReferenceException, TimeoutException
    from selenium.webdriver.support.ui import WebDriverWait

    try:
        return WebDriverWait(driver, timeout_s,
                             ignored_exceptions=[StaleElementReferenceException]).until(check)
    except TimeoutException:
        raise AssertionError(f"{driver.current_url}: not as expected after {timeout_s} s; "
                             f"the page shows:\n{driver.find_element('tag name', 'body').text}"
                             ) from None


def click(driver, css: str) -> None:
    """Clicks an element of a live page (an update may swap it in between: look again)."""
    from selenium.webdriver.common.by import By

    live_wait(driver, lambda d: d.find_element(By.CSS_SELECTOR, css).click() or True)


def stream_status(port: int, path: str, token: str) -> int:
    """The status a live page's stream answers ``token``'s browser with."""
    req = urllib.request.Request(f"http://127.0.0.1:{port}{path}",
                                 headers={"Cookie": f"session={token}"})
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status
    except urllib.error.HTTPError as err:
        return err.code


def test_share_and_purchase_in_the_browser(pipeline, browser, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    port, paysim_port = free_port(), free_port()
    base = f"http://127.0.0.1:{port}"
    shared = {"CHECKOUT_TOKEN": f"checkout-{uuid.uuid4().hex}"}
    pipeline.start_all()
    pipeline.start("readmodel")
    pipeline.start("paysim", PAYSIM_PORT=str(paysim_port), **shared)
    pipeline.start("api", API_PORT=str(port), API_OPS_PORT=str(free_port()),
                   PAYMENT_SYSTEM_URL=f"http://127.0.0.1:{paysim_port}", **shared)
    t, cid = int(time.time() * 1000), cert_id("web-lamp")
    pipeline.send(*setup(cid, t, name="Desk lamp", price_minor=4_500, budget_minor=2_000,
                         attached_minor=250, time_limit_s=3_600,
                         thresholds=c.Thresholds(max_circulations=4, warn_at_bp=5_000)))
    gone = cert_id("web-gone")  # cancelled by its seller before anyone shared it
    pipeline.send(*setup(gone, t, name="Old lamp", price_minor=4_000, budget_minor=500,
                         attached_minor=100),
                  c.CancelCertificate(command_id=f"{gone}-cancel", certificate_id=gone,
                                      at_ms=t, account_id="seller"))
    wait_for(port, f"/certificates/{cid}", lambda b: b["status"] == "posted", pipeline=pipeline)

    log_in(browser, base, "alice")
    row = until(browser, base + "/", lambda d: d.find_elements(By.CSS_SELECTOR, "tr.offer"))[0]
    assert "1 of 1 left" in row.text
    shot(browser, tmp_path, "catalogue")
    accessible(browser)
    until(browser, base + "/", lambda d: d.find_elements(By.CLASS_NAME, "cert"))[0].click()
    # the withdrawal countdown ticks in the browser, without a reload
    first = browser.find_element(By.CSS_SELECTOR, "#time-left .countdown").text
    live_wait(browser, lambda d: d.find_element(By.CSS_SELECTOR,
                                                "#time-left .countdown").text != first, 5)
    assert first.startswith("59 min") or first.startswith("1 h"), first
    assert browser.find_element(By.ID, "progress-circulations").text == (
        "shares that count: 0 of 4 (accounts new to this certificate, not its seller or "
        "funder)")
    assert browser.find_element(By.ID, "commission").text == "2.50 EUR"  # one share earns
    assert browser.find_element(By.ID, "budget-left").text == (
        "20.00 EUR of the 20.00 EUR budget is left for sharers.")
    assert browser.find_element(By.ID, "funding").text.startswith("funding confirmed")
    # not in the chain yet: no share link (a friend following it would be refused)
    assert not browser.find_elements(By.ID, "share")
    assert browser.find_elements(By.ID, "share-hint")
    browser.find_element(By.ID, "circulate").click()
    WebDriverWait(browser, 20).until(lambda d: "sent=" in d.current_url)
    # the outcome in place, in words, and the page following the read model by itself
    browser.execute_script("window.notReloaded = true")
    live_wait(browser, lambda d: d.find_element(By.ID, "outcome").text == (
        "Shared: the certificate is in your feed and you hold it now.")
        and "ok" in d.find_element(By.ID, "outcome").get_attribute("class")
        and d.find_element(By.ID, "holder").text == "alice")
    alice_sent = browser.current_url.split("sent=")[1].split("&")[0]
    share_link = browser.find_element(By.ID, "share").get_attribute("value")
    assert share_link.endswith(f"/page/certificates/{cid}?via=alice")
    assert not browser.find_elements(By.ID, "circulate")  # she holds it: would be refused
    # a refusal (sent from another session of alice's: she holds it already), in words
    alice = login(port, "alice")
    _, sent, _ = call(port, "POST", f"/certificates/{cid}/circulate", {}, alice)
    browser.get(f"{base}/page/certificates/{cid}?sent={sent['command_ids'][0]}&did=circulate")
    live_wait(browser, lambda d: "refused" in d.find_element(By.ID, "outcome").get_attribute(
        "class") and d.find_element(By.ID, "outcome").text.startswith(
        "Not shared: you already hold this certificate")
        and d.find_element(By.ID, "outcome").value_of_css_property(
            "background-color") == "rgba(253, 236, 234, 1)")  # not the success's green
    assert "already_holder" not in browser.page_source
    shot(browser, tmp_path, "refusal")
    accessible(browser)  # a certificate before purchase, a refusal shown
    # bob shares it through alice's link from his own session: alice's page follows
    browser.execute_script("window.notReloaded = true")
    _, sent, _ = call(port, "POST", f"/certificates/{cid}/circulate", {"via": "alice"},
                      login(port, "bob"))
    live_wait(browser, lambda d: d.find_element(By.ID, "holder").text == "bob")
    assert browser.execute_script("return window.notReloaded") is True  # no reload
    # the 2nd circulation of at most 4 reaches the 50 % warning ratio: the page warns
    live_wait(browser, lambda d: d.find_elements(By.ID, "warning"), 5)
    # a visitor's stream shows what its page shows: alice's own gain to her only, and
    # her command's outcome to no one else
    dave = login(port, "dave")
    stream = f"/page/certificates/{cid}/live?sent={alice_sent}&did=circulate"
    assert "2.50 EUR pending" in first_update(port, stream, alice)
    for other in (dave, None):
        shown = first_update(port, stream, other)
        assert "held by <b id='holder'>bob</b>" in shown  # the same live page
        assert "EUR pending" not in shown and "id='outcome'" not in shown, shown
    # a cancelled certificate says so and offers nothing the platform would refuse
    browser.get(f"{base}/page/certificates/{gone}")
    assert browser.find_element(By.ID, "state-words").text.startswith("Cancelled by the seller")
    assert not browser.find_elements(By.ID, "circulate")
    assert not browser.find_elements(By.ID, "buy")
    assert "held in escrow" not in browser.page_source

    log_in(browser, base, "bob")
    browser.get(share_link)
    assert browser.find_element(By.ID, "shared-by").text == "Shared with you by alice."
    # the share tree: bob under alice; bob sees his own gain, alice only as a node
    drawn = [(g.get_attribute("data-account"), g.text) for g in
             browser.find_elements(By.CSS_SELECTOR, "#share-tree g.node")]
    named = dict(x for x in drawn if x[0])
    assert set(named) == {"catalogue", "bob"}, drawn
    assert "2.50 EUR pending" in named["bob"], drawn
    assert [text for name, text in drawn if not name] == ["an account"], drawn
    assert browser.find_element(By.ID, "tree-counts").text == "2 accounts shared it: 2 pending"
    shot(browser, tmp_path, "certificate")
    accessible(browser)  # the share tree's labels

    log_in(browser, base, "carol")
    browser.get(f"{base}/page/certificates/{cid}")
    browser.find_element(By.ID, "buy").click()
    # the payment system's page: what is bought, the amount, plainly simulated
    WebDriverWait(browser, 20).until(lambda d: d.find_elements(By.ID, "pay"))
    assert browser.current_url.startswith(f"http://127.0.0.1:{paysim_port}/checkouts/")
    assert "simulated payment" in browser.find_element(By.ID, "simulated").text
    assert browser.find_element(By.ID, "amount").text == "Amount: 45.00 EUR"
    assert "Desk lamp" in browser.find_element(By.ID, "what").text
    shot(browser, tmp_path, "checkout")
    accessible(browser, signed_in=False)  # the payment system's page
    # the visitor's time zone, not the server's: dates are shown in it
    browser.execute_cdp_cmd("Emulation.setTimezoneOverride", {"timezoneId": "Asia/Tokyo"})
    browser.find_element(By.ID, "pay").click()
    WebDriverWait(browser, 20).until(lambda d: d.current_url.startswith(
        f"{base}/page/certificates/{cid}?checkout="))
    until(browser, f"{base}/page/certificates/{cid}",
          lambda d: d.find_element(By.ID, "status").text == "purchased")
    # the buyer is told it bought it; bob shared it last
    assert browser.find_element(By.ID, "buyer").text == "you"
    assert browser.find_element(By.ID, "holder").text == "bob"
    assert not browser.find_elements(By.ID, "buy")
    # the pool's default 14-day hold: the commission is held, the page says until when
    held = browser.find_element(By.ID, "held").text
    assert "Commission of 5.00 EUR" in held and "held until" in held, held
    assert not browser.find_elements(By.ID, "warning")  # bought: no "buy now" warning
    until_utc = browser.find_element(By.CSS_SELECTOR, "#held time").get_attribute("datetime")
    local = datetime.fromisoformat(until_utc).astimezone(ZoneInfo("Asia/Tokyo"))
    assert f"held until {local:%Y-%m-%d %H:%M} (Asia/Tokyo);" in held, (until_utc, held)
    shot(browser, tmp_path, "certificate-bought")
    accessible(browser)  # a certificate after purchase

    log_in(browser, base, "alice")  # earnings are private
    until(browser, f"{base}/page/accounts/alice",
          lambda d: d.find_elements(By.ID, "earn-EUR")
          and d.find_element(By.CSS_SELECTOR, "#earn-EUR .held").text == "2.50 EUR")
    assert browser.find_element(By.CSS_SELECTOR, "#earn-EUR .paid").text == "0.00 EUR"
    shot(browser, tmp_path, "earnings")
    dates = [t.get_attribute("textContent")  # those in a closed History too
             for t in browser.find_elements(By.CSS_SELECTOR, "#gains time")]
    assert dates and all(d.endswith(" (Asia/Tokyo)") for d in dates), dates
    accessible(browser)
    browser.get(base + "/page/no-such-page")  # an error page: still a way to log out
    assert browser.find_element(By.ID, "error-title").text
    accessible(browser)
    a_seller_sells_and_refunds_on_the_web(browser, tmp_path, port, paysim_port)
    pipeline.assert_running()


def test_claim_and_an_accounts_certificates_in_the_browser(pipeline, browser, tmp_path):
    """A claim-triggered pool: the page tells a sharer what it can claim, the Claim
    button claims it, and the account page lists the certificate with the gain."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    port = free_port()
    base = f"http://127.0.0.1:{port}"
    pipeline.start_all()
    pipeline.start("readmodel")
    pipeline.start("api", API_PORT=str(port), API_OPS_PORT=str(free_port()))
    t, cid = int(time.time() * 1000), cert_id("web-claim")
    pipeline.send(*setup(cid, t, name="Kettle", price_minor=3_000, budget_minor=1_000,
                         attached_minor=300, acquisition=c.AcquisitionPolicy(
                             trigger="claim", amount=c.FixedAmount(amount_minor=120))))
    wait_for(port, f"/certificates/{cid}", lambda b: b["status"] == "posted", pipeline=pipeline)

    log_in(browser, base, "dave")
    browser.get(f"{base}/page/certificates/{cid}")
    assert not browser.find_elements(By.ID, "claimable")  # nothing to claim before sharing
    browser.find_element(By.ID, "circulate").click()
    WebDriverWait(browser, 20).until(lambda d: "sent=" in d.current_url)
    claim = until(browser, f"{base}/page/certificates/{cid}",
                  lambda d: d.find_elements(By.ID, "claimable"))[0]
    assert claim.text == "You can claim 1.20 EUR on this certificate."
    until(browser, f"{base}/page/accounts/dave",
          lambda d: d.find_elements(By.CSS_SELECTOR, "#claims a.claim"))
    browser.get(f"{base}/page/certificates/{cid}")
    browser.find_element(By.ID, "claim").click()
    WebDriverWait(browser, 20).until(lambda d: "sent=" in d.current_url)
    sent = browser.current_url
    until(browser, sent, lambda d: d.find_elements(By.ID, "outcome")
          and d.find_element(By.ID, "outcome").text == (
              "Claimed: your commission is pending until the certificate is bought."))
    assert not browser.find_elements(By.ID, "claimable")  # claimed: nothing more to claim
    row = until(browser, f"{base}/page/accounts/dave",
                lambda d: [r for r in d.find_elements(By.CSS_SELECTOR, "#mine tr.mine")
                           if "1.20 EUR" in r.text])[0]
    assert cid in row.text and "(you hold it)" in row.text and "pending" in row.text
    assert "Kettle" in row.text  # the product's name, not only the certificate's id
    assert not browser.find_elements(By.ID, "claims")
    # the earnings line and the feed page (the share counted), reached from the header
    line = browser.find_element(By.ID, f"gain-{cid}")
    assert "Kettle" in line.text and "1.20 EUR" in line.text and "pending" in line.text
    browser.find_element(By.ID, "my-feed").click()
    share = WebDriverWait(browser, 20).until(lambda d: d.find_elements(By.ID, f"share-{cid}"))
    assert share[0].text.startswith("Kettle") and "Counted" in share[0].text
    shot(browser, tmp_path, "feed")
    accessible(browser)
    pipeline.assert_running()


def a_seller_sells_and_refunds_on_the_web(browser, tmp_path, port: int,
                                          paysim_port: int) -> None:
    """The seller's console in the browser (issue #27.1), from a new offer to a refund;
    the earnings page and the console follow the read model by themselves (#27.4).
    Run by the first test, on its services (starting them again costs CI ~10 s)."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    base, paysim = f"http://127.0.0.1:{port}", f"http://127.0.0.1:{paysim_port}"
    wait_for(paysim_port, "/healthz", lambda b: b["ok"])
    zone = "America/New_York"  # the visitor's, not the server's: the chart's dates too
    browser.execute_cdp_cmd("Emulation.setTimezoneOverride", {"timezoneId": zone})

    log_in(browser, base, "seller")
    browser.find_element(By.ID, "console-link").click()
    for field, value in (("name", "Reading lamp"), ("price", "45.00"), ("copies", "2"),
                         ("budget", "20.00"), ("attached", "5.00"), ("earn_amount", "2.00")):
        box = browser.find_element(By.ID, f"f-{field}")
        box.clear()
        box.send_keys(value)
    assert browser.find_element(By.ID, "f-funder").get_attribute("value") == ""  # self-funded
    browser.find_element(By.ID, "preview-button").click()  # says what a share earns
    assert WebDriverWait(browser, 10).until(lambda d: d.find_elements(By.ID, "earns"))[0].text == (
        "Each share that counts earns a fixed 2.00 EUR; 5.00 EUR on show, topped up from a "
        "budget of 20.00 EUR: about 10 shares earn before the budget runs out.")
    browser.find_element(By.ID, "create-button").click()
    WebDriverWait(browser, 10).until(lambda d: "/page/console/offers/" in d.current_url)
    offer_page = urllib.parse.urlsplit(browser.current_url).path
    cid = f"{offer_page.rsplit('/', 1)[1]}-00001"
    live_wait(browser, lambda d: d.find_element(By.ID, "outcome").text
              == "Create the offer: done (4 of 4).")  # 2 copies, a pool on each
    assert browser.find_element(By.ID, "offer-facts").text == (
        "2 copies at 45.00 EUR · funder: seller (the seller)")
    assert "not funded yet" in browser.find_element(By.ID, "copy-1").text

    # funding: the payment system's escrow page; left open, the console says so
    click(browser, "#fund-button")
    WebDriverWait(browser, 10).until(lambda d: d.find_elements(By.ID, "hold"))
    escrow_url = browser.current_url
    assert escrow_url.startswith(f"{paysim}/escrows/es_"), escrow_url
    assert browser.find_element(By.TAG_NAME, "h1").text == "Hold 40.00 EUR in escrow"
    assert "Reading lamp" in browser.find_element(By.ID, "what").text
    accessible(browser, signed_in=False)
    browser.get(base + offer_page)
    assert browser.find_element(By.ID, "funding-state").text == (
        "A funding is open at the payment system: finish it there, or fund again.")
    shot(browser, tmp_path, "console-funding")
    accessible(browser)
    browser.get(escrow_url)
    browser.find_element(By.ID, "hold").click()
    WebDriverWait(browser, 10).until(lambda d: d.current_url.startswith(
        f"{base}{offer_page}?escrow=es_"))
    click(browser, "#copy-1 button.post")  # there once the pipeline applied the funding
    live_wait(browser, lambda d: d.find_element(By.ID, "outcome").text == "Post: done."
              and d.find_element(By.CSS_SELECTOR, "#copy-1 .status").text == "posted")
    assert "funded: the budget is held in escrow" in browser.find_element(By.ID, "copy-1").text

    # alice's earnings page shows her share as it lands, without a reload
    log_in(browser, base, "alice")
    browser.get(base + "/page/accounts/alice")
    assert not browser.find_elements(By.ID, f"gain-{cid}")
    browser.execute_script("window.notReloaded = true")
    history = browser.find_element(By.CSS_SELECTOR, "tr.gain details")  # an earlier gain's
    opened = history.get_attribute("id")
    history.find_element(By.TAG_NAME, "summary").click()
    alice = login(port, "alice")
    assert call(port, "POST", f"/certificates/{cid}/circulate", {}, alice)[0] == 202
    line = live_wait(browser, lambda d: d.find_elements(By.ID, f"gain-{cid}"))[0]
    assert "Reading lamp" in line.text and "2.00 EUR" in line.text and "pending" in line.text
    assert browser.execute_script("return window.notReloaded") is True
    # the History the visitor opened is still open after the update
    assert browser.find_element(By.ID, opened).get_attribute("open") is not None
    seller = login(port, "seller")
    assert stream_status(port, "/page/accounts/alice/live", seller) == 403  # hers only
    assert stream_status(port, "/page/console/live", alice) == 403  # sellers only

    # the console follows a sale as it lands: carol pays at the payment system
    log_in(browser, base, "seller")
    browser.get(base + "/page/console")

    def lamp(d) -> list[str]:  # the offer's row: name, price, copies, funded, shares, ...
        row = [r for r in d.find_elements(By.CSS_SELECTOR, "#offers tr.offer-row")
               if r.text.startswith("Reading lamp")][0]
        return [td.text for td in row.find_elements(By.TAG_NAME, "td")]

    assert lamp(browser)[4:6] == ["1", "0"]  # a share, no purchase yet
    sold = int(browser.find_element(By.ID, "overall-EUR-purchases").text)  # the first test's
    browser.execute_script("window.notReloaded = true")
    status, opened, _ = call(port, "POST", f"/certificates/{cid}/checkout",
                             token=login(port, "carol"))
    assert status == 201, opened
    paid = urllib.request.Request(f"{opened['checkout_url']}/pay", method="POST",
                                  data=b"card=4242+4242+4242+4242")
    with urllib.request.urlopen(paid, timeout=10) as r:  # back to the shop's page
        assert r.status == 200
    live_wait(browser, lambda d: lamp(d)[5] == "1" and d.find_element(
        By.ID, "overall-EUR-purchases").text == str(sold + 1))
    assert browser.execute_script("return window.notReloaded") is True
    assert lamp(browser)[6] == "2.00 EUR"  # spent: alice's commission, held
    for label in browser.find_elements(By.CSS_SELECTOR, "#overall-chart text.when"):
        utc = label.get_attribute("data-datetime")
        local = datetime.fromisoformat(utc.replace("Z", "+00:00")).astimezone(ZoneInfo(zone))
        assert label.get_attribute("textContent") == f"{local:%Y-%m-%d %H:%M} ({zone})"
    assert browser.find_elements(By.CSS_SELECTOR, "#overall-chart rect")
    shot(browser, tmp_path, "console")
    accessible(browser)

    # the refund, from the console
    browser.get(base + offer_page)
    assert browser.find_element(By.CSS_SELECTOR, "#copy-1 .status").text == "purchased"
    click(browser, "#copy-1 button.refund")
    live_wait(browser, lambda d: d.find_element(By.ID, "outcome").text
              == "Refund 45.00 EUR: done."
              and d.find_element(By.CSS_SELECTOR, "#copy-1 .status").text == "refunded")
    assert "ended: what was not paid out went back to the funder" in browser.find_element(
        By.ID, "copy-1").text
    assert not browser.find_elements(By.CSS_SELECTOR, "#copy-1 button")  # nothing to do
