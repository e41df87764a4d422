"""Commands read and write only through the Environment they are given."""

from __future__ import annotations

import io
import json
from datetime import UTC, datetime
from pathlib import Path

import pytest
from typer.testing import CliRunner

from eventctl.cli import app
from eventctl.cli.environment import Environment
from eventctl.errors import ExitCode
from eventctl.events import Event
from eventctl.store import Incoming, Store
from tests.helpers import cli_env


def run(env: Environment, *args: str) -> int:
    return CliRunner().invoke(app, list(args), obj=env, prog_name="eventctl").exit_code


def streams(environ: dict[str, str], *, tty: bool = False, stdin: str = "") -> Environment:
    return Environment(
        stdin=io.StringIO(stdin),
        stdout=io.StringIO(),
        stderr=io.StringIO(),
        environ=environ,
        stdout_isatty=tty,
        stderr_isatty=tty,
    )


def output(env: Environment) -> str:
    assert isinstance(env.stdout, io.StringIO)
    return env.stdout.getvalue()


def errors(env: Environment) -> str:
    assert isinstance(env.stderr, io.StringIO)
    return env.stderr.getvalue()


@pytest.fixture
def one_event(sqlite_url: str) -> str:
    store = Store.open(sqlite_url, create=True)
    store.insert([Incoming("e1", Event("order.created", "x" * 300), datetime.now(UTC))])
    store.close()
    return sqlite_url


def test_config_comes_from_the_environments_variables_not_the_process(
    one_event: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("EVENTCTL_DATABASE_URL", f"sqlite:///{tmp_path}/elsewhere.db")
    env = streams(cli_env(EVENTCTL_DATABASE_URL=one_event))
    assert run(env, "list-events", "--json") == ExitCode.OK, errors(env)
    assert [row["event_id"] for row in json.loads(output(env))] == ["e1"]
    assert not (tmp_path / "elsewhere.db").exists()


def test_a_terminal_gets_styles_and_the_environments_width(one_event: str) -> None:
    terminal = streams(cli_env(COLUMNS="60", TERM="xterm-256color"), tty=True)
    assert run(terminal, "list-events", "--database-url", one_event) == ExitCode.OK
    shown = output(terminal)
    assert "\x1b[" in shown
    piped = streams(cli_env(COLUMNS="60"))
    assert run(piped, "list-events", "--database-url", one_event) == ExitCode.OK
    lines = output(piped).splitlines()
    assert "\x1b[" not in output(piped)
    assert max(len(line) for line in lines) == 60  # the payload takes what is left


def test_status_goes_to_the_environments_stderr_and_data_to_its_stdout(
    sqlite_url: str,
) -> None:
    Store.open(sqlite_url, create=True).close()
    env = streams(cli_env())
    assert run(env, "list-events", "--database-url", sqlite_url) == ExitCode.OK
    assert (output(env), errors(env)) == ("", "No events yet.\n")


def test_an_error_is_one_line_on_the_environments_stderr(tmp_path: Path) -> None:
    env = streams(cli_env(EVENTCTL_PORT="eighty"))
    assert run(env, "list-events", "--database-url", f"sqlite:///{tmp_path}/e.db") == (
        ExitCode.CONFIG
    )
    assert errors(env) == "eventctl: error: EVENTCTL_PORT: must be an integer, not 'eighty'\n"


def test_send_once_reads_the_environments_stdin() -> None:
    env = streams(cli_env(), stdin='{"event_type": 7, "event_payload": "p"}')
    assert run(env, "send-once", "--file", "-") == ExitCode.INPUT
    assert errors(env) == "eventctl: error: stdin: event_type must be a string, not number\n"
