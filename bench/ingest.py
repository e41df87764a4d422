"""Ingest benchmark: committed events/s, latency and server CPU of `eventctl serve`.

    python bench/ingest.py          # defaults: 10 s per point, 32 and 128 connections
    python bench/ingest.py --duration 5 --connections 32 --targets eventctl,bare
    python bench/ingest.py --targets eventctl --before REV --together   # a change, A/B
    python bench/ingest.py --targets eventctl,forward --connections 32  # store and forward

Each target runs as its own server process on 127.0.0.1, started once and pinned to one
core (taskset), and is driven from another process pinned to the other core: wrk with a Lua
POST script when it is installed, else the bundled asyncio HTTP/1.1 driver in this file.
Rounds visit every point, in ABBA order (so drift of the machine falls on both sides), each
after a 1 s warm-up. Targets:

  bare      an ASGI app on the same uvicorn that answers 200 without storing (the ceiling)
  naive     a Starlette + Peewee handler that commits each request on its own
  eventctl  `eventctl serve` (group commit, WAL, synchronous=FULL), POST /event
  batch     `eventctl serve`, POST /events with 100 events per request
  before    `eventctl serve` as of the git revision given by --before (a temporary
            worktree), POST /event: the same run measures a change against its parent
  forward   `eventctl serve --forward-to SINK`, POST /event: store and forward with one
            route, whose sink (bench/baselines.py bare, on its own port) runs pinned to
            the client core, so the server under test stays alone on the server core

Committed events/s is counted from the database (rows after - rows before) / duration, so
only what was really stored counts; server CPU per event is the server process's user plus
system time over the same window (Linux /proc). `vs before` is the median over rounds of
eventctl/before within one round. With --together, eventctl and before are driven at the
same moment and share the server core, so both see the same machine: on a shared VM, whose
speed changes from one second to the next, that measures a change to within a few percent
where back-to-back runs cannot. Everything stays on loopback and stops by itself.

For `forward`, besides the usual columns: the ingest rate and its ratio to `eventctl` (no
routes) in the same round (`vs eventctl`, the median of the per-round ratios), the rate
forwarded during the window (the growth of `forward_routes.delivered`, read from the
server's database), the outbox backlog and the lag (the age of the oldest queued event) at
the end of the window, and the drain time: seconds from the end of the load until `outbox`
is empty (at most --drain-timeout). Each window starts with an empty outbox: the warm-up's
backlog is drained first. The server's CPU is also split into its main thread (the event
loop: HTTP, and the forwarder's sends) and its other threads (the writer's commits, the
forwarder's claims and settles).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import re
import shutil
import socket
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack, contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, NamedTuple

ROOT = Path(__file__).resolve().parent.parent
DRAIN_TIMEOUT_SECONDS = 120.0
EVENT = {
    "event_type": "order.created",
    "event_payload": '{"order_id": "ord_5531", "total_cents": 4999}',
}
BATCH_SIZE = 100


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def pinned(cpu: int | None, argv: list[str]) -> list[str]:
    if cpu is None or shutil.which("taskset") is None:
        return argv
    return ["taskset", "-c", str(cpu), *argv]


def wait_until_listening(port: int, process: subprocess.Popen[bytes], timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"server exited with {process.returncode}")
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise RuntimeError("server did not start")


def _environ() -> dict[str, str]:
    """The environment without EVENTCTL_ settings (EVENTCTL_FORWARD would add routes)."""
    return {k: v for k, v in os.environ.items() if not k.startswith("EVENTCTL_")}


@contextmanager
def spawn(
    argv: list[str], cpu: int | None, port: int, cwd: Path = ROOT, env: dict[str, str] | None = None
) -> Iterator[subprocess.Popen[bytes]]:
    """A server process pinned to `cpu`, once it listens on `port`; stopped on exit. Its
    stderr goes to a file (a pipe nobody reads could fill and stall it), shown if it fails
    to start."""
    with tempfile.TemporaryFile() as log:
        process = subprocess.Popen(
            pinned(cpu, argv), cwd=cwd, env=env, stdout=subprocess.DEVNULL, stderr=log
        )
        try:
            try:
                wait_until_listening(port, process)
            except RuntimeError as exc:
                log.seek(0)
                said = log.read()[-2000:].decode(errors="replace")
                raise RuntimeError(f"{exc}: {said}") from None
            yield process
        finally:
            process.terminate()
            try:
                process.wait(30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def bare_argv(port: int) -> list[str]:
    return [sys.executable, str(ROOT / "bench" / "baselines.py"), "bare", "--port", str(port)]


@contextmanager
def server(
    target: str, cpu: int | None, workdir: Path, sink_cpu: int | None = None
) -> Iterator[tuple[int, int, Path | None]]:
    """Start `target` on `cpu`: (pid, port, its database or None). `forward` also starts
    its sink, on `sink_cpu`."""
    port = free_port()
    db = workdir / f"{target}.db"
    for suffix in ("", "-wal", "-shm"):
        Path(f"{db}{suffix}").unlink(missing_ok=True)
    url = f"sqlite:///{db}"
    cwd, env = ROOT, _environ()
    if target == "before":
        cwd = workdir / "before"
        env = {**env, "PYTHONPATH": str(cwd)}
    with ExitStack() as stack:
        if target in ("eventctl", "batch", "before", "forward"):
            argv = [
                sys.executable,
                "-m",
                "eventctl",
                "serve",
                "--port",
                str(port),
                "--database-url",
                url,
            ]
            if target == "forward":
                sink_port = free_port()
                stack.enter_context(spawn(bare_argv(sink_port), sink_cpu, sink_port))
                argv += ["--forward-to", f"http://127.0.0.1:{sink_port}/event"]
        elif target == "naive":
            argv = [
                sys.executable,
                str(ROOT / "bench" / "baselines.py"),
                "naive",
                "--port",
                str(port),
                "--database-url",
                url,
            ]
        else:
            argv = bare_argv(port)
        process = stack.enter_context(spawn(argv, cpu, port, cwd, env))
        yield process.pid, port, (None if target == "bare" else db)


@contextmanager
def worktree(revision: str | None, path: Path) -> Iterator[None]:
    """A detached git worktree of `revision` at `path` for the `before` target."""
    if revision is None:
        yield
        return
    git = ["git", "-C", str(ROOT)]
    subprocess.run([*git, "worktree", "add", "--detach", str(path), revision], check=True)
    try:
        yield
    finally:
        subprocess.run([*git, "worktree", "remove", "--force", str(path)], check=False)


def cpu_seconds(pid: int, stat: str = "") -> float:
    """User plus system CPU time of process `pid`, all its threads (Linux; else 0)."""
    try:
        fields = Path(stat or f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def main_thread_cpu_seconds(pid: int) -> float:
    """User plus system CPU time of the main thread of `pid` (its event loop; Linux)."""
    return cpu_seconds(pid, f"/proc/{pid}/task/{pid}/stat")


def count_rows(db: Path | None) -> int:
    if db is None:
        return 0
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as conn:
        (n,) = conn.execute("SELECT count(*) FROM events").fetchone()
    conn.close()
    return int(n)


class Outboxed(NamedTuple):
    """What a store-and-forward database says of its routes at one moment."""

    delivered: int  # forward_routes.delivered, summed over routes
    backlog: int  # outbox entries, queued or failed
    failed: int
    lag_seconds: float  # now - received_at of the oldest queued event; 0 with none


def received_epoch(value: str) -> float:
    """events.received_at as SQLite holds it (naive UTC text) -> seconds since the epoch."""
    return datetime.fromisoformat(value).replace(tzinfo=UTC).timestamp()


def outboxed(db: Path) -> Outboxed:
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=10) as conn:
        (delivered,) = conn.execute(
            "SELECT coalesce(sum(delivered), 0) FROM forward_routes"
        ).fetchone()
        backlog, failed = conn.execute(
            "SELECT count(*), coalesce(sum(state = 2), 0) FROM outbox"
        ).fetchone()
        oldest = conn.execute(
            "SELECT e.received_at FROM events e WHERE e.id = "
            "(SELECT min(event_row) FROM outbox WHERE state = 0)"
        ).fetchone()
        now = time.time()
    conn.close()
    lag = max(now - received_epoch(oldest[0]), 0.0) if oldest else 0.0
    return Outboxed(int(delivered), int(backlog), int(failed), lag)


def wait_drained(db: Path, timeout: float = DRAIN_TIMEOUT_SECONDS) -> float | None:
    """Seconds until the outbox of `db` holds no queued entry; None after `timeout`."""
    started = time.monotonic()
    while True:
        state = outboxed(db)
        waited = time.monotonic() - started
        if state.backlog - state.failed == 0:
            return waited
        if waited >= timeout:
            return None
        time.sleep(0.05)


def body_for(target: str) -> tuple[str, bytes]:
    if target == "batch":
        return "/events", json.dumps([EVENT] * BATCH_SIZE).encode()
    return "/event", json.dumps(EVENT).encode()


# --- wrk -------------------------------------------------------------------------------

LUA = """
wrk.method = "POST"
wrk.body = {body}
wrk.headers["Content-Type"] = "application/json"
"""

_UNITS = {"us": 1e-3, "ms": 1.0, "s": 1e3}


def _ms(text: str) -> float:
    match = re.fullmatch(r"([\d.]+)(us|ms|s)", text)
    if not match:
        raise ValueError(text)
    return float(match.group(1)) * _UNITS[match.group(2)]


class Load(NamedTuple):
    """One run of a load driver: `connections` sending `body` to `path` for `duration` s,
    the driver pinned to `cpu`."""

    port: int
    path: str
    body: bytes
    connections: int
    duration: float
    cpu: int | None


class Bench(NamedTuple):
    """What every point of a bench run shares."""

    driver: str
    args: argparse.Namespace
    workdir: Path


def run_wrk(load: Load, workdir: Path) -> dict[str, float]:
    script = workdir / f"post-{load.port}.lua"
    script.write_text(LUA.format(body=json.dumps(load.body.decode())))
    argv = [
        "wrk",
        "-t1",
        f"-c{load.connections}",
        f"-d{load.duration:g}s",
        "--latency",
        "-s",
        str(script),
        f"http://127.0.0.1:{load.port}{load.path}",
    ]
    out = subprocess.run(pinned(load.cpu, argv), capture_output=True, text=True, check=True).stdout
    result = {
        "requests_per_s": float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1)),  # type: ignore[union-attr]
        "p50_ms": _ms(re.search(r"\s50%\s+(\S+)", out).group(1)),  # type: ignore[union-attr]
        "p99_ms": _ms(re.search(r"\s99%\s+(\S+)", out).group(1)),  # type: ignore[union-attr]
        "errors": 0.0,
    }
    non_2xx = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out)
    socket_errors = re.search(r"Socket errors: (.*)", out)
    result["errors"] = float(non_2xx.group(1)) if non_2xx else 0.0
    if socket_errors:
        result["errors"] += sum(int(n) for n in re.findall(r"\d+", socket_errors.group(1)))
    return result


# --- the bundled driver ------------------------------------------------------------------


async def _connection(
    port: int, request: bytes, stop_at: float, latencies: list[float], errors: list[int]
) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        while time.perf_counter() < stop_at:
            started = time.perf_counter()
            writer.write(request)
            status_line = await reader.readline()
            length = 0
            while (line := await reader.readline()) not in (b"\r\n", b""):
                if line[:15].lower() == b"content-length:":
                    length = int(line[15:])
            await reader.readexactly(length)
            latencies.append(time.perf_counter() - started)
            if not status_line.startswith(b"HTTP/1.1 2"):
                errors.append(1)
    finally:
        writer.close()


async def _drive(
    port: int, path: str, body: bytes, connections: int, duration: float
) -> dict[str, float]:
    request = (
        f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    ).encode() + body
    latencies: list[float] = []
    errors: list[int] = []
    started = time.perf_counter()
    stop_at = started + duration
    await asyncio.gather(
        *(_connection(port, request, stop_at, latencies, errors) for _ in range(connections))
    )
    elapsed = time.perf_counter() - started
    cuts = statistics.quantiles(latencies, n=100) if len(latencies) > 1 else [0.0] * 99
    return {
        "requests_per_s": len(latencies) / elapsed,
        "p50_ms": cuts[49] * 1000,
        "p99_ms": cuts[98] * 1000,
        "errors": float(len(errors)),
    }


def run_driver(load: Load) -> dict[str, float]:
    """The bundled driver in its own (pinned) process, so it never shares the server's core."""
    argv = [
        sys.executable,
        __file__,
        "--drive",
        str(load.port),
        load.path,
        load.body.decode(),
        str(load.connections),
        str(load.duration),
    ]
    out = subprocess.run(pinned(load.cpu, argv), capture_output=True, text=True, check=True).stdout
    result: dict[str, float] = json.loads(out)
    return result


# --- main --------------------------------------------------------------------------------


def machine() -> dict[str, Any]:
    model = "unknown"
    with open("/proc/cpuinfo") if os.path.exists("/proc/cpuinfo") else open(os.devnull) as info:
        for line in info:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    return {
        "cpu": model,
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "platform": platform.platform(),
    }


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--drive":
        port, path, body, connections, duration = sys.argv[2:7]
        print(
            json.dumps(
                asyncio.run(
                    _drive(int(port), path, body.encode(), int(connections), float(duration))
                )
            )
        )
        return
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--duration", type=float, default=10.0, help="seconds per point")
    parser.add_argument("--connections", default="32,128")
    parser.add_argument(
        "--batch-connections",
        default="8,32",
        help="connections for the batch target (100 events per request)",
    )
    parser.add_argument("--targets", default="bare,naive,eventctl,batch")
    parser.add_argument(
        "--repeat",
        type=int,
        default=3,
        help="rounds over all targets; each point reports its median round",
    )
    parser.add_argument("--driver", choices=["auto", "wrk", "bundled"], default="auto")
    parser.add_argument("--server-cpu", type=int, default=0)
    parser.add_argument("--client-cpu", type=int, default=1)
    parser.add_argument("--json", type=Path, help="also write the results here")
    parser.add_argument(
        "--drain-timeout",
        type=float,
        default=DRAIN_TIMEOUT_SECONDS,
        help="forward: longest wait for the outbox to empty after a window (seconds)",
    )
    parser.add_argument(
        "--together",
        action="store_true",
        help="with --before: drive `eventctl` and `before` at the same time, sharing the "
        "server core, so that both see the same machine at every moment",
    )
    parser.add_argument(
        "--before",
        metavar="REV",
        help="also measure `eventctl serve` at this git revision (target `before`)",
    )
    args = parser.parse_args()
    if args.before and "before" not in args.targets.split(","):
        args.targets += ",before"
    driver = (
        "wrk"
        if args.driver == "wrk" or (args.driver == "auto" and shutil.which("wrk"))
        else "bundled"
    )
    points = [
        (target, int(c))
        for target in args.targets.split(",")
        for c in (args.batch_connections if target == "batch" else args.connections).split(",")
    ]
    rounds: dict[tuple[str, int], list[dict[str, Any]]] = {point: [] for point in points}
    with (
        tempfile.TemporaryDirectory(prefix="eventctl-bench-") as tmp,
        worktree(args.before, Path(tmp) / "before"),
    ):
        workdir = Path(tmp)
        servers: dict[str, tuple[int, int, Path | None]] = {}
        with ExitStack() as stack:
            for target in dict.fromkeys(target for target, _ in points):
                servers[target] = stack.enter_context(
                    server(target, args.server_cpu, workdir, sink_cpu=args.client_cpu)
                )
            for round_number in range(args.repeat):
                # ABBA order: drift of the machine within a round falls on both sides alike
                for target, conns, point in run_round(
                    points if round_number % 2 == 0 else points[::-1],
                    servers,
                    Bench(driver, args, workdir),
                ):
                    rounds[(target, conns)].append(point)
                    print(
                        f"round {round_number + 1}: {target:9} c={conns:<4} "
                        f"{point['requests_per_s']:9.0f} req/s "
                        f"{point['events_per_s']:9.0f} events/s"
                        f"  p50 {point['p50_ms']:6.2f} ms  p99 {point['p99_ms']:6.2f} ms"
                        f"  CPU {point['cpu_us_per_event']:6.1f} µs/event"
                        f"  errors {point['errors']:.0f}{forwarded(point)}",
                        file=sys.stderr,
                    )
    results = []
    for (target, conns), runs in rounds.items():
        middle = sorted(runs, key=lambda r: r["events_per_s"])[len(runs) // 2]
        result = {
            **middle,
            "target": target,
            "connections": conns,
            "events_per_s_all": [round(r["events_per_s"]) for r in runs],
            "cpu_us_per_event": statistics.median(r["cpu_us_per_event"] for r in runs),
            "cpu_us_per_event_all": [round(r["cpu_us_per_event"], 1) for r in runs],
        }
        if target == "forward":
            result["rounds"] = runs
            baseline = rounds.get(("eventctl", conns))
            if baseline:
                # paired by round: both ran back to back on the same machine state
                result["vs_eventctl_rounds"] = [
                    round(a["events_per_s"] / b["events_per_s"], 3)
                    for a, b in zip(runs, baseline, strict=True)
                    if b["events_per_s"]
                ]
        results.append(result)
    for result in results:
        before = rounds.get(("before", result["connections"]))
        if before and result["target"] in ("eventctl",):
            mine = rounds[(result["target"], result["connections"])]
            # rounds are paired: both targets ran back to back on the same machine state
            result["vs_before_rounds"] = [
                round(a["events_per_s"] / b["events_per_s"], 3)
                for a, b in zip(mine, before, strict=True)
                if b["events_per_s"]
            ]
            result["cpu_vs_before_rounds"] = [
                round(a["cpu_us_per_event"] / b["cpu_us_per_event"], 3)
                for a, b in zip(mine, before, strict=True)
                if b["cpu_us_per_event"]
            ]
    report(results, driver, args)


def run_round(
    points: list[tuple[str, int]], servers: dict[str, tuple[int, int, Path | None]], bench: Bench
) -> Iterator[tuple[str, int, dict[str, Any]]]:
    """Each point in turn; with --together, `eventctl` and `before` at the same time."""
    done: set[tuple[str, int]] = set()
    for target, conns in points:
        if (target, conns) in done:
            continue
        pair = [(target, conns)]
        if bench.args.together and target in ("eventctl", "before"):
            pair = [("eventctl", conns), ("before", conns)]
        with ThreadPoolExecutor(len(pair)) as pool:
            futures = [pool.submit(measure, name, c, servers[name], bench) for name, c in pair]
            results = [future.result() for future in futures]
        for (name, c), point in zip(pair, results, strict=True):
            done.add((name, c))
            yield name, c, point


def drive(bench: Bench, load: Load) -> dict[str, float]:
    return run_wrk(load, bench.workdir) if bench.driver == "wrk" else run_driver(load)


def forwarded(point: dict[str, Any]) -> str:
    if "forwarded_per_s" not in point:
        return ""
    drain = point["drain_s"]
    return (
        f"  forwarded {point['forwarded_per_s']:7.0f}/s  backlog {point['backlog_end']}"
        f"  lag {point['lag_end_s']:.1f} s"
        f"  drained in {'>' if drain is None else ''}"
        f"{point['drain_timeout_s'] if drain is None else drain:.1f} s"
    )


def measure(
    target: str, conns: int, running: tuple[int, int, Path | None], bench: Bench
) -> dict[str, Any]:
    args = bench.args
    path, body = body_for(target)
    pid, port, db = running
    forward = target == "forward" and db is not None
    # warm up, then count the rows committed during the measured run
    drive(bench, Load(port, path, body, conns, 1, args.client_cpu))
    if forward:
        assert db is not None
        wait_drained(db, args.drain_timeout)  # each window starts with an empty outbox
        start = outboxed(db)
    before = count_rows(db)
    cpu_before = cpu_seconds(pid)
    loop_before = main_thread_cpu_seconds(pid)
    point: dict[str, Any] = drive(
        bench, Load(port, path, body, conns, args.duration, args.client_cpu)
    )
    cpu_used = cpu_seconds(pid) - cpu_before
    loop_used = main_thread_cpu_seconds(pid) - loop_before
    committed = count_rows(db) - before
    if forward:
        assert db is not None
        end = outboxed(db)
        point["forwarded_per_s"] = (end.delivered - start.delivered) / args.duration
        point["forwarded_vs_ingest"] = (
            point["forwarded_per_s"] / (committed / args.duration) if committed else 0.0
        )
        point["backlog_start"] = start.backlog
        point["backlog_end"] = end.backlog
        point["failed_end"] = end.failed
        point["lag_end_s"] = round(end.lag_seconds, 3)
        point["drain_timeout_s"] = args.drain_timeout
        drain = wait_drained(db, args.drain_timeout)
        point["drain_s"] = None if drain is None else round(drain, 2)
        point["drain_per_s"] = end.backlog / drain if drain else None
    point["server_cpu_share"] = cpu_used / args.duration
    point["loop_cpu_share"] = loop_used / args.duration
    per_request = BATCH_SIZE if target == "batch" else 1
    point["events_per_s"] = (
        committed / args.duration if db is not None else point["requests_per_s"] * per_request
    )
    done = committed if db is not None else point["requests_per_s"] * args.duration
    point["cpu_us_per_event"] = cpu_used / done * 1e6 if done else 0.0
    point["loop_cpu_us_per_event"] = loop_used / done * 1e6 if done else 0.0
    return point


def report(results: list[dict[str, Any]], driver: str, args: argparse.Namespace) -> None:
    by = {(r["target"], r["connections"]): r for r in results}
    lines = [
        f"machine: {json.dumps(machine())}",
        f"driver: {driver}; {args.duration:g} s per point, median of {args.repeat} rounds; "
        f"server on CPU {args.server_cpu}, client on CPU {args.client_cpu}",
        "",
        "| target | connections | requests/s | committed events/s (rounds) | p50 ms | p99 ms "
        "| server CPU µs/event | errors | vs bare | vs naive | vs before |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        single = r["target"] != "batch"
        bare = by.get(("bare", r["connections"])) if single else None
        naive = by.get(("naive", r["connections"])) if single else None
        vs_bare = f"{r['events_per_s'] / bare['requests_per_s']:.2f}" if bare else "-"
        vs_naive = (
            f"{r['events_per_s'] / naive['events_per_s']:.1f}x"
            if naive and naive["events_per_s"]
            else "-"
        )
        vs_before = "-"
        if r.get("vs_before_rounds"):
            paired = r["vs_before_rounds"]
            cpu = r["cpu_vs_before_rounds"]
            vs_before = (
                f"{statistics.median(paired):.2f} (rounds {', '.join(f'{x:.2f}' for x in paired)}; "
                f"CPU/event {statistics.median(cpu):.2f})"
            )
        lines.append(
            f"| {r['target']} | {r['connections']} | {r['requests_per_s']:.0f} | "
            f"{r['events_per_s']:.0f} ({', '.join(map(str, r['events_per_s_all']))}) | "
            f"{r['p50_ms']:.2f} | {r['p99_ms']:.2f} | {r['cpu_us_per_event']:.1f} | "
            f"{r['errors']:.0f} | {vs_bare} | {vs_naive} | {vs_before} |"
        )
    lines += forward_table(results, by)
    print("\n".join(lines))
    if args.json:
        args.json.write_text(
            json.dumps({"machine": machine(), "driver": driver, "results": results}, indent=2)
        )


def _listed(values: list[float], digits: int = 0) -> str:
    return ", ".join(f"{v:.{digits}f}" for v in values)


def forward_table(
    results: list[dict[str, Any]], by: dict[tuple[str, int], dict[str, Any]]
) -> list[str]:
    """Store and forward, beside the same round's `eventctl` (no routes); rounds in ()."""
    forward = [r for r in results if r["target"] == "forward"]
    if not forward:
        return []
    lines = [
        "",
        "| connections | ingest events/s, no routes | ingest events/s, one route | vs eventctl "
        "| forwarded/s during load | forwarded/ingested | backlog at end | lag at end s "
        "| drain s | drain events/s | server CPU, share of a core: loop + other threads |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in forward:
        base = by.get(("eventctl", r["connections"]))
        runs = r["rounds"]
        paired = r.get("vs_eventctl_rounds", [])
        vs = f"{statistics.median(paired):.2f} ({_listed(paired, 2)})" if paired else "-"
        sent = [x["forwarded_per_s"] for x in runs]
        drains = [x["drain_s"] for x in runs]
        if None in drains:
            drain = f"not within {r['drain_timeout_s']:g} s in {drains.count(None)} rounds"
        else:
            drain = f"{statistics.median(drains):.1f} ({_listed(drains, 1)})"
        rates = [x["drain_per_s"] for x in runs if x["drain_per_s"]]
        loop = statistics.median(x["loop_cpu_share"] for x in runs)
        total = statistics.median(x["server_cpu_share"] for x in runs)
        cells = [
            str(r["connections"]),
            f"{base['events_per_s']:.0f}" if base else "-",
            f"{r['events_per_s']:.0f} ({_listed(r['events_per_s_all'])})",
            vs,
            f"{statistics.median(sent):.0f} ({_listed(sent)})",
            f"{statistics.median(x['forwarded_vs_ingest'] for x in runs):.2f}",
            f"{statistics.median(x['backlog_end'] for x in runs):.0f}",
            f"{statistics.median(x['lag_end_s'] for x in runs):.1f}",
            drain,
            f"{statistics.median(rates):.0f}" if rates else "-",
            f"{loop:.2f} + {total - loop:.2f}",
        ]
        lines.append(f"| {' | '.join(cells)} |")
    return lines


if __name__ == "__main__":
    main()
