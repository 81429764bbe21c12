"""docs/cli.md against the command line itself, so the reference cannot drift.

Fast: no server. The click group is walked (and each command's ``--help`` run
through CliRunner); every command must have a heading of its own in docs/cli.md
whose section names each of its long options, every option the page mentions must
exist, and the exit-status table must be GRID_XFER/cli/exits.py's.

How the page is read: a heading that starts with a code span names the command
in it (`` ## `gridxfer tokens` ``, `` ### `tokens create NIGHT` ``); its section
runs to the next heading. Inside it, a code span or a code line that starts with
a command (`` `gridxfer status --html` ``, `` `state-all --json` ``) is about that
command; any other option is about the section's command, or, outside command
sections, must exist on some command.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from GRID_XFER.cli import cli, exits

DOC = Path(__file__).resolve().parents[1] / "docs" / "cli.md"
CommandPath = tuple[str, ...]

OPTION = re.compile(r"(?<![\w-])(--[a-z][a-z0-9-]*)")
SPAN = re.compile(r"`([^`\n]+)`")
HEADING = re.compile(r"^(#{1,6})\s+(.*)$")


# -- the command line --------------------------------------------------------------
def walk(cmd: click.Command = cli, path: CommandPath = ()) -> dict[CommandPath, click.Command]:
    found = {path: cmd}
    if isinstance(cmd, click.Group):
        for sub_name, sub in cmd.commands.items():
            found.update(walk(sub, (*path, sub_name)))
    return found


COMMANDS = walk()


def long_options(cmd: click.Command) -> set[str]:
    names: set[str] = set()
    for p in cmd.params:
        if isinstance(p, click.Option):
            names.update(o for o in (*p.opts, *p.secondary_opts) if o.startswith("--"))
    return names


GLOBAL = long_options(cli) | {"--help"}  # -h/--help: every command, documented once
ANY = set().union(*(long_options(c) for c in COMMANDS.values())) | GLOBAL


def resolve(text: str) -> CommandPath | None:
    """The command a span or code line starts with (`gridxfer -q tokens list ...`)."""
    words = text.split()
    if words and words[0] == "gridxfer":
        words = words[1:]
        while words and words[0] in ("-q", "--quiet", "--debug", "--config"):
            words = words[2:] if words[0] == "--config" else words[1:]
    elif not words or (words[0],) not in COMMANDS:
        return None
    path: CommandPath = ()
    for word in words:
        if (*path, word) not in COMMANDS:
            break
        path = (*path, word)
    return path


# -- the page ----------------------------------------------------------------------
@dataclass
class Section:
    title: str
    command: CommandPath | None
    lines: list[str] = field(default_factory=list)

    def mentions(self) -> list[tuple[CommandPath | None, set[str]]]:
        """(command, options) for each code span, code line and the remaining prose."""
        found: list[tuple[CommandPath | None, set[str]]] = []
        prose = []
        for line in self.lines:
            for span in SPAN.findall(line):
                target = resolve(span)
                found.append(
                    (self.command if target is None else target, set(OPTION.findall(span)))
                )
            rest = SPAN.sub(" ", line).strip()
            if rest.startswith("gridxfer "):  # a code line: `gridxfer stage --poll [NIGHT]`
                found.append((resolve(rest), set(OPTION.findall(rest))))
            else:
                prose.append(rest)
        found.append((self.command, set(OPTION.findall("\n".join(prose)))))
        return found


def read_sections(text: str) -> list[Section]:
    sections = [Section("(top)", None)]
    fenced = False
    for line in text.splitlines():
        if line.lstrip().startswith("```"):
            fenced = not fenced
            continue
        heading = None if fenced else HEADING.match(line)
        if heading:  # one that starts with a code span names a command
            span = SPAN.match(heading.group(2))
            command = resolve(span.group(1)) if span else None
            sections.append(Section(heading.group(2), command, [heading.group(2)]))
        else:
            sections[-1].lines.append(line)
    return sections


SECTIONS = read_sections(DOC.read_text(encoding="utf-8"))


def documented(path: CommandPath) -> set[str]:
    """Options the command's own sections name for it."""
    names: set[str] = set()
    for section in SECTIONS:
        if section.command == path:
            for target, options in section.mentions():
                if target == path:
                    names |= options
    return names


def name(path: CommandPath) -> str:
    return " ".join(("gridxfer", *path))


# -- the tests ---------------------------------------------------------------------
@pytest.mark.parametrize("path", sorted(COMMANDS), ids=name)
def test_help_lists_the_options(path: CommandPath) -> None:
    """The walk sees what a user sees: each command's --help works and lists them."""
    result = CliRunner().invoke(cli, [*path, "--help"])
    assert result.exit_code == 0, result.output
    for option in long_options(COMMANDS[path]):
        assert option in result.output, f"{name(path)} --help lacks {option}"


@pytest.mark.parametrize("path", sorted(COMMANDS), ids=name)
def test_every_command_and_option_is_documented(path: CommandPath) -> None:
    assert any(s.command == path for s in SECTIONS), f"docs/cli.md: no heading for {name(path)}"
    missing = long_options(COMMANDS[path]) - documented(path) - ({"--help"} if path else set())
    assert not missing, f"docs/cli.md does not document {name(path)} {sorted(missing)}"


def test_every_documented_option_exists() -> None:
    wrong = []
    for section in SECTIONS:
        for target, options in section.mentions():
            known = ANY if target is None else long_options(COMMANDS[target]) | GLOBAL
            wrong += [f"{section.title}: {name(target or ())} {o}" for o in options - known]
    assert not wrong, "docs/cli.md names options that do not exist:\n" + "\n".join(wrong)


# What each status's row must say, so that a renumbering shows here.
ROW_WORDS = {
    "OK": "success",
    "FAILED": "error",
    "USAGE": "usage",
    "CONFIG": "configuration",
    "DATABASE": "database",
    "NOT_FOUND": "not found",
    "INVALID": "invalid",
    "SERVER_NOT_RUNNING": "server",
    "TAPE_PROBLEM": "state-all",
    "STAGER": "stager",
    "SANDBOX_FETCH": "sandbox",
    "SANDBOX_CHECKSUM": "sha-256",
    "LAUNCH_REFUSED": "launch",
    "ALERT_FAILED": "alert",
    "INTERRUPTED": "aborted",
}


def exit_rows() -> dict[str, str]:
    (section,) = [s for s in SECTIONS if s.title == "Exit status"]
    rows = {}
    for line in section.lines:
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if line.startswith("|") and cells[0] not in ("Status", "") and set(cells[0]) != {"-"}:
            rows[cells[0]] = " ".join(cells[1:])
    return rows


def test_exit_status_table_is_exits_py() -> None:
    constants = {k: v for k, v in vars(exits).items() if k.isupper() and isinstance(v, int)}
    assert set(constants) == set(ROW_WORDS), "a new status in exits.py: add it to docs/cli.md"
    rows = exit_rows()
    assert {int(s) for s in rows if s.isdigit()} == set(constants.values())
    assert set(rows) - {str(v) for v in constants.values()} == {"128+N"}  # Interrupted(signum)
    for const, word in ROW_WORDS.items():
        assert word in rows[str(constants[const])].lower(), f"exit {constants[const]} ({const})"


def test_every_exit_status_quoted_is_in_the_table() -> None:
    table = {int(s) for s in exit_rows() if s.isdigit()}
    for section in SECTIONS:
        text = "\n".join(section.lines)
        for status in map(int, re.findall(r"\bexit(?:s| status| with)? (\d+)\b", text)):
            assert status in table or status > 128, f"{section.title}: exit {status}"
