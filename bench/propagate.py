"""Sending benchmark: client loops and `eventctl propagate --rate` against a fast local sink.

    python bench/propagate.py                    # rates 500, 1000, 2000/s for 5 s each
    python bench/propagate.py --repeat 3         # three rounds; each row its median

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
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import uvloop
from httpx_aiohttp import AiohttpTransport

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))

from ingest import free_port, pinned, wait_until_listening  # noqa: E402

from eventctl.propagator.transport import LeanTransport  # noqa: E402

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

    row = {
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
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rates", default="500,1000,2000")
    parser.add_argument("--duration", type=float, default=5.0)
    parser.add_argument("--client-cpu", type=int, default=0)
    parser.add_argument("--sink-cpu", type=int, default=1)
    parser.add_argument("--repeat", type=int, default=1, help="rounds; each row reports its median")
    args = parser.parse_args()
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
        wait_until_listening(port, sink)  # type: ignore[arg-type]
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
