"""The seed document's run commands work as written: `python -m event_consumer.main` and
`python -m event_propagator.main`, reading config/*.yaml from the working directory."""

from __future__ import annotations

import re
import shutil
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import httpx

from tests.helpers import ROOT, cli_env, free_port


def test_both_seed_commands_run_the_services_from_the_seed_config_files(tmp_path: Path) -> None:
    port = free_port()
    (tmp_path / "config").mkdir()
    (tmp_path / "config" / "consumer_config.yaml").write_text(
        f'port: {port}\ndatabase_url: "sqlite:///events.db"\n'
    )
    (tmp_path / "config" / "propagator_config.yaml").write_text(
        "interval_seconds: 0.05\n"
        f'api_endpoint: "http://localhost:{port}/event"\n'
        'events_file: "events/events.json"\n'
    )
    (tmp_path / "events").mkdir()
    shutil.copy(ROOT / "events" / "events.json", tmp_path / "events" / "events.json")
    consumer = subprocess.Popen(
        [sys.executable, "-m", "event_consumer.main"],
        cwd=tmp_path,
        env=cli_env(),
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 15
        while True:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                assert consumer.poll() is None, consumer.communicate()
                assert time.monotonic() < deadline, "event_consumer.main did not start"
                time.sleep(0.05)
        sent = subprocess.run(
            [sys.executable, "-m", "event_propagator.main", "--count", "3", "--quiet"],
            cwd=tmp_path,
            env=cli_env(),
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert sent.returncode == 0, sent.stderr
    finally:
        consumer.terminate()
        _, err = consumer.communicate(timeout=20)
    assert consumer.returncode == 0, err
    assert f"listening on http://127.0.0.1:{port}" in err
    with sqlite3.connect(tmp_path / "events.db") as db:
        (count,) = db.execute("SELECT count(*) FROM events").fetchone()
    db.close()
    assert count == 3


def test_the_seed_commands_take_the_same_flags_as_eventctl(tmp_path: Path) -> None:
    for module, command in (("event_consumer", "serve"), ("event_propagator", "propagate")):
        seed = subprocess.run(
            [sys.executable, "-m", f"{module}.main", "--help"],
            cwd=tmp_path,
            env=cli_env(COLUMNS="100"),
            capture_output=True,
            text=True,
            check=True,
        )
        eventctl = subprocess.run(
            [sys.executable, "-m", "eventctl", command, "--help"],
            cwd=tmp_path,
            env=cli_env(COLUMNS="100"),
            capture_output=True,
            text=True,
            check=True,
        )
        assert f"Usage: python -m {module}.main [OPTIONS]" in seed.stdout
        flags = set(re.findall(r"--[a-z][a-z-]+", eventctl.stdout))
        assert len(flags) > 5
        assert set(re.findall(r"--[a-z][a-z-]+", seed.stdout)) == flags
        wrong = subprocess.run(
            [sys.executable, "-m", f"{module}.main", "--no-such-flag"],
            cwd=tmp_path,
            env=cli_env(),
            capture_output=True,
            text=True,
            check=False,
        )
        assert wrong.returncode == 2
        assert "No such option" in wrong.stderr
