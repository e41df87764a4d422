"""The outbox on both backends: entries written with their events, claims, settles, routes."""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path

import pytest

from eventctl.errors import DatabaseError, IdempotencyConflict
from eventctl.outbox import (
    ACTIVE,
    DISABLED,
    PAUSED,
    Batch,
    Breaker,
    Outbox,
    RouteRow,
    Settled,
    UnknownRoute,
    route_after,
)
from eventctl.store import Store
from tests.test_store import incoming

T0 = datetime(2026, 11, 27, 9, 0, tzinfo=UTC)
NOW = 1_800_000_000_000
BREAKER = Breaker()


def routes(outbox: Outbox) -> dict[str, int]:
    return outbox.sync_routes([("all", "http://127.0.0.1:9/a"), ("pay", "http://127.0.0.1:9/p")])


def fanout_for(ids: dict[str, int]) -> object:
    def fanout(event_type: str) -> Sequence[int]:
        if event_type.startswith("payment."):
            return (ids["all"], ids["pay"])
        return (ids["all"],)

    return fanout


def fill(store: Store, n: int, kind: str = "t") -> dict[str, int]:
    outbox = Outbox(store, owner="w1")
    ids = routes(outbox)
    fanout = fanout_for(ids)
    store.insert_requests([[incoming(f"e{i}", kind)] for i in range(n)], fanout)  # type: ignore[arg-type]
    return ids


def status(outbox: Outbox) -> dict[str, tuple[str, int, int, int]]:
    return {s.name: (s.state, s.queued, s.failed, s.delivered) for s in outbox.status()}


def test_each_new_event_gets_one_entry_per_matching_route_in_its_transaction(store: Store) -> None:
    outbox = Outbox(store, owner="w1")
    ids = routes(outbox)
    fanout = fanout_for(ids)
    results = store.insert_requests(
        [
            [incoming("a", "payment.paid")],
            [incoming("b", "order.created")],
            [incoming("a", "payment.paid")],  # a replay: no second entry
            [incoming("b", "changed")],  # a conflict: refused, no entry
        ],
        fanout,  # type: ignore[arg-type]
    )
    assert results[:3] == [{"a"}, {"b"}, set()]
    assert isinstance(results[3], IdempotencyConflict)
    assert status(outbox) == {"all": (ACTIVE, 2, 0, 0), "pay": (ACTIVE, 1, 0, 0)}
    store.insert_requests([[incoming("a", "payment.paid")], [incoming("c")]], fanout)  # type: ignore[arg-type]
    assert status(outbox)["all"][1] == 3
    assert store.count() == 3


def test_a_batch_request_is_stored_with_its_entries_or_not_at_all(store: Store) -> None:
    outbox = Outbox(store, owner="w1")
    ids = routes(outbox)
    store.insert([incoming("k")])
    [result] = store.insert_requests(
        [[incoming("x"), incoming("k", "other")]],
        fanout_for(ids),  # type: ignore[arg-type]
    )
    assert not isinstance(result, set)
    assert status(outbox)["all"][1] == 0
    assert store.count() == 1


def test_a_claim_leases_entries_to_one_owner_until_the_lease_ends(store: Store) -> None:
    ids = fill(store, 5)
    one, two = Outbox(store, owner="w1", lease_ms=1000), Outbox(store, owner="w2")
    first = one.claim(ids["all"], limit=3, now_ms=NOW, ordered=False)
    assert [e.event_id for e in first.entries] == ["e0", "e1", "e2"]
    assert (first.entries[0].event_type, first.entries[0].attempts) == ("t", 0)
    second = two.claim(ids["all"], limit=10, now_ms=NOW, ordered=False)
    assert [e.event_id for e in second.entries] == ["e3", "e4"]
    assert two.claim(ids["all"], limit=10, now_ms=NOW + 999, ordered=False).entries == []
    again = two.claim(ids["all"], limit=10, now_ms=NOW + 1000, ordered=False)
    assert [e.event_id for e in again.entries] == ["e0", "e1", "e2"]
    # w1's lease was taken over: its settle leaves the entries to w2
    delivered = [Settled(e.event_row, "delivered", 1, NOW, 0, "200") for e in first.entries]
    one.settle(ids["all"], settled=delivered, breaker=BREAKER, batch=Batch(), now_ms=NOW)
    assert status(one)["all"] == (ACTIVE, 5, 0, 0)
    mine = [Settled(e.event_row, "delivered", 1, NOW, 0, "200") for e in again.entries]
    two.settle(ids["all"], settled=mine, breaker=BREAKER, batch=Batch(), now_ms=NOW)
    assert status(one)["all"] == (ACTIVE, 2, 0, 3)


def test_an_ordered_route_leases_only_its_oldest_entry(store: Store) -> None:
    ids = fill(store, 3)
    one, two = Outbox(store, owner="w1"), Outbox(store, owner="w2")
    [head] = one.claim(ids["all"], limit=10, now_ms=NOW, ordered=True).entries
    assert head.event_id == "e0"
    assert two.claim(ids["all"], limit=10, now_ms=NOW, ordered=True).entries == []
    retry = Settled(head.event_row, "retry", 1, NOW, NOW + 500, "503")
    one.settle(ids["all"], settled=[retry], breaker=BREAKER, batch=Batch(failures=1), now_ms=NOW)
    # the head waits for its retry, and nothing behind it overtakes it
    assert two.claim(ids["all"], limit=10, now_ms=NOW + 100, ordered=True).entries == []
    [again] = two.claim(ids["all"], limit=10, now_ms=NOW + 500, ordered=True).entries
    assert (again.event_id, again.attempts, again.first_attempt_ms) == ("e0", 1, NOW)


def test_settles_delete_retry_and_fail_entries_and_status_shows_them(store: Store) -> None:
    ids = fill(store, 4)
    outbox = Outbox(store, owner="w1")
    entries = outbox.claim(ids["all"], limit=4, now_ms=NOW, ordered=False).entries
    settled = [
        Settled(entries[0].event_row, "delivered", 1, NOW, 0, "200"),
        Settled(entries[1].event_row, "retry", 1, NOW, NOW + 60_000, "503"),
        Settled(entries[2].event_row, "failed", 1, NOW, 0, "422"),
        Settled(entries[3].event_row, "kept", 1, NOW, NOW, "shutdown"),
    ]
    outbox.settle(ids["all"], settled=settled, breaker=BREAKER, batch=Batch(), now_ms=NOW)
    assert status(outbox)["all"] == (ACTIVE, 2, 1, 1)
    [shown] = [s for s in outbox.status() if s.name == "all"]
    assert shown.oldest_queued == T0
    assert shown.lag_seconds(datetime(2026, 11, 27, 9, 0, 30, tzinfo=UTC)) == 30
    assert shown.to_json(T0)["lag_seconds"] == 0
    [kept] = outbox.claim(ids["all"], limit=4, now_ms=NOW, ordered=False).entries
    assert kept.event_row == entries[3].event_row
    assert outbox.retry("all") == 1
    assert status(outbox)["all"] == (ACTIVE, 3, 0, 1)
    assert outbox.retry(None) == 0
    with pytest.raises(
        UnknownRoute, match="no forwarding route named 'nope' \\(known: all, pay\\)"
    ):
        outbox.retry("nope")


def test_a_410_disables_the_route_keeps_its_events_and_enable_resumes(store: Store) -> None:
    ids = fill(store, 2)
    outbox = Outbox(store, owner="w1")
    entries = outbox.claim(ids["all"], limit=1, now_ms=NOW, ordered=False).entries
    kept = [Settled(entries[0].event_row, "kept", 1, NOW, NOW, "410")]
    outbox.settle(ids["all"], settled=kept, breaker=BREAKER, batch=Batch(gone="410"), now_ms=NOW)
    assert status(outbox)["all"] == (DISABLED, 2, 0, 0)
    assert outbox.claim(ids["all"], limit=5, now_ms=NOW, ordered=False).entries == []
    outbox.enable("all")
    assert len(outbox.claim(ids["all"], limit=5, now_ms=NOW, ordered=False).entries) == 2


def test_sync_routes_keeps_the_state_of_known_routes(store: Store) -> None:
    outbox = Outbox(store, owner="w1")
    first = routes(outbox)
    outbox.settle(first["all"], settled=[], breaker=BREAKER, batch=Batch(gone="410"), now_ms=NOW)
    again = outbox.sync_routes([("all", "http://127.0.0.1:9/moved")])
    assert again == {"all": first["all"]}
    [shown] = [s for s in outbox.status() if s.name == "all"]
    assert (shown.state, shown.url) == (DISABLED, "http://127.0.0.1:9/moved")


def test_two_workers_claiming_at_once_never_share_an_entry(store: Store) -> None:
    ids = fill(store, 600)
    claimed: dict[str, list[int]] = {"w1": [], "w2": []}

    def work(owner: str) -> None:
        outbox = Outbox(store, owner=owner)
        while entries := outbox.claim(ids["all"], limit=20, now_ms=NOW, ordered=False).entries:
            claimed[owner] += [e.event_row for e in entries]
            done = [Settled(e.event_row, "delivered", 1, NOW, 0, "200") for e in entries]
            outbox.settle(ids["all"], settled=done, breaker=BREAKER, batch=Batch(), now_ms=NOW)
        store.close()

    threads = [threading.Thread(target=work, args=(owner,)) for owner in claimed]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    both = claimed["w1"] + claimed["w2"]
    assert len(both) == len(set(both)) == 600
    assert status(Outbox(store))["all"] == (ACTIVE, 0, 0, 600)


ROW = RouteRow(1, "r", "http://x", ACTIVE, "", 0, 0, 0, 0)


def test_the_breaker_opens_after_failures_in_a_row_and_probes_with_doubling_pauses() -> None:
    row = route_after(ROW, Batch(failures=4, last_result="503"), BREAKER, NOW)
    assert (row.state, row.failures) == (ACTIVE, 4)
    row = route_after(row, Batch(failures=1, last_result="503"), BREAKER, NOW)
    assert (row.state, row.cooldown_ms, row.not_before_ms) == (PAUSED, 5000, NOW + 5000)
    assert "5 failures in a row (last: 503)" in row.reason
    # a failure still in flight when it opened does not count as a probe
    late = route_after(row, Batch(failures=1, last_result="503"), BREAKER, NOW + 10)
    assert late.cooldown_ms == 5000
    probe = route_after(row, Batch(failures=1, last_result="timeout"), BREAKER, NOW + 5000)
    assert (probe.state, probe.cooldown_ms, probe.not_before_ms) == (PAUSED, 10_000, NOW + 15_000)
    for _ in range(5):
        probe = route_after(probe, Batch(failures=1), BREAKER, probe.not_before_ms)
    assert probe.cooldown_ms == 60_000
    closed = route_after(probe, Batch(delivered=1), BREAKER, probe.not_before_ms)
    assert (closed.state, closed.failures, closed.cooldown_ms, closed.reason) == (ACTIVE, 0, 0, "")
    assert closed.delivered == 1


def test_retry_after_holds_the_route_and_a_delivery_resets_the_count() -> None:
    row = route_after(ROW, Batch(failures=2, retry_after_ms=3000), BREAKER, NOW)
    assert (row.state, row.not_before_ms) == (ACTIVE, NOW + 3000)
    row = route_after(row, Batch(delivered=3, failures=1), BREAKER, NOW)
    assert (row.failures, row.delivered) == (0, 3)
    gone = route_after(row, Batch(gone="410"), BREAKER, NOW)
    assert gone.state == DISABLED
    assert "routes enable r" in gone.reason


def test_status_refuses_a_sqlite_file_replaced_under_it(tmp_path: Path) -> None:
    path = tmp_path / "events.db"
    store = Store.open(f"sqlite:///{path}", create=True)
    routes(Outbox(store))
    with sqlite3.connect(tmp_path / "other.db") as other:  # an older eventctl file
        other.execute("CREATE TABLE events (id INTEGER PRIMARY KEY)")
    other.close()
    (tmp_path / "other.db").replace(path)
    found: list[object] = []

    def read() -> None:  # a thread with no connection yet, as a request's would be
        try:
            found.append(Outbox(store).status())
        except DatabaseError as exc:
            found.append(exc)
        store.close()

    thread = threading.Thread(target=read)
    thread.start()
    thread.join(timeout=30)
    assert isinstance(found[0], DatabaseError)
    assert "was deleted or replaced while in use" in str(found[0])


def test_a_paused_route_lets_one_worker_probe_at_a_time(store: Store) -> None:
    ids = fill(store, 3)
    one, two = Outbox(store, owner="w1", lease_ms=1000), Outbox(store, owner="w2")
    first = one.claim(ids["all"], limit=3, now_ms=NOW, ordered=False).entries
    failed = [Settled(e.event_row, "retry", 1, NOW, NOW, "503") for e in first]
    one.settle(
        ids["all"], settled=failed, breaker=Breaker(failures=3), batch=Batch(failures=3), now_ms=NOW
    )
    after = NOW + 5_000  # the pause is over
    assert len(one.claim(ids["all"], limit=3, now_ms=after, ordered=False).entries) == 1
    assert two.claim(ids["all"], limit=3, now_ms=after, ordered=False).entries == []
    assert len(two.claim(ids["all"], limit=3, now_ms=after + 1000, ordered=False).entries) == 1
