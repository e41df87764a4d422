"""Sending benchmark: client loops and `eventctl propagate --rate` against a fast local sink.

    python bench/propagate.py                    # rates 500, 1000, 2000/s for 5 s each

The sink is bench/baselines.py's bare ASGI app, pinned to CPU 1; every client runs pinned to
CPU 0. In one run it measures, for 2,000 requests each: a bare asyncio-streams HTTP/1.1 loop
(the fastest client, one keep-alive connection), httpx.AsyncClient with 8 sequential workers,
the same over httpx-aiohttp's transport, and the synchronous httpx.Client; then
`eventctl propagate --rate R` for each rate: the achieved rate, the lateness of each send
against its due time, and CPU per event (the process's CPU, less its start-up, over events).
Traffic stays on 127.0.0.1; every loop is bounded.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
from httpx_aiohttp import AiohttpTransport

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))

from ingest import free_port, pinned, wait_until_listening  # noqa: E402

BODY = b'{"event_type":"order.created","event_payload":"{\\"order_id\\": 5531}"}'
REQUESTS = 2000


def client_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


async def raw_loop(url: str, n: int) -> None:
    host, port = url.split("//")[1].split("/", maxsplit=1)[0].split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    request = (
        b"POST /event HTTP/1.1\r\nHost: %s\r\nContent-Type: application/json\r\n"
        b"Content-Length: %d\r\n\r\n" % (host.encode(), len(BODY))
    ) + BODY
    for _ in range(n):
        writer.write(request)
        head = await reader.readuntil(b"\r\n\r\n")
        length = int(re.search(rb"content-length: (\d+)", head.lower()).group(1))  # type: ignore[union-attr]
        await reader.readexactly(length)
    writer.close()


async def httpx_workers(url: str, n: int, *, aiohttp: bool) -> None:
    transport = AiohttpTransport() if aiohttp else None
    headers = {"Content-Type": "application/json"}
    async with httpx.AsyncClient(transport=transport) as client:

        async def worker(count: int) -> None:
            for _ in range(count):
                (await client.post(url, content=BODY, headers=headers)).raise_for_status()

        await asyncio.gather(*(worker(n // 8) for _ in range(8)))


def httpx_sync(url: str, n: int) -> None:
    with httpx.Client() as client:
        for _ in range(n):
            client.post(url, content=BODY, headers={"Content-Type": "application/json"})


def run_client(name: str, url: str) -> dict[str, float]:
    started, cpu = time.perf_counter(), client_cpu()
    if name == "bare asyncio loop":
        asyncio.run(raw_loop(url, REQUESTS))
    elif name == "httpx.AsyncClient, 8 workers":
        asyncio.run(httpx_workers(url, REQUESTS, aiohttp=False))
    elif name == "httpx over aiohttp, 8 workers":
        asyncio.run(httpx_workers(url, REQUESTS, aiohttp=True))
    else:
        httpx_sync(url, REQUESTS)
    elapsed, used = time.perf_counter() - started, client_cpu() - cpu
    return {"requests_per_s": REQUESTS / elapsed, "cpu_us_per_request": used / REQUESTS * 1e6}


def children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def eventctl(args: list[str], cpu: int, workdir: Path) -> tuple[str, float]:
    env_spool = {"EVENTCTL_SPOOL_PATH": str(workdir / f"spool-{time.monotonic_ns()}.db")}
    before = children_cpu()
    result = subprocess.run(
        pinned(cpu, [sys.executable, "-m", "eventctl", *args]),
        capture_output=True,
        text=True,
        cwd=ROOT,
        env={**_environ(), **env_spool},
        check=False,
    )
    return result.stderr, children_cpu() - before


def _environ() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("EVENTCTL_")}


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--client":
        print(json.dumps(run_client(sys.argv[2], sys.argv[3])))
        return
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rates", default="500,1000,2000")
    parser.add_argument("--duration", type=float, default=5.0)
    parser.add_argument("--client-cpu", type=int, default=0)
    parser.add_argument("--sink-cpu", type=int, default=1)
    args = parser.parse_args()
    port = free_port()
    url = f"http://127.0.0.1:{port}/event"
    sink = subprocess.Popen(
        pinned(
            args.sink_cpu,
            [sys.executable, str(ROOT / "bench" / "baselines.py"), "bare", "--port", str(port)],
        )
    )
    rows: list[dict[str, Any]] = []
    try:
        wait_until_listening(port, sink)  # type: ignore[arg-type]
        for name in (
            "bare asyncio loop",
            "httpx.AsyncClient, 8 workers",
            "httpx over aiohttp, 8 workers",
            "httpx.Client, sequential",
        ):
            out = subprocess.run(
                pinned(args.client_cpu, [sys.executable, __file__, "--client", name, url]),
                capture_output=True,
                text=True,
                check=True,
            ).stdout
            rows.append({"client": name, **json.loads(out)})
            print(
                f"{name:32} {rows[-1]['requests_per_s']:8.0f} req/s "
                f"{rows[-1]['cpu_us_per_request']:8.1f} us CPU/request",
                file=sys.stderr,
            )
        with tempfile.TemporaryDirectory() as tmp:
            workdir = Path(tmp)
            _, startup = eventctl(
                ["propagate", "--drain", "--quiet", "--endpoint", url], args.client_cpu, workdir
            )
            for rate in (float(r) for r in args.rates.split(",")):
                stderr, used = eventctl(
                    [
                        "propagate",
                        "--rate",
                        f"{rate:g}",
                        "--duration",
                        f"{args.duration:g}",
                        "--quiet",
                        "--endpoint",
                        url,
                        "--events-file",
                        str(ROOT / "events" / "events.json"),
                    ],
                    args.client_cpu,
                    workdir,
                )
                sent = int(re.search(r"propagate: (\d+) sent", stderr).group(1))  # type: ignore[union-attr]
                achieved = float(re.search(r"achieved ([\d.]+)/s", stderr).group(1))  # type: ignore[union-attr]
                lateness = re.search(r"lateness p99 ([\d.]+|-) ms", stderr).group(1)  # type: ignore[union-attr]
                delivered = int(re.search(r"(\d+) delivered", stderr).group(1))  # type: ignore[union-attr]
                row = {
                    "client": f"eventctl propagate --rate {rate:g}",
                    "rate": rate,
                    "sent": sent,
                    "delivered": delivered,
                    "achieved_per_s": achieved,
                    "achieved_vs_rate": achieved / rate,
                    "lateness_p99_ms": lateness,
                    "cpu_us_per_event": (used - startup) / max(sent, 1) * 1e6,
                }
                rows.append(row)
                print(
                    f"{row['client']:32} achieved {achieved:8.1f}/s "
                    f"({achieved / rate:.3f} of R), lateness p99 {lateness} ms, "
                    f"{row['cpu_us_per_event']:.1f} us CPU/event",
                    file=sys.stderr,
                )
    finally:
        sink.terminate()
        sink.wait(10)
    print(json.dumps({"startup_cpu_s": round(startup, 3), "rows": rows}, indent=2))
    if shutil.which("taskset") is None:
        print("note: taskset not found; nothing was pinned", file=sys.stderr)


if __name__ == "__main__":
    main()
