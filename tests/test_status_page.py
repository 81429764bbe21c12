"""The status page, served by the CouchDB-API server from _design/gridxfer, in headless Chromium.

Debian's `chromium` and `chromium-driver` (scripts/setup installs them), driven
with Selenium; nothing is downloaded. Screenshots go to test-artifacts/.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from GRID_XFER.errors import code_name
from GRID_XFER.token import STATES, parse_spec
from tests import status_seed
from tests.conftest import ARTIFACTS, Database, cli_env, gridxfer, make_database

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMEDRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"

webdriver = pytest.importorskip("selenium.webdriver", reason="selenium (test extra) not installed")
if not (os.access(CHROMIUM, os.X_OK) and os.access(CHROMEDRIVER, os.X_OK)):
    pytest.skip(
        "Debian chromium and chromium-driver are not installed (scripts/setup)",
        allow_module_level=True,
    )

from selenium.common.exceptions import StaleElementReferenceException  # noqa: E402
from selenium.webdriver.chrome.service import Service  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402

pytestmark = pytest.mark.slow  # starts servers or runs the CLI

FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
    "--window-size=1400,1100",
]


@pytest.fixture
def browser() -> Iterator[Any]:
    os.environ.setdefault("SE_OFFLINE", "true")  # never let Selenium fetch a driver
    profile = tempfile.mkdtemp(prefix="gridxfer-chromium-")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in FLAGS:
        options.add_argument(flag)
    options.add_argument(f"--user-data-dir={profile}")
    driver = webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(60)
    try:
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


def page_url(db: Database, query: str = "?interval=1") -> str:
    return f"{db.cfg.primary}/{db.cfg.db}/_design/gridxfer/status.html{query}"


def wait(driver: Any, what: str, predicate: Any, timeout: float = 30) -> Any:
    try:
        # The page rebuilds its tables on every refresh: an element read in the
        # middle of that is stale, and the next poll reads the new one.
        return WebDriverWait(
            driver, timeout, poll_frequency=0.2, ignored_exceptions=[StaleElementReferenceException]
        ).until(lambda d: predicate(d))
    except Exception:
        shot(driver, "status-page-failure.png")
        problem = driver.find_elements(By.ID, "problem")
        raise AssertionError(
            f"page never showed {what}; problem: {problem[0].text if problem else '?'}"
        ) from None


def shot(driver: Any, name: str) -> Path:
    ARTIFACTS.mkdir(exist_ok=True)
    path = ARTIFACTS / name
    driver.save_screenshot(str(path))
    return path


def row_counts(driver: Any, night: str) -> dict[str, int] | None:
    cells = driver.find_elements(By.CSS_SELECTOR, f'tr[data-night="{night}"] td[data-state]')
    if len(cells) != len(STATES):
        return None
    return {c.get_attribute("data-state"): int(c.text) for c in cells}


def test_page_shows_the_seeded_counts_and_errors_and_refreshes(db: Database, browser: Any) -> None:
    pool = db.pool()
    status_seed.seed(pool)
    want = status_seed.expected(db.couch)
    browser.get(page_url(db))
    assert "GRID_XFER" in browser.title

    for night, e in want.items():
        wait(
            browser,
            f"the counts of {night}",
            lambda d, n=night, s=e["states"]: row_counts(d, n) == s,
        )
    assert [
        r.get_attribute("data-night")
        for r in browser.find_elements(By.CSS_SELECTOR, "#nights tbody tr")
    ] == sorted(want)
    assert browser.find_element(By.ID, "db").text == db.cfg.db
    shot(browser, "status-page.png")

    # A night's detail: the error table with names and messages, and the holders.
    # (Auto-refresh off from here, so no refresh rebuilds a table while it is read.)
    night = "20261125"
    browser.get(page_url(db, "?interval=0"))
    wait(browser, "the nights", lambda d: row_counts(d, night) is not None)
    browser.find_element(By.CSS_SELECTOR, f'tr[data-night="{night}"] a').click()
    wait(
        browser,
        "the error table",
        lambda d: (
            len(d.find_elements(By.CSS_SELECTOR, "#errors tbody tr")) == len(want[night]["errors"])
        ),
    )
    for code, count in want[night]["errors"].items():
        row = browser.find_element(By.CSS_SELECTOR, f'#errors tr[data-code="{code}"]')
        assert row.find_element(By.CSS_SELECTOR, ".count").text == str(count)
        assert row.find_element(By.CSS_SELECTOR, ".name").text == code_name(int(code))
        assert (
            row.find_element(By.CSS_SELECTOR, ".message").text in want[night]["messages"][int(code)]
        )
        assert row.find_element(By.CSS_SELECTOR, ".token a").text.startswith(night + "_")
    # The night's tokens by state: the error tokens with their messages.
    browser.find_element(By.CSS_SELECTOR, '#states button[data-state="error"]').click()
    wait(
        browser,
        "the error tokens",
        lambda d: (
            len(d.find_elements(By.CSS_SELECTOR, "#tokens tbody tr"))
            == want[night]["states"]["error"]
        ),
    )
    listed = browser.find_element(By.ID, "tokens").text
    assert "CHECKSUM_MISMATCH" in listed and "listed in manifest, not at source" in listed
    shot(browser, "status-page-night.png")

    held_night = "20261126"
    browser.get(page_url(db, f"?interval=0#night={held_night}"))
    wait(
        browser,
        "the lease holders",
        lambda d: (
            len(d.find_elements(By.CSS_SELECTOR, "#holders tbody tr"))
            == len(want[held_night]["holders"])
        ),
    )
    assert "expires in" in browser.find_element(By.ID, "holders").text

    # Auto-refresh: a token finishing and a new night show up without a reload.
    browser.get(page_url(db))
    before = wait(browser, "the counts", lambda d: row_counts(d, "20261127"))
    lease = pool.claim("20261127")
    assert lease is not None
    lease.done()
    pool.create("20261128", [parse_spec("late")])
    wait(
        browser,
        "the finished token",
        lambda d: (row_counts(d, "20261127") or {}).get("done") == before["done"] + 1,
    )
    wait(
        browser,
        "the new night",
        lambda d: row_counts(d, "20261128") == {**dict.fromkeys(STATES, 0), "todo": 1},
    )
    shot(browser, "status-page-refreshed.png")


def test_page_says_when_the_database_has_no_tokens(db: Database, browser: Any) -> None:
    browser.get(page_url(db))
    wait(browser, "the empty message", lambda d: d.find_element(By.ID, "no-nights").is_displayed())
    assert browser.find_element(By.ID, "problem").is_displayed() is False


# -- Apache CouchDB 3.2+ sends a Content-Security-Policy with attachments -----------------
class _CSPProxy:
    """Forward GETs to the server and add a Content-Security-Policy header, as
    CouchDB's ``[csp] attachments_header_value`` does for attachments."""

    def __init__(self, upstream: str, policy: str) -> None:
        import http.server
        import threading
        import urllib.error
        import urllib.request

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802
                try:
                    with urllib.request.urlopen(upstream + self.path, timeout=30) as resp:
                        status, headers, body = resp.status, resp.headers, resp.read()
                except urllib.error.HTTPError as exc:
                    status, headers, body = exc.code, exc.headers, exc.read()
                self.send_response(status)
                for name in ("Content-Type", "Date"):
                    if headers.get(name):
                        self.send_header(name, headers[name])
                if "/_design/gridxfer/" in self.path and "/_view/" not in self.path:
                    self.send_header("Content-Security-Policy", policy)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.mark.parametrize(
    "policy", ["default-src 'self'", "sandbox allow-scripts allow-same-origin", "sandbox"]
)
def test_page_under_a_content_security_policy(db: Database, browser: Any, policy: str) -> None:
    pool = db.pool()
    pool.create("n1", [parse_spec(x) for x in "abc"])
    proxy = _CSPProxy(db.cfg.primary, policy)
    try:
        browser.get(f"{proxy.url}/{db.cfg.db}/_design/gridxfer/status.html?interval=1")
        if policy == "sandbox":
            # CouchDB's default blocks scripts: the page says what to change.
            wait(
                browser,
                "the noscript advice",
                lambda d: "Content-Security-Policy" in d.find_element(By.TAG_NAME, "body").text,
            )
            assert row_counts(browser, "n1") is None
        else:
            wait(
                browser,
                "the counts",
                lambda d: row_counts(d, "n1") == {**dict.fromkeys(STATES, 0), "todo": 3},
            )
    finally:
        proxy.close()


# -- Apache CouchDB 3 with its default configuration -----------------------------------
@pytest.fixture
def couch3_db(couchdb3: Any, tmp_path: Path) -> Database:
    return make_database(couchdb3.url, tmp_path, couchdb3)


def test_couchdb3_blocks_the_page_script_but_serve_and_html_show_the_numbers(
    couch3_db: Database, browser: Any, tmp_path: Path
) -> None:
    db = couch3_db
    status_seed.seed(db.pool())
    want = status_seed.expected(db.couch)
    # What CouchDB 3 does by default with an attachment: no script may run in it.
    page = db.couch.request("GET", "_design/gridxfer/status.html")
    assert "sandbox" in page.headers.get("Content-Security-Policy", "")

    # `status --serve`: the same page from a local server that holds the credentials.
    proc = subprocess.Popen(
        [sys.executable, "-m", "GRID_XFER.cli", "status", "--serve", "--port", "0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=cli_env(db.config_file),
    )
    try:
        assert proc.stdout is not None
        url = proc.stdout.readline().strip()
        assert url.startswith("http://127.0.0.1:") and url.endswith("/status.html"), url
        browser.get(url + "?interval=1")
        for night, e in want.items():
            wait(
                browser,
                f"the counts of {night}",
                lambda d, n=night, s=e["states"]: row_counts(d, n) == s,
            )
        assert browser.find_element(By.ID, "db").text == db.cfg.db
        shot(browser, "status-page-served.png")
        assert db.cfg.secret() not in browser.page_source
    finally:
        proc.terminate()
        proc.wait(timeout=30)

    # `status --html FILE`: a snapshot with no script at all.
    out = tmp_path / "status.html"
    gridxfer("status", "--html", str(out), config=db.config_file, check=True)
    browser.get(out.as_uri())
    for night, e in want.items():
        assert row_counts(browser, night) == e["states"]
    night = "20261125"
    section = browser.find_element(By.CSS_SELECTOR, f'section[data-night="{night}"]')
    for code, count in want[night]["errors"].items():
        row = section.find_element(By.CSS_SELECTOR, f'tr[data-code="{code}"]')
        assert row.find_element(By.CSS_SELECTOR, ".count").text == str(count)
    assert "<script" not in out.read_text()
    shot(browser, "status-page-snapshot.png")
