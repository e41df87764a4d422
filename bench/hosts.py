"""Throughput of `serve` hosts on one PostgreSQL, one host against two, in network namespaces.

    sudo .venv/bin/python bench/hosts.py [--seconds 5] [--repeat 3] [--json PATH]

The hosts of tests/netns.py: db (its own PostgreSQL), a and b (`eventctl serve`, one worker
each), p (`eventctl propagate` flat out: --rate 50000 for --seconds, max-in-flight 100).
Each round sends to a alone, then to a and b as two endpoints, and reports the events/s
delivered in all and by each host, with PostgreSQL's commits per second. Every process
shares this machine's cores (and PostgreSQL its disk), so on a small machine the second
host shows how far the servers, not the database, were the limit; see docs/deployment.md.
Needs root (ip netns); traffic stays inside the namespaces.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("EVENTCTL_TEST_SPOOL", "")

from tests.netns import Host, Network, netns_unavailable  # noqa: E402

EVENTS = str(ROOT / "events" / "events.json")


def commits(host: Host, url: str) -> int:
    """PostgreSQL's committed transactions so far (pg_stat_database)."""
    import peewee  # noqa: PLC0415
    from playhouse.db_url import connect  # noqa: PLC0415

    def read() -> int:
        database: peewee.Database = connect(url)
        try:
            row = database.execute_sql(  # type: ignore[no-untyped-call]
                "SELECT xact_commit FROM pg_stat_database WHERE datname = current_database()"
            ).fetchone()
            return int(row[0])
        finally:
            database.close()

    return host.call(read)


def flat_out(p: Host, endpoints: list[str], seconds: float, spool: Path) -> dict[str, Any]:
    """`propagate` flat out to `endpoints`: events/s delivered in all and by endpoint."""
    args = [sys.executable, "-m", "eventctl", "propagate", "--rate", "50000"]
    args += ["--duration", f"{seconds:g}s", "--quiet", "--events-file", EVENTS]
    for url in endpoints:
        args += ["--endpoint", url]
    env = {k: v for k, v in os.environ.items() if not k.startswith("EVENTCTL_")}
    env["EVENTCTL_SPOOL_PATH"] = str(spool)
    done = p.run(args, env=env, timeout=seconds + 120, cwd=str(spool.parent))
    if done.returncode != 0:
        raise SystemExit(f"bench: propagate failed:\n{done.stderr}")
    elapsed = float(re.search(r"in ([\d.]+)s", done.stderr).group(1))  # type: ignore[union-attr]
    delivered = int(re.search(r"(\d+) delivered", done.stderr).group(1))  # type: ignore[union-attr]
    per_host = {
        url: int(n) / elapsed
        for url, n in re.findall(
            r"^  (\S+): \w+, \d+ attempts?, (\d+) delivered", done.stderr, re.M
        )
    }
    return {
        "delivered_per_s": delivered / elapsed,
        "per_host_per_s": per_host or {endpoints[0]: delivered / elapsed},
        "elapsed_s": elapsed,
    }


def one_round(seconds: float, tmp: Path, k: int) -> dict[str, Any]:
    with Network(logs=tmp) as net:
        db = net.host("db", front=False, back=True)
        a, b, p = net.host("a", back=True), net.host("b", back=True), net.host("p")
        url = net.postgres(db)
        hosts = [h.serve(h.name, url) for h in (a, b)]
        urls = [h.url + "/event" for h in hosts]
        found: dict[str, Any] = {}
        for n in (1, 2):
            before = commits(a, url)
            row = flat_out(p, urls[:n], seconds, tmp / f"spool-{k}-{n}.db")
            row["commits_per_s"] = (commits(a, url) - before) / row["elapsed_s"]
            found[f"{n}_host{'s' * (n > 1)}"] = row
            print(
                f"round {k + 1}, {n} host(s): {row['delivered_per_s']:,.0f} events/s, "
                f"{row['commits_per_s']:,.0f} commits/s, by host "
                + ", ".join(f"{v:,.0f}" for v in row["per_host_per_s"].values()),
                file=sys.stderr,
            )
        for host in hosts:
            host.stop()
    return found


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    if (reason := netns_unavailable()) is not None:
        raise SystemExit(f"bench: no network namespaces here: {reason}")
    import tempfile  # noqa: PLC0415

    rounds = []
    with tempfile.TemporaryDirectory(prefix="eventctl-bench-hosts-") as tmp:
        for k in range(args.repeat):
            rounds.append(one_round(args.seconds, Path(tmp), k))
    result: dict[str, Any] = {"cpus": os.cpu_count(), "seconds": args.seconds, "rounds": rounds}
    for key in ("1_host", "2_hosts"):
        result[f"{key}_median_per_s"] = statistics.median(r[key]["delivered_per_s"] for r in rounds)
    result["two_vs_one"] = result["2_hosts_median_per_s"] / result["1_host_median_per_s"]
    text = json.dumps(result, indent=2)
    print(text)
    if args.json:
        args.json.write_text(text + "\n")


if __name__ == "__main__":
    main()
