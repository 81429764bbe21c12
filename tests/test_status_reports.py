"""The nightly service's morning reports (``gridxfer-report-<night>``) on status: the
text view of a night, its JSON, the served page and the HTML snapshot; a malformed
report is skipped with a warning and status goes on."""

from __future__ import annotations

import copy
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest

from GRID_XFER import status
from GRID_XFER.errors import Code
from GRID_XFER.token import parse_spec
from tests.conftest import Database, cli_env, gridxfer

pytestmark = pytest.mark.slow  # starts servers or runs the CLI

NIGHT = "20261201"
TEXT = (
    "Morning report, night 20261201 (stream cam)\n"
    "exposures: 3 total, 1 done, 1 error, 1 remaining\n"
    'SOURCE_MISSING (20) x1: ask the "camera" team <ops> & re-run'
)
REPORT: dict[str, Any] = {
    "_id": f"gridxfer-report-{NIGHT}",
    "type": "gridxfer-report",
    "night": NIGHT,
    "stream": "cam",
    "created": 1764633600.0,
    "exposures": {"total": 3, "done": 1, "error": 1, "remaining": 1},
    "bytes": 123456789,
    "started": 1764590000.0,
    "finished": None,
    "duration": 10000.0,
    "throughput": None,
    "errors": [
        {
            "code": int(Code.SOURCE_MISSING),
            "name": "SOURCE_MISSING",
            "count": 1,
            "advice": "ask the camera team",
            "samples": [{"token": f"{NIGHT}_b", "message": "source missing: b"}],
        }
    ],
    "text": TEXT,
}


def shown(doc: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in doc.items() if not k.startswith("_")}


@pytest.fixture
def night(db: Database) -> Database:
    """A night with a token done, one in error and one left; and its report."""
    pool = db.pool()
    pool.create(NIGHT, [parse_spec(x) for x in "abc"])
    pool.create("20261202", [parse_spec("a")])
    lease = pool.claim(NIGHT)
    assert lease is not None
    lease.done()
    lease = pool.claim(NIGHT)
    assert lease is not None
    lease.fail(Code.SOURCE_MISSING, "source missing: b")
    db.couch.put(copy.deepcopy(REPORT))
    return db


def status_json(db: Database, *args: str) -> dict[str, Any]:
    return json.loads(gridxfer("status", *args, "--json", config=db.config_file, check=True).stdout)


def test_report_in_status_night_and_its_json(night: Database) -> None:
    text = gridxfer("status", NIGHT, config=night.config_file, check=True).stdout
    assert f"morning report {NIGHT}" in text
    for line in TEXT.splitlines():
        assert line in text
    data = status_json(night, NIGHT)
    assert data["nights"][0]["report"] == shown(REPORT)
    assert data["nights"][0]["states"]["done"] == 1  # the report is no token of the night
    # A night without a report: null, and nothing printed for it.
    assert status_json(night, "20261202")["nights"][0]["report"] is None
    other = gridxfer("status", "20261202", config=night.config_file, check=True).stdout
    assert "morning report" not in other
    # The overview counts only tokens: the report document makes no night.
    assert [n["night"] for n in status_json(night)["nights"]] == [NIGHT, "20261202"]
    assert status.reports(night.couch, [NIGHT, "20261202", "nope"]) == {NIGHT: shown(REPORT)}


def test_report_in_the_html_snapshot(night: Database) -> None:
    out = night.tmp / "snap.html"
    gridxfer("status", "--html", str(out), config=night.config_file, check=True)
    page = out.read_text()
    assert "Morning report" in section(page, NIGHT)
    assert "ask the &quot;camera&quot; team &lt;ops&gt; &amp; re-run" in section(page, NIGHT)
    assert '<section data-night="20261202">' not in page  # no errors, leases or report there


def section(page: str, night: str) -> str:
    start = page.index(f'<section data-night="{night}">')
    return page[start : page.index("</section>", start)]


def test_malformed_report_is_skipped_with_a_warning(night: Database) -> None:
    doc = night.couch.get(f"gridxfer-report-{NIGHT}")
    doc["exposures"] = "38 of 40"
    night.couch.put(doc)
    other = dict(copy.deepcopy(REPORT), _id="gridxfer-report-20261202", night="20261202")
    night.couch.put(other)
    # Each report is judged on its own: the good one still comes through.
    assert status.reports(night.couch, [NIGHT, "20261202"]) == {"20261202": shown(other)}
    proc = gridxfer("status", NIGHT, config=night.config_file)
    assert proc.returncode == 0, proc.stderr
    assert f"skipping morning report gridxfer-report-{NIGHT}: exposures" in proc.stderr
    assert "morning report" not in proc.stdout and "SOURCE_MISSING" in proc.stdout
    data = json.loads(
        gridxfer("status", NIGHT, "--json", config=night.config_file, check=True).stdout
    )
    assert data["nights"][0]["report"] is None and data["nights"][0]["states"]["error"] == 1
    out = night.tmp / "snap.html"
    gridxfer("status", "--html", str(out), config=night.config_file, check=True)
    assert "SOURCE_MISSING" in section(out.read_text(), NIGHT)  # its errors, no report
    assert "Morning report" not in section(out.read_text(), NIGHT)
    assert "ask the" in section(out.read_text(), "20261202")
    # Other ways a document can be wrong, each with its reason.
    for field, value in [
        ("night", "20261203"),
        ("bytes", -1),
        ("text", 42),
        ("errors", [{"code": "21"}]),
        ("started", "yesterday"),
    ]:
        bad = dict(copy.deepcopy(REPORT), **{field: value})
        assert field in (status.report_problem(bad, NIGHT) or ""), field


# -- the served page -----------------------------------------------------------------
@pytest.fixture
def served(night: Database) -> Iterator[tuple[Database, str]]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "GRID_XFER.cli", "status", "--serve", "--port", "0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=cli_env(night.config_file),
    )
    try:
        assert proc.stdout is not None
        url = proc.stdout.readline().strip()
        assert url.startswith("http://127.0.0.1:") and url.endswith("/status.html"), url
        yield night, url
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def get(url: str) -> tuple[int, Any]:
    try:
        with urllib.request.urlopen(url, timeout=60) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def test_served_page_reads_the_report(served: tuple[Database, str]) -> None:
    db, url = served
    root = url.removesuffix("_design/gridxfer/status.html")
    assert get(f"{root}gridxfer-report-{NIGHT}") == (200, shown(REPORT))
    assert get(f"{root}gridxfer-report-20261202")[0] == 404
    assert get(f"{root}{NIGHT}_a")[0] == 404  # the server reads reports, not any document
    doc = db.couch.get(f"gridxfer-report-{NIGHT}")
    doc["exposures"] = "38 of 40"
    db.couch.put(doc)
    assert get(f"{root}gridxfer-report-{NIGHT}")[0] == 404


def test_served_page_shows_the_report_in_a_browser(served: tuple[Database, str]) -> None:
    webdriver = pytest.importorskip("selenium.webdriver", reason="selenium (test extra)")
    chromium, driver_bin = shutil.which("chromium"), shutil.which("chromedriver")
    if not (chromium and driver_bin):
        pytest.skip("Debian chromium and chromium-driver are not installed (scripts/setup)")
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By

    _, url = served
    os.environ.setdefault("SE_OFFLINE", "true")  # never let Selenium fetch a driver
    profile = tempfile.mkdtemp(prefix="gridxfer-chromium-")
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"):
        options.add_argument(flag)
    options.add_argument(f"--user-data-dir={profile}")
    browser = webdriver.Chrome(service=Service(executable_path=driver_bin), options=options)
    try:
        browser.get(f"{url}?interval=0#night={NIGHT}")
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            box = browser.find_element(By.ID, "report")
            if box.is_displayed():
                break
            time.sleep(0.2)
        assert browser.find_element(By.ID, "report-text").text == TEXT
        browser.get(f"{url}?interval=0#night=20261202")
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if browser.find_element(By.ID, "detail-night").text == "20261202":
                break
            time.sleep(0.2)
        assert browser.find_element(By.ID, "detail-night").text == "20261202"
        assert not browser.find_element(By.ID, "report").is_displayed()
    finally:
        browser.quit()
        shutil.rmtree(profile, ignore_errors=True)
