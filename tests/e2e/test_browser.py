"""The web page in headless Chromium (Debian's chromium + chromedriver, via selenium):
alice circulates from the catalogue, bob follows alice's share link and circulates,
carol buys: Buy takes her to the (simulated) payment system's page, she pays, and is
back on the certificate, purchased once the payment system's capture is applied;
alice's earnings page then shows her commission held until the hold ends. Every
page runs under the CSP (no inline script): the countdown still ticks. The
certificate page updates itself (Server-Sent Events, issue #27.4): alice's page shows
bob's share without a reload, a refusal in words styled as one; a cancelled
certificate offers nothing; another visitor's stream shows no one's amounts.
The catalogue groups copies, the withdrawal countdown ticks, the pages fit a phone;
screenshots go to docs/screenshots with `make screenshots`. Every page visited passes
axe-core's checks (no serious or critical violation, contrast included), a signed-in
visitor has a Log out button on each (error pages too), and dates read in the
visitor's time zone (issue #27.6)."""

from __future__ import annotations

import os
import shutil
import time
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
from tests.e2e.http import call, login, wait_for

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


@cache
def axe_source() -> str:
    assert AXE.is_file(), f"{AXE} missing: run `npm ci --prefix deploy/tools` (make install)"
    return AXE.read_text()


def accessible(driver, signed_in: bool = True) -> None:
    """The page as loaded passes axe-core (no serious or critical violation, colour
    contrast included) and, for a signed-in visitor, offers its Log out button."""
    from selenium.webdriver.common.by import By

    where = driver.current_url
    if signed_in:
        assert driver.find_elements(By.ID, "logout"), f"{where}: no Log out button"
    driver.execute_script(axe_source())
    found = driver.execute_async_script(AXE_RUN)
    assert not found, f"{where}: accessibility violations:\n" + "\n".join(found)


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
                 "--disable-dev-shm-usage", "--window-size=1000,1400",
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
    """A screenshot: into the test's folder, or docs/screenshots with SCREENSHOTS=1
    (`make screenshots`)."""
    folder = ROOT / "docs" / "screenshots" if os.environ.get("SCREENSHOTS") == "1" else tmp_path
    folder.mkdir(parents=True, exist_ok=True)
    driver.save_screenshot(str(folder / f"{name}.png"))


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
    req = urllib.request.Request(f"http://127.0.0.1:{port}{path}")
    if token:
        req.add_header("Cookie", f"session={token}")
    with urllib.request.urlopen(req, timeout=10) as stream:
        assert stream.headers["Content-Type"].startswith("text/event-stream")
        name, data = "", []
        for raw in stream:
            line = raw.decode().rstrip("\n")
            if line.startswith("event: "):
                name = line[7:]
            elif line.startswith("data: "):
                data.append(line[6:])
            elif not line and name == "update":
                return "\n".join(data)
    raise AssertionError(f"{path}: the stream ended without an update")


def live_wait(driver, check, timeout_s: float = 20):
    """Waits for ``check`` on a live page: an element read while an update swaps the
    page's live part in is stale, and is simply read again."""
    from selenium.common.exceptions import StaleElementReferenceException
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(driver, timeout_s,
                         ignored_exceptions=[StaleElementReferenceException]).until(check)


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
    # a phone-sized window: nothing wider than the screen, every control labelled
    browser.set_window_size(390, 844)
    for page in ("/", f"/page/certificates/{cid}", "/page/accounts/alice"):
        browser.get(base + page)
        width = browser.execute_script("return document.documentElement.scrollWidth")
        assert width <= 390, f"{page} is {width} px wide at 390"
        split = browser.execute_script(  # an amount broken across two lines
            "return [...document.querySelectorAll('.amount')]"
            ".filter(e => e.getClientRects().length > 1).map(e => e.textContent)")
        assert not split, (page, split)
        for control in browser.find_elements(By.CSS_SELECTOR, "input:not([type=hidden])"):
            assert control.get_attribute("aria-label") or control.get_attribute("placeholder"), (
                page, control.get_attribute("outerHTML"))
    shot(browser, tmp_path, "phone-earnings")
    log_in(browser, base, "seller")  # the seller's console
    browser.get(base + "/page/console")
    accessible(browser)
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
