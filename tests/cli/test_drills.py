"""Fault drills with the real processes: kill -9, restarts and 503s lose and duplicate nothing.

Each drill sends 2,000 events at 200/s on loopback, breaks something in the middle, lets
it recover, and then `eventctl verify` must report zero lost and zero duplicated, and the
run must show at least one retry (so the drill really happened).
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.helpers import ROOT, Proc, free_port, run_cli

EVENTS_FILE = str(ROOT / "events" / "events.json")
RATE = "200"
COUNT = 2000


def serve(tmp_path: Path, port: int, db: str, name: str, *extra: str) -> Proc:
    proc = Proc(tmp_path, name, "serve", "--port", str(port), "--database-url", db, *extra)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        try:
            httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1)
            return proc
        except httpx.TransportError:
            time.sleep(0.05)
    raise AssertionError(f"{name} did not start: {proc.stderr}")


def propagate(tmp_path: Path, port: int, name: str, *extra: str) -> Proc:
    return Proc(
        tmp_path,
        name,
        "propagate",
        "--rate",
        RATE,
        "--endpoint",
        f"http://127.0.0.1:{port}/event",
        "--events-file",
        EVENTS_FILE,
        "--retry-base-seconds",
        "0.05",
        "--retry-max-seconds",
        "0.5",
        "--json-log",
        *extra,
    )


def summary(proc: Proc) -> dict[str, Any]:
    lines = [json.loads(line) for line in proc.out_path.read_text().splitlines()]
    retries = sum(line["kind"] == "retrying" for line in lines)
    result: dict[str, Any] = lines[-1]
    assert result["kind"] == "summary"
    result["retries_seen"] = retries
    return result


def verified(db: str, *extra: str) -> dict[str, Any]:
    result = run_cli("verify", "--json", "--database-url", db, *extra)
    report: dict[str, Any] = json.loads(result.stdout)
    expected = {"OK": 0, "INCOMPLETE": 9, "FAILED": 10}[report["verdict"]]
    assert result.returncode == expected, result.stderr
    return report


def assert_all_delivered_once(sender: Proc, consumer: Proc, db: str) -> None:
    """The sender ends by itself with every event delivered after at least one retry, and
    `eventctl verify` finds nothing lost or duplicated."""
    assert sender.wait(120) == 0, sender.stderr
    consumer.process.terminate()
    consumer.wait(20)
    result = summary(sender)
    assert result["delivered"] == COUNT
    assert result["retries_seen"] > 0
    report = verified(db)
    assert (report["lost"], report["duplicated"], report["acknowledged"]) == (0, 0, COUNT)


def wait_for_acks(proc: Proc, n: int, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while proc.out_path.read_text().count('"delivered"') < n:
        assert time.monotonic() < deadline, "the propagator made no progress"
        assert proc.process.poll() is None, proc.stderr
        time.sleep(0.05)


@pytest.mark.drill
def test_kill_9_the_consumer_mid_run(tmp_path: Path, sqlite_url: str) -> None:
    port = free_port()
    consumer = serve(tmp_path, port, sqlite_url, "serve-1")
    sender = propagate(tmp_path, port, "propagate", "--count", str(COUNT))
    wait_for_acks(sender, 500)
    consumer.kill9()
    time.sleep(1.0)
    consumer = serve(tmp_path, port, sqlite_url, "serve-2")
    assert_all_delivered_once(sender, consumer, sqlite_url)


@pytest.mark.drill
def test_kill_9_the_propagator_mid_run_and_restart_it(tmp_path: Path, sqlite_url: str) -> None:
    port = free_port()
    # a slow consumer keeps about 20 events in flight, so the kill leaves some pending
    consumer = serve(tmp_path, port, sqlite_url, "serve", "--latency", "100ms")
    first = propagate(tmp_path, port, "propagate-1", "--count", str(COUNT))
    wait_for_acks(first, 800)
    first.kill9()
    second = propagate(tmp_path, port, "propagate-2", "--count", str(COUNT))
    assert second.wait(120) == 0, second.stderr
    result = summary(second)
    assert result["resent"] > 0  # the events the killed run left pending
    assert result["run"] == 1  # resumed: it generated only what the first left missing
    assert result["run_generated"] == COUNT
    assert 0 < result["generated"] <= COUNT - 800
    # a fresh run of the same count is a second run, and verify checks it alone
    third = propagate(tmp_path, port, "propagate-3", "--count", "20", "--new-run")
    assert third.wait(60) == 0, third.stderr
    consumer.process.terminate()
    consumer.wait(20)
    assert summary(third)["run"] == 2
    latest = verified(sqlite_url)
    assert (latest["run"], latest["generated"], latest["other"]) == (2, 20, 0)
    report = verified(sqlite_url, "--run", "1")
    assert (report["lost"], report["duplicated"], report["pending"]) == (0, 0, 0)
    assert report["acknowledged"] == report["generated"] == COUNT
    everything = verified(sqlite_url, "--all")
    assert (everything["ok"], everything["generated"], everything["runs"]) == (True, COUNT + 20, 2)


@pytest.mark.drill
def test_a_consumer_that_answers_503_for_a_while(tmp_path: Path, sqlite_url: str) -> None:
    port = free_port()
    failing = serve(tmp_path, port, sqlite_url, "serve-failing", "--fail-rate", "1")
    sender = propagate(tmp_path, port, "propagate", "--count", str(COUNT))
    time.sleep(2.0)
    failing.process.terminate()
    assert failing.wait(20) == 0
    consumer = serve(tmp_path, port, sqlite_url, "serve")
    assert_all_delivered_once(sender, consumer, sqlite_url)
