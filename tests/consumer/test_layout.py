"""consumer/app.py reads top-down: `create_app` only wires parts defined above it, and no
function or closure uses a name of the module that is defined further down."""

from __future__ import annotations

import ast
from pathlib import Path

import eventctl.consumer.app

SOURCE = Path(eventctl.consumer.app.__file__).read_text()
MODULE = ast.parse(SOURCE)


def defined_at() -> dict[str, int]:
    """The line of each module-level name app.py defines (imports included)."""
    lines: dict[str, int] = {}
    for node in MODULE.body:
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            lines[node.name] = node.lineno
        elif isinstance(node, ast.Assign | ast.AnnAssign):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            for target in targets:
                for name in ast.walk(target):
                    if isinstance(name, ast.Name):
                        lines[name.id] = node.lineno
        elif isinstance(node, ast.Import | ast.ImportFrom):
            for alias in node.names:
                lines[(alias.asname or alias.name).split(".")[0]] = node.lineno
    return lines


def used_names(node: ast.AST) -> set[str]:
    """The names `node` reads at run time (annotations are strings under
    `from __future__ import annotations`, so they are left out)."""
    found: set[str] = set()

    def visit(item: ast.AST) -> None:
        if isinstance(item, ast.Name) and isinstance(item.ctx, ast.Load):
            found.add(item.id)
        for field, value in ast.iter_fields(item):
            if field in ("annotation", "returns"):
                continue
            for child in value if isinstance(value, list) else [value]:
                if isinstance(child, ast.AST):
                    visit(child)

    visit(node)
    return found


def test_no_definition_uses_a_name_defined_further_down() -> None:
    lines = defined_at()
    late = [
        f"line {node.lineno}: {getattr(node, 'name', '?')} uses {name} (line {lines[name]})"
        for node in MODULE.body
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef)
        for name in sorted(used_names(node))
        if name in lines and lines[name] > node.lineno
    ]
    assert late == []


def test_create_app_is_wiring_only() -> None:
    [create_app] = [
        node
        for node in MODULE.body
        if isinstance(node, ast.FunctionDef) and node.name == "create_app"
    ]
    assert create_app is MODULE.body[-1]
    nested = [
        type(node).__name__
        for node in ast.walk(create_app)
        if node is not create_app
        and isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef | ast.Lambda)
    ]
    assert nested == []
