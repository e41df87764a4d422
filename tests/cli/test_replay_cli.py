"""`eventctl replay` with real processes: two consumers, kill -9, exports, bad input."""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from eventctl.errors import ExitCode
from eventctl.events import Event
from eventctl.store import Incoming, Store
from tests.helpers import ROOT, Proc, Server, free_port, invoke, postgres_url, run_cli

EVENTS_FILE = str(ROOT / "events" / "events.json")
T0 = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)


def rows_of(database_url: str) -> list[tuple[str, str, str]]:
    store = Store.open(database_url)
    try:
        events = store.events(limit=10**6, oldest_first=True)
    finally:
        store.close()
    return [(e.event_id, e.event_type, e.event_payload) for e in events]


def fill(
    database_url: str, n: int, *, event_type: str = "drill.event", start: datetime = T0
) -> None:
    store = Store.open(database_url, create=True)
    try:
        store.insert(
            [
                Incoming(
                    f"{event_type}-{i:05d}",
                    Event(event_type, f"payload {i}"),
                    start + timedelta(milliseconds=i),
                )
                for i in range(n)
            ]
        )
    finally:
        store.close()


def replay(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return run_cli("replay", "--quiet", *args, timeout=timeout)


@pytest.fixture
def two_consumers(tmp_path: Path) -> Iterator[tuple[Server, Server]]:
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    a = Server(f"sqlite:///{tmp_path / 'a' / 'events.db'}", tmp_path / "a")
    b = Server(f"sqlite:///{tmp_path / 'b' / 'events.db'}", tmp_path / "b")
    yield a, b
    a.stop()
    b.stop()


def test_captured_events_replayed_to_a_second_consumer(
    two_consumers: tuple[Server, Server],
) -> None:
    a, b = two_consumers
    captured = run_cli(
        "propagate",
        "--endpoint",
        a.url + "/event",
        "--events-file",
        EVENTS_FILE,
        "--rate",
        "1000",
        "--count",
        "500",
        "--quiet",
    )
    assert captured.returncode == 0, captured.stderr
    original = rows_of(a.database_url)
    assert len(original) == 500

    at_rate = replay("--database-url", a.database_url, "--to", b.url + "/event", "--rate", "2000")
    assert at_rate.returncode == 0, at_rate.stderr
    assert "500 sent, 500 delivered, 0 failed, 0 pending" in at_rate.stderr
    assert sorted(rows_of(b.database_url)) == sorted(original)  # same ids, types, payloads
    checked = run_cli("verify", "--json", "--database-url", b.database_url)
    assert json.loads(checked.stdout)["verdict"] == "OK", checked.stdout
    against_source = run_cli("verify", "--database-url", a.database_url)
    assert against_source.returncode == ExitCode.USAGE
    assert "check it against the receiver's database" in against_source.stderr

    again = replay("--database-url", a.database_url, "--to", b.url + "/event", "--speed", "10")
    assert again.returncode == 0, again.stderr
    assert "500 already stored" in again.stderr
    assert sorted(rows_of(b.database_url)) == sorted(original)  # nothing new
    checked = run_cli("verify", "--json", "--database-url", b.database_url)
    report = json.loads(checked.stdout)
    assert (report["verdict"], report["lost"], report["stored"]) == ("OK", 0, 500), report

    copies = replay("--database-url", a.database_url, "--to", b.url + "/event", "--new-ids")
    assert copies.returncode == 0, copies.stderr
    doubled = rows_of(b.database_url)
    assert len(doubled) == 1000
    assert sorted(r[1:] for r in doubled) == sorted(r[1:] for r in original * 2)


def test_a_replay_to_several_urls_shares_them_and_fails_over(
    two_consumers: tuple[Server, Server], tmp_path: Path
) -> None:
    a, b = two_consumers
    fill(a.database_url, 300)
    dead = f"http://127.0.0.1:{free_port()}/event"
    shared = replay(
        *("--database-url", a.database_url, "--rate", "1000"),
        *("--to", b.url + "/event", "--to", dead, "--json-log"),
    )
    assert shared.returncode == 0, shared.stderr
    assert "300 sent, 300 delivered, 0 failed, 0 pending" in shared.stderr
    assert sorted(rows_of(b.database_url)) == sorted(rows_of(a.database_url))
    summary = json.loads(shared.stdout.splitlines()[-1])
    assert summary["failovers"] >= 1
    assert [e["endpoint"] for e in summary["endpoints"]] == [b.url + "/event", dead]
    dry = replay(
        "--database-url", a.database_url, "--to", b.url + "/event", "--to", dead, "--dry-run"
    )
    assert f"to {b.url}/event {dead}," in dry.stdout


def test_an_export_moves_events_between_machines(
    two_consumers: tuple[Server, Server], tmp_path: Path
) -> None:
    a, b = two_consumers
    fill(a.database_url, 40)
    for output, name in (("ndjson", "export.ndjson"), ("json", "export.json")):
        listed = run_cli(
            "list-events", "--database-url", a.database_url, "--limit", "1000", "--output", output
        )
        assert listed.returncode == 0, listed.stderr
        (tmp_path / name).write_text(listed.stdout)
    sent = replay(
        "--from-file", str(tmp_path / "export.ndjson"), "--to", b.url + "/event", "--speed", "100"
    )
    assert sent.returncode == 0, sent.stderr
    assert sorted(rows_of(b.database_url)) == sorted(rows_of(a.database_url))
    again = replay("--from-file", str(tmp_path / "export.json"), "--to", b.url + "/event")
    assert again.returncode == 0, again.stderr
    assert "40 already stored" in again.stderr


@pytest.mark.parametrize("new_ids", [False, True])
def test_a_replay_killed_with_9_resumes_without_sending_twice(
    tmp_path: Path, new_ids: bool
) -> None:
    source = f"sqlite:///{tmp_path / 'source.db'}"
    fill(source, 3000)
    (tmp_path / "b").mkdir()
    b = Server(f"sqlite:///{tmp_path / 'b' / 'events.db'}", tmp_path / "b")
    try:
        args = [
            "replay",
            "--database-url",
            source,
            "--to",
            b.url + "/event",
            "--rate",
            "1500",
            "--quiet",
            "--since",
            "1000d",  # an age: the restarted replay must still find its run, and its window
        ]
        args += ["--new-ids"] if new_ids else []
        first = Proc(tmp_path, "first", *args)
        deadline = time.monotonic() + 30
        while len(rows_of(b.database_url)) < 600 and time.monotonic() < deadline:
            time.sleep(0.05)
        first.kill9()
        stored_at_kill = len(rows_of(b.database_url))
        assert 0 < stored_at_kill < 3000
        second = run_cli(*args, timeout=60)
        assert second.returncode == 0, second.stderr
        assert "resuming replay run" in second.stderr
        checked = run_cli("verify", "--json", "--database-url", b.database_url)
        report = json.loads(checked.stdout)
        assert (report["verdict"], report["lost"], report["duplicated"]) == ("OK", 0, 0), report
        assert report["generated"] == 3000
        stored = rows_of(b.database_url)
        assert len(stored) == 3000  # each once, even with --new-ids
        assert sorted(r[2] for r in stored) == sorted(f"payload {i}" for i in range(3000))
        if not new_ids:
            assert [r[0] for r in stored] != []
            assert {r[0] for r in stored} == {r[0] for r in rows_of(source)}
    finally:
        b.stop()


def test_a_replay_of_the_last_seconds_resumes_in_the_window_it_began_with(tmp_path: Path) -> None:
    source = f"sqlite:///{tmp_path / 'source.db'}"
    began = time.monotonic()
    fill(source, 2000, start=datetime.now(UTC) - timedelta(seconds=2))
    b = Server(f"sqlite:///{tmp_path / 'b.db'}", tmp_path)
    try:
        args = ["replay", "--database-url", source, "--to", b.url + "/event", "--quiet"]
        args += ["--rate", "1000", "--since", "6s"]
        first = Proc(tmp_path, "first", *args)
        while len(rows_of(b.database_url)) < 300 and time.monotonic() < began + 30:
            time.sleep(0.05)
        first.kill9()
        time.sleep(max(began + 7 - time.monotonic(), 0))  # now `--since 6s` matches nothing
        assert "no events match" in invoke(*args, "--dry-run").stderr
        second = run_cli(*args, timeout=60)
        assert second.returncode == 0, second.stderr
        assert "resuming replay run" in second.stderr
        assert len(rows_of(b.database_url)) == 2000
    finally:
        b.stop()


def test_as_curl_prints_signed_commands_that_work(tmp_path: Path) -> None:
    source = f"sqlite:///{tmp_path / 'source.db'}"
    fill(source, 3)
    secret = tmp_path / "secret"
    secret.write_text("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw\n")
    b = Server(f"sqlite:///{tmp_path / 'b.db'}", tmp_path, "--webhook-secrets-file", str(secret))
    try:
        printed = run_cli(
            "replay",
            "--database-url",
            source,
            "--to",
            b.url + "/event",
            "--as-curl",
            "--signing-secret-file",
            str(secret),
        )
        assert printed.returncode == 0, printed.stderr
        commands = printed.stdout.splitlines()
        assert len(commands) == 3
        assert all("webhook-signature: v1," in c for c in commands)
        for command in commands:
            ran = subprocess.run(
                ["bash", "-c", command], capture_output=True, text=True, check=False
            )
            assert json.loads(ran.stdout) == {"status": "success"}, ran
        assert sorted(rows_of(b.database_url)) == sorted(rows_of(source))
    finally:
        b.stop()


def test_dry_run_says_how_many_and_shows_the_first(tmp_path: Path) -> None:
    source = f"sqlite:///{tmp_path / 'source.db'}"
    fill(source, 12)
    shown = invoke("replay", "--database-url", source, "--dry-run", "--type", "drill.event")
    assert shown.returncode == 0, shown.stderr
    lines = shown.stdout.splitlines()
    assert lines[0] == f"would replay 12 events from {source}, oldest first, flat out:"
    assert "drill.event-00000" in lines[1]
    assert lines[-1] == "  ... and 7 more"
    as_json = invoke(
        "replay",
        "--database-url",
        source,
        "--dry-run",
        "--json",
        "--limit",
        "2",
        "--to",
        "http://127.0.0.1:1/event",
    )
    answer = json.loads(as_json.stdout)
    assert (answer["events"], [e["event_id"] for e in answer["first"]]) == (
        2,
        ["drill.event-00010", "drill.event-00011"],
    )


def test_bad_input_gets_one_line_and_an_exit_code(tmp_path: Path) -> None:
    source = f"sqlite:///{tmp_path / 'source.db'}"
    fill(source, 5)
    to = f"http://127.0.0.1:{free_port()}/event"
    bad = tmp_path / "bad.ndjson"
    bad.write_text(
        '{"event_id": "a", "event_type": "t", "event_payload": "p"}\n{"event_type": 1}\n'
    )
    cases = [
        (
            ["--database-url", source, "--to", to, "--id", "nope"],
            ExitCode.INPUT,
            "no event with event_id nope",
        ),
        (
            ["--database-url", source, "--to", to, "--type", "none.such"],
            ExitCode.INPUT,
            "no events match (--type none.such)",
        ),
        (["--from-file", str(bad), "--to", to], ExitCode.INPUT, "bad.ndjson line 2: "),
        (["--database-url", source, "--to", to], ExitCode.UNAVAILABLE, f"cannot connect to {to}"),
        (
            ["--database-url", source, "--to", to, "--rate", "5", "--speed", "2"],
            ExitCode.USAGE,
            "give one of --rate, --interval, --speed",
        ),
        (["--database-url", source], ExitCode.USAGE, "give --to URL"),
        (
            ["--database-url", source, "--to", "ftp://x/"],
            ExitCode.USAGE,
            "not an http:// or https:// URL",
        ),
        (
            ["--from-file", str(bad), "--database-url", source, "--to", to],
            ExitCode.USAGE,
            "either --from-file or a database",
        ),
        (
            ["--database-url", f"sqlite:///{tmp_path / 'none.db'}", "--to", to],
            ExitCode.DATABASE,
            "none.db",
        ),
    ]
    for args, code, message in cases:
        result = invoke("replay", *args)
        assert result.returncode == code, (args, result.stderr)
        assert message in result.stderr, (args, result.stderr)
        assert "Traceback" not in result.stderr
        assert len([line for line in result.stderr.splitlines() if "error" in line.lower()]) >= 1


@pytest.mark.postgres
def test_replays_from_postgresql(tmp_path: Path) -> None:
    url = postgres_url()
    from tests.helpers import drop_events_table

    drop_events_table(url)
    try:
        fill(url, 1500, event_type="pg.replay")
        b = Server(f"sqlite:///{tmp_path / 'b.db'}", tmp_path)
        try:
            sent = replay("--database-url", url, "--to", b.url + "/event", "--type", "pg.replay")
            assert sent.returncode == 0, sent.stderr
            assert sorted(rows_of(b.database_url)) == sorted(rows_of(url))
        finally:
            b.stop()
    finally:
        drop_events_table(url)
