"""`gridxfer status --prometheus` and `/metrics` of `status --serve`: the same numbers as
`status --json`, read back with prometheus_client's own parser.

Seeded nights hold tokens in every state and errors of several codes
(tests/status_seed.py).
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlsplit

import pytest

from GRID_XFER.errors import Code, code_name
from GRID_XFER.page import PageServer
from GRID_XFER.status import CONTENT_TYPE, Holder, NightStatus, StatusReport, prometheus_text
from GRID_XFER.token import STATES
from tests import status_seed
from tests.conftest import Database, cli_env, gridxfer

parser = pytest.importorskip("prometheus_client.parser", reason="prometheus-client (test extra)")

Samples = dict[str, dict[tuple[tuple[str, str], ...], float]]


def parse(text: str) -> Samples:
    """{metric name: {sorted label pairs: value}}; every family a gauge, HELP given."""
    out: Samples = {}
    for family in parser.text_string_to_metric_families(text):
        assert family.name.startswith("gridxfer_"), family.name
        assert family.type == "gauge" and family.documentation, family.name
        out.setdefault(family.name, {})
        for s in family.samples:
            assert s.name == family.name
            key = tuple(sorted(s.labels.items()))
            assert key not in out[family.name], f"{s.name}{s.labels} twice"
            out[family.name][key] = s.value
    return out


def per_night(samples: Samples, name: str) -> dict[str, float]:
    return {dict(k)["night"]: v for k, v in samples[name].items()}


def check_against_json(metrics: Samples, data: dict[str, Any]) -> None:
    """Every number of ``status --json`` as the metrics state it."""
    assert metrics["gridxfer_up"] == {(): 1.0}
    assert metrics["gridxfer_nights"] == {(): len(data["nights"])}
    assert metrics["gridxfer_status_window_seconds"] == {(): data["window_s"]}
    assert metrics["gridxfer_status_unsettled_tokens"] == {(): data["unsettled"]}
    (generated,) = metrics["gridxfer_status_generated_timestamp_seconds"].values()
    assert abs(generated - data["generated"]) < 120  # two gathers, moments apart
    tokens = metrics["gridxfer_night_tokens"]
    assert len(tokens) == len(data["nights"]) * len(STATES)
    errors = {}
    for k, v in metrics["gridxfer_night_error_tokens"].items():
        labels = dict(k)
        assert labels["name"] == code_name(int(labels["code"]))
        errors.setdefault(labels["night"], {})[labels["code"]] = int(v)
    finished = metrics["gridxfer_night_window_finished_tokens"]
    speed = per_night(metrics, "gridxfer_night_tokens_per_second")
    seconds = per_night(metrics, "gridxfer_night_window_seconds")
    eta = per_night(metrics, "gridxfer_night_eta_seconds")
    for n in data["nights"]:
        night = n["night"]
        for state in STATES:
            assert tokens[(("night", night), ("state", state))] == n["states"][state]
        assert errors.get(night, {}) == n["errors"]
        assert per_night(metrics, "gridxfer_night_size_bytes")[night] == n["bytes_total"]
        assert per_night(metrics, "gridxfer_night_done_bytes")[night] == n["bytes_done"]
        assert per_night(metrics, "gridxfer_night_workers")[night] == n["workers"]
        remaining = n["tokens"] - n["states"]["done"] - n["states"]["error"]
        assert per_night(metrics, "gridxfer_night_remaining_tokens")[night] == remaining
        # The window's counts are the JSON's; its length (hence the rate) moves
        # with the clock between the two gathers, the arithmetic must not.
        assert finished[(("night", night), ("state", "done"))] == n["rate"]["done"]
        assert finished[(("night", night), ("state", "error"))] == n["rate"]["errors"]
        assert per_night(metrics, "gridxfer_night_window_done_bytes")[night] == n["rate"]["bytes"]
        assert seconds[night] == pytest.approx(n["rate"]["seconds"], abs=120)
        done = n["rate"]["done"] + n["rate"]["errors"]
        assert speed[night] == pytest.approx(done / seconds[night])
        if remaining:
            assert eta[night] == pytest.approx(remaining / speed[night])
        else:
            assert eta[night] == 0


@pytest.fixture
def seeded(db: Database) -> Database:
    status_seed.seed(db.pool())
    return db


def status_json(db: Database, *args: str) -> dict[str, Any]:
    return json.loads(gridxfer("status", *args, "--json", config=db.config_file, check=True).stdout)


@pytest.mark.slow
def test_cli_metrics_equal_the_json_report(seeded: Database) -> None:
    data = status_json(seeded)
    proc = gridxfer("status", "--prometheus", config=seeded.config_file, check=True)
    metrics = parse(proc.stdout)
    check_against_json(metrics, data)
    # Several codes in one night, every state somewhere: the seed is not trivial.
    assert len(metrics["gridxfer_night_error_tokens"]) == 4
    assert metrics["gridxfer_holder_tokens"] == {}  # holders: a night's detail only

    # One night: its holders too, as status NIGHT --json lists them.
    night = "20261126"
    detail = status_json(seeded, night)
    one = parse(gridxfer("status", night, "--prometheus", config=seeded.config_file).stdout)
    check_against_json(one, detail)
    holders = {dict(k)["worker"]: v for k, v in one["gridxfer_holder_tokens"].items()}
    assert holders == {h["id"]: h["tokens"] for h in detail["nights"][0]["holders"]}
    assert holders == dict(status_seed.expected(seeded.couch)[night]["holders"])
    assert set(one["gridxfer_holder_expired"].values()) == {0.0}
    for key, when in one["gridxfer_holder_lease_expires_timestamp_seconds"].items():
        (h,) = [h for h in detail["nights"][0]["holders"] if h["id"] == dict(key)["worker"]]
        assert when == h["lease_expires"] and dict(key)["host"] == h["host"]

    both = gridxfer("status", "--prometheus", "--json", config=seeded.config_file)
    assert both.returncode == 2 and "do not go together" in both.stderr


@pytest.fixture
def served(seeded: Database) -> Iterator[tuple[Database, str]]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "GRID_XFER.cli", "status", "--serve", "--port", "0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=cli_env(seeded.config_file),
    )
    try:
        assert proc.stdout is not None
        url = proc.stdout.readline().strip()
        assert url.startswith("http://127.0.0.1:"), url
        parts = urlsplit(url)
        yield seeded, f"{parts.scheme}://{parts.netloc}"
    finally:
        proc.terminate()
        proc.wait(timeout=30)


@pytest.mark.slow
def test_serve_answers_metrics_over_http(served: tuple[Database, str]) -> None:
    db, root = served
    with urllib.request.urlopen(f"{root}/metrics", timeout=60) as resp:
        assert resp.status == 200
        assert resp.headers["Content-Type"] == CONTENT_TYPE
        assert CONTENT_TYPE == "text/plain; version=0.0.4; charset=utf-8"
        text = resp.read().decode()
    check_against_json(parse(text), status_json(db))


@pytest.mark.slow
def test_metrics_say_down_when_the_database_is_gone(db: Database) -> None:
    server = PageServer(db.couch)
    server.start()
    try:
        db.couch.request("DELETE", "")
        status, ctype, body = server.answer("/metrics")
    finally:
        server.stop()
    assert (status, ctype) == (200, CONTENT_TYPE)
    assert parse(body.decode()) == {"gridxfer_up": {(): 0.0}}


# -- the text itself (no server) -----------------------------------------------------
def hand_built(night: str) -> StatusReport:
    ns = NightStatus(
        night,
        {"todo": 2, "locked": 1, "done": 3, "error": 1},
        {"todo": 20, "locked": 10, "done": 300, "error": 7},
        errors={int(Code.SOURCE_MISSING): 1},
        workers=1,
        recent_done=3,
        recent_errors=1,
        recent_bytes=300,
        span=120.0,
        error_codes=[],
        holders=[Holder('w"1\\', "host\n2", None, 1, 1800000000.5, False)],
    )
    return StatusReport(1800000000.25, 900.0, [ns])


def test_label_values_are_escaped() -> None:
    night = 'a"b\\c\nd'
    text = prometheus_text(hand_built(night), now=1800000010.25)
    assert 'night="a\\"b\\\\c\\nd"' in text
    assert 'worker="w\\"1\\\\",host="host\\n2",job=""' in text
    assert all(line.startswith(("#", "gridxfer_")) for line in text.splitlines())
    metrics = parse(text)
    assert per_night(metrics, "gridxfer_night_tokens_per_second") == {night: 4 / 120}
    assert per_night(metrics, "gridxfer_night_eta_seconds") == {night: 3 / (4 / 120)}
    assert metrics["gridxfer_night_tokens"][(("night", night), ("state", "staging"))] == 0
    ((labels, held),) = metrics["gridxfer_holder_tokens"].items()
    assert dict(labels) == {"night": night, "worker": 'w"1\\', "host": "host\n2", "job": ""}
    assert held == 1
    assert metrics["gridxfer_status_age_seconds"] == {(): 10.0}
    assert metrics["gridxfer_status_generated_timestamp_seconds"] == {(): 1800000000.25}
    code = (("code", str(int(Code.SOURCE_MISSING))), ("name", "SOURCE_MISSING"), ("night", night))
    assert metrics["gridxfer_night_error_tokens"] == {code: 1}


def test_eta_is_absent_without_a_rate_and_zero_when_finished() -> None:
    report = hand_built("n1")
    report.nights[0].span = 0.0  # nothing finished within the window
    finished = NightStatus("n2", {"done": 2}, {"done": 5})
    report.nights.append(finished)
    metrics = parse(prometheus_text(report))
    assert per_night(metrics, "gridxfer_night_eta_seconds") == {"n2": 0.0}
    assert per_night(metrics, "gridxfer_night_tokens_per_second") == {"n1": 0.0, "n2": 0.0}
    assert not any(math.isnan(v) for v in per_night(metrics, "gridxfer_night_size_bytes").values())
