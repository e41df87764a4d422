"""The docs cover every command, flag, config key, exit code and HTTP error."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import typer.main

from eventctl.auth import Credentials
from eventctl.cli import app
from eventctl.config import ConsumerConfig, PropagatorConfig, describe
from eventctl.consumer.app import create_app
from eventctl.errors import ExitCode
from eventctl.store import Store
from tests.helpers import in_process

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"


def commands() -> dict[str, Any]:
    """Every command by its full name, sub-commands included ("spool list")."""
    found: dict[str, Any] = {}

    def walk(prefix: str, group: Any) -> None:
        for name, command in group.commands.items():
            full = f"{prefix} {name}".strip()
            if hasattr(command, "commands"):
                walk(full, command)
            else:
                found[full] = command

    walk("", typer.main.get_command(app))
    return found


@pytest.mark.parametrize("name", sorted(commands()))
def test_every_command_and_flag_is_in_cli_md(name: str) -> None:
    text = (DOCS / "cli.md").read_text()
    assert f"## `eventctl {name}`" in text
    section = text.split(f"## `eventctl {name}`", 1)[1].split("\n## ", 1)[0]
    for param in commands()[name].params:
        for opt in param.opts:
            if opt.startswith("--") and opt != "--help":
                assert f"`{opt}" in section, f"{opt} of {name} is not in docs/cli.md"


@pytest.mark.parametrize("cls", [ConsumerConfig, PropagatorConfig])
def test_every_config_key_is_in_configuration_md(
    cls: type[ConsumerConfig | PropagatorConfig],
) -> None:
    text = (DOCS / "configuration.md").read_text()
    for key, variable, flag, _default in describe(cls):
        row = next((line for line in text.splitlines() if line.startswith(f"| `{key}` |")), "")
        assert row, f"{key} has no row in docs/configuration.md"
        assert f"`{variable}`" in row
        assert f"`{flag}`" in row


def test_every_exit_code_is_in_cli_md() -> None:
    text = (DOCS / "cli.md").read_text()
    for code in ExitCode:
        assert f"| {code.value} | `{code.name}` |" in text


def test_readme_test_command_is_what_ci_runs() -> None:
    readme = (ROOT / "README.md").read_text()
    ci = (ROOT / ".ci" / "run").read_text()
    command = (
        "python3 scripts/poetry.py install --all-extras --compile"
        " && python3 scripts/poetry.py run pytest"
    )
    assert command in readme
    assert command in ci


async def maximal_document(tmp_path: Path) -> dict[str, Any]:
    """/openapi.json of a server with everything on: metrics, a token, signing, a drill."""
    store = Store.open(f"sqlite:///{tmp_path / 'events.db'}", create=True)
    try:
        config = ConsumerConfig(metrics=True, fail_rate=0.1)
        credentials = Credentials(token="t", keys=[b"k" * 24])
        app = create_app(config, store, credentials=credentials)
        async with in_process(app) as client:
            document: dict[str, Any] = (await client.get("/openapi.json")).json()
    finally:
        store.close()
    return document


@pytest.mark.anyio
async def test_http_api_md_matches_openapi_json(tmp_path: Path) -> None:
    document = await maximal_document(tmp_path)
    text = (DOCS / "http-api.md").read_text()
    table = set(re.findall(r"^\| `(GET|POST) (/[^`]*)` \|", text, re.MULTILINE))
    operations = {
        (method.upper(), path) for path, ops in document["paths"].items() for method in ops
    }
    assert table == operations

    rows = set(re.findall(r"^\| (\d{3}|4xx/5xx) \| `([a-z_]+)` \|", text, re.MULTILINE))
    documented: set[tuple[str, str]] = set()
    for path, ops in document["paths"].items():
        for method, operation in ops.items():
            for parameter in operation.get("parameters", []):
                name = parameter["name"]
                assert f"`{name}" in text, f"{name} of {method.upper()} {path} is undocumented"
            for status, answer in operation["responses"].items():
                schema = answer.get("content", {}).get("application/json", {}).get("schema", {})
                for code in schema.get("properties", {}).get("code", {}).get("enum", []):
                    documented.add(("4xx/5xx" if code == "injected_fault" else status, code))
    assert documented <= rows, f"undocumented in http-api.md: {documented - rows}"
    generic = {("405", "method_not_allowed"), ("500", "internal_error")}
    assert rows - documented <= generic, f"not in /openapi.json: {rows - documented - generic}"
