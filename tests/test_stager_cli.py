"""`stage` with the LTA stager and LTA credentials alone, its request commands, `state-all URL`.

End to end through the real CLI in subprocesses, against the tape testbed
(``scripts/tape``: XRootD + FRM in front of an emulated MSS). The LTA stager is
remote in production; tests/stager_service.py stands in for it, speaking its
XML-RPC protocol (add_getid, getstatus, getstagedurls, abort, reschedule,
getprogress) behind HTTP basic authentication and staging for real through
gfal2 from the same tape testbed.

"No locality query" is proven by running the CLI with ``GFAL_PLUGIN_DIR``
pointing at an empty directory: gfal2 then has no protocol plugin and any
query of the storage fails (the test checks that it does, with `state-all`),
while the stager, in the test process, still stages from the tape testbed.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from GRID_XFER.errors import Code
from tests.conftest import Database, cli_env, gridxfer, wait_for
from tests.plugins.tape import STAGER_PASSWORD, STAGER_USER, TapeServer
from tests.test_tape import NIGHT, config, docs, state_all, unique

pytestmark = pytest.mark.slow


def lta_env(cfg: Path, tmp: Path, *, gfal2: bool = True) -> dict[str, str]:
    """The CLI's environment: LTA credentials the GRID_LRT way (LOFAR_LTA_USER /
    LOFAR_LTA_PWD), an empty HOME (no ~/.stagingrc), and, without ``gfal2``, no
    gfal2 plugin at all."""
    home = tmp / "home"
    home.mkdir(exist_ok=True)
    env = cli_env(cfg, HOME=str(home), LOFAR_LTA_USER=STAGER_USER, LOFAR_LTA_PWD=STAGER_PASSWORD)
    if not gfal2:
        (tmp / "no-gfal2-plugins").mkdir(exist_ok=True)
        env["GFAL_PLUGIN_DIR"] = str(tmp / "no-gfal2-plugins")
    return env


def on_tape(
    tape: TapeServer, tmp: Path, label: str, n: int, *, online: bool = False
) -> tuple[Path, list[str]]:
    """``n`` files on tape (and on disk too if ``online``) and a list of them, one
    per line (the testbed speaks root://: there is no srm:// field to pick)."""
    base = unique(label)
    urls = []
    for i in range(n):
        tape.put(f"{base}/L{i}_SB{i:03d}.tar", bytes([65 + i]) * (3000 + i), online=online)
        urls.append(tape.url_for(f"{base}/L{i}_SB{i:03d}.tar"))
    surls = tmp / f"{label}.txt"
    surls.write_text("# on tape\n" + "".join(f"{u}\n" for u in urls))
    return surls, urls


def stage_json(cfg: Path, env: dict[str, str], *args: str) -> Any:
    return json.loads(gridxfer("stage", *args, "--json", config=cfg, env=env, check=True).stdout)


def test_stage_a_file_with_the_stager_asks_gfal2_nothing(
    db: Database, tape: TapeServer, lta_stager: Any, tmp_path: Path
) -> None:
    surls, urls = on_tape(tape, tmp_path, "file", 4)
    cfg = config(db, method="gfal2", stager_url=lta_stager.url)
    blind = lta_env(cfg, tmp_path, gfal2=False)
    # Without plugins gfal2 cannot say where any file is: a locality query fails.
    report = state_all(cfg, str(surls), blind, expect=8)
    assert report["counts"]["UNAVAILABLE"] == 4, report

    out = stage_json(cfg, blind, str(surls), "--method", "stager")
    assert out["files"] == 4 and out["request"]["method"] == "stager" and out["tokens"] == []
    rid = out["request"]["id"]
    assert lta_stager.calls.count("add_getid") == 1
    assert lta_stager.requests[int(rid)]["surls"] == sorted(urls)
    # The stager staged them for real: the tape testbed has them on disk now.
    wait_for(
        lambda: (
            stage_json(cfg, blind, "--status", rid, "--method", "stager")["stager_status"]
            == "success"
        ),
        every=0.3,
        what="staged",
    )
    seen = lta_env(cfg, tmp_path)
    assert state_all(cfg, str(surls), seen)["counts"]["ONLINE_AND_NEARLINE"] == 4
    assert lta_stager.rejected == 0


def test_stage_a_night_with_the_stager_and_poll_it_without_gfal2(
    db: Database, tape: TapeServer, lta_stager: Any, tmp_path: Path
) -> None:
    # tokens create reads sizes and checksums: the files are on disk then, evicted after.
    surls, urls = on_tape(tape, tmp_path, "night", 5, online=True)
    cfg = config(db, method="stager", stager_url=lta_stager.url)
    seen, blind = lta_env(cfg, tmp_path), lta_env(cfg, tmp_path, gfal2=False)
    gridxfer(
        "tokens", "create", NIGHT, "--surls", str(surls), "--group", "2",
        "--dest", f"file://{tmp_path / 'dst'}", config=cfg, env=seen, check=True,
    )  # fmt: skip
    tape.evict(urls[0].split("//", 2)[2].rsplit("/", 1)[0])  # the list's directory
    assert state_all(cfg, str(surls), seen)["counts"]["NEARLINE"] == 5

    out = stage_json(cfg, blind, NIGHT)
    assert out["files"] == 5 and len(out["tokens"]) == 3, out
    assert lta_stager.calls.count("add_getid") == 1
    assert lta_stager.requests[int(out["request"]["id"])]["surls"] == sorted(urls)
    assert {d["state"] for d in docs(db).values()} == {"staging"}

    # The stager's poll needs no gfal2 either: every token back to todo once staged.
    def staged() -> bool:
        stage_json(cfg, blind, "--poll")
        return {d["state"] for d in docs(db).values()} == {"todo"}

    wait_for(staged, every=0.3, what="tokens back to todo")
    for doc in docs(db).values():
        assert [h["state"] for h in doc["history"]][-2:] == ["staging", "todo"]


def test_stage_status_abort_reschedule_and_progress_through_the_cli(
    db: Database, tape: TapeServer, lta_stager: Any, tmp_path: Path
) -> None:
    surls, urls = on_tape(tape, tmp_path, "ctl", 2)
    cfg = config(db, method="stager", stager_url=lta_stager.url)
    env = lta_env(cfg, tmp_path, gfal2=False)
    seen = lta_env(cfg, tmp_path)
    spec = tmp_path / "exposures.yaml"
    spec.write_text(
        "".join(
            f"- exposure: e{i}\n  files: [{{name: f, url: '{u}'}}]\n" for i, u in enumerate(urls)
        )
    )
    dst = f"file://{tmp_path / 'dst'}"
    gridxfer("tokens", "create", NIGHT, "--from", str(spec), "--dest", dst, config=cfg, env=seen,
             check=True)  # fmt: skip
    rid = stage_json(cfg, env, NIGHT)["request"]["id"]

    progress = stage_json(cfg, env, "--progress")
    assert progress[rid]["File count"] == 2 and lta_stager.calls.count("getprogress") == 1
    text = gridxfer("stage", "--progress", config=cfg, env=env, check=True).stdout
    assert f"{rid}: " in text and "File count: 2" in text

    assert stage_json(cfg, env, "--reschedule", rid) == {"id": rid, "rescheduled": True}
    assert lta_stager.calls.count("reschedule") == 1

    out = stage_json(cfg, env, "--abort", rid)
    assert out["aborted"] and sorted(out["tokens"]) == sorted(d["_id"] for d in docs(db).values())
    assert lta_stager.requests[int(rid)]["status"] == "aborted"
    for doc in docs(db).values():
        assert doc["state"] == "error" and doc["output"] == Code.NOT_STAGED
        assert f"staging request {rid} (stager) aborted by hand" in doc["error"]["message"]
    status = stage_json(cfg, env, "--status", rid)
    assert status["tokens"] == [] and status["stager_status"] == "aborted"

    for args in (
        ("--abort", rid, "--progress"),
        ("--status", rid, "--reschedule", rid),
        (NIGHT, "--abort", rid),
        ("--progress", "--poll"),
        (),
    ):
        proc = gridxfer("stage", *args, config=cfg, env=env)
        assert proc.returncode == 2 and "--reschedule ID" in proc.stderr, (args, proc.stderr)
    proc = gridxfer("stage", "--progress", "--method", "gfal2", config=cfg, env=env)
    assert proc.returncode == 2 and "the stager's" in proc.stderr
    proc = gridxfer("stage", "--abort", "gfal2-000000000000", config=cfg, env=env)
    assert proc.returncode == 5 and "no staging token with request" in proc.stderr
    assert lta_stager.calls.count("abort") == 1


def test_state_all_of_one_url(db: Database, tape: TapeServer, tmp_path: Path) -> None:
    base = unique("one")
    tape.put(f"{base}/tape", b"t" * 900)
    tape.put(f"{base}/both", b"b" * 900, online=True)
    cfg = config(db)
    one = state_all(cfg, tape.url_for(f"{base}/tape"))
    assert one["target"] == tape.url_for(f"{base}/tape")
    assert (one["total"], one["counts"]["NEARLINE"]) == (1, 1)
    assert state_all(cfg, tape.url_for(f"{base}/both"))["counts"]["ONLINE_AND_NEARLINE"] == 1
    lost = state_all(cfg, tape.url_for(f"{base}/missing"), expect=8)
    assert lost["files"][0]["state"] == "LOST"
    proc = gridxfer("state-all", "root://alice:pw-in-url@127.0.0.1//x", config=cfg)
    assert proc.returncode == 6 and "pw-in-url" not in proc.stdout + proc.stderr
