"""Store-and-forward drills with real processes: propagate → serve A → serve B on loopback.

Each drill breaks the hop A → B (kill -9 A, B answering 503 or 410) or loads it (two
workers), lets it recover, and ends with B holding exactly A's events, each once, checked
against both databases. A's database is SQLite or PostgreSQL; B's is always a SQLite file
(the one test PostgreSQL database cannot hold two consumers' tables).
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from eventctl.outbox import ACTIVE, DISABLED, PAUSED
from tests.forwarding import (
    ROUTE,
    Fleet,
    assert_forwarded_once,
    attempts,
    count,
    fleet,
    forward_config,
    route,
    wait_for,
)
from tests.helpers import run_cli

pytestmark = pytest.mark.drill


@pytest.fixture
def running(tmp_path: Path) -> Iterator[Fleet]:
    with fleet(tmp_path) as processes:
        yield processes


@pytest.fixture
def downstream(tmp_path: Path) -> str:
    (tmp_path / "b").mkdir()
    return f"sqlite:///{tmp_path / 'b' / 'events.db'}"


def verified(database_url: str) -> dict[str, Any]:
    result = run_cli("verify", "--json", "--database-url", database_url)
    assert result.returncode == 0, result.stdout + result.stderr
    report: dict[str, Any] = json.loads(result.stdout)
    return report


def test_kill_9_the_forwarding_consumer_mid_run(
    running: Fleet, tmp_path: Path, database_url: str, downstream: str
) -> None:
    # B answers in 50 ms, so the route (32 in flight) forwards at most ~640/s of A's
    # 1000/s: A's outbox holds events not yet forwarded when it is killed (a forwarder
    # that keeps up would leave nothing for the restart to deliver)
    b = running.serve("b", downstream, "--latency", "50ms")
    config = forward_config(tmp_path / "a.yaml", b.url + "/event")
    a = running.serve("a-1", database_url, "--config", str(config))
    sender = running.propagate("propagate", a.url, 2000, 1000)
    wait_for(lambda: count(downstream) >= 300, "B holds 300 events")
    a.kill9()
    at_kill = count(downstream)
    assert sender.process.poll() is None, "the run was over before the kill"
    assert 300 <= at_kill < count(database_url) < 2000
    a = running.serve("a-2", database_url, "--config", str(config), port=a.port)
    assert sender.wait(60) == 0, sender.stderr
    sent = re.search(r"2000 delivered, 0 failed, 0 pending in \S+ \((\d+) attempts", sender.stderr)
    assert sent, sender.stderr
    assert int(sent.group(1)) > 2000  # it retried what the dead A had not answered
    # what the dead A had leased waits out its lease (2 * 2 + 1 s) and is sent again
    wait_for(lambda: count(downstream) == 2000 and route(database_url).queued == 0, "B has all")
    a.stop()
    b.stop()
    assert_forwarded_once(database_url, downstream, 2000)
    report = verified(downstream)
    assert (report["verdict"], report["lost"], report["duplicated"]) == ("OK", 0, 0), report


def test_a_downstream_answering_503_for_20_seconds(
    running: Fleet, tmp_path: Path, database_url: str, downstream: str
) -> None:
    failing = running.serve("b-503", downstream, "--fail-rate", "1.0", "--fail-status", "503")
    outage_ends = time.monotonic() + 20
    config = forward_config(tmp_path / "a.yaml", failing.url + "/event")
    a = running.serve("a", database_url, "--config", str(config))
    sender = running.propagate("propagate", a.url, 500, 1000)
    assert sender.wait(30) == 0, sender.stderr  # A takes them all while B refuses
    states: set[str] = set()
    reasons: list[str] = []
    most_attempts = 0
    while time.monotonic() < outage_ends:
        status = route(database_url)
        states.add(status.state)
        reasons.append(status.reason)
        most_attempts = max([most_attempts, *attempts(database_url)])
        assert (status.queued, status.delivered) == (500, 0), status
        time.sleep(0.2)
    assert PAUSED in states, states  # the breaker opened
    assert any("failures in a row (last: 503)" in r for r in reasons), reasons
    assert most_attempts > 1  # and entries were tried again
    failing.stop()
    assert count(downstream) == 0
    b = running.serve("b", downstream, port=failing.port)
    wait_for(lambda: route(database_url).queued == 0, "A's outbox drained", timeout=20)
    assert route(database_url).state == ACTIVE
    a.stop()
    b.stop()
    assert_forwarded_once(database_url, downstream, 500)


def test_a_downstream_answering_410_disables_the_route_until_enabled(
    running: Fleet, tmp_path: Path, database_url: str, downstream: str
) -> None:
    gone = running.serve("b-410", downstream, "--fail-rate", "1.0", "--fail-status", "410")
    config = forward_config(tmp_path / "a.yaml", gone.url + "/event")
    a = running.serve("a", database_url, "--config", str(config))
    sender = running.propagate("propagate", a.url, 300, 1000)
    assert sender.wait(30) == 0, sender.stderr
    wait_for(lambda: route(database_url).state == DISABLED, "the route disabled")
    wait_for(lambda: len(attempts(database_url)) == 300, "every event in the outbox")
    time.sleep(1.0)  # a disabled route sends nothing more
    status = route(database_url)
    assert (status.state, status.queued, status.failed, status.delivered) == (DISABLED, 300, 0, 0)
    assert "410" in status.reason
    assert max(attempts(database_url)) == 1
    shown = run_cli("routes", "--json", "--database-url", database_url)
    assert shown.returncode == 0, shown.stderr
    (listed,) = json.loads(shown.stdout)["routes"]
    assert (listed["name"], listed["state"], listed["queued"]) == (ROUTE, DISABLED, 300), listed
    gone.stop()
    assert count(downstream) == 0
    b = running.serve("b", downstream, port=gone.port)
    time.sleep(0.5)
    assert route(database_url).state == DISABLED  # B being back is not enough
    enabled = run_cli("routes", "enable", ROUTE, "--database-url", database_url)
    assert enabled.returncode == 0, enabled.stderr
    wait_for(lambda: route(database_url).queued == 0, "the enabled route drained", timeout=20)
    a.stop()
    b.stop()
    assert_forwarded_once(database_url, downstream, 300)


def test_two_workers_forward_each_event_once(
    running: Fleet, database_url: str, downstream: str
) -> None:
    b = running.serve("b", downstream)
    forward = b.url + "/event"
    a = running.serve("a", database_url, "--workers", "2", "--forward-to", forward)
    sender = running.propagate("propagate", a.url, 2000, 1000)
    assert sender.wait(60) == 0, sender.stderr
    wait_for(lambda: route(database_url, forward).queued == 0, "A's outbox drained")
    assert b.duplicates() == 0  # no event was sent to B twice
    errors = a.stop()
    b.stop()
    assert "database is locked" not in errors
    assert_forwarded_once(database_url, downstream, 2000, name=forward)


def test_a_chain_verified_at_its_last_hop(
    running: Fleet, tmp_path: Path, database_url: str, downstream: str
) -> None:
    b = running.serve("b", downstream)
    config = forward_config(tmp_path / "a.yaml", b.url + "/event")
    a = running.serve("a", database_url, "--config", str(config))
    sender = running.propagate("propagate", a.url, 1000, 1000)
    assert sender.wait(60) == 0, sender.stderr
    wait_for(lambda: route(database_url).queued == 0, "A's outbox drained")
    a.stop()
    b.stop()
    report = verified(downstream)
    assert (report["verdict"], report["lost"], report["duplicated"]) == ("OK", 0, 0), report
    assert report["generated"] == report["acknowledged"] == 1000
    assert_forwarded_once(database_url, downstream, 1000)
