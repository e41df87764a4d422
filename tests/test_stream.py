"""GET /events/stream (Server-Sent Events) and `eventctl tail`, against a real server."""

from __future__ import annotations

import json
import signal
import threading
import time
from pathlib import Path

import httpx

from eventctl.stream import parse_sse
from tests.conftest import Server, spawn


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
            for event_id, data in parse_sse(response.iter_lines()):
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
