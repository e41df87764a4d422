"""Hosts of their own on this one machine: Linux network namespaces joined by bridges.

`Network` builds, with iproute2, a "front" bridge (clients and consumer hosts) and a "back"
bridge (consumer hosts and the database), each in a namespace of its own, so the machine's
own interfaces, addresses and routes are never touched. A host is a namespace with loopback
up and one veth per network it is on, addressed 10.231.<network>.<n>/24 (front is 1, back is
2; a host has the same n on both). `Network.postgres` runs a PostgreSQL server of its own on a
host. Everything is removed when the context ends, whatever ended it.

    with Network(logs=tmp_path) as net:
        db = net.host("db", front=False, back=True)
        a, p = net.host("a", back=True), net.host("p")
        url = net.postgres(db)
        consumer = a.serve("a", url)
        p.eventctl("send", "send-once", "--endpoint", consumer.url + "/event").wait(30)
        a.link_down("back")
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import itertools
import json
import os
import pwd
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any, NoReturn, Self, TypeVar

import httpx
import pytest

from tests.helpers import Proc

T = TypeVar("T")

NETWORKS = {"front": 1, "back": 2}
SUBNET = "10.231"
FIRST_HOST = 10
POSTGRES_PORT = 5432

# ect<pid>n<sequence>: a Network's prefix, for its namespaces and its temporary directories
PREFIX = re.compile(r"^ect(\d+)n\d+(?:-|$)")
HOST_NAME = re.compile(r"^[a-z][a-z0-9]{0,11}$")
NETNS_DIR = Path("/run/netns")
CLONE_NEWNET = 0x40000000

_sequence = itertools.count()


def ip(*args: str) -> str:
    """`ip ARGS`, its stdout; a failure raises with ip's own message."""
    done = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=30, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"ip {' '.join(args)}: {done.stderr.strip()}")
    return done.stdout


def namespaces() -> list[str]:
    """The names `ip netns list` shows."""
    return [line.split()[0] for line in ip("netns", "list").splitlines() if line.strip()]


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def kill_namespace_processes(name: str, timeout: float = 5) -> list[int]:
    """SIGKILL every process in namespace `name` and wait until they are gone; their pids."""
    pids = [int(p) for p in ip("netns", "pids", name).split() if int(p) != os.getpid()]
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + timeout
    while any(alive(pid) for pid in pids) and time.monotonic() < deadline:
        for pid in pids:
            with contextlib.suppress(ChildProcessError):
                os.waitpid(pid, os.WNOHANG)
        time.sleep(0.02)
    return pids


def sweep_stale() -> None:
    """Remove the namespaces and temporary directories of Networks whose process is dead
    (a run that crashed or was killed -9 before its teardown)."""
    for name in namespaces():
        found = PREFIX.match(name)
        if found and not alive(int(found.group(1))):
            kill_namespace_processes(name)
            ip("netns", "del", name)
    for path in Path(tempfile.gettempdir()).glob("ect*"):
        found = PREFIX.match(path.name)
        if found and path.is_dir() and not alive(int(found.group(1))):
            shutil.rmtree(path, ignore_errors=True)


@functools.cache
def netns_unavailable() -> str | None:
    """Why namespaces cannot be made here, or None when they can."""
    if sys.platform != "linux":
        return "network namespaces are Linux only"
    if os.geteuid() != 0:
        return "making network namespaces needs root"
    if shutil.which("ip") is None:
        return "no `ip` command (apt-get install iproute2)"
    probe = f"ect{os.getpid()}n999999-probe"
    try:
        ip("netns", "add", probe)
    except RuntimeError as error:
        return f"`ip netns add` is refused here: {error}"
    try:
        done = subprocess.run(
            ["ip", "netns", "exec", probe, "true"], capture_output=True, text=True, check=False
        )
        if done.returncode != 0:
            return f"`ip netns exec` is refused here: {done.stderr.strip()}"
    finally:
        ip("netns", "del", probe)
    return None


def _unavailable(reason: str) -> NoReturn:
    if os.environ.get("CI") == "true":
        pytest.fail(f"CI=true but {reason}")
    pytest.skip(reason)


def require_netns() -> None:
    """Skip the test when network namespaces cannot be made here; fail it under CI=true."""
    reason = netns_unavailable()
    if reason is not None:
        _unavailable(reason)


def postgres_bin() -> Path:
    """Debian's newest PostgreSQL bin directory; skip without one (fail under CI=true)."""
    found = sorted(
        Path("/usr/lib/postgresql").glob("*/bin/postgres"),
        key=lambda p: int(p.parent.parent.name) if p.parent.parent.name.isdigit() else 0,
    )
    if not found:
        _unavailable("no /usr/lib/postgresql/*/bin/postgres (apt-get install postgresql)")
    if shutil.which("setpriv") is None:
        _unavailable("no `setpriv` command (apt-get install util-linux)")
    try:
        pwd.getpwnam("postgres")
    except KeyError:
        _unavailable("no `postgres` OS user to run PostgreSQL as")
    return found[-1].parent


def _enter(netns: str) -> None:
    """Move the calling thread (only it) into network namespace `netns`."""
    fd = os.open(NETNS_DIR / netns, os.O_RDONLY)
    try:
        if ctypes.CDLL(None, use_errno=True).setns(fd, CLONE_NEWNET) != 0:
            errno = ctypes.get_errno()
            raise OSError(errno, os.strerror(errno))
    finally:
        os.close(fd)


class Host:
    """A network namespace with an address on each of its networks."""

    def __init__(self, network: Network, name: str, index: int, networks: Sequence[str]) -> None:
        self.network = network
        self.name = name
        self.netns = f"{network.prefix}-{name}"
        self.addresses = {net: f"{SUBNET}.{NETWORKS[net]}.{index}" for net in networks}

    def __repr__(self) -> str:
        return f"Host({self.name!r}, {self.addresses})"

    def address(self, network: str = "front") -> str:
        if network not in self.addresses:
            raise ValueError(f"{self.name} is not on the {network} network")
        return self.addresses[network]

    def command(self, argv: Sequence[str]) -> list[str]:
        """`argv` as run inside this host."""
        return ["ip", "netns", "exec", self.netns, *argv]

    def popen(self, argv: Sequence[str], **kwargs: Any) -> subprocess.Popen[Any]:
        """Start `argv` inside this host; the Network stops it at the end if it still runs."""
        process = subprocess.Popen(self.command(argv), **kwargs)
        self.network.processes.append((process, signal.SIGTERM, False))
        return process

    def run(
        self, argv: Sequence[str], *, timeout: float = 60, **kwargs: Any
    ) -> subprocess.CompletedProcess[str]:
        """Run `argv` inside this host to its end, output captured as text; never raises on
        the exit status."""
        return subprocess.run(
            self.command(argv),
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
            **kwargs,
        )

    def call(self, function: Callable[[], T], timeout: float = 30) -> T:
        """`function()` on a thread of this process inside this host: its sockets (httpx,
        psycopg2, a Store) are this host's, without starting a process."""
        outcome: list[T] = []
        failure: list[BaseException] = []

        def target() -> None:
            try:
                _enter(self.netns)
                outcome.append(function())
            except BaseException as error:
                failure.append(error)

        thread = threading.Thread(target=target, name=f"netns-{self.name}", daemon=True)
        thread.start()
        thread.join(timeout)
        if thread.is_alive():
            raise TimeoutError(f"{function!r} in {self.name} still running after {timeout:g}s")
        if failure:
            raise failure[0]
        return outcome[0]

    def link_down(self, network: str, *, far_end: bool = False) -> None:
        """Cut this host off `network`. By default its own veth goes down: its route is gone
        and new connections fail at once (ENETUNREACH). With `far_end` the bridge's port
        goes down instead, a pulled cable past the switch: the host keeps its address and
        route, and what it sends is lost (connections hang, or fail when ARP gives up)."""
        self.address(network)
        if far_end:
            ip("-n", self.network.bridge(network), "link", "set", "dev", f"h-{self.name}", "down")
        else:
            ip("-n", self.netns, "link", "set", "dev", network, "down")

    def link_up(self, network: str, timeout: float = 5) -> None:
        """Undo `link_down` (either kind); returns once the host's veth is up again."""
        self.address(network)
        ip("-n", self.network.bridge(network), "link", "set", "dev", f"h-{self.name}", "up")
        ip("-n", self.netns, "link", "set", "dev", network, "up")
        deadline = time.monotonic() + timeout
        while True:
            (link,) = json.loads(ip("-n", self.netns, "-j", "link", "show", "dev", network))
            if link["operstate"] == "UP":
                return
            if time.monotonic() > deadline:
                raise AssertionError(f"{self.name}'s {network} link is {link['operstate']}")
            time.sleep(0.01)

    def eventctl(self, name: str, *args: str, env: dict[str, str] | None = None) -> Proc:
        """`python -m eventctl ARGS` inside this host, output to files named after `name`."""
        logs = self.network.logs
        return Proc(logs, name, *args, cwd=logs, env=env, popen=self.popen)

    def serve(
        self,
        name: str,
        database_url: str,
        *extra: str,
        network: str = "front",
        port: int = 8000,
        env: dict[str, str] | None = None,
    ) -> Consumer:
        """A real `eventctl serve` on this host's `network` address, ready when returned."""
        address = self.address(network)
        proc = self.eventctl(
            name,
            "serve",
            "--host",
            address,
            "--port",
            str(port),
            "--database-url",
            database_url,
            *extra,
            env=env,
        )
        return Consumer(self, proc, f"http://{address}:{port}", database_url)


class Consumer:
    """A real `eventctl serve` inside a host, ready (GET /healthz answered) when built."""

    def __init__(self, host: Host, proc: Proc, url: str, database_url: str) -> None:
        self.host = host
        self.proc = proc
        self.url = url
        self.database_url = database_url
        deadline = time.monotonic() + 20
        while not host.call(self._healthy):
            assert proc.process.poll() is None, f"serve exited: {proc.stderr}"
            assert time.monotonic() < deadline, f"serve did not start: {proc.stderr}"
            time.sleep(0.05)

    def _healthy(self) -> bool:
        try:
            return httpx.get(self.url + "/healthz", timeout=1).status_code == 200
        except httpx.TransportError:
            return False

    def stop(self) -> str:
        """SIGTERM, a clean exit; its stderr."""
        self.proc.process.terminate()
        assert self.proc.wait(20) == 0, self.proc.stderr
        return self.proc.stderr

    def kill9(self) -> None:
        self.proc.kill9()


class Network:
    """The bridges, hosts, processes and PostgreSQL servers of one test, all removed at exit.

    `logs` is where the eventctl processes' output goes (a test's tmp_path outlives the
    Network, for reading after a failure); by default the Network's own temporary directory.
    """

    def __init__(self, logs: Path | None = None) -> None:
        self.prefix = f"ect{os.getpid()}n{next(_sequence)}"
        self.hosts: dict[str, Host] = {}
        self.processes: list[tuple[subprocess.Popen[Any], signal.Signals, bool]] = []
        self.made: list[str] = []
        self.tmp = Path(tempfile.gettempdir()) / self.prefix
        self.logs = logs or self.tmp

    def bridge(self, network: str) -> str:
        """The namespace holding `network`'s bridge."""
        if network not in NETWORKS:
            raise ValueError(f"no network {network!r}: {sorted(NETWORKS)}")
        return f"{self.prefix}-{network}"

    def _add_namespace(self, name: str) -> None:
        ip("netns", "add", name)
        self.made.append(name)
        ip("-n", name, "link", "set", "dev", "lo", "up")

    def __enter__(self) -> Self:
        try:
            sweep_stale()
            self.tmp.mkdir(mode=0o700)
            for network in NETWORKS:
                self._add_namespace(self.bridge(network))
                ip("-n", self.bridge(network), "link", "add", "name", "br", "type", "bridge")
                ip("-n", self.bridge(network), "link", "set", "dev", "br", "up")
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    def host(self, name: str, *, front: bool = True, back: bool = False) -> Host:
        """A new host on the networks asked for (front only by default)."""
        if not HOST_NAME.match(name) or name in NETWORKS:
            raise ValueError(f"host name {name!r}: a-z0-9, 12 at most, not a network's name")
        if name in self.hosts:
            raise ValueError(f"two hosts named {name}")
        if FIRST_HOST + len(self.hosts) > 254:
            raise ValueError("no address left on a /24")
        networks = [net for net, on in (("front", front), ("back", back)) if on]
        host = Host(self, name, FIRST_HOST + len(self.hosts), networks)
        self.hosts[name] = host
        self._add_namespace(host.netns)
        for network in networks:
            port = f"h-{name}"
            ip(
                "link", "add", "name", network, "netns", host.netns,
                "type", "veth", "peer", "name", port, "netns", self.bridge(network),
            )  # fmt: skip
            ip("-n", self.bridge(network), "link", "set", "dev", port, "master", "br", "up")
            ip("-n", host.netns, "addr", "add", f"{host.addresses[network]}/24", "dev", network)
            ip("-n", host.netns, "link", "set", "dev", network, "up")
        return host

    def postgres(self, host: Host, network: str = "back") -> str:
        """A PostgreSQL server of this Network's on `host`, listening on its `network`
        address only, trusting that subnet; its URL. Stopped at exit."""
        bindir = postgres_bin()
        address = host.address(network)
        pg = self.tmp / f"pg-{host.name}"
        pg.mkdir()
        user = pwd.getpwnam("postgres")
        self.tmp.chmod(0o711)
        os.chown(pg, user.pw_uid, user.pw_gid)
        as_postgres = ["setpriv", "--reuid=postgres", "--regid=postgres", "--init-groups", "--"]
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LC_ALL": "C", "HOME": str(pg)}
        data = pg / "data"
        initdb = [str(bindir / "initdb"), "--no-sync", "-D", str(data), "-U", "postgres"]
        made = subprocess.run(
            [*as_postgres, *initdb, "-A", "trust", "-E", "UTF8", "--locale=C"],
            cwd=pg,
            env=env,
            capture_output=True,
            text=True,
            check=False,
            timeout=60,
        )
        assert made.returncode == 0, f"initdb failed: {made.stdout}{made.stderr}"
        (data / "pg_hba.conf").write_text(
            f"local all all trust\nhost all all {SUBNET}.{NETWORKS[network]}.0/24 trust\n"
        )
        log = (pg / "postgres.log").open("w")
        settings = {
            "listen_addresses": address,
            "port": str(POSTGRES_PORT),
            "unix_socket_directories": str(pg),
        }
        options = [f"--{key}={value}" for key, value in settings.items()]
        process = subprocess.Popen(
            host.command([*as_postgres, str(bindir / "postgres"), "-D", str(data), *options]),
            cwd=pg,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        log.close()
        # SIGINT is PostgreSQL's fast shutdown; it is stopped after the processes using it
        self.processes.append((process, signal.SIGINT, True))
        pidfile = data / "postmaster.pid"
        deadline = time.monotonic() + 30
        while not (pidfile.exists() and pidfile.read_text().rstrip().endswith("ready")):
            log_text = (pg / "postgres.log").read_text()
            assert process.poll() is None, f"postgres exited: {log_text}"
            assert time.monotonic() < deadline, f"postgres did not start: {log_text}"
            time.sleep(0.02)
        return f"postgresql://postgres@{address}:{POSTGRES_PORT}/postgres"

    def close(self) -> None:
        """Stop every process (those using the databases first), kill whatever else is left
        in the namespaces, delete them and the temporary directory."""
        errors: list[str] = []
        for late in (False, True):
            stopping = [(p, sig) for p, sig, last in self.processes if last is late]
            for process, sig in stopping:
                if process.poll() is None:
                    process.send_signal(sig)
            for process, _ in stopping:
                try:
                    process.wait(10)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait(10)
        self.processes.clear()
        for name in reversed(self.made):
            try:
                kill_namespace_processes(name)
                ip("netns", "del", name)
            except RuntimeError as error:
                errors.append(str(error))
        self.made.clear()
        shutil.rmtree(self.tmp, ignore_errors=True)
        if errors:
            raise RuntimeError("; ".join(errors))
