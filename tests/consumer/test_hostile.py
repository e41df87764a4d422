"""A hostile client against a real `eventctl serve`: raw sockets on 127.0.0.1, each test
bounded in bytes, connections and seconds."""

from __future__ import annotations

import json
import os
import shlex
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.helpers import ROOT, Server, cli_env, free_port

Response = tuple[int, dict[str, str], bytes]


def connect(server: Server, timeout: float = 5) -> socket.socket:
    return socket.create_connection(("127.0.0.1", server.port), timeout=timeout)


def read_response(sock: socket.socket) -> Response:
    """One HTTP/1.1 response with a Content-Length body, read from a raw socket."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError(f"closed before a response head: {data!r}")
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    status_line, *lines = head.decode("latin-1").split("\r\n")
    headers = {}
    for line in lines:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    length = int(headers.get("content-length", "0"))
    while len(body) < length:
        chunk = sock.recv(65536)
        if not chunk:
            break
        body += chunk
    return int(status_line.split()[1]), headers, body[:length]


def closed_within(sock: socket.socket, seconds: float) -> bool:
    """Whether the server closes `sock` within `seconds` (data it sends is read and dropped)."""
    sock.settimeout(seconds)
    deadline = time.monotonic() + seconds
    try:
        while time.monotonic() < deadline:
            if not sock.recv(65536):
                return True
    except ConnectionResetError:
        return True
    except TimeoutError:
        return False
    return False


def error_code(body: bytes) -> str:
    document: dict[str, Any] = json.loads(body)
    assert document["status"] == "error"
    code: str = document["code"]
    return code


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


EVENT = b'{"event_type":"t","event_payload":"p"}'


def post_event(extra_headers: bytes = b"") -> bytes:
    return (
        b"POST /event HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        + extra_headers
        + b"Content-Length: %d\r\n\r\n" % len(EVENT)
        + EVENT
    )


def post_answers(server: Server) -> int:
    """The status of one event posted on a new connection."""
    with connect(server) as sock:
        sock.sendall(post_event())
        return read_response(sock)[0]


@pytest.fixture
def hostile(sqlite_url: str, tmp_path: Path) -> Iterator[Server]:
    running = Server(
        sqlite_url, tmp_path, "--header-timeout", "1", "--body-timeout", "1", "--keep-alive", "1"
    )
    yield running
    running.stop()


def test_a_huge_header_gets_431_without_being_buffered(hostile: Server) -> None:
    before = rss_kib(hostile.process.pid)
    with connect(hostile) as sock:
        sock.sendall(b"POST /event HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Big: ")
        started = time.monotonic()
        try:
            for _ in range(512):  # 32 MiB, while the server reads and drops it
                sock.sendall(b"a" * 65536)
        except OSError:
            pass
        status, _, body = read_response(sock)
        assert (status, error_code(body)) == (431, "headers_too_large")
        assert closed_within(sock, 4)
        assert time.monotonic() - started < 6
    with connect(hostile) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n" + b"X: " + b"a" * 20_000)
        status, headers, body = read_response(sock)
        assert (status, error_code(body)) == (431, "headers_too_large")
        assert headers["content-type"] == "application/json"
        assert closed_within(sock, 3)
    assert rss_kib(hostile.process.pid) - before < 20_000
    assert httpx.get(hostile.url + "/healthz", timeout=2).status_code == 200


def test_too_many_header_fields_get_431(hostile: Server) -> None:
    fields = b"".join(b"X-%d: v\r\n" % i for i in range(100))
    with connect(hostile) as sock:
        sock.sendall(post_event(fields))
        status, _, body = read_response(sock)
        assert status == 431, body
        assert error_code(body) == "headers_too_large"
    with connect(hostile) as sock:
        sock.sendall(post_event(b"".join(b"X-%d: v\r\n" % i for i in range(90))))
        assert read_response(sock)[0] == 200


def test_an_idle_connection_is_closed_after_the_header_timeout(hostile: Server) -> None:
    with connect(hostile) as sock:
        assert closed_within(sock, 4)


def test_a_trickled_request_head_gets_408(hostile: Server) -> None:
    with connect(hostile) as sock:
        started = time.monotonic()
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ")
        while time.monotonic() - started < 1.5:
            sock.sendall(b"a")
            time.sleep(0.1)
        status, _, body = read_response(sock)
        assert (status, error_code(body)) == (408, "request_timeout")
        assert closed_within(sock, 3)
        assert time.monotonic() - started < 5


def test_a_trickled_body_gets_408_and_nothing_is_stored(hostile: Server) -> None:
    head = b"POST /event HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
    with connect(hostile) as sock:
        sock.sendall(head + b"Content-Length: %d\r\n\r\n" % len(EVENT))
        started = time.monotonic()
        for byte in EVENT[:10]:
            sock.sendall(bytes([byte]))
            time.sleep(0.2)
        status, _, body = read_response(sock)
        assert (status, error_code(body)) == (408, "request_timeout")
        assert time.monotonic() - started < 3
        assert closed_within(sock, 3)
    listing = httpx.get(hostile.url + "/events", timeout=2).json()
    assert listing["events"] == []


def test_keep_alive_and_pipelining_still_work(hostile: Server) -> None:
    with connect(hostile) as sock:
        sock.sendall(post_event() + post_event(b"Idempotency-Key: k2\r\n"))
        assert read_response(sock)[0] == 200
        assert read_response(sock)[0] == 200
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        assert read_response(sock)[0] == 200
        assert closed_within(sock, 4)  # then the keep-alive timeout


def test_an_unparseable_request_gets_400_in_the_error_shape(hostile: Server) -> None:
    with connect(hostile) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost 127.0.0.1\r\n\r\n")
        status, headers, body = read_response(sock)
        assert (status, error_code(body)) == (400, "malformed_request")
        assert headers["content-type"] == "application/json"


def test_connections_beyond_the_limit_are_refused_at_once(sqlite_url: str, tmp_path: Path) -> None:
    server = Server(sqlite_url, tmp_path, "--max-connections", "4", "--header-timeout", "30")
    try:
        idle = [connect(server) for _ in range(4)]
        time.sleep(0.2)
        with connect(server) as extra:
            started = time.monotonic()
            extra.sendall(post_event())
            status, headers, body = read_response(extra)
            assert (status, error_code(body)) == (503, "too_many_connections")
            assert headers["retry-after"] == "1"
            assert time.monotonic() - started < 1
        idle.pop().close()
        time.sleep(0.2)
        assert post_answers(server) == 200
        for sock in idle:
            sock.close()
    finally:
        server.stop()


def test_under_a_low_open_file_limit_idle_sockets_cannot_starve_new_clients(
    sqlite_url: str, tmp_path: Path
) -> None:
    port = free_port()
    command = (
        f"ulimit -n 512 && exec {shlex.quote(sys.executable)} -m eventctl serve --port {port}"
        f" --database-url {shlex.quote(sqlite_url)} --header-timeout 2"
    )
    process = subprocess.Popen(
        ["sh", "-c", command], cwd=ROOT, env=cli_env(), stderr=subprocess.PIPE, text=True
    )
    server = Server.__new__(Server)
    server.port, server.url, server.process = port, f"http://127.0.0.1:{port}", process
    try:
        server._wait_ready()
        idle = [connect(server) for _ in range(600)]
        time.sleep(0.3)
        started = time.monotonic()
        with connect(server) as sock:
            sock.sendall(post_event())
            status, _, body = read_response(sock)
        assert (status, error_code(body)) == (503, "too_many_connections")
        assert time.monotonic() - started < 1
        time.sleep(2.5)  # the idle ones reach the header timeout
        assert post_answers(server) == 200
        for sock in idle:
            sock.close()
    finally:
        process.send_signal(signal.SIGTERM)
        _, err = process.communicate(timeout=20)
    assert "max_connections lowered from 1000 to 256" in err
    assert "Traceback" not in err


def test_stopping_with_a_stream_attached_is_quick_and_quiet(server: Server) -> None:
    with httpx.stream("GET", server.url + "/events/stream", timeout=5) as response:
        assert response.status_code == 200
        started = time.monotonic()
        os.kill(server.process.pid, signal.SIGINT)
        code, err = server.stop(timeout=10)
        elapsed = time.monotonic() - started
        with pytest.raises(httpx.HTTPError):
            for _ in response.iter_bytes():
                pass
    assert code == 0
    assert elapsed < 2, err
    assert "Traceback" not in err
    assert "Cancel" not in err


def request(server: Server, head: bytes, body: bytes = b"") -> Response:
    """One request on a new connection; `head` is the request line and headers."""
    if body:
        head += b"Content-Type: application/json\r\nContent-Length: %d\r\n" % len(body)
    with connect(server) as sock:
        sock.sendall(head + b"\r\n" + body)
        return read_response(sock)


def post(server: Server, body: bytes, *headers: bytes, path: bytes = b"/event") -> Response:
    head = b"POST " + path + b" HTTP/1.1\r\nHost: 127.0.0.1\r\n" + b"".join(headers)
    return request(server, head, body)


SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"


def test_any_webhook_header_value_is_a_401_never_a_500(sqlite_url: str, tmp_path: Path) -> None:
    secrets = tmp_path / "secrets"
    secrets.write_text(SECRET + "\n")
    server = Server(sqlite_url, tmp_path, "--webhook-secrets-file", str(secrets))
    now = str(int(time.time())).encode()
    huge = b"1" + b"0" * 309
    cases = [
        (b"msg_1", huge, b"v1,abc"),
        (b"msg_1", b"-" + huge, b"v1,abc"),
        (b"msg_1", b"9" * 5000, b"v1,abc"),
        (b"msg_1", b"1e9", b"v1,abc"),
        (b"msg_1", b" ", b"v1,abc"),
        (b"msg_1", now, b"v1,\xe9\xe9\xe9"),
        (b"msg_1", now, b"v1," + b"A" * 4000),
        (b"\xff\xfe", now, b"v1,abc v2,def v1,"),
        (b"msg_1", now, b" ".join(b"v1,%d" % i for i in range(500))),
    ]
    try:
        for message_id, timestamp, signature in cases:
            status, _, body = post(
                server,
                EVENT,
                b"webhook-id: " + message_id + b"\r\n",
                b"webhook-timestamp: " + timestamp + b"\r\n",
                b"webhook-signature: " + signature + b"\r\n",
            )
            assert (status, error_code(body)) == (401, "invalid_signature"), (timestamp, body)
    finally:
        server.stop()


def test_the_bearer_scheme_is_case_insensitive(sqlite_url: str, tmp_path: Path) -> None:
    token = tmp_path / "token"
    token.write_text("s3cret\n")
    server = Server(sqlite_url, tmp_path, "--auth-token-file", str(token))
    try:
        for scheme in (b"Bearer", b"bearer", b"BEARER"):
            status, _, body = post(server, EVENT, b"Authorization: " + scheme + b" s3cret\r\n")
            assert status == 200, (scheme, body)
        status, _, body = post(server, EVENT, b"Authorization: Basic s3cret\r\n")
        assert (status, error_code(body)) == (401, "unauthorized")
    finally:
        server.stop()


@pytest.mark.parametrize(
    ("body", "field"),
    [
        (b'{"event_type":"a","event_type":"b","event_payload":"x"}', "event_type"),
        (b'{"event_type":"a","event_payload":"x","event\\u005fpayload":"y"}', "event_payload"),
        (b'{"event_type":"a\xc2\x85b","event_payload":"x"}', "event_type"),
        (b'{"event_type":"\xe2\x80\x8b","event_payload":"x"}', "event_type"),
    ],
    ids=["duplicate", "escaped-duplicate", "c1-control", "zero-width-space"],
)
def test_strict_input_is_refused_with_422(hostile: Server, body: bytes, field: str) -> None:
    status, _, answer = post(hostile, body)
    assert (status, error_code(answer)) == (422, "invalid_event"), answer
    assert json.loads(answer)["errors"][0]["field"] == field
    assert httpx.get(hostile.url + "/events", timeout=2).json()["events"] == []


def test_a_batch_never_silently_drops_an_event_on_a_clients_key(hostile: Server) -> None:
    single = b'{"event_type":"single","event_payload":"a"}'
    assert post(hostile, single, b"Idempotency-Key: kk/0\r\n")[0] == 200
    batch = b"[" + b",".join(b'{"event_type":"batch","event_payload":"%d"}' % i for i in range(3))
    status, _, body = post(hostile, batch + b"]", b"Idempotency-Key: kk\r\n", path=b"/events")
    assert (status, error_code(body)) == (422, "idempotency_key_reused"), body
    events = httpx.get(hostile.url + "/events", timeout=2).json()["events"]
    assert [(e["event_id"], e["event_type"]) for e in events] == [("kk/0", "single")]
    status, headers, _ = post(hostile, single, b"Idempotency-Key: kk/0\r\n")
    assert (status, headers.get("idempotent-replayed")) == (200, "true")


def test_the_page_sends_security_headers(hostile: Server) -> None:
    status, headers, body = request(hostile, b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n")
    assert status == 200
    assert b"<html" in body.lower()
    csp = headers["content-security-policy"]
    assert "frame-ancestors 'none'" in csp
    assert "unsafe-inline" not in csp
    assert headers["x-content-type-options"] == "nosniff"
    assert headers["x-frame-options"] == "DENY"
    assert headers["referrer-policy"] == "no-referrer"


def test_no_answer_names_the_server_software(hostile: Server) -> None:
    answers = []
    with connect(hostile) as sock:
        # one request at a time: read_response keeps no bytes beyond its own answer
        for request in (post_event(), b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"):
            sock.sendall(request)
            answers.append(read_response(sock))
    assert [status for status, _, _ in answers] == [200, 200]
    for _, headers, _ in answers:
        assert "server" not in headers
        assert "date" in headers


@pytest.mark.parametrize("path", [b"/events", b"/", b"/healthz", b"/event"])
def test_a_foreign_host_gets_421_on_loopback(hostile: Server, path: bytes) -> None:
    method = b"POST" if path == b"/event" else b"GET"
    head = method + b" " + path + b" HTTP/1.1\r\nHost: rebind.example:%d\r\n" % hostile.port
    status, _, body = request(hostile, head, EVENT if method == b"POST" else b"")
    assert (status, error_code(body)) == (421, "misdirected_request")
    for host in (b"localhost", b"127.0.0.1", b"[::1]", b"127.0.0.2"):
        head = b"GET /healthz HTTP/1.1\r\nHost: " + host + b":%d\r\n" % hostile.port
        assert request(hostile, head)[0] == 200, host


def test_a_trailing_slash_is_an_error_that_echoes_no_host(hostile: Server) -> None:
    head = b"POST /event/ HTTP/1.1\r\nHost: 127.0.0.1:%d\r\n" % hostile.port
    status, headers, body = request(hostile, head, EVENT)
    assert (status, error_code(body)) == (404, "not_found")
    assert "location" not in headers
    assert b"127.0.0.1" not in body
