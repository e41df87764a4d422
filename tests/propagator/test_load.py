"""`propagate` as a load test, end to end: stages, several workers, a report, the rate keys.

Real processes: an `eventctl serve` on a free loopback port with a SQLite file, `eventctl
propagate` as a subprocess (on a pseudo-terminal for the keys), `eventctl verify` after.
Counts and rates only; no timing is asserted beyond what the plan itself fixes.
"""

from __future__ import annotations

import json
import os
import pty
import select
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from tests.helpers import ROOT, Server, cli_env, run_cli

EVENTS = str(ROOT / "events" / "events.json")


def ndjson_summary(stdout: str) -> dict[str, Any]:
    last: dict[str, Any] = json.loads(stdout.splitlines()[-1])
    assert last["kind"] == "summary"
    return last


def verified(database_url: str) -> dict[str, Any]:
    result = run_cli("verify", "--json", "--database-url", database_url)
    report: dict[str, Any] = json.loads(result.stdout)
    return report


@pytest.fixture
def server(tmp_path: Path) -> Any:
    server = Server(f"sqlite:///{tmp_path / 'events.db'}", tmp_path)
    yield server
    server.stop()


def test_two_workers_share_the_rate_the_spool_and_one_report(
    server: Server, tmp_path: Path
) -> None:
    report = tmp_path / "run.json"
    result = run_cli(
        "propagate",
        *("--endpoint", server.url + "/event", "--events-file", EVENTS),
        *("--workers", "2", "--rate", "400", "--count", "601", "--json-log"),
        *("--report", str(report)),
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    summary = ndjson_summary(result.stdout)
    assert (summary["generated"], summary["delivered"], summary["workers"]) == (601, 601, 2)
    records = [json.loads(line) for line in result.stdout.splitlines()[:-1]]
    assert sum(r["kind"] == "delivered" for r in records) == 601  # both workers' records
    assert len({r["event_id"] for r in records}) == 601
    data = json.loads(report.read_text())
    assert data["meta"]["workers"] == 2
    assert data["histograms"]["latency"]["count"] == 601
    assert data["histograms"]["service"]["count"] == 601
    assert sum(row["sent"] for row in data["timeline"]["rows"]) == 601
    checked = verified(server.database_url)
    assert checked["verdict"] == "OK", checked
    assert (checked["acknowledged"], checked["lost"], checked["duplicated"]) == (601, 0, 0)
    assert checked["runs"] == 1  # one run, whatever the number of processes


def test_stages_send_what_each_stage_plans(server: Server) -> None:
    result = run_cli(
        "propagate",
        *("--endpoint", server.url + "/event", "--events-file", EVENTS),
        *("--stages", "2s@100,2s@100-300,2s@300", "--json-log"),
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    summary = ndjson_summary(result.stdout)
    stages = summary["stages"]
    assert [s["planned_events"] for s in stages] == [200, 400, 600]
    assert summary["generated"] == 1200
    for stage in stages:  # a stage's last sends may fall in the next stage's first moment
        assert abs(stage["sent"] - stage["planned_events"]) <= 0.01 * stage["planned_events"] + 3
    assert summary["dropped"] == 0
    assert summary["latency_p50_ms"] >= summary["service_p50_ms"] * 0.99
    assert "stage 2 2s@100-300: " in result.stderr


def test_an_html_report_is_written_after_the_run(server: Server, tmp_path: Path) -> None:
    report = tmp_path / "run.html"
    result = run_cli(
        "propagate",
        *("--endpoint", server.url + "/event", "--events-file", EVENTS),
        *("--rate", "100", "--count", "50", "--quiet", "--report", str(report)),
    )
    assert result.returncode == 0, result.stderr
    page = report.read_text()
    assert page.startswith("<!DOCTYPE html>") or page.lower().startswith("<!doctype html>")
    assert "<svg" in page
    assert f"report: {report}" in result.stderr


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["--stages", "1s@5", "--rate", "5"], "--stages sets the rate and the duration"),
        (["--stages", "1s@5", "--duration", "5s"], "--stages sets the rate and the duration"),
        (["--stages", "1s@fast"], "'fast' is not a rate"),
        (["--report", "run.txt", "--count", "1"], "a report is .html (a page) or .json"),
        (["--report", "no/such/dir/run.json", "--count", "1"], "no such directory"),
        (["--workers", "0"], "--workers"),
    ],
)
def test_load_flags_refuse_what_they_cannot_do(args: list[str], says: str, tmp_path: Path) -> None:
    result = run_cli("propagate", "--endpoint", "http://127.0.0.1:9/event", *args, cwd=tmp_path)
    assert result.returncode == 2, result.stderr
    assert says in result.stderr
    assert "Traceback" not in result.stderr


def test_plus_on_the_terminal_raises_the_rate(server: Server, tmp_path: Path) -> None:
    """On a terminal, `+` typed while it runs multiplies the rate by 1.1 each time."""
    report = tmp_path / "run.json"
    controller, terminal = pty.openpty()
    env = cli_env(COLUMNS="100", LINES="40", TERM="xterm")
    process = subprocess.Popen(
        [
            sys.executable,
            *("-m", "eventctl", "propagate"),
            *("--endpoint", server.url + "/event", "--events-file", EVENTS),
            *("--rate", "50", "--duration", "4s", "--report", str(report)),
        ],
        stdin=terminal,
        stdout=subprocess.DEVNULL,
        stderr=terminal,
        env=env,
        cwd=tmp_path,
    )
    os.close(terminal)
    shown = b""
    deadline = time.monotonic() + 60
    pressed = False
    while process.poll() is None and time.monotonic() < deadline:
        ready, _, _ = select.select([controller], [], [], 0.1)
        if ready:
            try:
                shown += os.read(controller, 65536)
            except OSError:
                break
        if not pressed and b"(+/-)" in shown:
            os.write(controller, b"+" * 8)  # x 1.1^8 = 2.14
            pressed = True
    process.wait(timeout=30)
    os.close(controller)
    assert pressed, shown[-2000:]
    assert process.returncode == 0
    data = json.loads(report.read_text())
    assert data["summary"]["rate_changed"] is True
    # 4 s at 50/s is 200; raised early to 107/s, well above
    assert data["summary"]["generated"] > 280
