"""spool list / retry, propagate --drain and verify, as a user runs them."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

from eventctl.errors import ExitCode
from eventctl.events import Event
from eventctl.propagator.spool import Spool
from eventctl.store import Store
from tests.helpers import (
    HOSTILE,
    ROOT,
    Server,
    cli_env,
    free_port,
    invoke,
    propagate_quickly,
    raw_in_json,
    run_cli,
    unsafe_characters,
)

EVENTS_FILE = str(ROOT / "events" / "events.json")


def spool_path() -> Path:
    return Path(cli_env()["EVENTCTL_SPOOL_PATH"])


def test_failed_events_are_listed_and_retried(server: Server) -> None:
    dead = f"http://127.0.0.1:{free_port()}/event"
    failed = run_cli(
        "propagate",
        "--events-file",
        EVENTS_FILE,
        "--endpoint",
        dead,
        "--interval",
        "0.01",
        "--count",
        "3",
        "--retry-attempts",
        "1",
    )
    assert failed.returncode == ExitCode.UNDELIVERED
    listed = invoke("spool", "list", "--json")
    entries = json.loads(listed.stdout)
    assert [e["state"] for e in entries] == ["failed"] * 3
    assert all(e["last_result"] == "connection refused" for e in entries)
    table = invoke("spool", "list")
    assert "0 pending, 3 failed, 0 delivered" in table.stderr
    assert entries[0]["event_id"] in table.stdout

    retried = run_cli("spool", "retry", "--endpoint", server.url + "/event")
    assert retried.returncode == 0, retried.stderr
    assert "3 failed events are pending again" in retried.stderr
    assert "eventctl spool retry: 0 sent, 3 resent from the spool" in retried.stderr
    assert json.loads(invoke("spool", "list", "--json").stdout) == []
    report = json.loads(invoke("verify", "--json", "--database-url", server.database_url).stdout)
    assert (report["ok"], report["acknowledged"], report["stored"]) == (True, 3, 3)


def test_drain_sends_only_what_is_pending(server: Server) -> None:
    spool = Spool.open(spool_path())
    spool.add("left-over-1", Event("a", "1"))
    spool.add("left-over-2", Event("b", "2"))
    spool.close()
    drained = run_cli("propagate", "--drain", "--endpoint", server.url + "/event")
    assert drained.returncode == 0, drained.stderr
    assert "0 sent, 2 resent from the spool, 2 delivered" in drained.stderr
    with sqlite3.connect(server.database_url.removeprefix("sqlite:///")) as db:
        ids = sorted(row[0] for row in db.execute("SELECT event_id FROM events"))
    db.close()
    assert ids == ["left-over-1", "left-over-2"]
    again = run_cli("propagate", "--drain", "--endpoint", server.url + "/event")
    assert "0 sent, 0 delivered" in again.stderr


def test_verify_exits_10_when_an_acknowledged_event_is_missing(server: Server) -> None:
    sent = propagate_quickly(server.url, 5, "--events-file", EVENTS_FILE)
    assert sent.returncode == 0
    ok = invoke("verify", "--database-url", server.database_url)
    assert ok.returncode == 0
    assert ok.stdout.startswith("OK: 5 generated, 5 acknowledged, 5 stored; lost 0")
    with sqlite3.connect(server.database_url.removeprefix("sqlite:///")) as db:
        db.execute("DELETE FROM events WHERE id = 3")
    db.close()
    bad = invoke("verify", "--database-url", server.database_url)
    assert bad.returncode == ExitCode.MISMATCH
    assert bad.stdout.startswith("FAILED: 5 generated, 5 acknowledged, 4 stored; lost 1")
    assert "  lost: " in bad.stdout


def test_verify_without_a_spool_is_an_error(tmp_path: Path, sqlite_url: str) -> None:
    env = cli_env(EVENTCTL_SPOOL_PATH=str(tmp_path / "none.db"))
    result = invoke("verify", "--database-url", sqlite_url, env=env)
    assert result.returncode == ExitCode.DATABASE
    assert "no spool here" in result.stderr


def test_spool_list_reads_and_never_creates_a_spool(tmp_path: Path) -> None:
    missing = tmp_path / "x" / "s.db"
    for extra in ([], ["--json"]):
        result = invoke("spool", "list", "--spool", str(missing), *extra)
        assert result.returncode == ExitCode.OK, result.stderr
        assert "no spool here" in result.stderr
        assert result.stdout == ("[]\n" if extra else "")
    assert not (tmp_path / "x").exists()


def test_rate_and_interval_exclude_each_other() -> None:
    result = invoke("propagate", "--rate", "10", "--interval", "1")
    assert result.returncode == ExitCode.USAGE
    assert invoke("propagate", "--drain", "--count", "3").returncode == ExitCode.USAGE


def test_fault_drill_flags_refuse_requests(tmp_path: Path, sqlite_url: str) -> None:
    failing = Server(sqlite_url, tmp_path, "--fail-rate", "1", "--fail-status", "429")
    try:
        result = run_cli(
            "send-once", "--endpoint", failing.url + "/event", "--type", "t", "--payload", "p"
        )
    finally:
        failing.stop()
    assert result.returncode == ExitCode.SERVER_ERROR  # 429: try again, as the propagator does
    assert "429 injected_fault" in result.stderr
    bad = invoke("serve", "--fail-rate", "2", "--database-url", sqlite_url)
    assert bad.returncode == ExitCode.CONFIG
    assert "--fail-rate: must be between 0 and 1" in bad.stderr


def test_spool_list_shows_event_data_escaped_and_json_keeps_it() -> None:
    spool = Spool.open(spool_path())
    spool.add("id\x1b[2J", Event("evil\x9b31m\u202e\u2028", HOSTILE))
    spool.settle("id\x1b[2J", "failed", 1, "503 \x1b]0;title\x07\u2029")
    spool.close()
    table = invoke("spool", "list", env=cli_env(COLUMNS="200"))
    assert table.returncode == 0, table.stderr
    assert unsafe_characters(table.stdout) == []
    for shown in ("id\\x1b[2J", "evil\\x9b31m\\u202e\\u2028", "503 \\x1b]0;title"):
        assert shown in table.stdout
    as_json = invoke("spool", "list", "--json")
    assert raw_in_json(as_json.stdout) == []
    [entry] = json.loads(as_json.stdout)
    assert entry["event"] == {"event_type": "evil\x9b31m\u202e\u2028", "event_payload": HOSTILE}
    assert entry["last_result"] == "503 \x1b]0;title\x07\u2029"


def test_verify_shows_lost_ids_escaped(sqlite_url: str) -> None:
    Store.open(sqlite_url, create=True).close()
    spool = Spool.open(spool_path())
    spool.add("lost\x1b[2J\x9b\u2028", Event("t", "p"))
    spool.settle("lost\x1b[2J\x9b\u2028", "delivered", 1, "200")
    spool.close()
    human = invoke("verify", "--database-url", sqlite_url)
    assert human.returncode == ExitCode.MISMATCH
    assert unsafe_characters(human.stdout) == []
    assert "  lost: lost\\x1b[2J\\x9b\\u2028" in human.stdout
    as_json = invoke("verify", "--database-url", sqlite_url, "--json")
    assert json.loads(as_json.stdout)["lost_ids"] == ["lost\x1b[2J\x9b\u2028"]


def test_spool_list_fits_80_columns_without_cutting_words() -> None:
    spool = Spool.open(spool_path())
    spool.add("01900000-0000-7000-8000-000000000001", Event("payment.succeeded.eu-west", "p"))
    spool.add("01900000-0000-7000-8000-000000000002", Event("order.created", "p"))
    spool.settle("01900000-0000-7000-8000-000000000002", "delivered", 3, "200 after 3 tries")
    spool.close()
    table = invoke("spool", "list", "--state", "all", env=cli_env(COLUMNS="80"))
    assert table.returncode == 0, table.stderr
    lines = table.stdout.splitlines()
    assert all(len(line) <= 80 for line in lines)
    assert any("pending" in line and "…" not in line.split()[1] for line in lines)
    assert any(" delivered " in line for line in lines)
    assert "payment.s…" in table.stdout
    assert "01900000-0000-7000-8000-000000000001" in table.stdout
