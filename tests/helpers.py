"""Helpers the tests share: real servers, real subprocesses, free ports, databases."""

from __future__ import annotations

import contextlib
import io
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import unicodedata
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from pathlib import Path

import httpx
import pytest
from starlette.applications import Starlette

from eventctl.store import Store

POSTGRES_ENV = "EVENTCTL_TEST_POSTGRES_URL"


ROOT = Path(__file__).resolve().parent.parent


SPOOL_ENV = "EVENTCTL_TEST_SPOOL"


def postgres_url() -> str:
    """The test PostgreSQL URL; skip without one, except under CI where it must be there."""
    url = os.environ.get(POSTGRES_ENV)
    if not url:
        if os.environ.get("CI") == "true":
            pytest.fail(f"CI=true but {POSTGRES_ENV} is not set")
        pytest.skip(f"set {POSTGRES_ENV}=postgresql://... to run PostgreSQL tests")
    return url


def drop_events_table(url: str) -> None:
    """Drop the events table and the forwarding tables beside it."""
    store = Store.open(url, create=True)
    try:
        store.database.drop_tables(list(store.models))
    finally:
        store.close()


@asynccontextmanager
async def in_process(app: Starlette) -> AsyncIterator[httpx.AsyncClient]:
    """Run the app's lifespan and talk to it through httpx's ASGI transport."""
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1") as c:
            yield c


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def cli_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("EVENTCTL_")}
    env["EVENTCTL_SPOOL_PATH"] = os.environ[SPOOL_ENV]
    env.update(extra)
    return env


def run_cli(
    *args: str, cwd: Path | None = None, env: dict[str, str] | None = None, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    """Run `python -m eventctl ARGS` as a real subprocess."""
    return subprocess.run(
        [sys.executable, "-m", "eventctl", *args],
        capture_output=True,
        text=True,
        cwd=cwd or ROOT,
        env=env or cli_env(),
        timeout=timeout,
        check=False,
    )


def invoke(
    *args: str, cwd: Path | None = None, env: dict[str, str] | None = None, stdin: str = ""
) -> subprocess.CompletedProcess[str]:
    """Run `eventctl ARGS` in this process, through Typer's CliRunner, with an Environment of
    its own (streams, variables): for commands that only read and for usage errors. Answers
    like `run_cli`; an exception that escaped the command fails the test."""
    from typer.testing import CliRunner

    from eventctl.cli import app
    from eventctl.cli.environment import Environment

    environ = env or cli_env()
    streams = Environment(
        stdin=io.StringIO(stdin), stdout=io.StringIO(), stderr=io.StringIO(), environ=environ
    )
    with contextlib.chdir(cwd or ROOT):
        result = CliRunner().invoke(app, list(args), obj=streams, prog_name="eventctl")
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception
    stdout = streams.stdout.getvalue() + result.stdout  # type: ignore[attr-defined]
    stderr = streams.stderr.getvalue() + result.stderr  # type: ignore[attr-defined]
    return subprocess.CompletedProcess(["eventctl", *args], result.exit_code, stdout, stderr)


def send_once(
    url: str,
    *extra: str,
    event_type: str = "t",
    payload: str = "p",
    env: dict[str, str] | None = None,
) -> subprocess.CompletedProcess[str]:
    """`eventctl send-once` of one given event to the consumer at `url`."""
    return run_cli(
        "send-once",
        "--endpoint",
        url + "/event",
        "--type",
        event_type,
        "--payload",
        payload,
        *extra,
        env=env,
    )


def propagate_quickly(
    url: str, count: int, *extra: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """`eventctl propagate` of `count` events, 10 ms apart, to the consumer at `url`."""
    return run_cli(
        "propagate",
        "--endpoint",
        url + "/event",
        "--interval",
        "0.01",
        "--count",
        str(count),
        *extra,
        env=env,
    )


def spawn(*args: str, cwd: Path | None = None) -> subprocess.Popen[str]:
    """Start `python -m eventctl ARGS` as a real subprocess with piped output."""
    return subprocess.Popen(
        [sys.executable, "-m", "eventctl", *args],
        cwd=cwd or ROOT,
        env=cli_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


class Server:
    """A real `eventctl serve` subprocess on a free loopback port."""

    def __init__(self, database_url: str, cwd: Path, *extra: str, port: int | None = None) -> None:
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.database_url = database_url
        self.process = spawn(
            "serve", "--port", str(self.port), "--database-url", database_url, *extra, cwd=cwd
        )
        self._wait_ready()

    def _wait_ready(self, timeout: float = 15) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise AssertionError(f"serve exited early: {self.process.communicate()}")
            try:
                if httpx.get(self.url + "/healthz", timeout=1).status_code == 200:
                    return
            except httpx.TransportError:
                time.sleep(0.05)
        raise AssertionError("serve did not become healthy in time")

    def stop(self, timeout: float = 20) -> tuple[int, str]:
        if self.process.poll() is None:
            self.process.terminate()
        _, err = self.process.communicate(timeout=timeout)
        return self.process.returncode, err


# Terminal safety: text that a terminal would act on, and the checks for it

UNSAFE_CATEGORIES = frozenset({"Cc", "Cf", "Zl", "Zp", "Cs"})

# ESC and CSI sequences (C0 and C1), a bidi override, a zero-width space, the Unicode line and
# paragraph separators, NEL, a tab, a newline, a carriage return and a bell
HOSTILE = "a\x1b[31mred\x9b2J\u202egnp.exe\u200bx\u2028y\u2029z\x85w\tt\nn\rr\x07b"
HOSTILE_SHOWN = "a\\x1b[31mred\\x9b2J\\u202egnp.exe\\u200bx\\u2028y\\u2029z\\x85w\\tt\\nn\\rr\\x07b"


def unsafe_characters(text: str) -> list[str]:
    """The characters of `text` a terminal could act on, apart from the newlines ending lines."""
    return [ch for ch in text if ch != "\n" and unicodedata.category(ch) in UNSAFE_CATEGORIES]


def raw_in_json(text: str) -> list[str]:
    """The characters JSON output must escape but `ensure_ascii=False` leaves raw."""
    return [ch for ch in text if "\x80" <= ch <= "\x9f" or ch in "\u2028\u2029"]


class Proc:
    """A real eventctl subprocess whose output goes to files (so pipes never fill up),
    started by `popen` (a network namespace's, tests/netns.py, to run it on a host)."""

    def __init__(
        self,
        tmp_path: Path,
        name: str,
        *args: str,
        cwd: Path | None = None,
        env: dict[str, str] | None = None,
        popen: Callable[..., subprocess.Popen[str]] = subprocess.Popen,
    ) -> None:
        self.out_path = tmp_path / f"{name}.out"
        self.err_path = tmp_path / f"{name}.err"
        # the child writes to its own copies of the files: ours close once it has them
        with self.out_path.open("w") as out, self.err_path.open("w") as err:
            self.process = popen(
                [sys.executable, "-m", "eventctl", *args],
                cwd=cwd or tmp_path,
                env=env or cli_env(),
                stdout=out,
                stderr=err,
                text=True,
            )

    def wait(self, timeout: float) -> int:
        return self.process.wait(timeout)

    def kill9(self) -> None:
        self.process.send_signal(signal.SIGKILL)
        self.wait(10)

    @property
    def stderr(self) -> str:
        return self.err_path.read_text()


CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


@contextlib.contextmanager
def chromium_page(width: int, height: int) -> Iterator[object]:
    """A page of a headless Debian Chromium, driven by playwright; skipped without one,
    a failure under CI=true."""
    path = shutil.which("chromium") or shutil.which("chromium-browser")
    if path is None:
        if os.environ.get("CI") == "true":
            pytest.fail("CI=true but there is no chromium (apt-get install chromium)")
        pytest.skip("no chromium on this machine (apt-get install chromium)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=path, args=CHROMIUM_ARGS)
        try:
            yield browser.new_page(viewport={"width": width, "height": height})
        finally:
            browser.close()
