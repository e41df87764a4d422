"""Issue 16: two `serve` hosts on one PostgreSQL, a propagator sending to both, one host
killed with -9 in the middle of the run and brought back.

Hosts of their own in network namespaces (tests/netns.py): db (PostgreSQL, back network
only), a and b (serve, front and back), p (propagate, front only). p sends RATE events/s to
both for COUNT events; b's server is killed with SIGKILL at KILL_AT seconds and started again
BACK_AFTER seconds later. `eventctl verify` against PostgreSQL must find 0 lost and 0
duplicated, the propagator must have failed over, and the delivered rate may dip below
DIP_SHARE of the plan for no longer than the first back-off. docs/deployment.md ("A
propagator sending to several hosts") has the figures; run with `-s` to print them.
"""

from __future__ import annotations

import json
import re
import sys
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from eventctl.endpoints import BACKOFF_SECONDS
from tests.forwarding import count, forward_config, route, stored, wait_for
from tests.helpers import ROOT, cli_env
from tests.netns import Consumer, Host, Network, require_netns

pytestmark = pytest.mark.drill

RATE = 500
COUNT = 5000
KILL_AT = 3.0
BACK_AFTER = 1.0
BIN = 0.25  # seconds per bin of the delivered rate
DIP_SHARE = 0.8  # a bin with fewer deliveries than this share of the plan is a dip


@pytest.fixture
def net(tmp_path: Path) -> Iterator[Network]:
    require_netns()
    with Network(logs=tmp_path) as network:
        yield network


def records(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def wait_for_lines(path: Path, count: int, timeout: float) -> None:
    """Until `path` holds `count` lines (the propagator has sent that many answers)."""
    deadline = time.monotonic() + timeout
    while path.read_text().count("\n") < count:
        assert time.monotonic() < deadline, f"fewer than {count} lines in {path}"
        time.sleep(0.02)


def now_in_run(path: Path) -> float:
    """The propagator's time (seconds since its run began), from its latest complete line."""
    complete = path.read_text().rsplit("\n", 1)[0]
    return float(json.loads(complete.rsplit("\n", 1)[-1])["t"])


def longest_dip(delivered: list[dict[str, Any]], seconds: float, rate: float = RATE) -> float:
    """The longest run of BIN-second bins, between the first and the last, with fewer
    deliveries than DIP_SHARE of the plan."""
    bins = Counter(int(r["t"] / BIN) for r in delivered)
    planned = rate * BIN
    longest = current = 0
    for i in range(1, int(seconds / BIN) - 1):
        current = current + 1 if bins[i] < DIP_SHARE * planned else 0
        longest = max(longest, current)
    return longest * BIN


def serve(host: Host, name: str, url: str) -> Consumer:
    return host.serve(name, url, "--log-level", "warning")


def test_a_host_killed_mid_run_loses_and_duplicates_nothing_and_the_rate_holds(
    net: Network,
) -> None:
    db = net.host("db", front=False, back=True)
    a, b, p = net.host("a", back=True), net.host("b", back=True), net.host("p")
    url = net.postgres(db)
    serve(a, "a", url)
    doomed = serve(b, "b", url)
    endpoints = [f"http://{h.address('front')}:8000/event" for h in (a, b)]
    sender = p.eventctl(
        "propagate",
        "propagate",
        *("--endpoint", endpoints[0], "--endpoint", endpoints[1]),
        *("--rate", str(RATE), "--count", str(COUNT), "--json-log"),
        *("--events-file", str(ROOT / "events" / "events.json")),
    )
    wait_for_lines(sender.out_path, int(RATE * KILL_AT), timeout=30)
    doomed.kill9()
    killed_at = now_in_run(sender.out_path)
    time.sleep(BACK_AFTER)
    serve(b, "b-again", url)
    back_at = now_in_run(sender.out_path)
    assert sender.wait(COUNT / RATE + 60) == 0, sender.stderr
    lines = records(sender.out_path)
    summary = lines[-1]
    assert summary["kind"] == "summary"
    assert (summary["generated"], summary["delivered"], summary["failed"]) == (COUNT, COUNT, 0)
    assert summary["failovers"] >= 1, summary

    verified = a.run(
        [sys.executable, "-m", "eventctl", "verify", "--json", "--database-url", url],
        env=cli_env(),  # the sender's spool
        cwd=str(net.tmp),
    )
    report = json.loads(verified.stdout)
    assert (report["verdict"], report["lost"], report["duplicated"]) == ("OK", 0, 0), report
    assert report["stored"] == COUNT

    delivered = [r for r in lines if r["kind"] == "delivered"]
    failed_over = [r for r in lines if r["kind"] == "retrying" and r["retry_in"] == 0.0]
    assert failed_over, "no attempt failed over"
    assert {r["endpoint"] for r in failed_over} == {endpoints[1]}
    dip = longest_dip(delivered, summary["elapsed_seconds"])
    assert dip <= BACKOFF_SECONDS, f"the delivered rate dipped for {dip:g}s"
    moments = {"killed_at_s": killed_at, "restarted_at_s": back_at, "longest_dip_s": dip}
    figures = drill_figures(lines, endpoints, summary, moments)
    print("\nhosts drill:", json.dumps(figures))
    assert figures["b_back_after_restart_s"] is not None


def drill_figures(
    lines: list[dict[str, Any]],
    endpoints: list[str],
    summary: dict[str, Any],
    moments: dict[str, float],
) -> dict[str, Any]:
    """What docs/deployment.md reports: events/s per host, the failover time (from an
    attempt failing on b to its event delivered on a), when b took events again."""
    delivered = [r for r in lines if r["kind"] == "delivered"]
    elapsed = summary["elapsed_seconds"]
    per_host = Counter(r["endpoint"] for r in delivered)
    failed_at = {r["event_id"]: r["t"] for r in lines if r["kind"] == "retrying"}
    failovers = [r["t"] - failed_at[r["event_id"]] for r in delivered if r["event_id"] in failed_at]
    killed_at, back_at = moments["killed_at_s"], moments["restarted_at_s"]
    after_kill = [
        r["t"] for r in delivered if r["endpoint"] == endpoints[1] and r["t"] > killed_at + 0.5
    ]
    return {
        "events": summary["generated"],
        "achieved_rate": summary["achieved_rate"],
        "elapsed_s": elapsed,
        "per_host_per_s": {url: round(n / elapsed, 1) for url, n in per_host.items()},
        "failovers": summary["failovers"],
        "failover_max_ms": round(max(failovers) * 1000, 1) if failovers else None,
        **{name: round(value, 2) for name, value in moments.items()},
        "b_back_after_restart_s": round(min(after_kill) - back_at, 2) if after_kill else None,
        "latency_p99_ms": summary["latency_p99_ms"],
        "latency_max_ms": summary["latency_max_ms"],
    }


FORWARDED = 2000


def metric(host: Host, url: str, pattern: str) -> float:
    """The sum of the /metrics samples of `url` whose line matches `pattern`."""
    text = host.call(lambda: httpx.get(url + "/metrics", timeout=5).text)
    return sum(float(m.group(1)) for m in re.finditer(pattern + r" (\S+)$", text, re.MULTILINE))


def test_both_hosts_forward_from_the_shared_outbox_each_event_once(
    net: Network, tmp_path: Path
) -> None:
    db = net.host("db", front=False, back=True)
    a, b = net.host("a", back=True), net.host("b", back=True)
    c, p = net.host("c"), net.host("p")
    url = net.postgres(db)
    metrics = cli_env(EVENTCTL_METRICS="true")
    downstream = c.serve("c", f"sqlite:///{tmp_path / 'c.db'}", env=metrics)
    config = forward_config(tmp_path / "forward.json", downstream.url + "/event")
    hosts = [h.serve(h.name, url, "--config", str(config), env=metrics) for h in (a, b)]
    sender = p.eventctl(
        "propagate",
        "propagate",
        *("--endpoint", hosts[0].url + "/event", "--endpoint", hosts[1].url + "/event"),
        *("--rate", "500", "--count", str(FORWARDED), "--quiet"),
        *("--events-file", str(ROOT / "events" / "events.json")),
    )
    assert sender.wait(60) == 0, sender.stderr
    stored_here = {event_id for event_id, _, _ in a.call(lambda: stored(url))}
    assert len(stored_here) == FORWARDED

    def forwarded() -> bool:
        return c.call(lambda: count(downstream.database_url)) == FORWARDED

    wait_for(forwarded, "every event at c", timeout=60)
    wait_for(lambda: a.call(lambda: route(url)).queued == 0, "an empty outbox", timeout=30)
    at_c = c.call(lambda: stored(downstream.database_url))
    assert {event_id for event_id, _, _ in at_c} == stored_here
    assert len(at_c) == FORWARDED
    # each (event, route) sent once: c was never sent an event it had already stored
    assert metric(c, downstream.url, r"^eventctl_events_duplicate_total") == 0
    per_host = [
        metric(h.host, h.url, r'^eventctl_forward_delivered_total\{route="b"\}') for h in hosts
    ]
    assert sum(per_host) == FORWARDED
    assert all(n > 0 for n in per_host), per_host  # both hosts took entries of the outbox
    status = a.call(lambda: route(url))
    assert (status.delivered, status.failed) == (FORWARDED, 0)
    print("\nforwarding drill: per host", per_host)


CUT_COUNT = 3000
CUT_RATE = 200
CUT_AT = 3.0
CUT_SECONDS = 8.0


@pytest.mark.parametrize("far_end", [False, True], ids=["own-link", "switch-port"])
def test_a_host_cut_from_the_database_is_failed_over_and_comes_back(
    net: Network, far_end: bool
) -> None:
    db = net.host("db", front=False, back=True)
    a, b, p = net.host("a", back=True), net.host("b", back=True), net.host("p")
    url = net.postgres(db)
    hosts = [serve(h, h.name, url) for h in (a, b)]
    endpoints = [h.url + "/event" for h in hosts]
    sender = p.eventctl(
        "propagate",
        "propagate",
        *("--endpoint", endpoints[0], "--endpoint", endpoints[1]),
        *("--rate", str(CUT_RATE), "--count", str(CUT_COUNT), "--json-log"),
        *("--events-file", str(ROOT / "events" / "events.json")),
    )
    wait_for_lines(sender.out_path, int(CUT_RATE * CUT_AT), timeout=30)
    a.link_down("back", far_end=far_end)
    cut_at = now_in_run(sender.out_path)
    time.sleep(CUT_SECONDS)
    a.link_up("back")
    up_at = now_in_run(sender.out_path)
    assert sender.wait(CUT_COUNT / CUT_RATE + 60) == 0, sender.stderr
    lines = records(sender.out_path)
    summary = lines[-1]
    assert (summary["delivered"], summary["failed"]) == (CUT_COUNT, 0), summary

    verified = b.run(
        [sys.executable, "-m", "eventctl", "verify", "--json", "--database-url", url],
        env=cli_env(),
        cwd=str(net.tmp),
    )
    report = json.loads(verified.stdout)
    assert (report["verdict"], report["lost"], report["duplicated"]) == ("OK", 0, 0), report

    failed_on_a = [r for r in lines if r["kind"] == "retrying" and r["endpoint"] == endpoints[0]]
    assert failed_on_a, "nothing failed over from the cut host"
    answers = Counter(r["status"] or r["error"] for r in failed_on_a)
    delivered = [r for r in lines if r["kind"] == "delivered"]
    back_on_a = [r["t"] for r in delivered if r["endpoint"] == endpoints[0] and r["t"] > up_at]
    assert back_on_a, "the cut host took no events after its link came back"
    failed_at = {r["event_id"]: r["t"] for r in failed_on_a}
    failover = [r["t"] - failed_at[r["event_id"]] for r in delivered if r["event_id"] in failed_at]
    figures = {
        "cut": "switch port" if far_end else "own link",
        "cut_at_s": round(cut_at, 2),
        "link_up_at_s": round(up_at, 2),
        "failed_on_cut_host": dict(answers),
        "last_failure_after_cut_s": round(max(r["t"] for r in failed_on_a) - cut_at, 2),
        "failover_max_ms": round(max(failover) * 1000, 1),
        "back_after_link_up_s": round(min(back_on_a) - up_at, 2),
        "longest_dip_s": longest_dip(delivered, summary["elapsed_seconds"], CUT_RATE),
        "latency_p99_ms": summary["latency_p99_ms"],
        "latency_max_ms": summary["latency_max_ms"],
        "dropped": summary["dropped"],
    }
    print("\ncut drill:", json.dumps(figures))
