"""GRID_LRT users' files: srm lists, LTA URL forms and LOFAR_LTA_* credentials.

Fast: no server. The URL list is read as GRID_LRT's srmlist reads it; the
conversions are checked for every site and form against the door names in
GRID_XFER/srmlist.py, and round trips back to the SURL.
"""

from __future__ import annotations

import json
import logging
import shlex
import threading
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from GRID_XFER import token as tk
from GRID_XFER.cli import cli, main
from GRID_XFER.errors import ConfigError, InvalidInput
from GRID_XFER.lta import load_credentials
from GRID_XFER.scan import read_surl_list
from GRID_XFER.srmlist import FORMS, SITES, convert, line_url, normalise, read_list
from GRID_XFER.task import CommandTask, TaskContext

SARA = "srm://srm.grid.sara.nl:8443/pnfs/grid.sara.nl/data/lofar/ops/projects/lc0_012/123456"
JUELICH = "srm://lofar-srm.fz-juelich.de:8443/pnfs/fz-juelich.de/data/lofar/ops/projects/x/1"
POZNAN = "srm://lta-head.lofar.psnc.pl:8443/lofar/ops/projects/lt5_004/123456"


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "srm.txt"
    path.write_text(text)
    return path


# ------------------------------------------------------------------ reading a list


def test_the_first_srm_field_of_a_line_is_taken_and_pnfs_normalised(tmp_path: Path) -> None:
    a, b = f"{SARA}/L123456_SB000_uv.MS_a.tar", f"{SARA}/L123456_SB001_uv.MS_b.tar"
    doubled = b.replace(":8443/pnfs", ":8443//pnfs")
    path = write(
        tmp_path,
        f"# an LTA export\n\n{a} 1234567\n  12  {doubled}\tsecond srm://x.example/ignored\n",
    )
    assert read_surl_list(path) == [a, b]


def test_single_url_lines_of_any_scheme_are_kept_as_before(tmp_path: Path) -> None:
    urls = ["root://host//data/f1", "file:///data/f2", "gsiftp://gridftp.grid.sara.nl:2811/x/f3"]
    assert read_list(write(tmp_path, "\n".join(urls) + "\n")) == urls


def test_lines_of_several_fields_without_srm_are_skipped_with_a_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = write(tmp_path, f"SURL size\n{SARA}/f1 10\ngsiftp://h/f2 20\n")
    with caplog.at_level(logging.WARNING, logger="GRID_XFER.srmlist"):
        assert read_list(path) == [f"{SARA}/f1"]
    (record,) = caplog.records
    assert "2 line(s) without an srm:// URL skipped (first: line 1)" in record.getMessage()


def test_duplicates_are_dropped_with_one_warning_naming_the_first(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    f1, f2 = f"{SARA}/f1", f"{SARA}/f2"
    path = write(tmp_path, f"{f1}\n{f2}\n{f1.replace('/pnfs', '//pnfs')} 99\n{f2}\n{f1}\n")
    with caplog.at_level(logging.WARNING, logger="GRID_XFER.srmlist"):
        assert read_surl_list(path) == [f1, f2]
    (record,) = caplog.records
    assert record.levelno == logging.WARNING
    assert "3 duplicate URL(s) dropped (first: line 3" in record.getMessage()
    assert f1 in record.getMessage() and "as on line 1" in record.getMessage()


def test_the_url_policy_still_applies_to_every_url_kept(tmp_path: Path) -> None:
    secret = "hunter2-secret"
    path = write(tmp_path, f"{SARA}/f1\nsrm://alice:{secret}@srm.grid.sara.nl:8443/pnfs/f2 7\n")
    with pytest.raises(InvalidInput) as exc:
        read_list(path)
    assert "line 2" in str(exc.value) and secret not in str(exc.value)
    with pytest.raises(InvalidInput, match="no URLs"):
        read_list(write(tmp_path, "# nothing\n\n"))
    with pytest.raises(InvalidInput, match="line 1"):
        read_list(write(tmp_path, "not-a-url\n"))


@pytest.mark.parametrize(
    "url, canonical",
    [
        (f"{SARA}/f", f"{SARA}/f"),
        (SARA.replace(":8443/", ":8443//") + "/f", f"{SARA}/f"),
        (SARA.replace(":8443/", ":8443///") + "/f", f"{SARA}/f"),
        (SARA.replace(":8443/", ":8443/srm/managerv2?SFN=/") + "/f", f"{SARA}/f"),
        (POZNAN.replace(":8443/", ":8443//") + "/f", f"{POZNAN}/f"),
        ("root://h//pnfs/x", "root://h//pnfs/x"),  # XRootD's absolute path stays
    ],
)
def test_normalise_keeps_one_canonical_surl(url: str, canonical: str) -> None:
    assert normalise(url) == canonical
    assert line_url(f"  {url}\t") == canonical


# ------------------------------------------------------------------ conversions


EXPECTED = {
    SARA: {
        "gsiftp": SARA.replace("srm://srm.grid.sara.nl:8443", "gsiftp://gridftp.grid.sara.nl:2811"),
        "https": SARA.replace(
            "srm://srm.grid.sara.nl:8443", "https://webdav.grid.surfsara.nl:2882"
        ),
        "root": SARA.replace(
            "srm://srm.grid.sara.nl:8443/", "root://xrootd.grid.surfsara.nl:1094//"
        ),
        "download": "https://lofar-download.grid.sara.nl/lofigrid/SRMFifoGet.py?surl=" + SARA,
    },
    JUELICH: {
        "gsiftp": JUELICH.replace(
            "srm://lofar-srm.fz-juelich.de:8443", "gsiftp://lofar-gridftp.fz-juelich.de:2811"
        ),
        "download": "https://lofar-download.fz-juelich.de/webserver-lofar/SRMFifoGet.py?surl="
        + JUELICH,
    },
    POZNAN: {
        "gsiftp": POZNAN.replace(
            "srm://lta-head.lofar.psnc.pl:8443", "gsiftp://gridftp.lofar.psnc.pl:2811"
        ),
        "download": "https://lta-download.lofar.psnc.pl/lofigrid/SRMFifoGet.py?surl=" + POZNAN,
    },
}


@pytest.mark.parametrize("surl", list(EXPECTED))
def test_every_site_and_form_converts_and_comes_back(surl: str) -> None:
    assert len(EXPECTED) == len(SITES)
    for form in FORMS:
        if form == "srm":
            assert convert(surl, "srm") == surl
            continue
        if form not in EXPECTED[surl]:
            with pytest.raises(InvalidInput, match=f"offers no {form} form"):
                convert(surl, form)
            continue
        other = convert(surl, form)
        assert other == EXPECTED[surl][form]
        assert convert(other, "srm") == surl  # round trip
        for third in EXPECTED[surl]:  # and between any two forms
            assert convert(other, third) == EXPECTED[surl][third]
    doubled = surl.replace(":8443/", ":8443//")
    assert convert(doubled, "gsiftp") == EXPECTED[surl]["gsiftp"]


def test_an_unknown_host_is_one_line_naming_it() -> None:
    with pytest.raises(InvalidInput) as exc:
        convert("srm://srm.example.org:8443/pnfs/example.org/f", "root")
    assert str(exc.value) == (
        "srm://srm.example.org:8443/pnfs/example.org/f: srm.example.org is no known LOFAR LTA site"
    )
    with pytest.raises(InvalidInput, match="unknown URL form 'ftp'"):
        convert(SARA, "ftp")
    with pytest.raises(InvalidInput, match="no surl=srm"):
        convert("https://lofar-download.grid.sara.nl/lofigrid/SRMFifoGet.py?x=1", "srm")


def test_srm_convert_prints_a_list_in_another_form(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = write(tmp_path, f"{SARA}/a 1\n{SARA.replace('/pnfs', '//pnfs')}/b 2\n{SARA}/a 1\n")
    runner = CliRunner()
    out = runner.invoke(cli, ["srm", "convert", str(path), "--to", "root"])
    assert out.exit_code == 0, out.output
    root = EXPECTED[SARA]["root"]
    assert out.stdout.splitlines() == [f"{root}/a", f"{root}/b"]
    one = runner.invoke(cli, ["srm", "convert", f"{JUELICH}/c", "--to", "gsiftp", "--json"])
    assert json.loads(one.stdout) == {"to": "gsiftp", "urls": [EXPECTED[JUELICH]["gsiftp"] + "/c"]}
    with pytest.raises(SystemExit) as exc:
        main(["srm", "convert", "srm://elsewhere.org/x", "--to", "root"])
    assert exc.value.code == 6
    assert "elsewhere.org is no known LOFAR LTA site" in capsys.readouterr().err
    assert runner.invoke(cli, ["srm", "convert", str(path), "--to", "nope"]).exit_code == 2


# ------------------------------------------------------------------ LOFAR_LTA_* credentials


def test_lofar_lta_variables_come_after_ours_and_before_the_files(tmp_path: Path) -> None:
    home = tmp_path / "home"
    home.mkdir()
    (home / ".stagingrc").write_text("user=bob\npassword=pw-file\n")
    lofar = {"LOFAR_LTA_USER": "dave", "LOFAR_LTA_PWD": "pw-lofar"}
    c = load_credentials(lofar, home)
    assert (c.user, c.password, c.origin) == ("dave", "pw-lofar", "$LOFAR_LTA_USER")
    assert "pw-lofar" not in repr(c)
    ours = {"GRIDXFER_STAGER_USER": "carol", "GRIDXFER_STAGER_PASSWORD": "pw-ours"}
    assert load_credentials({**lofar, **ours}, home).user == "carol"
    # Half a pair is no pair: the file is read, as GRID_LRT needs both variables too.
    assert load_credentials({"LOFAR_LTA_USER": "dave"}, home).user == "bob"
    (home / ".stagingrc").unlink()
    with pytest.raises(ConfigError) as exc:
        load_credentials({"LOFAR_LTA_PWD": "pw-lofar"}, home)
    assert "LOFAR_LTA_USER and LOFAR_LTA_PWD" in str(exc.value)
    assert "pw-lofar" not in str(exc.value)


def test_lofar_lta_password_reaches_no_command_task(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    password = "Lofar-Lta-pw-9876"
    monkeypatch.setenv("LOFAR_LTA_USER", "dave")
    monkeypatch.setenv("LOFAR_LTA_PWD", password)
    seen = tmp_path / "seen"
    script = f"env > {shlex.quote(str(seen))}.env; tr '\\0' ' ' < /proc/$$/cmdline > {seen}.argv"
    task = CommandTask(["sh", "-c", script])
    doc: dict[str, Any] = tk.new_token("20261128", tk.parse_spec("e1"))
    ctx = TaskContext(log=logging.getLogger("test"), cancelled=threading.Event())
    task.run(doc, ctx)
    env_text = (tmp_path / "seen.env").read_text()
    assert "LOFAR_LTA_USER=dave" in env_text  # the environment did reach the command
    assert "LOFAR_LTA_PWD" not in env_text and password not in env_text
    assert password not in (tmp_path / "seen.argv").read_text()
