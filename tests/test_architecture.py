"""The layout docs/architecture.md describes, checked: who may import whom."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from tests.helpers import ROOT

PACKAGE = ROOT / "eventctl"
SHARED = {
    "auth",
    "config",
    "delivery",
    "endpoints",
    "errors",
    "histogram",
    "events",
    "outbox",
    "replay",
    "retry",
    "store",
    "textsafe",
    "timefmt",
    "transport",
    "verify",
}


def imports(path: Path) -> set[str]:
    """Every eventctl module that `path` imports, at any depth of its code."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module] + [f"{node.module}.{alias.name}" for alias in node.names]
        elif isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        else:
            continue
        found.update(name for name in names if name.split(".")[0] == "eventctl")
    return found


def modules(package: str) -> list[Path]:
    return sorted((PACKAGE / package).glob("*.py"))


SIDES = [("consumer", "propagator"), ("propagator", "consumer")]


@pytest.mark.parametrize(("side", "other"), SIDES)
def test_the_two_sides_never_import_each_other(side: str, other: str) -> None:
    for path in modules(side):
        crossing = {name for name in imports(path) if name.startswith(f"eventctl.{other}")}
        assert not crossing, f"{path.relative_to(ROOT)} imports {sorted(crossing)}"


def test_the_shared_modules_import_neither_side_nor_the_cli() -> None:
    for name in SHARED - {"verify", "replay"}:
        path = PACKAGE / f"{name}.py"
        outside = {
            imported
            for imported in imports(path)
            if imported.startswith(("eventctl.consumer", "eventctl.propagator", "eventctl.cli"))
        }
        assert not outside, f"{path.relative_to(ROOT)} imports {sorted(outside)}"


@pytest.mark.parametrize("name", ["verify", "replay"])
def test_verify_and_replay_read_the_propagator_but_never_the_consumer(name: str) -> None:
    imported = imports(PACKAGE / f"{name}.py")
    assert not {name for name in imported if name.startswith("eventctl.consumer")}
    assert not {name for name in imported if name.startswith("eventctl.cli")}


def test_only_the_cli_imports_the_cli() -> None:
    for path in sorted(PACKAGE.rglob("*.py")):
        if path.parent.name in ("cli", "seed") or path.name in ("__main__.py", "entry.py"):
            continue
        assert not {n for n in imports(path) if n.startswith("eventctl.cli")}, path


def test_every_top_level_module_is_shared_or_an_entry_point() -> None:
    top = {path.stem for path in PACKAGE.glob("*.py")}
    assert top == SHARED | {"__init__", "__main__", "entry"}
