"""The owner's console in a real headless Chromium (issue 18, test tier 6), driven by Selenium.

Debian's chromium and chromium-driver, named explicitly (/usr/bin/chromium,
/usr/bin/chromedriver), so that Selenium's driver manager never downloads
anything. The agent runs as `carledger run` on the simulated car and the
console as `carledger console`, each its own process, as on the car; the
owner pairs, reads, and revokes a consent in the browser, and the test
reads the ledger to see the stream stop before its next block.

Screenshots at 390 x 844 and 1280 x 800 go to build/console-screenshots/
(or $CARLEDGER_ARTIFACTS): the test's artifacts.
"""

from __future__ import annotations

import json
import os
import re
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from carledger.dbc import path as dbc_path
from conftest import wait_until
from test_console import (POLICY, TRIPS_POLICY, check_archive, crash, driven_store, edr_export, make_store,  # noqa: F401
                          new_code, start_console, states, stop)

CHROMIUM, CHROMEDRIVER = Path("/usr/bin/chromium"), Path("/usr/bin/chromedriver")
REPO = Path(__file__).resolve().parents[1]
ARTIFACTS = Path(os.environ.get("CARLEDGER_ARTIFACTS") or REPO / "build" / "console-screenshots")
PHONE, DESKTOP = (390, 844), (1280, 800)

if not (CHROMIUM.exists() and CHROMEDRIVER.exists()):
    pytest.skip("Debian's chromium and chromium-driver are not installed (/usr/bin/chromium, /usr/bin/chromedriver): "
                "scripts/setup installs them", allow_module_level=True)
webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is not installed (pip install -e '.[test]')")
from selenium.webdriver.common.by import By  # noqa: E402


@pytest.fixture
def downloads(tmp_path) -> Path:
    folder = tmp_path / "downloads"
    folder.mkdir()
    return folder


@pytest.fixture
def browser(downloads):
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service

    options = Options()
    options.binary_location = str(CHROMIUM)
    options.add_experimental_option("prefs", {"download.default_directory": str(downloads),
                                              "download.prompt_for_download": False})
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                f"--window-size={PHONE[0]},{PHONE[1]}", "--no-first-run", "--disable-extensions"):
        options.add_argument(arg)
    driver = webdriver.Chrome(service=Service(executable_path=str(CHROMEDRIVER)), options=options)
    driver.set_page_load_timeout(60)
    viewport(driver, *PHONE)
    try:
        yield driver
    finally:
        driver.quit()


def viewport(driver, width: int, height: int) -> None:
    """Exactly this viewport, as the device would have it: a headless window is never narrower than 500 px,
    so --window-size=390 alone leaves a 500 px page, and a page too wide for a phone would pass unnoticed."""
    driver.execute_cdp_cmd("Emulation.setDeviceMetricsOverride", {
        "width": width, "height": height, "deviceScaleFactor": 1, "mobile": (width, height) == PHONE})


def fits_a_phone(driver) -> None:
    """The page is laid out for the phone's 390 px (its viewport meta works) and does not scroll sideways."""
    assert driver.execute_script("return window.innerWidth") == PHONE[0]
    assert driver.execute_script("return document.documentElement.scrollWidth") <= PHONE[0], \
        "the page scrolls sideways on a phone"


def screenshots(driver, name: str) -> None:
    """The page as a phone (390 x 844) and as a laptop (1280 x 800) shows it."""
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    for width, height in (PHONE, DESKTOP):
        viewport(driver, width, height)
        driver.save_screenshot(str(ARTIFACTS / f"{name}-{width}x{height}.png"))
    viewport(driver, *PHONE)


def element(driver, by: str, value: str, text: str = ""):
    """The element once the page that has it (holding `text`) has loaded: a click returns before the next page is there."""
    from selenium.common.exceptions import StaleElementReferenceException, WebDriverException

    found = []

    def there() -> bool:
        try:
            found[:] = [e for e in driver.find_elements(by, value) if text in e.text]
        except StaleElementReferenceException:
            return False
        except WebDriverException as error:
            # Chromium's form of a stale element, when the page is replaced
            # between find_elements and .text; anything else is a real error.
            if "does not belong to the document" not in str(error.msg):
                raise
            return False
        return bool(found)

    wait_until(there, timeout=30, interval=0.05)
    return found[0]


def pair(browser, console) -> None:
    """Open the console and pair with a fresh code, as the owner does."""
    browser.get(console.url)
    element(browser, By.ID, "code").send_keys(new_code(console.store))
    browser.find_element(By.CSS_SELECTOR, "main form button[type=submit]").click()
    element(browser, By.ID, "collection")


def confirm(browser, expected: str) -> str:
    """Press the confirmation page's button once it asks `expected`; the outcome's text."""
    element(browser, By.TAG_NAME, "main", expected)
    browser.find_element(By.ID, "confirm").click()
    return element(browser, By.CSS_SELECTOR, "[role=status]").text


def agent_config(folder: Path) -> Path:
    (folder / "policy.toml").write_text(textwrap.dedent(POLICY))
    config = folder / "agent.toml"
    config.write_text(textwrap.dedent(f"""
        [agent]
        store = "ledger"
        vehicle = "car-browser"
        policy = "policy.toml"
        [seal]
        max_age = 0.2
        [[bus]]
        name = "car"
        interface = "carledger-sim"
        channel = "city"
        options = {{ seed = 5, speed = 1, start_time = {time.time()} }}
        dbc = ["{dbc_path('carledger_demo.dbc')}"]
    """))
    return config


def sealed(store: Path, stream: str) -> int:
    if not (store / "ledger.sqlite").exists():
        return 0
    db = sqlite3.connect(f"file:{store / 'ledger.sqlite'}?mode=ro", uri=True)
    try:
        return db.execute("SELECT count(*) FROM blocks WHERE stream = ?", (stream,)).fetchone()[0]
    except sqlite3.OperationalError:
        return 0
    finally:
        db.close()


def export(store: Path, stream: str) -> list[dict]:
    out = subprocess.run([sys.executable, "-m", "carledger", "log", "export", str(store), "--stream", stream, "--events"],
                         capture_output=True, text=True, check=True).stdout
    return [json.loads(line) for line in out.splitlines()]


def test_pair_view_and_revoke_and_the_running_agent_stops_the_stream(browser, tmp_path):
    config = agent_config(tmp_path)
    store = tmp_path / "ledger"
    agent = subprocess.Popen([sys.executable, "-m", "carledger", "run", "-c", str(config)],
                             stderr=subprocess.PIPE, text=True)
    console = None
    try:
        wait_until(lambda: agent.poll() is None and sealed(store, "fleet") >= 3, timeout=60, interval=0.1)
        console = start_console(store)
        # pair: every page sends an unpaired browser to the pairing form
        browser.get(console.url + "consents")
        assert browser.current_url.endswith("/pair")
        assert "Fleet" not in browser.page_source
        screenshots(browser, "pair")
        field = element(browser, By.ID, "code")
        assert browser.find_element(By.CSS_SELECTOR, "label[for=code]").text == "Pairing code"
        field.send_keys(new_code(store))
        browser.find_element(By.CSS_SELECTOR, "main form button[type=submit]").click()
        assert element(browser, By.ID, "collection").text == "Collecting"
        fits_a_phone(browser)
        cookie = browser.get_cookie("carledger_console")
        assert cookie["httpOnly"] and cookie["sameSite"] == "Strict"
        screenshots(browser, "now")
        # view
        browser.find_element(By.LINK_TEXT, "Who gets what").click()
        card = element(browser, By.ID, "stream-fleet")
        assert "Fleet Ops: maintenance" in card.text and "rounded to 5" in card.text
        fits_a_phone(browser)
        screenshots(browser, "who-gets-what")
        # revoke: one click, then the confirmation
        card.find_element(By.CSS_SELECTOR, "button[aria-label='Revoke the consent of fleet']").click()
        element(browser, By.TAG_NAME, "main", "Revoke the consent of stream fleet?")
        screenshots(browser, "confirm-revoke")
        browser.find_element(By.ID, "confirm").click()
        done = element(browser, By.CSS_SELECTOR, "[role=status]").text
        assert done == "stream fleet: consent revoked; it stops before its next block (by the running agent)"
        browser.find_element(By.LINK_TEXT, "Back").click()
        element(browser, By.ID, "stream-fleet", "not sent: consent-revoked")
        vault = sealed(store, "vault")
        wait_until(lambda: sealed(store, "vault") >= vault + 5, timeout=60, interval=0.1)  # later blocks were sealed
    finally:
        if console is not None:
            stop(console)
        agent.send_signal(signal.SIGTERM)
        try:
            _, err = agent.communicate(timeout=60)
        finally:
            if agent.poll() is None:
                agent.kill()
    assert agent.returncode == 0, err
    fleet = export(store, "fleet")
    revoked = [r for r in fleet if r.get("event") == "consent-revoked"]
    assert len(revoked) == 1
    assert not any(r["t"] > revoked[0]["t"] for r in fleet if "name" in r), "a sample after the revocation"
    assert fleet[-1]["event"] == "consent-revoked", "the stream went on after the revocation"
    insurer = export(store, "insurer")
    assert max(r["t"] for r in insurer if "name" in r) > revoked[0]["t"], "the other recipient's stream stopped too"


def test_grant_pause_resume_and_download_my_data(browser, downloads, tmp_path):
    from selenium.webdriver.support.select import Select

    store = make_store(tmp_path)
    assert subprocess.run([sys.executable, "-m", "carledger", "consent", "revoke", "insurer", "--store", str(store)],
                          capture_output=True).returncode == 0
    console = start_console(store)
    try:
        pair(browser, console)
        # grant: choose how long, one click, the confirmation
        browser.find_element(By.LINK_TEXT, "Who gets what").click()
        card = element(browser, By.ID, "stream-insurer", "not sent: consent-revoked")
        Select(card.find_element(By.ID, "until-insurer")).select_by_visible_text("1 year")
        card.find_element(By.CSS_SELECTOR, "button[aria-label='Grant the consent of insurer']").click()
        assert confirm(browser, "Grant stream insurer consent until").startswith("stream insurer: consent granted until")
        assert states(store)["insurer"] == "active"
        # pause for an hour, then resume
        browser.find_element(By.LINK_TEXT, "Now").click()
        Select(element(browser, By.ID, "pause-for")).select_by_visible_text("1 hour")
        browser.find_element(By.CSS_SELECTOR, "button[aria-label='Pause all collection']").click()
        assert confirm(browser, "Pause all collection until").startswith("all collection paused until")
        browser.find_element(By.LINK_TEXT, "Back").click()
        paused = element(browser, By.ID, "collection").text
        assert re.fullmatch(r"Paused until 20\S+Z, since 20\S+Z", paused), paused
        screenshots(browser, "paused")
        browser.find_element(By.CSS_SELECTOR, "button[aria-label='Resume collection']").click()
        confirm(browser, "Resume collection?")
        browser.find_element(By.LINK_TEXT, "Back").click()
        assert element(browser, By.ID, "collection").text.startswith("Collecting")
        # my data
        browser.find_element(By.PARTIAL_LINK_TEXT, "Download everything").click()
        wait_until(lambda: [f for f in downloads.iterdir() if f.suffix == ".zip"], timeout=60, interval=0.1)
        (zipped,) = [f for f in downloads.iterdir() if f.suffix == ".zip"]
        assert zipped.name.startswith("carledger-")
    finally:
        stop(console)
    kinds = [r["event"] for r in export(store, "audit") if "event" in r]
    assert kinds[-3:] == ["consent-granted", "pause", "resume"]
    check_archive(zipped.read_bytes(), store, "insurer", tmp_path)


def test_trips_and_metrics_fit_a_phone(browser, tmp_path):
    store = driven_store(tmp_path, TRIPS_POLICY)
    console = start_console(store)
    try:
        pair(browser, console)
        browser.find_element(By.LINK_TEXT, "Trips").click()
        track = element(browser, By.CSS_SELECTOR, "svg.track")
        assert track.size["width"] <= PHONE[0] and track.size["height"] > 100
        assert browser.find_elements(By.CSS_SELECTOR, "svg.chart")
        fits_a_phone(browser)
        screenshots(browser, "trips")
    finally:
        stop(console)


def test_the_tables_of_what_left_the_car_and_crash_captures_fit_a_phone(browser, tmp_path):
    from test_audit_story import make_store as audited_store

    store = audited_store(tmp_path / "s")
    console = start_console(store)
    try:
        pair(browser, console)
        browser.find_element(By.LINK_TEXT, "What left the car").click()
        cell = element(browser, By.CSS_SELECTOR, "tbody td", "Fleet Ops B.V.")
        before = browser.execute_script("return getComputedStyle(arguments[0], '::before').content", cell)
        assert before == '"Recipient: "', "a phone's card names each cell's column"
        fits_a_phone(browser)
        screenshots(browser, "what-left-the-car")
        browser.find_element(By.LINK_TEXT, "Crash captures").click()
        element(browser, By.TAG_NAME, "main", "No crash captures.")
        fits_a_phone(browser)
    finally:
        stop(console)


def test_the_owner_opens_a_crash_capture_with_their_key_file(browser, downloads, crash):
    """The file input and the download in a real browser: the CSV is `carledger edr export`'s, byte for byte."""
    from selenium.webdriver.support.select import Select

    console = start_console(crash["store"])
    try:
        pair(browser, console)
        browser.find_element(By.LINK_TEXT, "Crash captures").click()
        Select(element(browser, By.ID, "export-format")).select_by_value("csv")
        assert browser.find_element(By.CSS_SELECTOR, "label[for=export-key]").text.startswith("Recipient key file")
        browser.find_element(By.ID, "export-key").send_keys(str(crash["owner"]))
        fits_a_phone(browser)
        screenshots(browser, "crash-captures")
        browser.find_element(By.CSS_SELECTOR, "button[aria-label='Verify, decrypt and download the capture']").click()
        wait_until(lambda: [f for f in downloads.iterdir() if f.suffix == ".csv"], timeout=60, interval=0.1)
        (csv,) = [f for f in downloads.iterdir() if f.suffix == ".csv"]
        assert csv.name.startswith("carledger-capture-")
        # a key the capture is not encrypted to: the command's line on the page (the form's token was used: reload)
        browser.get(console.url + "crashes")
        element(browser, By.ID, "export-key").send_keys(str(crash["stranger"]))
        browser.find_element(By.CSS_SELECTOR, "button[aria-label='Verify, decrypt and download the capture']").click()
        assert "is not encrypted to key" in element(browser, By.CSS_SELECTOR, "[role=alert]").text
        fits_a_phone(browser)
    finally:
        stop(console)
    assert csv.read_bytes() == edr_export(crash["store"], crash["owner"], "--format", "csv").stdout
