"""Sending benchmark: client loops and `eventctl propagate --rate` against a fast local sink.

    python bench/propagate.py                    # rates 500, 1000, 2000/s for 5 s each
    python bench/propagate.py --repeat 3         # three rounds; each row its median
    python bench/propagate.py --before REV --together --repeat 10   # a change, A/B
    python bench/propagate.py --rates 500 --duration 1 --requests 1000 \
        --stages 1s@200,1s@200-400,1s@400 --report-events 100000     # a smoke run

The sink is bench/baselines.py's bare ASGI app, pinned to CPU 1; every client runs pinned to
CPU 0, on uvloop as `eventctl propagate` does. In one run it measures, for --requests (4,000)
requests each: bare asyncio-streams HTTP/1.1 loops (one keep-alive connection; and 8 connections),
httpx.AsyncClient with 8 sequential workers, the same over httpx-aiohttp's transport, the
httpx API over eventctl's LeanTransport, and the synchronous httpx.Client. Then, for each
rate R, the bare loop paced at R, and `eventctl propagate --rate R`: the achieved rate, the
lateness of each send against its due time, and the CPU per event (measured by the propagator
over its sending loop, start-up excluded). Last, `propagate` flat out (a rate far above what
one core can send) gives its CPU per event at full load, the figure to set against the bare
loops, which also run flat out; its row gives `cpu_vs_fastest_bare`, its CPU per event over
that of the bare loop flat out (one connection or 8) with the most requests/s in the same
round (the target of issue 15: at most 2x, with the spool).

Then what issue 15 asks, each in a row of its own `kind`:
- `stages`: `propagate --stages PLAN` (--stages, default 5s@500,10s@500-3000,5s@3000),
  pinned like the other propagate runs, read from its `--report run.json`: per stage the
  planned events, sent, planned and achieved rate and their ratio (`within_1pct`: the
  target), the run's latency (from each event's due time) and service time percentiles
  (p50, p90, p99, p99.9, max, in ms), dropped sends and CPU per event.
- `flat_out_workers`: `propagate --rate 50000 --workers N` for N in --workers (1,2): the
  achieved events/s and CPU per event over all workers, and the ratios to the first N. On
  2 cores two pinned workers would share one core, so every N runs the same way, unpinned
  (the sink stays pinned to its CPU): the ratio compares like with like, and the 1-worker
  row is not the pinned flat-out row above.
- `report`: bench/report.py for --report-events events (1,000,000) as a subprocess,
  pinned to the client CPU: the write times of .html and .json, their sizes, the memory
  (tracemalloc peaks, peak RSS); `write_under_2s` is the target.
A Markdown table of these figures follows on stderr. With --repeat every number of a row
is its median over the rounds, per stage too (`rounds_all_within_1pct` counts the rounds
in which every stage was within 1%).
--json PATH also writes the JSON that goes to stdout. Traffic stays on 127.0.0.1; every
loop is bounded.

With --before REV, it measures instead `eventctl propagate` as it is here (`eventctl`)
against REV (`before`, checked out in a temporary git worktree and run with that worktree
on PYTHONPATH), at each rate and flat out. Each version sends to its own sink, started once,
which counts what it answered; after a 1 s warm-up, the CPU time of the propagate process
(user plus system, from /proc) over the next --duration seconds, divided by the events the
sink answered in them, is its CPU per event, start-up excluded whatever REV prints. Rounds
alternate ABBA; `vs before` is the median over rounds of eventctl/before within one round.
With --together both versions run at the same moment, sharing the client core, so both see
the same machine; `--before HEAD` is the A/A check, whose ratio is the noise floor.
"""

from __future__ import annotations

import argparse
import asyncio
import http.client
import json
import os
import re
import resource
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

import httpx
import uvicorn
import uvloop
from httpx_aiohttp import AiohttpTransport

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))

from baselines import bare  # noqa: E402
from ingest import (  # noqa: E402
    cpu_seconds,
    free_port,
    pinned,
    wait_until_listening,
    worktree,
)

from eventctl.transport import LeanTransport  # noqa: E402

BODY = b'{"event_type":"order.created","event_payload":"{\\"order_id\\": 5531}"}'
REQUESTS = 4000  # per client loop; --requests
FLAT_OUT_RATE = 50_000


def client_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


async def raw_loop(url: str, n: int, rate: float | None = None) -> None:
    """POST n times on one keep-alive connection, each after the last answer; with `rate`,
    no sooner than its due time."""
    host, port = url.split("//")[1].split("/", maxsplit=1)[0].split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    request = (
        b"POST /event HTTP/1.1\r\nHost: %s\r\nContent-Type: application/json\r\n"
        b"Content-Length: %d\r\n\r\n" % (host.encode(), len(BODY))
    ) + BODY
    loop = asyncio.get_running_loop()
    start = loop.time()
    for k in range(n):
        if rate is not None and (delay := start + k / rate - loop.time()) > 0:
            await asyncio.sleep(delay)
        writer.write(request)
        head = await reader.readuntil(b"\r\n\r\n")
        length = int(re.search(rb"content-length: (\d+)", head.lower()).group(1))  # type: ignore[union-attr]
        await reader.readexactly(length)
    writer.close()


async def raw_connections(url: str, n: int) -> None:
    await asyncio.gather(*(raw_loop(url, n // 8) for _ in range(8)))


async def httpx_workers(url: str, n: int, *, aiohttp: bool) -> None:
    transport = AiohttpTransport() if aiohttp else None
    headers = {"Content-Type": "application/json"}
    async with httpx.AsyncClient(transport=transport) as client:

        async def worker(count: int) -> None:
            for _ in range(count):
                (await client.post(url, content=BODY, headers=headers)).raise_for_status()

        await asyncio.gather(*(worker(n // 8) for _ in range(8)))


async def lean_workers(url: str, n: int) -> None:
    """What the propagator does per request: an httpx.Request straight to LeanTransport."""
    target = httpx.URL(url)
    extensions = {"timeout": httpx.Timeout(5.0).as_dict()}
    async with LeanTransport() as transport:

        async def worker(count: int) -> None:
            for _ in range(count):
                request = httpx.Request(
                    "POST",
                    target,
                    headers=[(b"Content-Type", b"application/json")],
                    stream=httpx.ByteStream(BODY),
                    extensions=extensions,
                )
                response = await transport.handle_async_request(request)
                await response.aclose()
                response.raise_for_status()

        await asyncio.gather(*(worker(n // 8) for _ in range(8)))


def httpx_sync(url: str, n: int) -> None:
    with httpx.Client() as client:
        for _ in range(n):
            client.post(url, content=BODY, headers={"Content-Type": "application/json"})


CLIENTS: dict[str, Callable[[str, int], None]] = {
    "bare asyncio loop": lambda url, n: uvloop.run(raw_loop(url, n)),
    "bare asyncio, 8 connections": lambda url, n: uvloop.run(raw_connections(url, n)),
    "httpx.AsyncClient, 8 workers": lambda url, n: uvloop.run(httpx_workers(url, n, aiohttp=False)),
    "httpx over aiohttp, 8 workers": lambda url, n: uvloop.run(httpx_workers(url, n, aiohttp=True)),
    "httpx over LeanTransport, 8 workers": lambda url, n: uvloop.run(lean_workers(url, n)),
    "httpx.Client, sequential": httpx_sync,
}
BARE_FLAT_OUT = ("bare asyncio loop", "bare asyncio, 8 connections")


def run_client(
    name: str, url: str, requests: int, rate: float | None = None, duration: float = 5.0
) -> dict[str, float]:
    n = requests if rate is None else int(rate * duration)
    started, cpu = time.perf_counter(), client_cpu()
    if rate is None:
        CLIENTS[name](url, n)
    else:
        uvloop.run(raw_loop(url, n, rate))
    elapsed, used = time.perf_counter() - started, client_cpu() - cpu
    return {"requests_per_s": n / elapsed, "cpu_us_per_request": used / n * 1e6}


def eventctl(args: list[str], cpu: int, workdir: Path) -> str:
    env_spool = {"EVENTCTL_SPOOL_PATH": str(workdir / f"spool-{time.monotonic_ns()}.db")}
    result = subprocess.run(
        pinned(cpu, [sys.executable, "-m", "eventctl", *args]),
        capture_output=True,
        text=True,
        cwd=ROOT,
        env={**_environ(), **env_spool},
        check=False,
    )
    return result.stderr


def _environ() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("EVENTCTL_")}


def client_row(
    name: str, url: str, args: argparse.Namespace, rate: float | None = None
) -> dict[str, Any]:
    command = [sys.executable, __file__, "--client", name, url, str(args.requests)]
    if rate is not None:
        command += [f"{rate:g}", f"{args.duration:g}"]
    cpu = args.client_cpu
    out = subprocess.run(pinned(cpu, command), capture_output=True, text=True, check=True)
    row = {"client": name, **json.loads(out.stdout)}
    print(
        f"{name:40} {row['requests_per_s']:8.0f} req/s "
        f"{row['cpu_us_per_request']:8.1f} us CPU/request",
        file=sys.stderr,
    )
    return row


def propagate_row(
    url: str, rate: float, duration: float, cpu: int, workdir: Path
) -> dict[str, Any]:
    stderr = eventctl(
        [
            *("propagate", "--rate", f"{rate:g}", "--duration", f"{duration:g}", "--quiet"),
            *("--endpoint", url, "--events-file", str(ROOT / "events" / "events.json")),
        ],
        cpu,
        workdir,
    )

    def find(pattern: str) -> str:
        found = re.search(pattern, stderr)
        if found is None:
            raise SystemExit(f"bench: no {pattern!r} in propagate's output:\n{stderr}")
        return found.group(1)

    row: dict[str, Any] = {
        "client": f"eventctl propagate --rate {rate:g}",
        "rate": rate,
        "sent": int(find(r"propagate: (\d+) sent")),
        "delivered": int(find(r"(\d+) delivered")),
        "skipped_ticks": int(find(r"(\d+) ticks skipped")),
        "achieved_per_s": float(find(r"achieved ([\d.]+)/s")),
        "lateness_p99_ms": float(find(r"lateness p99 ([\d.]+) ms")),
        "cpu_us_per_event": float(find(r"CPU ([\d.]+) µs/event")),
    }
    row["achieved_vs_rate"] = row["achieved_per_s"] / rate
    dropped = re.search(r"(\d+) dropped", stderr)  # said only when some were
    row["dropped"] = int(dropped.group(1)) if dropped else 0
    print(
        f"{row['client']:40} achieved {row['achieved_per_s']:8.1f}/s "
        f"({row['achieved_vs_rate']:.4f} of R), lateness p99 {row['lateness_p99_ms']} ms, "
        f"{row['cpu_us_per_event']:.1f} us CPU/event",
        file=sys.stderr,
    )
    return row


# --- issue 15: stages, latency, workers, the report's cost ---------------------------------

DEFAULT_STAGES = "5s@500,10s@500-3000,5s@3000"
STAGE_TOLERANCE = 0.01  # the target: each stage within 1% of its plan
PERCENTILES = ("p50", "p90", "p99", "p999", "max")
SUMMARY_KEYS = (
    "generated",
    "delivered",
    "failed",
    "pending",
    "dropped",
    "skipped_ticks",
    "achieved_rate",
    "lateness_p99_ms",
    "cpu_per_event_us",
    *(f"{measure}_{p}_ms" for measure in ("latency", "service") for p in PERCENTILES),
)


def run_report(
    options: list[str], url: str, cpu: int | None, workdir: Path, limit: float
) -> dict[str, Any]:
    """`eventctl propagate --quiet --report run.json OPTIONS` (pinned to `cpu` unless None),
    and the report it wrote; `limit` seconds bound a run gone wrong."""
    report = workdir / f"run-{time.monotonic_ns()}.json"
    spool = {"EVENTCTL_SPOOL_PATH": str(workdir / f"spool-{time.monotonic_ns()}.db")}
    argv = [
        *(sys.executable, "-m", "eventctl", "propagate", *options, "--quiet"),
        *("--report", str(report), "--endpoint", url),
        *("--events-file", str(ROOT / "events" / "events.json")),
    ]
    try:
        result = subprocess.run(
            pinned(cpu, argv),
            capture_output=True,
            text=True,
            cwd=ROOT,
            env={**_environ(), **spool},
            check=False,
            timeout=limit,
        )
    except subprocess.TimeoutExpired as error:
        raise SystemExit(f"bench: propagate {' '.join(options)} ran over {limit:g} s") from error
    if f"report: {report}" not in result.stderr or not report.exists():
        raise SystemExit(
            f"bench: propagate {' '.join(options)} wrote no report (exit {result.returncode}):\\n"
            f"{result.stderr}"
        )
    data: dict[str, Any] = json.loads(report.read_text())
    data["json_bytes"] = report.stat().st_size
    data["exit_code"] = result.returncode
    report.unlink()
    return data


def summary_figures(report: dict[str, Any]) -> dict[str, Any]:
    summary = report["summary"]
    missing = [key for key in SUMMARY_KEYS if key not in summary]
    if missing:
        raise SystemExit(f"bench: no {', '.join(missing)} in the report's summary: {summary}")
    figures = {key: summary[key] for key in SUMMARY_KEYS}
    figures["achieved_per_s"] = figures.pop("achieved_rate")
    figures["cpu_us_per_event"] = figures.pop("cpu_per_event_us")
    figures["exit_code"] = report["exit_code"]
    return figures


def stages_row(url: str, args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    """`propagate --stages PLAN`, pinned like the other propagate runs: a line per stage
    (planned vs sent, planned vs achieved rate), both latency measures, dropped."""
    planned = sum(parse_seconds(stage.split("@")[0]) for stage in args.stages.split(","))
    report = run_report(["--stages", args.stages], url, args.client_cpu, workdir, planned + 120)
    stages = [
        {
            key: stage[key]
            for key in ("stage", "planned_events", "sent", "planned_rate", "achieved_rate")
        }
        | {
            "achieved_vs_plan": stage["achieved_vs_plan"],
            "within_1pct": abs(stage["achieved_vs_plan"] - 1) <= STAGE_TOLERANCE,
        }
        for stage in report["meta"]["stages"]
    ]
    row: dict[str, Any] = {
        "client": f"eventctl propagate --stages {args.stages}",
        "kind": "stages",
        "plan": args.stages,
        "stages": stages,
        "all_within_1pct": all(stage["within_1pct"] for stage in stages),
        "worst_achieved_vs_plan": min(
            (stage["achieved_vs_plan"] for stage in stages), key=lambda r: -abs(r - 1)
        ),
        **summary_figures(report),
        "report_json_bytes": report["json_bytes"],
    }
    for stage in stages:
        print(
            f"{'  stage ' + stage['stage']:40} {stage['sent']:6} sent of "
            f"{stage['planned_events']:8.1f}, {stage['achieved_rate']:8.1f}/s of "
            f"{stage['planned_rate']:8.1f}/s ({stage['achieved_vs_plan']:.4f})",
            file=sys.stderr,
        )
    print(
        f"{'eventctl propagate --stages':40} latency p99 {row['latency_p99_ms']} ms, service p99 "
        f"{row['service_p99_ms']} ms, {row['dropped']} dropped, "
        f"{row['cpu_us_per_event']:.1f} us CPU/event",
        file=sys.stderr,
    )
    return row


def parse_seconds(text: str) -> float:
    """`90`, `30s`, `5m`, `1h30m`, `1.5s`: seconds (the plan's length, to bound the run)."""
    parts = re.findall(r"([\d.]+)([hms]?)", text)
    return sum(float(n) * {"h": 3600, "m": 60, "s": 1, "": 1}[unit] for n, unit in parts)


def workers_rows(url: str, args: argparse.Namespace, workdir: Path) -> list[dict[str, Any]]:
    """`propagate --rate 50000 --workers N` for each N, all unpinned (the sink on its CPU):
    achieved events/s and CPU per event over all workers; each N against the first."""
    rows: list[dict[str, Any]] = []
    for workers in (int(n) for n in args.workers.split(",")):
        options = ["--rate", f"{FLAT_OUT_RATE}", "--duration", f"{args.duration:g}"]
        report = run_report(
            [*options, "--workers", str(workers)], url, None, workdir, args.duration + 120
        )
        row: dict[str, Any] = {
            "client": f"eventctl propagate flat out, {workers} worker{'s' * (workers > 1)}",
            "kind": "flat_out_workers",
            "workers": workers,
            "rate": float(FLAT_OUT_RATE),
            "pinning": f"workers unpinned, sink on CPU {args.sink_cpu}",
            **summary_figures(report),
        }
        if rows:
            first = rows[0]
            row[f"events_per_s_vs_{first['workers']}_worker"] = (
                row["achieved_per_s"] / first["achieved_per_s"]
            )
            row[f"cpu_vs_{first['workers']}_worker"] = (
                row["cpu_us_per_event"] / first["cpu_us_per_event"]
            )
        rows.append(row)
        print(
            f"{row['client']:40} achieved {row['achieved_per_s']:8.1f}/s, "
            f"{row['cpu_us_per_event']:.1f} us CPU/event (unpinned), {row['dropped']} dropped",
            file=sys.stderr,
        )
    return rows


def report_row(args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    """bench/report.py for --report-events events, pinned to the client CPU: the time to
    write the report as .html and .json, the files' sizes and the memory."""
    out = workdir / f"report-figures-{time.monotonic_ns()}.json"
    command = [
        *(sys.executable, str(ROOT / "bench" / "report.py")),
        *("--events", str(args.report_events), "--seconds", f"{args.report_seconds:g}"),
        *("--json", str(out)),
    ]
    subprocess.run(
        pinned(args.client_cpu, command), capture_output=True, check=True, cwd=ROOT, timeout=600
    )
    figures: dict[str, Any] = json.loads(out.read_text())
    row: dict[str, Any] = {
        "client": f"bench/report.py --events {args.report_events}",
        "kind": "report",
        **figures,
        "write_under_2s": figures["write_html_s"] < 2 and figures["write_json_s"] < 2,
    }
    print(
        f"{row['client']:40} write .html {row['write_html_s']} s, .json {row['write_json_s']} s, "
        f"{row['html_bytes']:,} + {row['json_bytes']:,} bytes, peak RSS {row['max_rss_mb']} MB",
        file=sys.stderr,
    )
    return row


def fastest_bare(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Of this round's bare client loops flat out, the one with the most requests/s."""
    bare_rows = [row for row in rows if row["client"] in BARE_FLAT_OUT]
    return max(bare_rows, key=lambda row: row["requests_per_s"])


def one_round(url: str, args: argparse.Namespace) -> list[dict[str, Any]]:
    rows = [client_row(name, url, args) for name in CLIENTS]
    fastest = fastest_bare(rows)
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        for rate in (float(r) for r in args.rates.split(",")):
            paced = client_row("bare asyncio loop", url, args, rate)
            rows.append({**paced, "client": f"bare asyncio loop paced at {rate:g}/s"})
            rows.append(propagate_row(url, rate, args.duration, args.client_cpu, workdir))
        flat = propagate_row(url, FLAT_OUT_RATE, args.duration, args.client_cpu, workdir)
        flat["pinning"] = f"pinned to CPU {args.client_cpu}, sink on CPU {args.sink_cpu}"
        flat["fastest_bare"] = fastest["client"]
        flat["fastest_bare_cpu_us_per_request"] = fastest["cpu_us_per_request"]
        flat["cpu_vs_fastest_bare"] = flat["cpu_us_per_event"] / fastest["cpu_us_per_request"]
        label = f"  flat out vs {fastest['client']}"
        print(f"{label:40} CPU/event {flat['cpu_vs_fastest_bare']:.2f}x", file=sys.stderr)
        rows.append(flat)
        if args.stages:
            rows.append(stages_row(url, args, workdir))
        if args.workers:
            rows.extend(workers_rows(url, args, workdir))
        if args.report_events:
            rows.append(report_row(args, workdir))
    return rows


# --- --before: this version against another, each against its own counting sink ---------

VERSIONS = ("eventctl", "before")
WARM_UP_SECONDS = 1.0


def counting_sink(port: int) -> None:
    """bench/baselines.py's bare app, counting the POSTs it answered; GET answers the count."""
    answered = 0

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        nonlocal answered
        if scope["type"] == "http" and scope["method"] == "GET":
            body = str(answered).encode()
            headers = [(b"content-length", str(len(body)).encode())]
            await send({"type": "http.response.start", "status": 200, "headers": headers})
            await send({"type": "http.response.body", "body": body})
            return
        await bare(scope, receive, send)
        if scope["type"] == "http":
            answered += 1

    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning", access_log=False)


def answered(port: int) -> int:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        connection.request("GET", "/count")
        return int(connection.getresponse().read())
    finally:
        connection.close()


@contextmanager
def sink(cpu: int) -> Iterator[int]:
    port = free_port()
    process = subprocess.Popen(pinned(cpu, [sys.executable, __file__, "--sink", str(port)]))
    try:
        wait_until_listening(port, process)
        yield port
    finally:
        process.terminate()
        process.wait(10)


def measure_version(
    version: str, rate: float, port: int, args: argparse.Namespace, workdir: Path
) -> dict[str, Any]:
    """One `propagate --rate` of `version` against its sink on `port`: after the warm-up,
    its CPU per event and the events/s the sink answered over `args.duration` seconds."""
    cwd = workdir / "before" if version == "before" else ROOT
    env = {**_environ(), "EVENTCTL_SPOOL_PATH": str(workdir / f"spool-{time.monotonic_ns()}.db")}
    if version == "before":
        env["PYTHONPATH"] = str(cwd)
    limit = 60 + WARM_UP_SECONDS + args.duration  # --duration only bounds a run gone wrong
    argv = [
        *(sys.executable, "-m", "eventctl", "propagate", "--quiet"),
        *("--rate", f"{rate:g}", "--duration", f"{limit:g}"),
        *("--endpoint", f"http://127.0.0.1:{port}/event"),
        *("--events-file", str(ROOT / "events" / "events.json")),
    ]
    process = subprocess.Popen(
        pinned(args.client_cpu, argv),
        cwd=cwd,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        start = answered(port)
        deadline = time.monotonic() + 30
        while answered(port) == start:
            if process.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"bench: {version} sent nothing: {process.communicate()[1]}")
            time.sleep(0.05)
        time.sleep(WARM_UP_SECONDS)
        count0, cpu0, t0 = answered(port), cpu_seconds(process.pid), time.perf_counter()
        time.sleep(args.duration)
        count1, cpu1, t1 = answered(port), cpu_seconds(process.pid), time.perf_counter()
    finally:
        process.send_signal(signal.SIGINT)
        try:
            process.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.communicate()
    events = count1 - count0
    return {
        "version": version,
        "rate": rate,
        "events_per_s": events / (t1 - t0),
        "cpu_us_per_event": (cpu1 - cpu0) / events * 1e6 if events else 0.0,
    }


def compare(args: argparse.Namespace) -> dict[str, Any]:
    """Rounds of every (rate, version) point, ABBA, and each rate's ratios eventctl/before."""
    rates = [float(r) for r in args.rates.split(",")] + [float(FLAT_OUT_RATE)]
    points = [(rate, version) for rate in rates for version in VERSIONS]
    rounds: dict[tuple[float, str], list[dict[str, Any]]] = {point: [] for point in points}
    with (
        tempfile.TemporaryDirectory(prefix="eventctl-bench-") as tmp,
        worktree(args.before, Path(tmp) / "before"),
        ExitStack() as stack,
    ):
        workdir = Path(tmp)
        sinks = {version: stack.enter_context(sink(args.sink_cpu)) for version in VERSIONS}
        for number in range(args.repeat):
            # ABBA order: drift of the machine within a round falls on both sides alike
            order = points if number % 2 == 0 else points[::-1]
            for rate, version, point in run_compare_round(order, sinks, args, workdir):
                rounds[(rate, version)].append(point)
                print(
                    f"round {number + 1}: {version:9} --rate {rate:<6g} "
                    f"{point['events_per_s']:9.1f} events/s "
                    f"{point['cpu_us_per_event']:7.1f} us CPU/event",
                    file=sys.stderr,
                )
    rows = []
    for rate in rates:
        mine, before = rounds[(rate, "eventctl")], rounds[(rate, "before")]
        cpu = [
            a["cpu_us_per_event"] / b["cpu_us_per_event"] for a, b in zip(mine, before, strict=True)
        ]
        speed = [a["events_per_s"] / b["events_per_s"] for a, b in zip(mine, before, strict=True)]
        row = {
            "rate": rate,
            "before": args.before,
            "together": args.together,
            "rounds": args.repeat,
            **{
                f"{version}_{key}": statistics.median(p[key] for p in rounds[(rate, version)])
                for version in VERSIONS
                for key in ("events_per_s", "cpu_us_per_event")
            },
            "cpu_vs_before": statistics.median(cpu),
            "cpu_vs_before_rounds": [round(x, 3) for x in cpu],
            "events_per_s_vs_before": statistics.median(speed),
        }
        rows.append(row)
        print(
            f"--rate {rate:<6g} CPU/event vs before {row['cpu_vs_before']:.2f} (rounds "
            f"{', '.join(f'{x:.2f}' for x in cpu)}); events/s vs before "
            f"{row['events_per_s_vs_before']:.2f}",
            file=sys.stderr,
        )
    return {"comparison": rows}


def run_compare_round(
    points: list[tuple[float, str]],
    sinks: dict[str, int],
    args: argparse.Namespace,
    workdir: Path,
) -> Iterator[tuple[float, str, dict[str, Any]]]:
    """Each point in turn; with --together, both versions of a rate at the same time."""
    done: set[tuple[float, str]] = set()
    for rate, version in points:
        if (rate, version) in done:
            continue
        group = [(rate, v) for v in VERSIONS] if args.together else [(rate, version)]
        with ThreadPoolExecutor(len(group)) as pool:
            futures = [
                pool.submit(measure_version, v, r, sinks[v], args, workdir) for r, v in group
            ]
            results = [future.result() for future in futures]
        for (r, v), point in zip(group, results, strict=True):
            done.add((r, v))
            yield r, v, point


def median_row(samples: list[dict[str, Any]]) -> dict[str, Any]:
    """One row of every round, each number its median over the rounds, also inside the
    per-stage lists; an exit code is the worst. A stage's `within_1pct` is that of its
    median ratio; `rounds_all_within_1pct` counts the rounds in which every stage was."""
    row: dict[str, Any] = median_of("", samples)
    if row.get("kind") == "stages":
        for stage in row["stages"]:
            stage["within_1pct"] = abs(stage["achieved_vs_plan"] - 1) <= STAGE_TOLERANCE
        row["all_within_1pct"] = all(stage["within_1pct"] for stage in row["stages"])
        row["rounds_all_within_1pct"] = sum(bool(s["all_within_1pct"]) for s in samples)
    row["rounds"] = len(samples)
    return row


def median_of(key: str, values: list[Any]) -> Any:
    first = values[0]
    if isinstance(first, bool):
        return all(values)
    if key == "exit_code":
        return max(values)
    if isinstance(first, int | float) and key != "rate":
        return statistics.median(values)
    if isinstance(first, dict) and all(
        isinstance(v, dict) and v.keys() == first.keys() for v in values
    ):
        return {k: median_of(k, [v[k] for v in values]) for k in first}
    if isinstance(first, list) and all(
        isinstance(v, list) and len(v) == len(first) for v in values
    ):
        return [median_of(key, list(items)) for items in zip(*values, strict=True)]
    return first


def markdown(rows: list[dict[str, Any]], rounds: int) -> str:
    """The new figures (issue 15) as Markdown tables."""
    note = f"median of {rounds} rounds" if rounds > 1 else "one round"
    lines: list[str] = []

    def table(title: str, header: list[str], body: list[list[Any]]) -> None:
        lines.extend([f"### {title} ({note})", "", "| " + " | ".join(header) + " |"])
        lines.append("|" + "---|" * len(header))
        lines.extend("| " + " | ".join(str(cell) for cell in cells) + " |" for cells in body)
        lines.append("")

    kind = {row.get("kind"): row for row in rows}
    if stages := kind.get("stages"):
        table(
            f"`propagate --stages {stages['plan']}` (client CPU pinned)",
            [
                "stage",
                "planned events",
                "sent",
                "planned /s",
                "achieved /s",
                "achieved/plan",
                "within 1%",
            ],
            [
                [
                    f"`{s['stage']}`",
                    f"{s['planned_events']:,.0f}",
                    f"{s['sent']:,.0f}",
                    f"{s['planned_rate']:,.1f}",
                    f"{s['achieved_rate']:,.1f}",
                    f"{s['achieved_vs_plan']:.4f}",
                    "yes" if s["within_1pct"] else "**no**",
                ]
                for s in stages["stages"]
            ],
        )
        table(
            "Latency of the staged run (ms; from the due time, and service time)",
            ["measure", "p50", "p90", "p99", "p99.9", "max", "dropped"],
            [
                [measure]
                + [stages[f"{measure}_{p}_ms"] for p in PERCENTILES]
                + [f"{stages['dropped']:,.0f}"]
                for measure in ("latency", "service")
            ],
        )
    flat = [row for row in rows if row.get("rate") == FLAT_OUT_RATE]
    if flat:
        body = []
        for row in flat:
            ratio = next(
                (v for k, v in row.items() if k.startswith("cpu_vs_") and "worker" in k), None
            )
            speed = next((v for k, v in row.items() if k.startswith("events_per_s_vs_")), None)
            body.append(
                [
                    row["client"],
                    row["pinning"],
                    f"{row['achieved_per_s']:,.0f}",
                    f"{row['cpu_us_per_event']:.1f}",
                    f"{row['cpu_vs_fastest_bare']:.2f}x" if "cpu_vs_fastest_bare" in row else "",
                    f"{speed:.2f}x" if speed is not None else "",
                    f"{ratio:.2f}x" if ratio is not None else "",
                    f"{row['dropped']:,.0f}",
                ]
            )
        table(
            f"Flat out (`--rate {FLAT_OUT_RATE}`)",
            [
                "run",
                "pinning",
                "events/s",
                "CPU µs/event",
                "CPU vs fastest bare",
                "events/s vs 1 worker",
                "CPU vs 1 worker",
                "dropped",
            ],
            body,
        )
    if report := kind.get("report"):
        table(
            f"Report of {report['events']:,.0f} events (bench/report.py)",
            [
                "write .html (s)",
                "write .json (s)",
                ".html bytes",
                ".json bytes",
                "write peak (MB)",
                "in memory (MB)",
                "peak RSS (MB)",
                "under 2 s",
            ],
            [
                [
                    report["write_html_s"],
                    report["write_json_s"],
                    f"{report['html_bytes']:,.0f}",
                    f"{report['json_bytes']:,.0f}",
                    max(report["write_html_peak_mb"], report["write_json_peak_mb"]),
                    report["report_in_memory_mb"],
                    report["max_rss_mb"],
                    "yes" if report["write_under_2s"] else "**no**",
                ]
            ],
        )
    return "\n".join(lines)


def emit(figures: dict[str, Any], path: Path | None) -> None:
    text = json.dumps(figures, indent=2)
    print(text)
    if path is not None:
        path.write_text(text + "\n")


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--client":
        name, url, requests, *paced = sys.argv[2:]
        if paced:
            figures = run_client(name, url, int(requests), float(paced[0]), float(paced[1]))
        else:
            figures = run_client(name, url, int(requests))
        print(json.dumps(figures))
        return
    if len(sys.argv) > 1 and sys.argv[1] == "--sink":
        counting_sink(int(sys.argv[2]))
        return
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rates", default="500,1000,2000")
    parser.add_argument(
        "--duration",
        type=float,
        default=5.0,
        help="seconds of each paced loop, `propagate --rate` and flat-out run (default 5)",
    )
    parser.add_argument(
        "--requests", type=int, default=REQUESTS, help=f"per client loop (default {REQUESTS})"
    )
    parser.add_argument(
        "--stages",
        default=DEFAULT_STAGES,
        metavar="PLAN",
        help=f"`propagate --stages PLAN` (default {DEFAULT_STAGES}); '' to leave it out",
    )
    parser.add_argument(
        "--workers",
        default="1,2",
        metavar="N,M",
        help="flat out with `--workers N`, each unpinned (default 1,2); '' to leave it out",
    )
    parser.add_argument(
        "--report-events",
        type=int,
        default=1_000_000,
        metavar="N",
        help="bench/report.py --events N (default 1,000,000); 0 to leave it out",
    )
    parser.add_argument(
        "--report-seconds",
        type=float,
        default=500.0,
        metavar="S",
        help="bench/report.py --seconds S (default 500)",
    )
    parser.add_argument("--json", type=Path, metavar="PATH", help="also write the JSON here")
    parser.add_argument("--client-cpu", type=int, default=0)
    parser.add_argument("--sink-cpu", type=int, default=1)
    parser.add_argument("--repeat", type=int, default=1, help="rounds; each row reports its median")
    parser.add_argument(
        "--before",
        metavar="REV",
        help="measure only `propagate`, as it is here against this git revision (a worktree)",
    )
    parser.add_argument(
        "--together",
        action="store_true",
        help="with --before: run both versions at the same moment, sharing the client core, "
        "so that both see the same machine",
    )
    args = parser.parse_args()
    if args.together and not args.before:
        parser.error("--together compares with --before REV")
    if args.before:
        emit(compare(args), args.json)
        return
    port = free_port()
    url = f"http://127.0.0.1:{port}/event"
    sink = subprocess.Popen(
        pinned(
            args.sink_cpu,
            [sys.executable, str(ROOT / "bench" / "baselines.py"), "bare", "--port", str(port)],
        )
    )
    rounds: list[list[dict[str, Any]]] = []
    try:
        wait_until_listening(port, sink)
        for n in range(args.repeat):
            print(f"round {n + 1} of {args.repeat}", file=sys.stderr)
            rounds.append(one_round(url, args))
    finally:
        sink.terminate()
        sink.wait(10)
    rows = [median_row([r[i] for r in rounds]) for i in range(len(rounds[0]))]
    emit({"rows": rows}, args.json)
    print("\n" + markdown(rows, args.repeat), file=sys.stderr)
    if shutil.which("taskset") is None:
        print("note: taskset not found; nothing was pinned", file=sys.stderr)


if __name__ == "__main__":
    main()
