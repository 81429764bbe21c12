"""The package's shape, as docs/architecture.md states it: layers import downwards only,
no module imports itself round a cycle, and modules and functions stay small enough
to read in one sitting. Read from the source (ast), so nothing is imported or run."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "GRID_XFER"

# Lowest first. A module is placed by its name under GRID_XFER (a subpackage by its
# first part). A new module has to be placed here, and in docs/architecture.md.
LAYERS: list[tuple[str, set[str]]] = [
    (
        "core",
        {
            "",
            "redact",
            "errors",
            "urls",
            "token",
            "transitions",
            "checksum",
            "config",
            "nightly_config",
            "branches",
        },
    ),
    ("storage", {"storage"}),
    (
        "database",
        {
            "connection",
            "couch",
            "views",
            "pool",
            "lease",
            "status",
            "page",
            "server",
            "pause",
        },
    ),
    ("work", {"task", "source", "parts", "transfer", "scan", "srmlist", "staging", "lta"}),
    ("runtime", {"worker"}),
    ("application", {"app", "create"}),
    ("orchestration", {"launch", "sandbox", "nightly"}),
    ("cli", {"cli"}),
]
MAX_MODULE_LINES = 400
MAX_FUNCTION_LINES = 60


def _modules() -> dict[str, Path]:
    out = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


MODULES = _modules()


def _layer(module: str) -> int:
    head = module.split(".")[0]
    for rank, (_name, members) in enumerate(LAYERS):
        if head in members:
            return rank
    raise AssertionError(f"GRID_XFER.{module} is in no layer: place it in LAYERS and the docs")


def _type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _target(module: str, node: ast.ImportFrom | ast.Import) -> list[str]:
    """The package modules an import statement names (relative imports resolved)."""
    if isinstance(node, ast.Import):
        names = [a.name for a in node.names]
    else:
        base = node.module or ""
        if node.level:  # relative: from the module's package, up level - 1 packages
            here = [p for p in module.split(".") if p]
            if MODULES[module].name != "__init__.py":
                here = here[:-1]
            here = here[: len(here) - node.level + 1]
            base = ".".join(["GRID_XFER", *here, *([base] if base else [])])
        names = [f"{base}.{a.name}" for a in node.names] + [base]
    out = set()
    for name in names:
        if name != "GRID_XFER" and not name.startswith("GRID_XFER."):
            continue
        rel = name.removeprefix("GRID_XFER").removeprefix(".")
        while rel and rel not in MODULES:
            rel = rel.rpartition(".")[0]
        if rel != module and (rel in MODULES):
            out.add(rel)
    return sorted(out)


def _imports(module: str, *, lazy: bool) -> set[str]:
    """What ``module`` imports at import time, or (``lazy``) anywhere it runs."""
    tree = ast.parse(MODULES[module].read_text())
    found: set[str] = set()

    def visit(nodes: list[ast.stmt]) -> None:
        for node in nodes:
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                found.update(_target(module, node))
            elif isinstance(node, ast.If) and _type_checking(node):
                continue  # for the type checker only
            elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                if lazy:
                    visit(node.body)
            elif isinstance(node, ast.ClassDef):
                visit(node.body)
            else:
                for field in ("body", "orelse", "finalbody", "handlers"):
                    visit(getattr(node, field, []))

    visit(tree.body)
    return found


def test_every_module_is_in_a_layer() -> None:
    for module in MODULES:
        _layer(module)


def test_imports_point_down_the_layers() -> None:
    upward = [
        f"GRID_XFER.{m} ({LAYERS[_layer(m)][0]}) imports GRID_XFER.{d} ({LAYERS[_layer(d)][0]})"
        for m in MODULES
        for d in _imports(m, lazy=True)
        if _layer(d) > _layer(m)
    ]
    assert not upward, "\n".join(upward)


def test_no_import_cycles() -> None:
    graph = {m: _imports(m, lazy=False) for m in MODULES}
    # A package imports its own modules to re-export them; they may import each other
    # through the package's name, which is not a cycle of concepts.
    for m in graph:
        graph[m] = {d for d in graph[m] if not m.startswith(d + ".")}
    state: dict[str, int] = {}
    path: list[str] = []

    def visit(m: str) -> None:
        state[m] = 1
        path.append(m)
        for d in sorted(graph[m]):
            if state.get(d) == 1:
                cycle = path[path.index(d) :] + [d]
                raise AssertionError("import cycle: " + " -> ".join(cycle))
            if d not in state:
                visit(d)
        path.pop()
        state[m] = 2

    for m in sorted(graph):
        if m not in state:
            visit(m)


@pytest.mark.parametrize("module", sorted(MODULES))
def test_module_is_small_enough_to_read_in_one_sitting(module: str) -> None:
    lines = len(MODULES[module].read_text().splitlines())
    assert lines <= MAX_MODULE_LINES, f"GRID_XFER.{module}: {lines} lines"


@pytest.mark.parametrize("module", sorted(MODULES))
def test_functions_are_short(module: str) -> None:
    tree = ast.parse(MODULES[module].read_text())
    long = [
        f"{n.name} (line {n.lineno}): {n.end_lineno - n.lineno + 1} lines"
        for n in ast.walk(tree)
        if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))
        and n.end_lineno is not None
        and n.end_lineno - n.lineno + 1 > MAX_FUNCTION_LINES
    ]
    assert not long, f"GRID_XFER.{module}: " + "; ".join(long)


def test_every_subpackage_ships_in_the_wheel() -> None:
    import tomllib

    listed = set(
        tomllib.loads((PACKAGE.parent / "pyproject.toml").read_text())["tool"]["setuptools"][
            "packages"
        ]
    )
    found = {
        ".".join(("GRID_XFER", *p.parent.relative_to(PACKAGE).parts))
        for p in PACKAGE.rglob("__init__.py")
    }
    assert found - listed == set(), "add to [tool.setuptools] packages in pyproject.toml"
