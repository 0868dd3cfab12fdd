"""The layers stay layers: nothing below the doors imports them (tunery/api), no route imports another route, the
console imports no route, and no command module imports another. Read from the source (every import statement,
lazy ones inside functions included), so a shortcut taken anywhere fails here."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "tunery"


def _imports(path: Path) -> set[str]:
    """Every module `path` imports, absolute names."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found |= {node.module} | {f"{node.module}.{a.name}" for a in node.names}
    return found


def _modules(*folders: str) -> dict[str, set[str]]:
    return {str(p.relative_to(PACKAGE.parent)): _imports(p) for folder in folders
            for p in sorted((PACKAGE / folder).rglob("*.py"))}


def test_nothing_below_the_doors_imports_them():
    below = _modules("jobs", "train", "data", "serve", "eval", "text")
    offenders = {m: sorted(i for i in imps if i.startswith("tunery.api")) for m, imps in below.items()}
    assert {m: i for m, i in offenders.items() if i} == {}


def test_no_route_imports_another_route_and_the_console_imports_none():
    doors = _modules("api/routes", "console")
    offenders = {m: sorted(i for i in imps if i.startswith("tunery.api.routes")) for m, imps in doors.items()}
    assert {m: i for m, i in offenders.items() if i} == {}


def test_no_command_module_imports_another():
    commands = {p.name: _imports(p) for p in PACKAGE.glob("cli_*.py")}
    assert commands and all("tunery.cli" not in imps for imps in commands.values())
