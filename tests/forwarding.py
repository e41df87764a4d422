"""Helpers of the store-and-forward drills: real `serve` chains, their databases, their routes."""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx

from eventctl.outbox import Outbox, RouteStatus
from eventctl.store import Store
from tests.helpers import ROOT, Proc, free_port

EVENTS_FILE = str(ROOT / "events" / "events.json")
ROUTE = "b"

# short enough that a drill is over in seconds: a lease of 2 * 2 + 1 = 5 s after a kill -9
FAST_ROUTE: dict[str, Any] = {
    "name": ROUTE,
    "timeout_seconds": 2,
    "retry_base_seconds": 0.05,
    "retry_max_seconds": 0.5,
    "breaker_failures": 5,
    "breaker_cooldown_seconds": 0.5,
    "breaker_max_cooldown_seconds": 1,
}


def forward_config(path: Path, url: str, **fields: Any) -> Path:
    """A consumer config file (JSON is YAML) with one fast route `b` to `url`."""
    path.write_text(json.dumps({"forward": [{"url": url, **FAST_ROUTE, **fields}]}))
    return path


class Fleet:
    """The eventctl processes of one drill; whatever is still running at the end is killed."""

    def __init__(self, tmp_path: Path) -> None:
        self.tmp_path = tmp_path
        self.procs: list[Proc] = []
        self.names: set[str] = set()

    def start(self, name: str, *args: str) -> Proc:
        assert name not in self.names, f"two processes named {name}"
        self.names.add(name)
        proc = Proc(self.tmp_path, name, *args)
        self.procs.append(proc)
        return proc

    def serve(self, name: str, database_url: str, *extra: str, port: int | None = None) -> Consumer:
        return Consumer(self, name, database_url, *extra, port=port)

    def propagate(self, name: str, url: str, count: int, rate: float, *extra: str) -> Proc:
        """`eventctl propagate` of `count` events at `rate` per second to `url`, retrying
        quickly; only its summary on stdout."""
        return self.start(
            name,
            "propagate",
            "--endpoint",
            url + "/event",
            "--events-file",
            EVENTS_FILE,
            "--count",
            str(count),
            "--rate",
            f"{rate:g}",
            "--retry-base-seconds",
            "0.05",
            "--retry-max-seconds",
            "0.5",
            "--timeout",
            "2",
            "--quiet",
            *extra,
        )

    def close(self) -> None:
        """SIGTERM what still runs (`serve --workers` stops its workers then); SIGKILL what
        does not stop, workers first: a killed parent would leave them serving, and
        forwarding from the shared test database."""
        running = [p for p in self.procs if p.process.poll() is None]
        for proc in running:
            proc.process.terminate()
        for proc in self.procs:
            try:
                proc.process.wait(10)
            except subprocess.TimeoutExpired:
                for pid in descendants(proc.process.pid):
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, signal.SIGKILL)
                proc.process.kill()
            proc.wait(10)


def descendants(pid: int) -> list[int]:
    """The processes below `pid` (Linux /proc)."""
    found: list[int] = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            parent = int(stat.read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        if parent == pid:
            child = int(stat.parent.name)
            found += [child, *descendants(child)]
    return found


@contextmanager
def fleet(tmp_path: Path) -> Iterator[Fleet]:
    running = Fleet(tmp_path)
    try:
        yield running
    finally:
        running.close()


class Consumer:
    """A real `eventctl serve` (output to files) on a loopback port, ready when built."""

    def __init__(
        self, fleet: Fleet, name: str, database_url: str, *extra: str, port: int | None = None
    ) -> None:
        self.name = name
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.database_url = database_url
        self.proc = fleet.start(
            name, "serve", "--port", str(self.port), "--database-url", database_url, *extra
        )
        deadline = time.monotonic() + 20
        while True:
            assert self.proc.process.poll() is None, f"{name} exited: {self.proc.stderr}"
            assert time.monotonic() < deadline, f"{name} did not start: {self.proc.stderr}"
            try:
                if httpx.get(self.url + "/healthz", timeout=1).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.05)

    def stop(self) -> str:
        """SIGTERM, a clean exit; its stderr."""
        self.proc.process.terminate()
        assert self.proc.wait(20) == 0, self.proc.stderr
        return self.proc.stderr

    def kill9(self) -> None:
        self.proc.kill9()

    def duplicates(self) -> float:
        """Events it was sent again after storing them (its /metrics)."""
        text = httpx.get(self.url + "/metrics", timeout=5).text
        found = re.search(r"^eventctl_events_duplicate_total (\S+)$", text, re.MULTILINE)
        assert found, text
        return float(found.group(1))


def with_store(database_url: str, read: Callable[[Store], Any]) -> Any:
    store = Store.open(database_url, create=True)
    try:
        return read(store)
    finally:
        store.close()


def stored(database_url: str) -> list[tuple[str, str, str]]:
    """(event_id, event_type, event_payload) of every stored event, repeats included."""
    rows = with_store(
        database_url,
        lambda s: s.database.execute_sql(
            "SELECT event_id, event_type, event_payload FROM events"
        ).fetchall(),
    )
    return [(str(i), str(t), str(p)) for i, t, p in rows]


def count(database_url: str) -> int:
    return int(with_store(database_url, lambda s: s.count()))


def route(database_url: str, name: str = ROUTE) -> RouteStatus:
    """The route as `eventctl routes` shows it."""
    routes = {r.name: r for r in with_store(database_url, lambda s: Outbox(s).status())}
    return routes[name]


def attempts(database_url: str) -> list[int]:
    """The attempts of every outbox entry still undelivered."""
    rows = with_store(
        database_url, lambda s: s.database.execute_sql("SELECT attempts FROM outbox").fetchall()
    )
    return [int(n) for (n,) in rows]


def wait_for(check: Callable[[], bool], what: str, timeout: float = 30) -> float:
    """Poll `check` until it holds; the seconds that took."""
    started = time.monotonic()
    while not check():
        assert time.monotonic() - started < timeout, f"not in {timeout:g}s: {what}"
        time.sleep(0.05)
    return time.monotonic() - started


def assert_forwarded_once(
    upstream: str, downstream: str, expected: int, *, name: str = ROUTE
) -> None:
    """The last hop holds exactly the upstream's events, each once, with type and payload,
    and the upstream's outbox has nothing left for it."""
    a, b = stored(upstream), stored(downstream)
    assert len(a) == len({i for i, _, _ in a}) == expected
    assert len(b) == len({i for i, _, _ in b}) == expected, (len(b), len({i for i, _, _ in b}))
    assert set(b) == set(a)
    status = route(upstream, name)
    assert (status.queued, status.failed, status.delivered) == (0, 0, expected), status
