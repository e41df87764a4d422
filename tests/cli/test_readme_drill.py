"""README's "Prove that nothing is lost", typed as written in a fresh directory.

Real processes: `eventctl serve`, `eventctl propagate --rate 200 --count 2000`, `kill -9` of
one of them, the same command again, then `eventctl verify`, which must print what the
README shows. The only difference from typing it: a free port instead of 8000 (through
EVENTCTL_PORT and EVENTCTL_API_ENDPOINT). The fresh directory has no events file, so the
propagator sends eventctl's sample events; the spool and the database are the defaults, in
the fresh directory. About 12 s per drill.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from tests.helpers import ROOT, Proc, free_port

README_COMMAND = "eventctl propagate --rate 200 --count 2000"
NUMBER = re.compile(r"\d+(\.\d+)?")


def readme_ok_line() -> str:
    section = (ROOT / "README.md").read_text().split("### Prove that nothing is lost", 1)[1]
    assert README_COMMAND in section
    return next(line for line in section.splitlines() if line.startswith("OK: "))


def type_in(cwd: Path, env: dict[str, str], name: str, *args: str) -> Proc:
    """One command typed in `cwd`: `python -m eventctl ARGS`, its output in files beside it."""
    return Proc(cwd.parent, name, *args, cwd=cwd, env=env)


def serve(cwd: Path, env: dict[str, str], name: str) -> Proc:
    typed = type_in(cwd, env, name, "serve")
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        try:
            httpx.get(f"http://127.0.0.1:{env['EVENTCTL_PORT']}/healthz", timeout=1)
            return typed
        except httpx.TransportError:
            assert typed.process.poll() is None, typed.stderr
            time.sleep(0.05)
    raise AssertionError(f"{name} did not start: {typed.stderr}")


def stored(cwd: Path) -> int:
    import sqlite3

    path = cwd / "events.db"
    if not path.exists():
        return 0
    with sqlite3.connect(path, timeout=5) as db:
        (n,) = db.execute("SELECT count(*) FROM events").fetchone()
    db.close()
    return int(n)


def wait_until_stored(cwd: Path, n: int, sender: Proc, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while stored(cwd) < n:
        assert time.monotonic() < deadline, "no progress"
        assert sender.process.poll() is None, sender.stderr
        time.sleep(0.05)


@pytest.mark.drill
@pytest.mark.parametrize("victim", ["propagate", "serve"])
def test_the_readme_drill_prints_what_the_readme_shows(tmp_path: Path, victim: str) -> None:
    cwd = tmp_path / "fresh"
    cwd.mkdir()
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("EVENTCTL_")}
    env.update(
        EVENTCTL_PORT=str(port),
        EVENTCTL_API_ENDPOINT=f"http://localhost:{port}/event",
    )
    propagate = README_COMMAND.split()[1:]
    consumer = serve(cwd, env, "serve-1")
    sender = type_in(cwd, env, "propagate-1", *propagate)
    wait_until_stored(cwd, 800, sender)
    if victim == "propagate":
        sender.kill9()
        sender = type_in(cwd, env, "propagate-2", *propagate)
    else:
        consumer.kill9()
        time.sleep(1.0)
        consumer = serve(cwd, env, "serve-2")
    assert sender.wait(60) == 0, sender.stderr
    assert "sample events" in sender.stderr
    if victim == "propagate":
        assert "resuming run 1 (" in sender.stderr
    # an event sent by hand is in the database too, and is no problem for the run
    by_hand = subprocess.run(
        [sys.executable, "-m", "eventctl", "send-once"], cwd=cwd, env=env, check=False
    )
    assert by_hand.returncode == 0
    consumer.process.terminate()
    assert consumer.wait(20) == 0

    verified = subprocess.run(
        [sys.executable, "-m", "eventctl", "verify"],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    assert verified.returncode == 0, verified.stdout + verified.stderr
    first, *rest = verified.stdout.splitlines()
    assert first.startswith("OK: 2000 generated, 2000 acknowledged, 2000 stored; lost 0, ")
    assert NUMBER.sub("N", first) == NUMBER.sub("N", readme_ok_line())
    assert rest == [
        "  other: 1 stored since, not from this spool (send-once, curl, other senders); not checked"
    ]
