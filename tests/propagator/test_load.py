"""`propagate` as a load test, end to end: stages, several workers, a report, the rate keys.

Real processes: an `eventctl serve` on a free loopback port with a SQLite file, `eventctl
propagate` as a subprocess (on a pseudo-terminal for the keys), `eventctl verify` after.
Counts and rates only; no timing is asserted beyond what the plan itself fixes.
"""

from __future__ import annotations

import fcntl
import json
import os
import pty
import select
import shlex
import subprocess
import sys
import termios
import time
from pathlib import Path
from typing import Any

import pytest

from tests.helpers import ROOT, Server, cli_env, run_cli

EVENTS = str(ROOT / "events" / "events.json")


def propagate(server: Server, *args: str) -> subprocess.CompletedProcess[str]:
    """`eventctl propagate ARGS` of the repository's events to `server`, as a subprocess."""
    return run_cli(
        "propagate", "--endpoint", server.url + "/event", "--events-file", EVENTS, *args,
        timeout=60,
    )  # fmt: skip


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
    result = propagate(
        server,
        *("--workers", "2", "--rate", "400", "--count", "601", "--json-log"),
        *("--report", str(report)),
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
    result = propagate(
        server,
        *("--stages", "2s@100,2s@100-300,2s@300", "--json-log"),
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
    result = propagate(
        server,
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
        (
            ["--report", "run.txt", "--count", "1"],
            "a report's file name must end in .json or .html",
        ),
        (["--report", "no/such/dir/run.json", "--count", "1"], "no such directory"),
        (["--workers", "0"], "--workers"),
    ],
)
def test_load_flags_refuse_what_they_cannot_do(args: list[str], says: str, tmp_path: Path) -> None:
    result = run_cli("propagate", "--endpoint", "http://127.0.0.1:9/event", *args, cwd=tmp_path)
    assert result.returncode == 2, result.stderr
    assert says in result.stderr
    assert "Traceback" not in result.stderr


def take_the_terminal() -> None:
    """In the child: stdin (the pseudo-terminal) becomes its controlling terminal, with the
    child's process group in the foreground, as in a shell."""
    fcntl.ioctl(0, termios.TIOCSCTTY, 0)


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
        start_new_session=True,
        preexec_fn=take_the_terminal,  # noqa: PLW1509 - no thread runs before it
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


def test_a_job_in_the_background_of_a_shell_is_not_stopped_by_the_keys(
    server: Server, tmp_path: Path
) -> None:
    """`propagate ... &` from a shell with job control: not in the terminal's foreground,
    it must not touch the terminal (SIGTTOU would stop it); the keys are off, it runs."""
    controller, terminal = pty.openpty()
    command = [
        sys.executable,
        *("-m", "eventctl", "propagate", "--endpoint", server.url + "/event"),
        *("--events-file", EVENTS, "--rate", "20", "--count", "10"),
    ]
    script = f"set -m; {shlex.join(command)} & wait $!; echo rc=$?"
    process = subprocess.Popen(
        ["bash", "-c", script],
        stdin=terminal,
        stdout=subprocess.PIPE,
        stderr=terminal,
        env=cli_env(COLUMNS="100", TERM="xterm"),
        cwd=tmp_path,
        start_new_session=True,
        preexec_fn=take_the_terminal,  # noqa: PLW1509 - no thread runs before it
        text=True,
    )
    os.close(terminal)
    try:
        out, _ = process.communicate(timeout=60)
    finally:
        os.close(controller)
    assert "rc=0" in out, out


def test_a_worker_killed_mid_run_stops_the_others_and_the_rerun_completes(
    server: Server, tmp_path: Path
) -> None:
    args = [
        sys.executable,
        *("-m", "eventctl", "propagate", "--endpoint", server.url + "/event"),
        *("--events-file", EVENTS, "--workers", "2", "--rate", "300", "--count", "1500"),
        "--json-log",
    ]
    process = subprocess.Popen(
        args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=cli_env(), text=True
    )
    assert process.stdout is not None
    delivered = 0
    while delivered < 200:
        line = process.stdout.readline()
        assert line, process.communicate()
        delivered += '"delivered"' in line
    workers = subprocess.run(
        ["pgrep", "-P", str(process.pid)], capture_output=True, text=True, check=True
    ).stdout.split()
    assert len(workers) == 2
    os.kill(int(workers[0]), 9)
    out, err = process.communicate(timeout=60)
    assert process.returncode == 1, err
    assert "1 of 2 sender processes ended without their results (exit code -9)" in err
    assert "Traceback" not in err
    assert json.loads(out.splitlines()[-1])["kind"] == "summary"
    again = run_cli(*args[3:], timeout=60)
    assert again.returncode == 0, again.stderr
    assert "resuming run" in again.stderr
    checked = verified(server.database_url)
    assert (checked["verdict"], checked["acknowledged"], checked["lost"]) == ("OK", 1500, 0)
    assert checked["duplicated"] == 0


def test_workers_drain_without_an_events_file(tmp_path: Path) -> None:
    result = run_cli(
        "propagate", "--drain", "--workers", "2", "--endpoint", "http://127.0.0.1:9/event",
        cwd=tmp_path,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "0 sent" in result.stderr


def test_the_workers_start_together_so_the_report_counts_from_their_start(
    server: Server, tmp_path: Path
) -> None:
    report = tmp_path / "run.json"
    result = propagate(
        server,
        *("--stages", "1s@0,1s@0-100,1s@50", "--workers", "2", "--quiet"),
        *("--report", str(report)),
    )
    assert result.returncode == 0, result.stderr
    data = json.loads(report.read_text())
    sent = {row["t"]: row["sent"] for row in data["timeline"]["rows"] if row["sent"]}
    assert sum(sent.values()) == 100
    assert set(sent) <= {1, 2}  # nothing in the first second (rate 0), nothing after 3 s
    assert [s["sent"] for s in data["meta"]["stages"]] == [0, 50, 50]
