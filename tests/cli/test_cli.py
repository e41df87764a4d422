"""The CLI as a user runs it: real subprocesses, a real uvicorn, a real SQLite file."""

from __future__ import annotations

import json
import re
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest
from typer.testing import CliRunner

from eventctl.cli import app
from eventctl.errors import ExitCode
from tests.helpers import Server, cli_env, free_port, invoke, run_cli

EVENT = {"event_type": "order.created", "event_payload": '{"order_id": 7}'}


def assert_one_line_error(stderr: str, *fragments: str) -> None:
    assert "Traceback" not in stderr
    lines = stderr.strip().splitlines()
    assert len(lines) == 1, stderr
    assert lines[0].startswith("eventctl: error: ")
    for fragment in fragments:
        assert fragment in lines[0]


def test_help_and_version() -> None:
    result = run_cli("--help")
    assert result.returncode == 0
    for command in ("serve", "list-events"):
        assert command in result.stdout
    assert run_cli("--version").stdout.startswith("eventctl ")


def test_serve_stores_what_list_events_shows(server: Server) -> None:
    sent = []
    with httpx.Client(base_url=server.url) as client:
        for i in range(5):
            event = {"event_type": f"type.{i % 2}", "event_payload": f"payload {i}"}
            response = client.post("/event", json=event)
            assert response.status_code == 200
            assert response.json() == {"status": "success"}
            sent.append((response.headers["Event-Id"], event))
    result = invoke("list-events", "--json", "--database-url", server.database_url)
    assert result.returncode == 0, result.stderr
    rows = json.loads(result.stdout)
    assert [
        (r["event_id"], {"event_type": r["event_type"], "event_payload": r["event_payload"]})
        for r in rows
    ] == sent[::-1]
    assert all(r["received_at"].endswith("Z") for r in rows)

    only = json.loads(
        invoke(
            "list-events",
            "--json",
            "--type",
            "type.0",
            "--limit",
            "2",
            "--database-url",
            server.database_url,
        ).stdout
    )
    assert [r["event_payload"] for r in only] == ["payload 4", "payload 2"]

    table = invoke("list-events", "--database-url", server.database_url)
    assert table.returncode == 0
    assert "payload 4" in table.stdout
    assert "type.1" in table.stdout

    recent = invoke(
        "list-events", "--json", "--since", "10m", "--database-url", server.database_url
    )
    assert len(json.loads(recent.stdout)) == 5
    future = invoke(
        "list-events",
        "--json",
        "--since",
        "2999-01-01T00:00:00Z",
        "--database-url",
        server.database_url,
    )
    assert json.loads(future.stdout) == []


def test_serve_reads_the_default_config_file_and_environment(tmp_path: Path) -> None:
    (tmp_path / "config").mkdir()
    port = free_port()
    (tmp_path / "config" / "consumer_config.yaml").write_text(
        f'port: {port}\ndatabase_url: "sqlite:///from-file.db"\n'
    )
    env = cli_env(EVENTCTL_DATABASE_URL="sqlite:///from-env.db")
    process = subprocess.Popen(
        [sys.executable, "-m", "eventctl", "serve"],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 15
        while True:
            try:
                httpx.post(f"http://127.0.0.1:{port}/event", json=EVENT).raise_for_status()
                break
            except httpx.TransportError:
                assert time.monotonic() < deadline
                assert process.poll() is None
                time.sleep(0.05)
    finally:
        process.terminate()
        _, err = process.communicate(timeout=20)
    assert process.returncode == 0, err
    assert (tmp_path / "from-env.db").exists()
    assert not (tmp_path / "from-file.db").exists()


def test_empty_database_prints_a_friendly_line(sqlite_url: str, tmp_path: Path) -> None:
    Server(sqlite_url, tmp_path).stop()
    result = invoke("list-events", "--database-url", sqlite_url)
    assert result.returncode == 0
    assert result.stdout == ""
    assert "No events yet." in result.stderr
    as_json = invoke("list-events", "--json", "--database-url", sqlite_url)
    assert json.loads(as_json.stdout) == []


def test_list_events_on_a_missing_database_is_an_error(tmp_path: Path) -> None:
    path = tmp_path / "missing.db"
    result = invoke("list-events", "--database-url", f"sqlite:///{path}")
    assert result.returncode == ExitCode.DATABASE
    assert_one_line_error(result.stderr, "does not exist")
    assert not path.exists()


def test_bad_since_is_a_usage_error(sqlite_url: str, tmp_path: Path) -> None:
    result = invoke("list-events", "--since", "yesterday", "--database-url", sqlite_url)
    assert result.returncode == ExitCode.USAGE
    assert "not a time" in result.stderr


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("port: [\n", "not valid YAML at line"),
        ("prot: 8000\n", "unknown key 'prot'"),
        ("port: high\n", "port: must be an integer"),
    ],
)
def test_config_errors_exit_3_with_one_line(tmp_path: Path, text: str, fragment: str) -> None:
    config = tmp_path / "consumer.yaml"
    config.write_text(text)
    for command in ("serve", "list-events"):
        result = invoke(command, "--config", str(config))
        assert result.returncode == ExitCode.CONFIG
        assert_one_line_error(result.stderr, str(config), fragment)


def test_a_missing_config_file_that_was_named_is_an_error(tmp_path: Path) -> None:
    result = invoke("serve", "--config", str(tmp_path / "nope.yaml"))
    assert result.returncode == ExitCode.CONFIG
    assert_one_line_error(result.stderr, "nope.yaml: config file not found")


def test_a_bad_environment_variable_exits_3(tmp_path: Path) -> None:
    result = invoke("serve", env=cli_env(EVENTCTL_PORT="eighty"), cwd=tmp_path)
    assert result.returncode == ExitCode.CONFIG
    assert_one_line_error(result.stderr, "EVENTCTL_PORT: must be an integer")


def test_a_port_in_use_exits_6(tmp_path: Path, sqlite_url: str) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = run_cli("serve", "--port", str(port), "--database-url", sqlite_url)
    assert result.returncode == ExitCode.UNAVAILABLE
    assert_one_line_error(result.stderr, f"cannot listen on 127.0.0.1:{port}", "in use")


def test_a_database_that_cannot_be_created_exits_5(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/no/such/dir/events.db"
    result = run_cli("serve", "--port", str(free_port()), "--database-url", url)
    assert result.returncode == ExitCode.DATABASE
    assert_one_line_error(result.stderr, "cannot open the database")


def test_a_bad_flag_exits_2() -> None:
    assert invoke("serve", "--port", "many").returncode == ExitCode.USAGE
    assert invoke("list-events", "--limit", "0").returncode == ExitCode.USAGE


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_during_requests_loses_no_acknowledged_event(
    sqlite_url: str, tmp_path: Path, signum: signal.Signals
) -> None:
    server = Server(sqlite_url, tmp_path)
    acknowledged: list[str] = []
    lock = threading.Lock()
    enough = threading.Event()

    def client(worker: int) -> None:
        with httpx.Client(base_url=server.url, timeout=10) as http:
            for n in range(2000):
                key = f"w{worker}-{n}"
                try:
                    response = http.post("/event", json=EVENT, headers={"Idempotency-Key": key})
                except httpx.TransportError:
                    return
                if response.status_code != 200:
                    return
                with lock:
                    acknowledged.append(key)
                    if len(acknowledged) >= 300:
                        enough.set()

    threads = [threading.Thread(target=client, args=(w,)) for w in range(8)]
    for thread in threads:
        thread.start()
    assert enough.wait(30)
    server.process.send_signal(signum)
    for thread in threads:
        thread.join(30)
    code, stderr = server.stop()
    assert code == 0, stderr
    assert "Traceback" not in stderr
    path = sqlite_url.removeprefix("sqlite:///")
    with sqlite3.connect(path) as db:
        stored = {row[0] for row in db.execute("SELECT event_id FROM events")}
    db.close()
    assert set(acknowledged) <= stored
    assert len(acknowledged) >= 300


def test_logs_are_quiet_by_default_and_json_lines_at_info(sqlite_url: str, tmp_path: Path) -> None:
    quiet = Server(sqlite_url, tmp_path)
    httpx.post(quiet.url + "/event", json=EVENT)
    _, stderr = quiet.stop()
    assert [line.split(":")[0] for line in stderr.strip().splitlines()] == [
        "eventctl serve",
        "eventctl serve",
    ]

    chatty = Server(sqlite_url, tmp_path, "--log-level", "info")
    httpx.post(chatty.url + "/event", json=EVENT)
    _, stderr = chatty.stop()
    entries = [json.loads(line) for line in stderr.splitlines() if line.startswith("{")]
    assert entries
    assert all({"ts", "level", "logger", "message"} <= set(entry) for entry in entries)
    access = [e for e in entries if e["logger"] == "uvicorn.access"]
    assert any((e["method"], e["path"], e["status"]) == ("POST", "/event", 200) for e in access)


HELP_COMMANDS = [
    [],
    ["serve"],
    ["list-events"],
    ["tail"],
    ["stats"],
    ["propagate"],
    ["send-once"],
    ["up"],
    ["verify"],
    ["spool"],
    ["spool", "list"],
    ["spool", "retry"],
]


@pytest.mark.parametrize("command", HELP_COMMANDS, ids=lambda c: " ".join(c) or "eventctl")
def test_help_reads_well_at_80_columns(command: list[str]) -> None:
    result = CliRunner().invoke(app, [*command, "--help"], env={"COLUMNS": "80"})
    assert result.exit_code == 0, result.output
    text = result.output
    assert re.search(r"<(bool|str|int|float|file|path|list\[)", text) is None, text
    lines = text.splitlines()
    assert max(len(line) for line in lines) <= 80
    # a wrapped description continues on a line of its own, indented to its column: that
    # column must leave the description room (Rich's panels left it about 33 characters)
    for line in lines:
        body = line.strip("│ ")
        if body and not body.startswith("-") and line.startswith(" " * 10):
            assert 80 - (len(line) - len(line.lstrip("│ "))) >= 44, text
    for flag in ("-h, --help", "--json", "--quiet", "--follow"):
        for line in lines:
            if re.match(rf"\s*{re.escape(flag)}(\s|$)", line):
                assert re.match(rf"\s*{re.escape(flag)}\s{{2,}}\S", line), line
    assert not any(line.rstrip().endswith("...") for line in lines if "Usage:" not in line)
