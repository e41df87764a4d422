"""`eventctl routes`, `routes retry` and `routes enable`: real subprocesses (and Typer's
runner for usage errors) against a database whose outbox is filled directly, on SQLite and
PostgreSQL."""

from __future__ import annotations

import json
import re
from pathlib import Path

from eventctl.outbox import Outbox
from eventctl.store import Store
from tests.consumer.test_routes_api import GONE_URL, PLAIN, check_filled, fill_routes
from tests.helpers import invoke, run_cli


def states(url: str) -> dict[str, tuple[str, int, int]]:
    store = Store.open(url)
    try:
        return {s.name: (s.state, s.queued, s.failed) for s in Outbox(store).status()}
    finally:
        store.close()


def test_routes_shows_each_routes_state_backlog_and_lag(database_url: str) -> None:
    fill_routes(database_url)
    shown = run_cli("routes", "--database-url", database_url)
    assert shown.returncode == 0, shown.stderr
    assert shown.stderr == ""
    table, reasons = shown.stdout.split("\n\n")
    lines = table.splitlines()
    assert lines[0].split() == [
        "route",
        "(url)",
        "state",
        "queued",
        "delivered",
        "failed",
        "lag",
    ]
    rows = {line.split()[0]: line.split()[1:] for line in lines[1:]}
    assert rows["billing"] == ["paused", "2", "1", "1", "2h00m"]
    assert rows[PLAIN] == ["active", "4", "0", "0", "2h00m"]
    assert rows["gone"] == ["disabled", "4", "0", "0", "2h00m"]
    assert rows[GONE_URL] == []  # a named route's URL, under its name
    assert re.match(r"billing is paused: 5 failures in a row \(last: 503\)", reasons)
    assert re.search(r"^gone is disabled: the receiver answered 410", reasons, re.M)
    assert all(len(line) <= 80 for line in shown.stdout.splitlines())  # 80 columns: no tty


def test_routes_json_is_one_document_of_every_route(database_url: str) -> None:
    fill_routes(database_url)
    shown = run_cli("routes", "--json", "--database-url", database_url)
    assert shown.returncode == 0, shown.stderr
    document = json.loads(shown.stdout)
    assert list(document) == ["routes"]
    check_filled(document["routes"])


def test_routes_without_any_says_so_on_stderr_and_exits_0(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'events.db'}"
    Store.open(url, create=True).close()
    shown = run_cli("routes", "--database-url", url)
    assert (shown.returncode, shown.stdout) == (0, "")
    assert shown.stderr == (f"no forwarding routes in {url}; serve --forward-to URL adds one\n")
    as_json = run_cli("routes", "--json", "--database-url", url)
    assert as_json.returncode == 0
    assert json.loads(as_json.stdout) == {"routes": []}


def test_routes_reads_database_url_from_the_config_and_creates_no_database(
    tmp_path: Path,
) -> None:
    url = f"sqlite:///{tmp_path / 'events.db'}"
    fill_routes(url)
    config = tmp_path / "consumer.yaml"
    config.write_text(f"database_url: {url}\n")
    shown = invoke("routes", "--json", "--config", str(config))
    assert shown.returncode == 0, shown.stderr
    assert len(json.loads(shown.stdout)["routes"]) == 3
    missing = run_cli("routes", "--database-url", f"sqlite:///{tmp_path / 'none.db'}")
    assert missing.returncode == 5
    assert missing.stderr.startswith("eventctl: error: ")
    assert "does not exist" in missing.stderr
    assert not (tmp_path / "none.db").exists()


def test_routes_retry_queues_a_routes_failed_events_again(database_url: str) -> None:
    fill_routes(database_url)
    retried = run_cli("routes", "retry", "billing", "--database-url", database_url)
    assert retried.returncode == 0, retried.stderr
    assert retried.stdout == ""
    assert retried.stderr == "1 failed event of billing queued again\n"
    assert states(database_url)["billing"] == ("paused", 3, 0)
    again = run_cli("routes", "retry", "--all", "--json", "--database-url", database_url)
    assert again.returncode == 0, again.stderr
    assert json.loads(again.stdout) == {"requeued": 0}
    assert again.stderr == "0 failed events of every route queued again\n"


def test_routes_enable_makes_a_disabled_route_active(database_url: str) -> None:
    fill_routes(database_url)
    enabled = run_cli("routes", "enable", "gone", "--database-url", database_url)
    assert enabled.returncode == 0, enabled.stderr
    assert (enabled.stdout, enabled.stderr) == ("", "gone is active again\n")
    assert states(database_url)["gone"] == ("active", 4, 0)
    for args in (["enable", "gone", "--json"], ["--json", "enable", "gone"]):
        shown = run_cli("routes", *args, "--database-url", database_url)
        assert shown.returncode == 0, shown.stderr
        assert json.loads(shown.stdout) == {"route": "gone", "state": "active"}


def test_an_unknown_route_is_exit_4_naming_the_known_ones(database_url: str) -> None:
    fill_routes(database_url)
    for command in ("retry", "enable"):
        shown = run_cli("routes", command, "nope", "--database-url", database_url)
        assert shown.returncode == 4, shown.stderr
        # (another test run on the shared PostgreSQL may add routes of its own)
        assert shown.stderr.startswith("eventctl: error: no forwarding route named 'nope' (")
        assert re.search(rf"known: (.*, )?billing, gone, {re.escape(PLAIN)}\b", shown.stderr)
    assert states(database_url)["billing"] == ("paused", 2, 1)


def test_retry_needs_a_name_or_all_and_not_both(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'events.db'}"
    fill_routes(url)
    for args in (["retry"], ["retry", "billing", "--all"], ["enable"]):
        shown = invoke("routes", *args, "--database-url", url)
        assert shown.returncode == 2, (args, shown.stderr)
        assert "Usage: eventctl routes" in shown.stderr
    assert states(url)["billing"] == ("paused", 2, 1)


def test_the_groups_options_reach_its_sub_commands(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'events.db'}"
    fill_routes(url)
    retried = invoke("routes", "--database-url", url, "--json", "retry", "billing")
    assert retried.returncode == 0, retried.stderr
    assert json.loads(retried.stdout) == {"requeued": 1}
    enabled = invoke("routes", "--database-url", url, "enable", "billing")
    assert enabled.returncode == 0, enabled.stderr
    assert states(url)["billing"] == ("active", 3, 0)


def test_the_lag_is_shown_in_the_largest_units_that_read_well() -> None:
    from datetime import UTC, datetime, timedelta

    from eventctl.cli.routes import lag_text
    from eventctl.outbox import RouteStatus

    now = datetime(2026, 11, 27, 9, 0, tzinfo=UTC)

    def lag(seconds: float | None) -> str:
        oldest = None if seconds is None else now - timedelta(seconds=seconds)
        return lag_text(RouteStatus("r", "u", "active", "", 1, 0, 0, oldest, None), now)

    shown = [lag(s) for s in (None, 0, 3.24, 59.9, 59.96, 245, 3600, 7830, 86_400, 273_600)]
    assert shown == [
        "-",
        "0.0s",
        "3.2s",
        "59.9s",
        "1m00s",
        "4m05s",
        "1h00m",
        "2h10m",
        "1d0h",
        "3d4h",
    ]
