"""GET /events/stream (Server-Sent Events) and `eventctl tail`, against a real server."""

from __future__ import annotations

import json
import random
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import IO

import httpx
import pytest

from eventctl.consumer.stream import Reconnect, follow_stream, parse_sse, sse_lines, stream_url
from eventctl.errors import EventctlError, ExitCode
from eventctl.retry import RetryPolicy
from tests.helpers import (
    HOSTILE,
    ROOT,
    Server,
    cli_env,
    raw_in_json,
    run_cli,
    spawn,
    unsafe_characters,
)


def post(server: Server, n: int, event_type: str = "t") -> list[str]:
    ids = []
    with httpx.Client(base_url=server.url) as client:
        for i in range(n):
            response = client.post(
                "/event", json={"event_type": event_type, "event_payload": str(i)}
            )
            ids.append(response.headers["Event-Id"])
    return ids


def read_stream(
    url: str, want: int, headers: dict[str, str] | None = None, params: dict[str, str] | None = None
) -> list[tuple[str | None, dict[str, str]]]:
    """The first `want` messages of the stream (bounded: gives up after 10 s)."""
    got: list[tuple[str | None, dict[str, str]]] = []

    def reader() -> None:
        try:
            read()
        except httpx.ReadTimeout:
            return  # fewer than `want` messages came: the assertions say so

    def read() -> None:
        with httpx.stream(
            "GET", url + "/events/stream", headers=headers, params=params, timeout=10
        ) as response:
            assert response.status_code == 200
            assert response.headers["content-type"].startswith("text/event-stream")
            for event_id, data in parse_sse(sse_lines(response.iter_bytes())):
                got.append((event_id, json.loads(data)))
                if len(got) >= want:
                    return

    thread = threading.Thread(target=reader, daemon=True)
    thread.start()
    thread.join(10)
    return got


def test_the_stream_sends_new_events_and_resumes_from_last_event_id(server: Server) -> None:
    before = post(server, 3)
    got: list[tuple[str | None, dict[str, str]]] = []
    thread = threading.Thread(target=lambda: got.extend(read_stream(server.url, 2)), daemon=True)
    thread.start()
    time.sleep(0.8)  # the stream starts after the newest row at connect time
    after = post(server, 2)
    thread.join(10)
    assert [event["event_id"] for _, event in got] == after
    resumed = read_stream(server.url, 1, headers={"Last-Event-ID": got[0][0] or ""})
    assert [event["event_id"] for _, event in resumed] == after[1:]
    everything = read_stream(server.url, 5, headers={"Last-Event-ID": "0"})
    assert [event["event_id"] for _, event in everything] == before + after


def test_the_stream_filters_by_type(server: Server) -> None:
    post(server, 2, "a")
    post(server, 2, "b")
    got = read_stream(server.url, 2, headers={"Last-Event-ID": "0"}, params={"type": "b"})
    assert [event["event_type"] for _, event in got] == ["b", "b"]


def test_a_bad_last_event_id_is_400(server: Server) -> None:
    response = httpx.get(server.url + "/events/stream", headers={"Last-Event-ID": "abc"})
    assert response.status_code == 400
    assert response.json()["errors"][0]["field"] == "Last-Event-ID"


def test_tail_follows_and_reconnects_without_missing_events(
    sqlite_url: str, tmp_path: Path
) -> None:
    first = Server(sqlite_url, tmp_path)
    tail = spawn("tail", "--json", "--endpoint", first.url)
    time.sleep(1.5)
    sent = post(first, 3)
    time.sleep(1.0)
    first.stop()
    second = Server(sqlite_url, tmp_path, port=first.port)
    try:
        time.sleep(1.5)
        sent += post(second, 2)
        time.sleep(1.5)
    finally:
        tail.send_signal(signal.SIGINT)
        out, err = tail.communicate(timeout=10)
        second.stop()
    assert tail.returncode == 0, err
    assert [json.loads(line)["event_id"] for line in out.splitlines()] == sent
    assert "reconnecting" in err
    assert "Traceback" not in err


class Tail:
    """A real `eventctl tail` subprocess whose output lines are collected as they come."""

    def __init__(self, *args: str, env: dict[str, str] | None = None) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-m", "eventctl", "tail", *args],
            cwd=ROOT,
            env=env or cli_env(),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            encoding="utf-8",
        )
        self.out: list[str] = []
        self.err: list[str] = []
        self.changed = threading.Condition()
        for stream, lines in ((self.process.stdout, self.out), (self.process.stderr, self.err)):
            threading.Thread(target=self._collect, args=(stream, lines), daemon=True).start()

    def _collect(self, stream: IO[str] | None, lines: list[str]) -> None:
        assert stream is not None
        for line in stream:
            with self.changed:
                lines.append(line.removesuffix("\n"))
                self.changed.notify_all()
        with self.changed:
            lines.append("<eof>")
            self.changed.notify_all()

    def wait(
        self, lines: list[str], done: Callable[[list[str]], bool], timeout: float = 10
    ) -> None:
        with self.changed:
            if not self.changed.wait_for(lambda: done(lines) or "<eof>" in lines, timeout):
                raise AssertionError(f"timed out: stdout {self.out}, stderr {self.err}")
            assert done(lines), f"tail ended: stdout {self.out}, stderr {self.err}"

    def wait_following(self) -> None:
        self.wait(self.err, lambda lines: any("following" in line for line in lines))

    def wait_stdout(self, n: int) -> None:
        self.wait(self.out, lambda lines: len(lines) >= n)

    def stop(self) -> int:
        """Ctrl-C (unless it has exited); its exit code, once all its output is collected."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
        code = self.process.wait(timeout=10)
        with self.changed:
            self.changed.wait_for(lambda: "<eof>" in self.out and "<eof>" in self.err, 5)
        self.out.remove("<eof>")
        self.err.remove("<eof>")
        for stream in (self.process.stdout, self.process.stderr):
            if stream:
                stream.close()
        return code


def post_events(url: str, events: list[dict[str, str]]) -> list[str]:
    with httpx.Client(base_url=url) as client:
        return [client.post("/event", json=event).headers["Event-Id"] for event in events]


LINE_BREAKERS = ["\u2028", "\u2029", "\x85"]


def test_tail_json_prints_events_holding_unicode_line_breaks_exactly(server: Server) -> None:
    tail = Tail("--json", "--endpoint", server.url)
    try:
        tail.wait_following()
        sent = [
            {"event_type": "type\u200b", "event_payload": f'{{"note": "a{ch}b"}}{ch}'}
            for ch in LINE_BREAKERS
        ]
        ids = post_events(server.url, sent)
        tail.wait_stdout(3)
    finally:
        code = tail.stop()
    assert code == 0, tail.err
    got = [json.loads(line) for line in tail.out]
    assert [g["event_id"] for g in got] == ids
    assert [{"event_type": g["event_type"], "event_payload": g["event_payload"]} for g in got] == (
        sent
    )
    for line in tail.out:
        assert raw_in_json(line) == []
    assert "\\u2028" in tail.out[0]
    assert "\\u2029" in tail.out[1]
    assert "\\u0085" in tail.out[2]
    assert not any("Traceback" in line for line in tail.err)


def test_tail_shows_event_data_escaped(server: Server) -> None:
    tail = Tail("--endpoint", server.url)
    try:
        tail.wait_following()
        post_events(server.url, [{"event_type": "evil\u202e\u200b", "event_payload": HOSTILE}])
        tail.wait_stdout(1)
    finally:
        code = tail.stop()
    assert code == 0, tail.err
    [line] = tail.out
    assert unsafe_characters(line) == []
    assert "evil\\u202e\\u200b" in line
    assert "a\\x1b[31mred\\x9b2J\\u202egnp.exe" in line


@pytest.mark.parametrize(
    ("chunks", "lines"),
    [
        ([b"a\nb\rc\r\nd\n"], ["a", "b", "c", "d"]),
        ([b"a\r", b"\nb\r", b"\r\n"], ["a", "b", ""]),
        ([b"a\r", b"", b"\n", b"\n"], ["a", ""]),
        ([b"a\r", b"\r", b"\n"], ["a", ""]),
        ([b"\r", b"\n\r", b"\n"], ["", ""]),
        ([b"x\xe2\x80", b"\xa8y\xc2", b"\x85z\xe2\x80\xa9\n"], ["x\u2028y\x85z\u2029"]),
        ([b"\xef\xbb\xbfdata: 1\n", b"\xef\xbb\xbf\n"], ["data: 1", "\ufeff"]),
        ([b"bad \xff\n"], ["bad \ufffd"]),
        ([b"no end"], []),
        ([b"a\nunfinished"], ["a"]),
        ([], []),
    ],
)
def test_sse_lines_split_on_cr_lf_and_crlf_only(chunks: list[bytes], lines: list[str]) -> None:
    assert list(sse_lines(iter(chunks))) == lines


def test_sse_lines_give_the_same_lines_however_the_bytes_are_cut() -> None:
    raw = "id: 1\r\ndata: a\u2028b\x85\r\r\n\rdata: \u2029é\n\n".encode()
    expected = ["id: 1", "data: a\u2028b\x85", "", "", "data: \u2029é", ""]
    for i in range(len(raw) + 1):
        for j in range(i, len(raw) + 1):
            assert list(sse_lines(iter([raw[:i], raw[i:j], raw[j:]]))) == expected, (i, j)
    assert list(sse_lines(iter([raw[k : k + 1] for k in range(len(raw))]))) == expected


def ipv6_loopback_port() -> int:
    try:
        with socket.socket(socket.AF_INET6) as sock:
            sock.bind(("::1", 0))
            port: int = sock.getsockname()[1]
            return port
    except OSError as exc:
        pytest.skip(f"no IPv6 loopback on this machine: {exc}")


def test_tail_reaches_a_consumer_on_ipv6_loopback(sqlite_url: str, tmp_path: Path) -> None:
    port = ipv6_loopback_port()
    url = f"http://[::1]:{port}"
    serve = spawn("serve", "--host", "::1", "--port", str(port), "--database-url", sqlite_url)
    tail = None
    try:
        deadline = time.monotonic() + 15
        while True:
            assert serve.poll() is None, serve.communicate()
            assert time.monotonic() < deadline, "serve on ::1 did not become healthy"
            try:
                if httpx.get(url + "/healthz", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.05)
        tail = Tail("--json", env=cli_env(EVENTCTL_HOST="::1", EVENTCTL_PORT=str(port)))
        tail.wait_following()
        [event_id] = post_events(url, [{"event_type": "v6", "event_payload": "p"}])
        tail.wait_stdout(1)
    finally:
        code = tail.stop() if tail else None
        serve.terminate()
        serve.communicate(timeout=20)
    assert code == 0, tail.err if tail else None
    assert json.loads(tail.out[0])["event_id"] == event_id
    assert f"following http://[::1]:{port}/events/stream" in tail.err[0]


def test_tail_reconnects_quietly_after_the_server_is_killed(
    sqlite_url: str, tmp_path: Path
) -> None:
    first = Server(sqlite_url, tmp_path)
    tail = Tail("--json", "--endpoint", first.url)
    second = None
    try:
        tail.wait_following()
        sent = post(first, 2)
        tail.wait_stdout(2)
        first.process.kill()  # the stream ends mid-response: no final chunk
        first.process.communicate(timeout=10)
        tail.wait(tail.err, lambda lines: any("reconnecting" in line for line in lines))
        second = Server(sqlite_url, tmp_path, port=first.port)
        sent += post(second, 1)
        tail.wait_stdout(3)
    finally:
        code = tail.stop()
        if second:
            second.stop()
    assert code == 0, tail.err
    assert [json.loads(line)["event_id"] for line in tail.out] == sent
    assert not any("Traceback" in line for line in tail.err)


def sse_event(row: int) -> bytes:
    event = {
        "id": row,
        "event_id": f"e{row}",
        "event_type": "t",
        "event_payload": "p",
        "received_at": "2026-11-27T09:20:23.432938Z",
    }
    return f"id: {row}\nevent: event\ndata: {json.dumps(event)}\n\n".encode()


def chunk(data: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(data), data)


SSE_HEAD = (
    b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n"
)


class ScriptedServer:
    """A misbehaving HTTP server on 127.0.0.1: each connection gets the next canned answer
    and is then closed; once the answers run out the port is closed too."""

    def __init__(self, answers: list[bytes]) -> None:
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.listener.getsockname()[1]}"
        self.requests: list[bytes] = []
        self.thread = threading.Thread(target=self._serve, args=(answers,), daemon=True)
        self.thread.start()

    def _serve(self, answers: list[bytes]) -> None:
        with self.listener:
            self.listener.settimeout(10)
            for answer in answers:
                connection, _ = self.listener.accept()
                with connection:
                    request = b""
                    while b"\r\n\r\n" not in request and (data := connection.recv(65536)):
                        request += data
                    self.requests.append(request)
                    connection.sendall(answer)


def test_tail_survives_streams_that_break_off_do_not_decode_end_early_or_carry_junk() -> None:
    scripted = ScriptedServer(
        [
            # closed in the middle of a chunk
            SSE_HEAD + chunk(sse_event(1)) + b"40\r\nid: 2\nda",
            # a body that does not decode as it says it is encoded
            b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n"
            b"content-encoding: gzip\r\ncontent-length: 8\r\n\r\nnot gzip",
            # junk, then a clean end of the stream
            SSE_HEAD + chunk(b"data: not json \x1b[2J\n\n") + chunk(sse_event(2)) + b"0\r\n\r\n",
            # closed between two chunks
            SSE_HEAD + chunk(sse_event(3)),
        ]
    )
    tail = Tail("--json", "--endpoint", scripted.url)
    try:
        tail.wait_stdout(3)
        scripted.thread.join(10)
        tail.wait(tail.err, lambda lines: sum("reconnecting" in line for line in lines) >= 5)
    finally:
        code = tail.stop()
    assert code == 0, tail.err
    assert [json.loads(line)["event_id"] for line in tail.out] == ["e1", "e2", "e3"]
    resumed = [r.lower().split(b"last-event-id: ")[1][:1] for r in scripted.requests[1:]]
    assert resumed == [b"1", b"1", b"2"]
    assert not any("Traceback" in line for line in tail.err)
    junk = [line for line in tail.err if "not json" in line]
    assert junk
    assert unsafe_characters(junk[0]) == []
    assert "\\x1b[2J" in junk[0]


class Stop(Exception):
    pass


def test_follow_stream_resumes_and_waits_as_its_reconnect_says() -> None:
    scripted = ScriptedServer(
        [
            SSE_HEAD + chunk(sse_event(1)) + b"0\r\n\r\n",
            SSE_HEAD + chunk(sse_event(2)),
            b"HTTP/1.1 503 Service Unavailable\r\ncontent-length: 4\r\n\r\nbusy",
        ]
    )
    data: list[str] = []
    notices: list[str] = []
    waits: list[float] = []

    def sleep(seconds: float) -> None:
        waits.append(seconds)

    policy = RetryPolicy(base_seconds=2.0, max_seconds=8.0)
    reconnect = Reconnect(policy=policy, rng=random.Random(5), sleep=sleep)
    with pytest.raises(EventctlError, match="503 busy"):
        follow_stream(
            stream_url(scripted.url), ["t"], data.append, notices.append, reconnect=reconnect
        )
    expected = random.Random(5)
    assert waits == [policy.delay(1, expected), policy.delay(1, expected)]
    assert [json.loads(d)["event_id"] for d in data] == ["e1", "e2"]
    assert notices == [
        f"following {scripted.url}/events/stream; Ctrl-C stops",
        f"the stream ended; reconnecting in {waits[0]:.1f}s",
        f"connection dropped; reconnecting in {waits[1]:.1f}s",
    ]
    assert [r.lower().split(b"last-event-id: ")[1][:1] for r in scripted.requests[1:]] == [
        b"1",
        b"2",
    ]
    assert all(b"type=t" in request for request in scripted.requests)


def test_tail_reports_an_error_answer_escaped_on_one_line() -> None:
    body = b"\x1b[31mboom\xc2\x9b2J\nsecond line"
    scripted = ScriptedServer(
        [b"HTTP/1.1 500 Internal Server Error\r\ncontent-length: %d\r\n\r\n%s" % (len(body), body)]
    )
    tail = Tail("--endpoint", scripted.url)
    tail.process.wait(timeout=20)
    code = tail.stop()
    [line] = tail.err
    assert code == ExitCode.FAILURE
    assert line.startswith("eventctl: error: ")
    assert "500" in line
    assert unsafe_characters(line) == []
    assert "\\x1b[31mboom\\x9b2J\\nsecond line" in line


@pytest.mark.parametrize("endpoint", ["http://::1:8000", "ftp://127.0.0.1:8000"])
def test_tail_refuses_an_endpoint_it_cannot_use(endpoint: str) -> None:
    result = run_cli("tail", "--endpoint", endpoint)
    assert result.returncode == ExitCode.CONFIG
    assert result.stderr.startswith(f"eventctl: error: {endpoint}/events/stream: ")
    assert len(result.stderr.splitlines()) == 1
