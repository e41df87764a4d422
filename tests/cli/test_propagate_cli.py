"""propagate, send-once and up as a user runs them: real subprocesses against a real consumer."""

from __future__ import annotations

import json
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from eventctl.errors import ExitCode
from tests.helpers import (
    HOSTILE,
    ROOT,
    Server,
    cli_env,
    free_port,
    invoke,
    raw_in_json,
    run_cli,
    send_once,
    spawn,
    unsafe_characters,
)

EVENTS_FILE = str(ROOT / "events" / "events.json")


def stored_rows(database_url: str) -> list[tuple[str, str]]:
    path = database_url.removeprefix("sqlite:///")
    with sqlite3.connect(f"file:{path}?mode=ro", uri=True) as db:
        rows = db.execute("SELECT event_id, event_type FROM events ORDER BY id").fetchall()
    db.close()
    return rows


def assert_one_line_error(stderr: str, *fragments: str) -> None:
    assert "Traceback" not in stderr
    lines = stderr.strip().splitlines()
    assert len(lines) == 1, stderr
    for fragment in fragments:
        assert fragment in lines[0]


def wait_for_rows(database_url: str, n: int, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            if len(stored_rows(database_url)) >= n:
                return
        except sqlite3.OperationalError:
            pass  # the database or its table is not there yet
        assert time.monotonic() < deadline, f"fewer than {n} rows after {timeout}s"
        time.sleep(0.05)


def propagate(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return run_cli("propagate", "--events-file", EVENTS_FILE, *args, timeout=timeout)


def test_propagate_delivers_every_event_exactly_once(server: Server) -> None:
    result = propagate(
        "--interval", "0.05", "--count", "40", "--endpoint", server.url + "/event", "--seed", "1"
    )
    assert result.returncode == 0, result.stderr
    rows = stored_rows(server.database_url)
    assert len(rows) == 40
    assert len({event_id for event_id, _ in rows}) == 40
    assert "40 sent, 40 delivered, 0 failed, 0 pending" in result.stderr
    assert result.stderr.count("delivered ") >= 40  # one log line per delivery (no TTY)
    assert result.stdout == ""


def test_propagate_waits_for_a_consumer_that_starts_late(tmp_path: Path, sqlite_url: str) -> None:
    port = free_port()
    sender = spawn(
        "propagate",
        "--interval",
        "0.05",
        "--count",
        "40",
        "--endpoint",
        f"http://127.0.0.1:{port}/event",
        "--events-file",
        EVENTS_FILE,
        "--retry-base-seconds",
        "0.1",
        "--retry-max-seconds",
        "0.5",
        "--retry-attempts",
        "30",
        cwd=ROOT,
    )
    time.sleep(2.0)
    assert sender.poll() is None
    late = spawn("serve", "--port", str(port), "--database-url", sqlite_url, cwd=tmp_path)
    try:
        _, err = sender.communicate(timeout=60)
    finally:
        late.terminate()
        late.communicate(timeout=20)
    assert sender.returncode == 0, err
    assert "retrying" in err
    assert "connection refused" in err
    rows = stored_rows(sqlite_url)
    assert len(rows) == 40
    assert len({event_id for event_id, _ in rows}) == 40


def test_propagate_json_log_is_ndjson_on_stdout(server: Server) -> None:
    result = propagate(
        "--interval", "0.01", "--count", "5", "--json-log", "--endpoint", server.url + "/event"
    )
    assert result.returncode == 0
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    assert [line["kind"] for line in lines] == ["delivered"] * 5 + ["summary"]
    assert lines[-1]["delivered"] == 5
    assert all(line["status"] == 200 for line in lines[:5])


def test_propagate_stops_on_sigint_with_a_summary(server: Server) -> None:
    process = spawn(
        "propagate",
        "--interval",
        "0.05",
        "--endpoint",
        server.url + "/event",
        "--events-file",
        EVENTS_FILE,
        cwd=ROOT,
    )
    wait_for_rows(server.database_url, 6)
    process.send_signal(signal.SIGINT)
    _, err = process.communicate(timeout=20)
    assert process.returncode == 0, err
    assert "Traceback" not in err
    summary = next(line for line in err.splitlines() if line.startswith("eventctl propagate:"))
    generated = int(summary.split(":")[1].split()[0])
    assert generated >= 6
    assert f"{generated} delivered, 0 failed, 0 pending" in summary
    assert len(stored_rows(server.database_url)) == generated


def test_propagate_exits_9_when_events_are_undelivered() -> None:
    result = propagate(
        "--interval",
        "0.01",
        "--count",
        "2",
        "--retry-attempts",
        "2",
        "--retry-base-seconds",
        "0.01",
        "--endpoint",
        f"http://127.0.0.1:{free_port()}/event",
    )
    assert result.returncode == ExitCode.UNDELIVERED
    assert "2 failed" in result.stderr
    assert "connection refused" in result.stderr


def test_a_bad_events_file_names_file_and_index_and_sends_nothing(tmp_path: Path) -> None:
    bad = tmp_path / "events.json"
    bad.write_text(
        json.dumps(
            [{"event_type": "a", "event_payload": "b"}] * 5
            + [{"event_type": 5, "event_payload": "b"}]
        )
    )
    result = run_cli(
        "propagate",
        "--events-file",
        str(bad),
        "--endpoint",
        f"http://127.0.0.1:{free_port()}/event",
    )
    assert result.returncode == ExitCode.INPUT
    assert_one_line_error(result.stderr, f"{bad}[5]: event_type must be a string")
    for content in ("[]", "{}"):
        bad.write_text(content)
        assert invoke("propagate", "--events-file", str(bad)).returncode == ExitCode.INPUT


@pytest.mark.parametrize(
    ("args", "code"),
    [
        (["--interval", "0"], ExitCode.CONFIG),
        (["--interval", "-1"], ExitCode.CONFIG),
        (["--interval", "fast"], ExitCode.USAGE),
        (["--duration", "soon"], ExitCode.USAGE),
        (["--count", "0"], ExitCode.USAGE),
        (["--endpoint", "localhost:8000"], ExitCode.CONFIG),
    ],
)
def test_propagate_flag_errors(args: list[str], code: ExitCode) -> None:
    assert propagate(*args).returncode == code


def test_propagate_interval_2_works_as_typed(server: Server, tmp_path: Path) -> None:
    (tmp_path / "config").mkdir()
    (tmp_path / "events").mkdir()
    (tmp_path / "events" / "events.json").write_text(Path(EVENTS_FILE).read_text())
    (tmp_path / "config" / "propagator_config.yaml").write_text(
        f'interval_seconds: 5\napi_endpoint: "{server.url}/event"\n'
        'events_file: "events/events.json"\n'
    )
    process = spawn("propagate", "--interval", "2", cwd=tmp_path)
    wait_for_rows(server.database_url, 2)
    process.send_signal(signal.SIGINT)
    _, err = process.communicate(timeout=20)
    assert process.returncode == 0, err
    assert len(stored_rows(server.database_url)) >= 2


def test_propagate_duration_stops_by_itself(server: Server) -> None:
    started = time.monotonic()
    result = propagate("--interval", "0.1", "--duration", "1s", "--endpoint", server.url + "/event")
    assert result.returncode == 0
    assert time.monotonic() - started < 15
    assert "10 sent, 10 delivered" in result.stderr


# send-once: one test per exit code


def test_send_once_exit_0_on_success(server: Server) -> None:
    result = send_once(
        server.url, "--idempotency-key", "k-1", event_type="order.created", payload='{"id": 1}'
    )
    assert result.returncode == ExitCode.OK, result.stderr
    assert result.stdout.startswith("200 order.created")
    assert "event_id=k-1" in result.stdout
    again = send_once(
        server.url,
        "--idempotency-key",
        "k-1",
        "--json",
        event_type="order.created",
        payload='{"id": 1}',
    )
    outcome = json.loads(again.stdout)
    assert outcome["status_code"] == 200
    assert outcome["replayed"] is True
    assert outcome["response"] == {"status": "success"}
    assert stored_rows(server.database_url) == [("k-1", "order.created")]


def test_send_once_random_event_from_file_and_from_stdin(server: Server, tmp_path: Path) -> None:
    result = run_cli("send-once", "--endpoint", server.url + "/event", "--events-file", EVENTS_FILE)
    assert result.returncode == 0, result.stderr
    event = {"event_type": "from.stdin", "event_payload": "x"}
    piped = subprocess.run(
        [
            sys.executable,
            "-m",
            "eventctl",
            "send-once",
            "--endpoint",
            server.url + "/event",
            "--file",
            "-",
        ],
        input=json.dumps(event),
        capture_output=True,
        text=True,
        env=cli_env(),
        check=False,
    )
    assert piped.returncode == 0, piped.stderr
    path = tmp_path / "one.json"
    path.write_text(json.dumps({"event_type": "from.file", "event_payload": "y"}))
    assert (
        run_cli("send-once", "--endpoint", server.url + "/event", "--file", str(path)).returncode
        == 0
    )
    types = [t for _, t in stored_rows(server.database_url)]
    assert types[1:] == ["from.stdin", "from.file"]


def test_in_a_directory_without_events_the_sample_events_are_sent(
    server: Server, tmp_path: Path
) -> None:
    sent = run_cli("send-once", "--endpoint", server.url + "/event", cwd=tmp_path)
    assert sent.returncode == ExitCode.OK, sent.stderr
    assert "no events/events.json here" in sent.stderr
    assert "sample events" in sent.stderr
    sample = json.loads((ROOT / "eventctl" / "sample_events.json").read_text())
    assert stored_rows(server.database_url)[0][1] in {e["event_type"] for e in sample}
    assert not (tmp_path / "events").exists()


def test_an_events_file_the_user_names_must_exist(server: Server, tmp_path: Path) -> None:
    named = run_cli(
        "send-once", "--endpoint", server.url + "/event", "--events-file", "mine.json", cwd=tmp_path
    )
    assert named.returncode == ExitCode.INPUT, named.stderr
    assert_one_line_error(named.stderr, "mine.json", "no such file")
    assert stored_rows(server.database_url) == []


def test_the_sample_events_are_the_repositorys_events_file() -> None:
    sample = ROOT / "eventctl" / "sample_events.json"
    assert sample.read_bytes() == (ROOT / "events" / "events.json").read_bytes()


def test_send_once_exit_2_on_usage_errors() -> None:
    assert invoke("send-once", "--type", "only").returncode == ExitCode.USAGE
    assert invoke("send-once", "--file", "x.json", "--type", "t").returncode == ExitCode.USAGE


def test_send_once_exit_3_on_bad_config(tmp_path: Path) -> None:
    config = tmp_path / "p.yaml"
    config.write_text("interval_seconds: never\n")
    result = invoke("send-once", "--config", str(config))
    assert result.returncode == ExitCode.CONFIG
    assert_one_line_error(result.stderr, "interval_seconds: must be a number")


def test_send_once_exit_4_on_an_invalid_event_before_sending(tmp_path: Path) -> None:
    result = invoke(
        "send-once",
        "--type",
        "",
        "--payload",
        "p",
        "--endpoint",
        f"http://127.0.0.1:{free_port()}/event",
    )
    assert result.returncode == ExitCode.INPUT
    assert_one_line_error(result.stderr, "event_type must not be empty")
    path = tmp_path / "bad.json"
    path.write_text('{"event_type": "t", "event_payload": 3}')
    result = invoke("send-once", "--file", str(path))
    assert result.returncode == ExitCode.INPUT
    assert_one_line_error(result.stderr, f"{path}: event_payload must be a string")


def test_send_once_exit_6_when_unreachable() -> None:
    url = f"http://127.0.0.1:{free_port()}/event"
    result = run_cli("send-once", "--endpoint", url, "--type", "t", "--payload", "p")
    assert result.returncode == ExitCode.UNAVAILABLE
    assert_one_line_error(result.stderr, f"cannot connect to {url}: connection refused")


def test_send_once_exit_7_when_refused(tmp_path: Path, sqlite_url: str) -> None:
    small = Server(sqlite_url, tmp_path, "--max-body-bytes", "20")
    try:
        result = run_cli(
            "send-once",
            "--endpoint",
            small.url + "/event",
            "--type",
            "t",
            "--payload",
            "a payload that is too big",
        )
    finally:
        small.stop()
    assert result.returncode == ExitCode.REFUSED
    assert_one_line_error(result.stderr, "refused by", "413 payload_too_large")


@pytest.mark.parametrize("status", ["429", "408"])
def test_send_once_exits_8_when_asked_to_try_again_as_the_propagator_would_retry(
    tmp_path: Path, sqlite_url: str, status: str
) -> None:
    busy = Server(sqlite_url, tmp_path, "--fail-rate", "1", "--fail-status", status)
    try:
        result = send_once(busy.url)
    finally:
        busy.stop()
    assert result.returncode == ExitCode.SERVER_ERROR, result.stderr
    assert_one_line_error(result.stderr, "try again later", f"{status} injected_fault")


def test_send_once_exit_8_on_a_server_error(server: Server) -> None:
    with sqlite3.connect(server.database_url.removeprefix("sqlite:///")) as db:
        db.execute("DROP TABLE events")
    db.close()
    result = run_cli(
        "send-once", "--endpoint", server.url + "/event", "--type", "t", "--payload", "p"
    )
    assert result.returncode == ExitCode.SERVER_ERROR
    assert_one_line_error(result.stderr, "server error from", "503 database_unavailable")


# up


def port_is_free(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def test_up_runs_both_until_count_and_frees_the_port(tmp_path: Path, sqlite_url: str) -> None:
    port = free_port()
    result = run_cli(
        "up",
        "--port",
        str(port),
        "--interval",
        "0.05",
        "--count",
        "10",
        "--database-url",
        sqlite_url,
    )
    assert result.returncode == 0, result.stderr
    assert "10 sent, 10 delivered" in result.stderr
    assert "10 events in the database" in result.stderr
    assert len(stored_rows(sqlite_url)) == 10
    assert port_is_free(port)


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_up_stops_cleanly_on_a_signal(
    tmp_path: Path, sqlite_url: str, signum: signal.Signals
) -> None:
    port = free_port()
    process = spawn(
        "up", "--port", str(port), "--interval", "0.05", "--database-url", sqlite_url, cwd=ROOT
    )
    wait_for_rows(sqlite_url, 6)
    process.send_signal(signum)
    _, err = process.communicate(timeout=30)
    assert process.returncode == 0, err
    assert "Traceback" not in err
    assert port_is_free(port)
    summary = next(line for line in err.splitlines() if line.startswith("eventctl propagate:"))
    delivered = int(summary.split(", ")[1].split()[0])
    assert delivered >= 6
    assert len(stored_rows(sqlite_url)) == delivered


def test_up_on_a_port_in_use_exits_6(sqlite_url: str) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        result = run_cli("up", "--port", str(taken.getsockname()[1]), "--database-url", sqlite_url)
    assert result.returncode == ExitCode.UNAVAILABLE
    assert_one_line_error(result.stderr, "cannot listen on")


HOSTILE_TYPE = "evil\u202e\u200bexe"  # the consumer refuses control characters in types


def test_send_once_shows_the_event_type_escaped_and_json_keeps_it(server: Server) -> None:
    human = send_once(server.url, event_type=HOSTILE_TYPE, payload=HOSTILE)
    assert human.returncode == 0, human.stderr
    assert unsafe_characters(human.stdout) == []
    assert human.stdout.startswith("200 evil\\u202e\\u200bexe -> ")
    as_json = send_once(server.url, "--json", event_type=HOSTILE_TYPE, payload=HOSTILE)
    assert raw_in_json(as_json.stdout) == []
    assert json.loads(as_json.stdout)["event"] == {
        "event_type": HOSTILE_TYPE,
        "event_payload": HOSTILE,
    }


def test_propagate_log_lines_show_event_types_escaped(server: Server, tmp_path: Path) -> None:
    events = tmp_path / "events.json"
    events.write_text(json.dumps([{"event_type": HOSTILE_TYPE, "event_payload": HOSTILE}]))
    result = run_cli(
        "propagate",
        "--events-file",
        str(events),
        "--endpoint",
        server.url + "/event",
        "--interval",
        "0.01",
        "--count",
        "1",
    )
    assert result.returncode == 0, result.stderr
    assert unsafe_characters(result.stderr) == []
    assert "delivered  evil\\u202e\\u200bexe  200" in result.stderr


def test_retry_max_elapsed_seconds_follows_the_precedence(tmp_path: Path) -> None:
    from eventctl.config import PropagatorConfig, load_config

    yaml_file = tmp_path / "propagator.yaml"
    yaml_file.write_text("retry_max_elapsed_seconds: 30\n")

    def loaded(environ: dict[str, str], flag: float | None) -> float:
        cfg = load_config(
            PropagatorConfig,
            yaml_file,
            required=True,
            environ=environ,
            overrides={"retry_max_elapsed_seconds": flag},
        )
        return cfg.retry_max_elapsed_seconds

    assert PropagatorConfig().retry_max_elapsed_seconds == 120
    assert PropagatorConfig().retry_attempts == 100
    assert loaded({}, None) == 30
    assert loaded({"EVENTCTL_RETRY_MAX_ELAPSED_SECONDS": "45"}, None) == 45
    assert loaded({"EVENTCTL_RETRY_MAX_ELAPSED_SECONDS": "45"}, 5) == 5
    bad = invoke("propagate", "--retry-max-elapsed-seconds", "0", "--count", "1")
    assert bad.returncode == ExitCode.CONFIG
    assert "--retry-max-elapsed-seconds: must be a number greater than 0" in bad.stderr


class Logged:
    """A propagate subprocess with stderr in a file, so it can be read while it runs."""

    def __init__(self, tmp_path: Path, *args: str) -> None:
        self.err_path = tmp_path / "propagate.err"
        self._err = self.err_path.open("w")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "eventctl", "propagate", "--events-file", EVENTS_FILE, *args],
            cwd=ROOT,
            env=cli_env(),
            stdout=subprocess.DEVNULL,
            stderr=self._err,
            text=True,
        )

    def wait_for(self, text: str, times: int = 1, timeout: float = 20) -> None:
        deadline = time.monotonic() + timeout
        while self.err_path.read_text().count(text) < times:
            assert self.process.poll() is None, self.err_path.read_text()
            assert time.monotonic() < deadline, self.err_path.read_text()
            time.sleep(0.02)

    def wait(self, timeout: float) -> tuple[int, str]:
        try:
            code = self.process.wait(timeout)
        finally:
            self._err.close()
        return code, self.err_path.read_text()


def test_a_consumer_down_for_a_few_seconds_is_ridden_out(tmp_path: Path, sqlite_url: str) -> None:
    port = free_port()
    sender = Logged(
        tmp_path,
        "--endpoint",
        f"http://127.0.0.1:{port}/event",
        "--interval",
        "0.1",
        "--count",
        "10",
        "--retry-max-seconds",
        "0.5",
        "--retry-max-elapsed-seconds",
        "20",
    )
    sender.wait_for("connection refused", times=20)  # 20 tries and counting
    time.sleep(2.0)
    consumer = Server(sqlite_url, tmp_path, port=port)
    try:
        code, err = sender.wait(30)
    finally:
        consumer.stop()
    assert code == 0, err
    assert "10 sent, 10 delivered, 0 failed, 0 pending" in err
    assert len(stored_rows(sqlite_url)) == 10


def test_a_short_budget_fails_events_says_where_they_are_and_verify_is_not_ok(
    tmp_path: Path, sqlite_url: str
) -> None:
    port = free_port()
    endpoint = f"http://127.0.0.1:{port}/event"
    failed = propagate(
        "--endpoint",
        endpoint,
        "--interval",
        "0.01",
        "--count",
        "3",
        "--retry-base-seconds",
        "0.05",
        "--retry-max-elapsed-seconds",
        "0.5",
    )
    assert failed.returncode == ExitCode.UNDELIVERED
    spool = cli_env()["EVENTCTL_SPOOL_PATH"]
    assert (
        f"3 failed events stay in the spool ({spool}): `eventctl spool list` shows them, "
        "`eventctl spool retry` resends them (each was retried for up to 0.5s"
    ) in failed.stderr
    attempts = [line for line in failed.stderr.splitlines() if "connection refused" in line]
    assert len(attempts) > 3 * 3  # the time ran out, not the attempts

    consumer = Server(sqlite_url, tmp_path, port=port)
    try:
        incomplete = run_cli("verify", "--database-url", sqlite_url)
        assert incomplete.returncode == ExitCode.UNDELIVERED
        assert incomplete.stdout.startswith("INCOMPLETE: 3 generated, 0 acknowledged, 0 stored")
        assert "failed 3" in incomplete.stdout
        assert f"3 failed: they are in {spool}; `eventctl spool retry` resends them" in (
            incomplete.stdout
        )
        retried = run_cli("spool", "retry", "--endpoint", endpoint)
        assert retried.returncode == 0, retried.stderr
    finally:
        consumer.stop()
    ok = run_cli("verify", "--database-url", sqlite_url)
    assert ok.returncode == 0, ok.stdout
    assert ok.stdout.startswith("OK: 3 generated, 3 acknowledged, 3 stored")


def sending_to_nobody(tmp_path: Path) -> Logged:
    sender = Logged(
        tmp_path,
        "--endpoint",
        f"http://127.0.0.1:{free_port()}/event",
        "--interval",
        "0.05",
        "--retry-base-seconds",
        "0.05",
    )
    sender.wait_for("retrying", times=6)
    return sender


def test_ctrl_c_says_pending_events_stay_in_the_spool_and_go_first_next_time(
    tmp_path: Path,
) -> None:
    sender = sending_to_nobody(tmp_path)
    sender.process.send_signal(signal.SIGINT)
    code, err = sender.wait(20)
    assert code == ExitCode.UNDELIVERED
    assert "Traceback" not in err
    assert "Ctrl-C again stops now" in err
    summary = next(line for line in err.splitlines() if line.startswith("eventctl propagate:"))
    pending = int(summary.split(" pending in ")[0].rsplit(" ", 1)[1])
    assert pending > 0
    assert spool_pending() == pending
    spool = cli_env()["EVENTCTL_SPOOL_PATH"]
    assert (
        f"{pending} pending events stay in the spool ({spool}) and are sent first by the next "
        "`eventctl propagate`"
    ) in err


def test_a_second_ctrl_c_stops_at_once(tmp_path: Path) -> None:
    sender = sending_to_nobody(tmp_path)
    sender.process.send_signal(signal.SIGINT)
    sender.wait_for("Ctrl-C again stops now")
    sender.process.send_signal(signal.SIGINT)
    second = time.monotonic()
    code, err = sender.wait(20)
    assert time.monotonic() - second < 1.5  # the grace period is 3 s
    assert code == ExitCode.UNDELIVERED
    assert "Traceback" not in err
    assert f"{spool_pending()} pending events stay in the spool" in err
    assert spool_pending() > 0


def spool_pending() -> int:
    from eventctl.propagator.spool import Spool

    spool = Spool.open(Path(cli_env()["EVENTCTL_SPOOL_PATH"]))
    try:
        return spool.counts()["pending"]
    finally:
        spool.close()


def test_propagate_fails_over_from_a_dead_endpoint_and_stores_every_event_once(
    server: Server,
) -> None:
    dead = f"http://127.0.0.1:{free_port()}/event"
    live = server.url + "/event"
    result = propagate(
        *("--endpoint", dead, "--endpoint", live, "--interval", "0.01", "--count", "40"),
        "--json-log",
    )
    assert result.returncode == 0, result.stderr
    assert "40 sent, 40 delivered, 0 failed, 0 pending" in result.stderr
    assert "to another endpoint" in result.stderr
    assert f"  {dead}: down," in result.stderr
    assert f"  {live}: up," in result.stderr
    rows = stored_rows(server.database_url)
    assert len(rows) == len({event_id for event_id, _ in rows}) == 40
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    failovers = [line for line in lines if line["kind"] == "retrying"]
    assert failovers
    assert {line["endpoint"] for line in failovers} == {dead}
    summary = lines[-1]
    assert summary["kind"] == "summary"
    assert summary["failovers"] == len(failovers)
    assert [e["endpoint"] for e in summary["endpoints"]] == [dead, live]
    assert run_cli("verify", "--database-url", server.database_url).returncode == 0


def test_the_config_file_may_list_several_endpoints(server: Server, tmp_path: Path) -> None:
    dead = f"http://127.0.0.1:{free_port()}/event"
    config = tmp_path / "propagator.yaml"
    config.write_text(
        f"interval_seconds: 0.01\napi_endpoint:\n  - {dead}\n  - {server.url}/event\n"
        f"events_file: {EVENTS_FILE}\n"
    )
    result = run_cli("propagate", "--config", str(config), "--count", "10", "--quiet")
    assert result.returncode == 0, result.stderr
    assert "10 sent, 10 delivered" in result.stderr
    assert len(stored_rows(server.database_url)) == 10


def test_send_once_tries_the_next_endpoint_when_one_does_not_answer(server: Server) -> None:
    dead = f"http://127.0.0.1:{free_port()}/event"
    sent = run_cli(
        "send-once",
        *("--endpoint", dead, "--endpoint", server.url + "/event"),
        *("--type", "t", "--payload", "p", "--json"),
    )
    assert sent.returncode == 0, sent.stderr
    assert json.loads(sent.stdout)["endpoint"] == server.url + "/event"
    assert len(stored_rows(server.database_url)) == 1
    assert (
        sent.stderr == f"cannot connect to {dead}: connection refused; trying the next endpoint\n"
    )
    nobody = run_cli(
        "send-once",
        *("--endpoint", dead, "--endpoint", f"http://127.0.0.1:{free_port()}/event"),
        *("--type", "t", "--payload", "p"),
    )
    assert nobody.returncode == ExitCode.UNAVAILABLE
    *tried, error = nobody.stderr.strip().splitlines()
    assert tried == [f"cannot connect to {dead}: connection refused; trying the next endpoint"]
    assert error.startswith(f"eventctl: error: cannot connect to {dead}: connection refused; ")


def test_workers_add_their_endpoints_up(server: Server) -> None:
    dead = f"http://127.0.0.1:{free_port()}/event"
    live = server.url + "/event"
    result = propagate(
        *("--endpoint", dead, "--endpoint", live, "--rate", "200", "--count", "60"),
        *("--workers", "2", "--json-log"),
    )
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout.splitlines()[-1])
    assert summary["kind"] == "summary"
    assert (summary["delivered"], summary["failed"]) == (60, 0)
    by_url = {e["endpoint"]: e for e in summary["endpoints"]}
    assert by_url[live]["delivered"] == 60
    assert by_url[dead]["failed"] >= 2  # each worker found it down once at least
    assert by_url[dead]["state"] == "down"
    assert summary["failovers"] == by_url[dead]["failed"]
    assert len(stored_rows(server.database_url)) == 60
