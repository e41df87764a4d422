"""Sending benchmark: client loops and `eventctl propagate --rate` against a fast local sink.

    python bench/propagate.py                    # rates 500, 1000, 2000/s for 5 s each
    python bench/propagate.py --repeat 3         # three rounds; each row its median
    python bench/propagate.py --before REV --together --repeat 10   # a change, A/B

The sink is bench/baselines.py's bare ASGI app, pinned to CPU 1; every client runs pinned to
CPU 0, on uvloop as `eventctl propagate` does. In one run it measures, for 4,000 requests
each: bare asyncio-streams HTTP/1.1 loops (one keep-alive connection; and 8 connections),
httpx.AsyncClient with 8 sequential workers, the same over httpx-aiohttp's transport, the
httpx API over eventctl's LeanTransport, and the synchronous httpx.Client. Then, for each
rate R, the bare loop paced at R, and `eventctl propagate --rate R`: the achieved rate, the
lateness of each send against its due time, and the CPU per event (measured by the propagator
over its sending loop, start-up excluded). Last, `propagate` flat out (a rate far above what
one core can send) gives its CPU per event at full load, the figure to set against the bare
loops, which also run flat out. Traffic stays on 127.0.0.1; every loop is bounded.

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
from collections.abc import Iterator
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
REQUESTS = 4000
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


CLIENTS = {
    "bare asyncio loop": lambda url: uvloop.run(raw_loop(url, REQUESTS)),
    "bare asyncio, 8 connections": lambda url: uvloop.run(raw_connections(url, REQUESTS)),
    "httpx.AsyncClient, 8 workers": lambda url: uvloop.run(
        httpx_workers(url, REQUESTS, aiohttp=False)
    ),
    "httpx over aiohttp, 8 workers": lambda url: uvloop.run(
        httpx_workers(url, REQUESTS, aiohttp=True)
    ),
    "httpx over LeanTransport, 8 workers": lambda url: uvloop.run(lean_workers(url, REQUESTS)),
    "httpx.Client, sequential": lambda url: httpx_sync(url, REQUESTS),
}


def run_client(name: str, url: str, rate: float | None = None) -> dict[str, float]:
    n = REQUESTS if rate is None else int(rate * 5)
    started, cpu = time.perf_counter(), client_cpu()
    if rate is None:
        CLIENTS[name](url)
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


def client_row(name: str, url: str, cpu: int, rate: float | None = None) -> dict[str, Any]:
    command = [sys.executable, __file__, "--client", name, url]
    if rate is not None:
        command.append(f"{rate:g}")
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
    print(
        f"{row['client']:40} achieved {row['achieved_per_s']:8.1f}/s "
        f"({row['achieved_vs_rate']:.4f} of R), lateness p99 {row['lateness_p99_ms']} ms, "
        f"{row['cpu_us_per_event']:.1f} us CPU/event",
        file=sys.stderr,
    )
    return row


def one_round(url: str, args: argparse.Namespace) -> list[dict[str, Any]]:
    rows = [client_row(name, url, args.client_cpu) for name in CLIENTS]
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        for rate in (float(r) for r in args.rates.split(",")):
            paced = client_row("bare asyncio loop", url, args.client_cpu, rate)
            rows.append({**paced, "client": f"bare asyncio loop paced at {rate:g}/s"})
            rows.append(propagate_row(url, rate, args.duration, args.client_cpu, workdir))
        rows.append(propagate_row(url, FLAT_OUT_RATE, args.duration, args.client_cpu, workdir))
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
    """One row of every round, each number its median over the rounds."""
    row = dict(samples[0])
    for key, value in row.items():
        if isinstance(value, float) and key != "rate":
            row[key] = statistics.median(s[key] for s in samples)
    row["rounds"] = len(samples)
    return row


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--client":
        rate = float(sys.argv[4]) if len(sys.argv) > 4 else None
        print(json.dumps(run_client(sys.argv[2], sys.argv[3], rate)))
        return
    if len(sys.argv) > 1 and sys.argv[1] == "--sink":
        counting_sink(int(sys.argv[2]))
        return
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rates", default="500,1000,2000")
    parser.add_argument("--duration", type=float, default=5.0)
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
        print(json.dumps(compare(args), indent=2))
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
    print(json.dumps({"rows": rows}, indent=2))
    if shutil.which("taskset") is None:
        print("note: taskset not found; nothing was pinned", file=sys.stderr)


if __name__ == "__main__":
    main()
