"""The network-namespace harness itself: hosts that reach each other, its own PostgreSQL,
links that go down and up, a real `eventctl serve` on a host, and a teardown that leaves
nothing behind."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import peewee
import pytest
from playhouse.db_url import connect

from tests.forwarding import stored, wait_for
from tests.netns import Host, Network, alive, ip, namespaces, require_netns

WEB_PORT = 8080


@pytest.fixture
def net(tmp_path: Path) -> Iterator[Network]:
    require_netns()
    with Network(logs=tmp_path) as network:
        yield network


def web_server(host: Host, root: Path) -> str:
    """A Python HTTP server of `root` on the host's front address; its URL once it answers."""
    url = f"http://{host.address('front')}:{WEB_PORT}"
    host.popen(
        [sys.executable, "-m", "http.server", "--bind", host.address("front"), str(WEB_PORT)],
        cwd=root,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    wait_for(lambda: host.call(lambda: answers(url)), f"{url} from {host.name}", timeout=10)
    return url


def answers(url: str) -> bool:
    try:
        return httpx.get(url, timeout=1).status_code == 200
    except httpx.TransportError:
        return False


def server_address(url: str) -> str:
    """The address the PostgreSQL at `url` answered on, over a new peewee connection."""
    database = connect(url, connect_timeout=10)
    try:
        return str(database.execute_sql("SELECT host(inet_server_addr())").fetchone()[0])
    finally:
        database.close()


def test_two_hosts_on_front_reach_each_other_over_tcp(net: Network, tmp_path: Path) -> None:
    (tmp_path / "hello.txt").write_text("from a")
    a, b = net.host("a"), net.host("b")
    assert a.address("front") != b.address("front")
    url = web_server(a, tmp_path)
    assert b.call(lambda: httpx.get(url + "/hello.txt", timeout=5).text) == "from a"
    done = b.run(
        [sys.executable, "-c", f"import urllib.request as u; print(u.urlopen({url!r}).status)"]
    )
    assert (done.returncode, done.stdout.strip()) == (0, "200"), done.stderr


def test_the_harness_postgres_is_on_back_only(net: Network) -> None:
    db = net.host("db", front=False, back=True)
    a, p = net.host("a", back=True), net.host("p")
    url = net.postgres(db)
    assert url == f"postgresql://postgres@{db.address('back')}:5432/postgres"
    assert a.call(lambda: server_address(url)) == db.address("back")
    with pytest.raises(peewee.OperationalError, match="Network is unreachable"):
        p.call(lambda: server_address(url))


@pytest.mark.parametrize("far_end", [False, True], ids=["own-veth", "bridge-port"])
def test_a_cut_back_link_fails_the_database_and_keeps_front(
    net: Network, tmp_path: Path, far_end: bool
) -> None:
    db = net.host("db", front=False, back=True)
    a, p = net.host("a", back=True), net.host("p")
    url = net.postgres(db)
    front = web_server(a, tmp_path)
    assert a.call(lambda: server_address(url)) == db.address("back")

    a.link_down("back", far_end=far_end)
    started = time.monotonic()
    with pytest.raises(peewee.OperationalError):
        a.call(lambda: server_address(url), timeout=15)
    assert time.monotonic() - started < 10
    assert p.call(lambda: answers(front))

    a.link_up("back")
    assert a.call(lambda: server_address(url)) == db.address("back")


def test_serve_on_a_host_stores_what_the_propagator_host_sends(net: Network) -> None:
    db = net.host("db", front=False, back=True)
    a, p = net.host("a", back=True), net.host("p")
    url = net.postgres(db)
    consumer = a.serve("a", url)
    assert consumer.url == f"http://{a.address('front')}:8000"

    sent = p.eventctl(
        "send", "send-once", "--endpoint", consumer.url + "/event", "--type", "t", "--payload", "x"
    )
    assert sent.wait(30) == 0, sent.stderr
    assert [(t, payload) for _, t, payload in a.call(lambda: stored(url))] == [("t", "x")]
    consumer.stop()


def interrupted(net: Network, root: tuple[str, str], ours: list[str], pids: list[int]) -> None:
    """Hosts, a PostgreSQL, a process and an orphan of it, then a Ctrl-C; what ran is noted
    in `ours` (namespaces) and `pids`."""
    with net:
        db, a = net.host("db", front=False, back=True), net.host("a", back=True)
        net.postgres(db)
        postmaster = int((net.tmp / "pg-db" / "data" / "postmaster.pid").read_text().split()[0])
        # the backgrounded sleep is no child of ours: only the namespace sweep finds it
        shell = a.popen(["sh", "-c", "sleep 300 & echo $!; wait"], stdout=subprocess.PIPE)
        assert shell.stdout is not None
        with shell.stdout:
            orphan = int(shell.stdout.readline())
        ours.extend([h.netns for h in net.hosts.values()])
        ours.extend(net.bridge(n) for n in ("front", "back"))
        pids.extend([postmaster, shell.pid, orphan])
        assert set(ours) <= set(namespaces())
        assert (ip("-4", "addr"), ip("-o", "link")) == root
        raise KeyboardInterrupt


def test_teardown_leaves_no_namespaces_processes_or_files() -> None:
    require_netns()
    root = ip("-4", "addr"), ip("-o", "link")
    net = Network()
    ours: list[str] = []
    pids: list[int] = []
    with pytest.raises(KeyboardInterrupt):
        interrupted(net, root, ours, pids)
    assert len(ours) == 4
    assert len(pids) == 3
    assert not set(ours) & set(namespaces())
    assert not [n for n in namespaces() if n.startswith(net.prefix + "-")]
    assert not [pid for pid in pids if alive(pid)]
    assert not net.tmp.exists()
    assert (ip("-4", "addr"), ip("-o", "link")) == root


def test_a_crashed_runs_namespaces_and_processes_are_swept_at_start() -> None:
    require_netns()
    dead = subprocess.Popen(["true"])
    dead.wait()
    assert not alive(dead.pid)
    stale = f"ect{dead.pid}n0-a"
    ip("netns", "add", stale)
    leftover = Path(f"/tmp/ect{dead.pid}n0-x")
    leftover.mkdir()
    sleeper = subprocess.Popen(["ip", "netns", "exec", stale, "sleep", "300"])
    try:
        wait_for(lambda: str(sleeper.pid) in ip("netns", "pids", stale).split(), "sleep in ns")
        with Network():
            assert stale not in namespaces()
            assert not leftover.exists()
            assert sleeper.poll() is not None
    finally:
        if sleeper.poll() is None:
            sleeper.kill()
            sleeper.wait()
        if stale in namespaces():
            ip("netns", "del", stale)
        if leftover.exists():
            leftover.rmdir()
