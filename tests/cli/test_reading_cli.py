"""list-events filters, outputs and --follow, and stats: real subprocesses, real databases."""

from __future__ import annotations

import csv
import io
import json
import os
import signal
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta

import pytest

from eventctl.cli.read import sparkline
from eventctl.errors import ExitCode
from eventctl.events import Event
from eventctl.store import Incoming, Store
from tests.helpers import (
    HOSTILE,
    HOSTILE_SHOWN,
    ROOT,
    cli_env,
    invoke,
    raw_in_json,
    spawn,
    unsafe_characters,
)


@pytest.fixture
def filled(database_url: str) -> str:
    now = datetime.now(UTC)
    store = Store.open(database_url, create=True)
    store.insert(
        [
            Incoming(
                f"e{i}",
                Event(("order", "user", "ping")[i % 3], f"payload {i}"),
                now - timedelta(minutes=30 - i),
            )
            for i in range(30)
        ]
    )
    store.close()
    return database_url


def listed(*args: str) -> list[dict[str, str]]:
    result = invoke("list-events", "--output", "json", *args)
    assert result.returncode == 0, result.stderr
    rows: list[dict[str, str]] = json.loads(result.stdout)
    return rows


def test_filters_combine(filled: str) -> None:
    assert [r["event_id"] for r in listed("--database-url", filled, "--limit", "3")] == [
        "e29",
        "e28",
        "e27",
    ]
    types = {
        r["event_type"]
        for r in listed(
            "--database-url", filled, "--type", "order", "--type", "user", "--limit", "100"
        )
    }
    assert types == {"order", "user"}
    recent = listed("--database-url", filled, "--since", "5m30s", "--limit", "100")
    assert [r["event_id"] for r in recent] == ["e29", "e28", "e27", "e26", "e25"]
    older = listed("--database-url", filled, "--until", "25m30s", "--limit", "100")
    assert [r["event_id"] for r in older] == ["e4", "e3", "e2", "e1", "e0"]
    assert [r["event_id"] for r in listed("--database-url", filled, "--q", "payload 2")] == [
        "e29",
        "e28",
        "e27",
        "e26",
        "e25",
        "e24",
        "e23",
        "e22",
        "e21",
        "e20",
        "e2",
    ]


def test_ndjson_and_csv_outputs(filled: str) -> None:
    ndjson = invoke("list-events", "--database-url", filled, "--limit", "2", "--output", "ndjson")
    assert [json.loads(line)["event_id"] for line in ndjson.stdout.splitlines()] == ["e29", "e28"]
    as_csv = invoke("list-events", "--database-url", filled, "--limit", "2", "--output", "csv")
    rows = list(csv.DictReader(io.StringIO(as_csv.stdout)))
    assert [r["event_id"] for r in rows] == ["e29", "e28"]
    assert set(rows[0]) == {"id", "event_id", "event_type", "event_payload", "received_at"}
    bad = invoke("list-events", "--database-url", filled, "--output", "xml")
    assert bad.returncode == ExitCode.USAGE


def test_follow_prints_new_rows_as_they_are_stored(filled: str) -> None:
    process = spawn(
        "list-events", "--database-url", filled, "--limit", "2", "--output", "ndjson", "--follow"
    )
    time.sleep(1.5)
    store = Store.open(filled)
    store.insert(
        [
            Incoming("late-1", Event("late", "x"), datetime.now(UTC)),
            Incoming("late-2", Event("late", "y"), datetime.now(UTC)),
        ]
    )
    store.close()
    time.sleep(2.5)
    process.send_signal(signal.SIGINT)
    out, err = process.communicate(timeout=10)
    assert process.returncode == 0, err
    assert [json.loads(line)["event_id"] for line in out.splitlines()] == [
        "e28",
        "e29",
        "late-1",
        "late-2",
    ]
    assert "Traceback" not in err


def test_stats_counts_and_rates(filled: str) -> None:
    result = invoke("stats", "--database-url", filled, "--since", "1h", "--json")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["total"] == 30
    assert {t["event_type"]: t["count"] for t in report["types"]} == {
        "order": 10,
        "user": 10,
        "ping": 10,
    }
    assert sum(report["per_minute"]) == 30
    assert len(report["per_minute"]) == 60
    table = invoke("stats", "--database-url", filled)
    assert "order" in table.stdout
    assert "per minute, last 60 min (peak" in table.stdout
    empty = invoke("stats", "--database-url", filled, "--since", "2999-01-01T00:00:00Z")
    assert "No events since" in empty.stderr


def test_sparkline() -> None:
    assert sparkline([0, 0]) == "▁▁"
    assert sparkline([0, 1, 2, 4, 8]) == "▁▁▂▄█"


def test_the_table_fits_an_80_column_terminal_without_losing_id_or_type(sqlite_url: str) -> None:
    store = Store.open(sqlite_url, create=True)
    payload = json.dumps({"order_id": "ord_5531", "note": "x" * 200})
    store.insert([Incoming("e1", Event("shipment.dispatched", payload), datetime.now(UTC))])
    store.close()
    result = invoke(
        "list-events", "--database-url", sqlite_url, env=cli_env(COLUMNS="80", TERM="dumb")
    )
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert max(len(line) for line in lines) <= 80
    row = next(line for line in lines if "shipment.dispatched" in line)
    assert row.split()[0] == "1"
    # the payload gets the rest of the line: 80 less id, time, type and the gaps
    payload = row.split("shipment.dispatched", 1)[1].strip()
    assert payload.startswith('{"order_id": "ord_5531", "no')
    assert payload.endswith("…")
    assert len(row) >= 79


@pytest.fixture
def hostile(sqlite_url: str) -> str:
    """A database whose one event carries escape sequences and invisible characters."""
    store = Store.open(sqlite_url, create=True)
    event = Event("evil\x1b[2J\x9b31m\u202e\u2028", HOSTILE)
    store.insert([Incoming("id\x1b]0;x\x07\u2029", event, datetime.now(UTC))])
    store.close()
    return sqlite_url


def run_bytes(*args: str) -> str:
    """stdout of `eventctl ARGS` exactly as written: no newline translation."""
    result = subprocess.run(
        [sys.executable, "-m", "eventctl", *args],
        capture_output=True,
        cwd=ROOT,
        env=cli_env(COLUMNS="250", TERM="dumb"),
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout.decode()


def assert_escaped_json(text: str) -> None:
    """JSON as it reaches a terminal: no raw C1 control, U+2028 or U+2029."""
    assert raw_in_json(text) == []
    assert "\\u009b" in text
    assert "\\u2028" in text
    assert "\\u2029" in text


def test_the_table_shows_event_data_escaped(hostile: str) -> None:
    out = run_bytes("list-events", "--database-url", hostile)
    assert unsafe_characters(out) == []
    row = next(line for line in out.splitlines() if "evil" in line)
    assert "evil\\x1b[2J\\x9b31m\\u202e\\u2028" in row
    assert HOSTILE_SHOWN in row
    assert len(out.splitlines()) == 4  # title, header, the line under it, one row


def test_json_and_ndjson_keep_the_values_with_c1_and_separators_escaped(hostile: str) -> None:
    as_json = run_bytes("list-events", "--database-url", hostile, "--json")
    as_ndjson = run_bytes("list-events", "--database-url", hostile, "--output", "ndjson")
    for text in (as_json, as_ndjson):
        assert_escaped_json(text)
    [row] = json.loads(as_json)
    assert json.loads(as_ndjson) == row
    assert (row["event_id"], row["event_type"], row["event_payload"]) == (
        "id\x1b]0;x\x07\u2029",
        "evil\x1b[2J\x9b31m\u202e\u2028",
        HOSTILE,
    )


def test_csv_keeps_the_exact_values(hostile: str) -> None:
    out = run_bytes("list-events", "--database-url", hostile, "--output", "csv")
    [row] = list(csv.DictReader(io.StringIO(out, newline="")))
    assert (row["event_id"], row["event_type"], row["event_payload"]) == (
        "id\x1b]0;x\x07\u2029",
        "evil\x1b[2J\x9b31m\u202e\u2028",
        HOSTILE,
    )


def test_stats_shows_event_types_escaped_and_json_keeps_them(hostile: str) -> None:
    table = run_bytes("stats", "--database-url", hostile)
    assert unsafe_characters(table) == []
    assert "evil\\x1b[2J\\x9b31m\\u202e\\u2028" in table
    as_json = run_bytes("stats", "--database-url", hostile, "--json")
    assert raw_in_json(as_json) == []
    assert "\\u009b" in as_json
    assert "\\u2028" in as_json
    assert json.loads(as_json)["types"][0]["event_type"] == "evil\x1b[2J\x9b31m\u202e\u2028"


def test_follow_prints_new_rows_under_the_one_header(filled: str) -> None:
    process = subprocess.Popen(
        [sys.executable, "-m", "eventctl", "list-events", "--database-url", filled,
         "--limit", "2", "--follow"],
        cwd=ROOT, env=cli_env(COLUMNS="80", TERM="dumb"),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    for name in ("late-1", "late-2"):
        time.sleep(1.5)
        store = Store.open(filled)
        store.insert([Incoming(name, Event("late", name), datetime.now(UTC))])
        store.close()
    time.sleep(1.5)
    process.send_signal(signal.SIGINT)
    out, err = process.communicate(timeout=10)
    assert process.returncode == 0, err
    lines = out.splitlines()
    assert [line.split()[0] for line in lines] == ["2", "id", "─" * 80, "29", "30", "31", "32"]
    assert len({line.index("payload ") for line in lines[3:5]}) == 1
    assert len({line.index("late") for line in lines[5:]}) == 1
    assert max(len(line) for line in lines) <= 80


def test_the_stats_sparkline_fits_80_columns(filled: str) -> None:
    result = invoke("stats", "--database-url", filled, env=cli_env(COLUMNS="80", TERM="dumb"))
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert max(len(line) for line in lines) <= 80
    assert lines[-2] == "per minute, last 60 min (peak 1/min, total 30):"
    assert len(lines[-1]) == 60
    assert set(lines[-1]) <= set(sparkline([0, 1]))


def many(sqlite_url: str) -> str:
    store = Store.open(sqlite_url, create=True)
    now = datetime.now(UTC)
    store.insert([Incoming(f"e{i}", Event("bulk", "x" * 100), now) for i in range(2000)])
    store.close()
    return sqlite_url


@pytest.mark.parametrize(
    "args",
    [
        ["list-events", "--limit", "2000", "--output", "ndjson"],
        ["list-events", "--limit", "2000", "--output", "csv"],
        ["list-events", "--limit", "2000", "--json"],
        ["list-events", "--limit", "2000"],
        ["stats"],
        ["stats", "--json"],
    ],
    ids=" ".join,
)
def test_a_closed_stdout_exits_0_quietly(sqlite_url: str, args: list[str]) -> None:
    """`eventctl ... | head -1`: the reader goes away after one line."""
    process = subprocess.Popen(
        [sys.executable, "-m", "eventctl", *args, "--database-url", many(sqlite_url)],
        cwd=ROOT, env=cli_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )  # fmt: skip
    assert process.stdout is not None
    assert process.stderr is not None
    process.stdout.readline()
    process.stdout.close()
    err = process.stderr.read().decode()
    process.stderr.close()
    assert process.wait(timeout=30) == 0, err
    assert err == ""


def test_a_stdout_closed_from_the_start_exits_0_quietly(sqlite_url: str) -> None:
    read, write = os.pipe()
    os.close(read)
    result = subprocess.run(
        [sys.executable, "-m", "eventctl", "stats", "--json", "--database-url", many(sqlite_url)],
        cwd=ROOT, env=cli_env(), stdout=write, stderr=subprocess.PIPE, timeout=60, check=False,
    )  # fmt: skip
    os.close(write)
    assert (result.returncode, result.stderr) == (0, b"")
