"""The web page in headless Chromium (Debian's chromium + chromedriver, via selenium):
alice circulates from the catalogue, bob follows alice's share link and circulates,
carol buys: Buy takes her to the (simulated) payment system's page, she pays, and is
back on the certificate, purchased once the payment system's capture is applied;
alice's earnings page then shows her commission held until the hold ends. Every
page runs under the CSP (no inline script): the countdown still ticks.
The catalogue groups copies, the withdrawal countdown ticks, the pages fit a phone;
screenshots go to docs/screenshots with `make screenshots`."""

from __future__ import annotations

import os
import shutil
import time
import uuid
from pathlib import Path

import pytest

from deploy.localstack import free_port
from schemas import commands as c
from tests.e2e.certificates import cert_id, setup
from tests.e2e.http import wait_for

CHROMIUM, DRIVER = shutil.which("chromium"), shutil.which("chromedriver")
ROOT = Path(__file__).resolve().parents[2]


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
    yield driver
    driver.quit()


def until(driver, url: str, check, timeout_s: float = 60):
    deadline = time.monotonic() + timeout_s
    while True:
        driver.get(url)
        found = check(driver)
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
    wait_for(port, f"/certificates/{cid}", lambda b: b["status"] == "posted", pipeline=pipeline)

    log_in(browser, base, "alice")
    row = until(browser, base + "/", lambda d: d.find_elements(By.CSS_SELECTOR, "tr.offer"))[0]
    assert "1 of 1 left" in row.text
    shot(browser, tmp_path, "catalogue")
    until(browser, base + "/", lambda d: d.find_elements(By.CLASS_NAME, "cert"))[0].click()
    # the withdrawal countdown ticks in the browser, without a reload
    countdown = browser.find_element(By.CSS_SELECTOR, "#time-left .countdown")
    first = countdown.text
    WebDriverWait(browser, 5).until(lambda d: countdown.text != first)
    assert first.startswith("59 min") or first.startswith("1 h"), first
    assert browser.find_element(By.ID, "progress-circulations").text == (
        "shares that count: 0 of 4 (accounts new to this certificate, not its seller or "
        "funder)")
    assert browser.find_element(By.ID, "commission").text == "2.50 EUR"
    assert browser.find_element(By.ID, "funding").text.startswith("funding confirmed")
    # not in the chain yet: no share link (a friend following it would be refused)
    assert not browser.find_elements(By.ID, "share")
    assert browser.find_elements(By.ID, "share-hint")
    browser.find_element(By.ID, "circulate").click()
    WebDriverWait(browser, 20).until(lambda d: "sent=" in d.current_url)
    assert browser.find_element(By.ID, "sent").text.startswith("Sent: command web-")
    until(browser, f"{base}/page/certificates/{cid}",
          lambda d: d.find_element(By.ID, "holder").text == "alice")
    share_link = browser.find_element(By.ID, "share").get_attribute("value")
    assert share_link.endswith(f"/page/certificates/{cid}?via=alice")

    log_in(browser, base, "bob")
    browser.get(share_link)
    assert browser.find_element(By.ID, "shared-by").text == "Shared with you by alice."
    browser.find_element(By.ID, "circulate").click()
    WebDriverWait(browser, 20).until(lambda d: "sent=" in d.current_url)
    # the 2nd circulation of at most 4 reaches the 50 % warning ratio: the page warns
    until(browser, share_link, lambda d: d.find_element(By.ID, "holder").text == "bob"
          and d.find_elements(By.ID, "warning"))
    # the share tree: bob under alice; bob sees his own gain, alice only as a node
    drawn = [(g.get_attribute("data-account"), g.text) for g in
             browser.find_elements(By.CSS_SELECTOR, "#share-tree g.node")]
    named = dict(x for x in drawn if x[0])
    assert set(named) == {"catalogue", "bob"}, drawn
    assert "2.50 EUR pending" in named["bob"], drawn
    assert [text for name, text in drawn if not name] == ["an account"], drawn
    assert browser.find_element(By.ID, "tree-counts").text == "2 accounts shared it: 2 pending"
    shot(browser, tmp_path, "certificate")

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
    browser.find_element(By.ID, "pay").click()
    WebDriverWait(browser, 20).until(lambda d: d.current_url.startswith(
        f"{base}/page/certificates/{cid}?checkout="))
    until(browser, f"{base}/page/certificates/{cid}",
          lambda d: d.find_element(By.ID, "status").text == "purchased")
    # the pool's default 14-day hold: the commission is held, the page says until when
    held = browser.find_element(By.ID, "held").text
    assert "Commission of 5.00 EUR" in held and "held until" in held, held
    assert not browser.find_elements(By.ID, "warning")  # bought: no "buy now" warning

    log_in(browser, base, "alice")  # earnings are private
    until(browser, f"{base}/page/accounts/alice",
          lambda d: d.find_elements(By.ID, "earn-EUR")
          and d.find_element(By.CSS_SELECTOR, "#earn-EUR .held").text == "2.50 EUR")
    assert browser.find_element(By.CSS_SELECTOR, "#earn-EUR .paid").text == "0.00 EUR"
    shot(browser, tmp_path, "earnings")
    # a phone-sized window: nothing wider than the screen, every control labelled
    browser.set_window_size(390, 844)
    for page in ("/", f"/page/certificates/{cid}", "/page/accounts/alice"):
        browser.get(base + page)
        width = browser.execute_script("return document.documentElement.scrollWidth")
        assert width <= 390, f"{page} is {width} px wide at 390"
        for control in browser.find_elements(By.CSS_SELECTOR, "input:not([type=hidden])"):
            assert control.get_attribute("aria-label") or control.get_attribute("placeholder"), (
                page, control.get_attribute("outerHTML"))
    shot(browser, tmp_path, "phone-earnings")
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
          and d.find_element(By.ID, "outcome").text == "Outcome: accepted")
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
    pipeline.assert_running()
