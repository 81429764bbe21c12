"""docs/tutorial.md works as written: a newcomer's first commands must never fail.

The fast test parses every ``gridxfer`` line of the tutorial's ``sh`` blocks with
the real click commands (options, choices, required arguments). The slow one runs
all the blocks, in order, in one bash with ``HOME`` in a temporary directory,
against the real pouchdb-server that the tutorial itself starts; only the port
differs (the tutorial's 5984 becomes a free one) so that it cannot meet another
server.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
from pathlib import Path

import click
import pytest

from GRID_XFER.cli import cli
from tests.conftest import REPO, free_port

TUTORIAL = REPO / "docs" / "tutorial.md"
BLOCK = re.compile(r"^```sh\n(.*?)^```$", re.S | re.M)
NIGHT = "20261127"


def shell_blocks() -> list[str]:
    blocks = BLOCK.findall(TUTORIAL.read_text(encoding="utf-8"))
    assert blocks, f"no ```sh blocks in {TUTORIAL}"
    return blocks


def gridxfer_lines() -> list[list[str]]:
    """Each `gridxfer ...` command line, up to a pipe or other shell operator."""
    found = []
    for block in shell_blocks():
        for line in block.splitlines():
            if line.strip().startswith("gridxfer "):
                lex = shlex.shlex(line, posix=True, punctuation_chars=True)
                lex.whitespace_split = True
                words = list(lex)
                ends = [i for i, w in enumerate(words) if set(w) <= set(lex.punctuation_chars)]
                found.append(words[: ends[0]] if ends else words)
    return found


def parse(argv: list[str]) -> None:
    """Parse as click would, without running: unknown options, bad values fail here."""
    cmd: click.Command = cli
    names = ["gridxfer"]
    args = argv[1:]
    while isinstance(cmd, click.Group) and args and args[0] in cmd.commands:
        names.append(args[0])
        cmd = cmd.commands[args.pop(0)]
    assert not isinstance(cmd, click.Group), f"{shlex.join(argv)}: names no command"
    cmd.make_context(" ".join(names), args)


def test_every_gridxfer_line_parses() -> None:
    lines = gridxfer_lines()
    assert len(lines) >= 10
    for argv in lines:
        try:
            parse(argv)
        except click.ClickException as exc:
            pytest.fail(f"docs/tutorial.md: {shlex.join(argv)}: {exc.format_message()}")


@pytest.mark.slow
@pytest.mark.timeout(900)  # scripts/setup on a fresh machine installs packages first
def test_the_tutorial_runs(tmp_path: Path) -> None:
    script = "set -euxo pipefail\n" + "\n".join(shell_blocks()).replace("5984", str(free_port()))
    env = {k: v for k, v in os.environ.items() if not k.startswith("GRIDXFER_")}
    env["HOME"] = str(tmp_path)
    work = tmp_path / "first-night"
    try:
        proc = subprocess.run(
            ["bash", "-c", script], cwd=REPO, env=env, capture_output=True, text=True, timeout=850
        )
    finally:  # the tutorial stops its server last; a failure on the way must not leave it
        if (work / "gridxfer.yaml").exists():
            subprocess.run([REPO / ".venv/bin/gridxfer", "-q", "server", "stop"], cwd=work, env=env)
    assert proc.returncode == 0, f"stdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
    assert "1 tokens reset" in proc.stdout
    assert "stopped" in proc.stdout.splitlines()[-1]
    sources = sorted(p for p in (work / "raw" / NIGHT).rglob("*") if p.is_file())
    assert len(sources) == 6 * 4  # 3 files and a manifest per exposure
    for src in sources:
        dst = work / "archive" / src.relative_to(work / "raw")
        assert dst.read_bytes() == src.read_bytes(), dst
