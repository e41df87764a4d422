from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from eventctl.errors import DatabaseError, DatabaseUnreachable, IdempotencyConflict
from eventctl.events import Event
from eventctl.store import (
    FOLLOW_BATCH,
    PG_CONNECTION_DEFAULTS,
    PG_KEEPALIVES_IDLE,
    EventFilter,
    Follower,
    Incoming,
    Store,
    describe_url,
)
from tests.helpers import postgres_url

T0 = datetime(2026, 11, 27, 9, 0, tzinfo=UTC)


def incoming(event_id: str, event_type: str = "t", at: datetime = T0) -> Incoming:
    return Incoming(event_id, Event(event_type, f"payload of {event_id}"), at)


def test_insert_returns_only_new_ids_and_never_stores_twice(store: Store) -> None:
    assert store.insert([incoming("a"), incoming("b"), incoming("a")]) == {"a", "b"}
    assert store.insert([incoming("b"), incoming("c")]) == {"c"}
    assert store.count() == 3


def test_an_id_stored_with_other_content_is_a_conflict_and_stores_nothing(store: Store) -> None:
    store.insert([incoming("a")])
    with pytest.raises(IdempotencyConflict) as caught:
        store.insert([incoming("b"), incoming("a", "other type"), incoming("c")])
    assert (caught.value.event_id, caught.value.index) == ("a", 1)
    assert "a is already stored with a different event_type or event_payload" in str(caught.value)
    with pytest.raises(IdempotencyConflict):
        store.insert([incoming("d"), Incoming("d", Event("t", "not the first payload"), T0)])
    assert store.count() == 1
    assert store.insert([incoming("a")]) == set()  # the same event again is a replay


def test_insert_requests_refuses_only_the_conflicting_requests(store: Store) -> None:
    store.insert([incoming("k")])
    results = store.insert_requests(
        [
            [incoming("x"), incoming("y")],
            [incoming("k", "changed")],
            [incoming("y"), incoming("z")],
            [Incoming("z", Event("t", "changed"), T0)],
            [incoming("k")],
        ]
    )
    assert results[0] == {"x", "y"}
    assert isinstance(results[1], IdempotencyConflict)
    assert results[2] == {"z"}
    assert isinstance(results[3], IdempotencyConflict)
    assert results[4] == set()
    assert sorted(e.event_id for e in store.events(limit=10)) == ["k", "x", "y", "z"]


def test_rows_keep_every_field(store: Store) -> None:
    store.insert([incoming("a", "order.created")])
    [row] = store.events(limit=10)
    assert (row.event_id, row.event_type, row.event_payload) == (
        "a",
        "order.created",
        "payload of a",
    )
    assert row.received_at == T0
    assert row.to_json()["received_at"] == "2026-11-27T09:00:00.000000Z"


def test_events_newest_first_with_limit_type_and_since(store: Store) -> None:
    store.insert(
        [
            incoming(f"e{i}", "odd" if i % 2 else "even", T0 + timedelta(minutes=i))
            for i in range(10)
        ]
    )
    assert [e.event_id for e in store.events(limit=3)] == ["e9", "e8", "e7"]
    assert [e.event_id for e in store.events(limit=3, types=["even"])] == ["e8", "e6", "e4"]
    since = T0 + timedelta(minutes=7)
    assert [e.event_id for e in store.events(limit=50, since=since)] == ["e9", "e8", "e7"]


def test_a_follower_reads_each_new_matching_row_once_oldest_first(store: Store) -> None:
    store.insert([incoming("before", "even")])
    follower = Follower(store, store.last_id(), types=["even"])
    assert follower.next_batch() == []
    many = FOLLOW_BATCH + 20
    store.insert([incoming(f"e{i}", "odd" if i % 2 else "even") for i in range(2 * many)])
    first, second = follower.next_batch(), follower.next_batch()
    assert (len(first), len(second)) == (FOLLOW_BATCH, many - FOLLOW_BATCH)
    assert [e.event_id for e in first + second] == [f"e{i}" for i in range(0, 2 * many, 2)]
    assert follower.next_batch() == []
    store.insert([incoming("later", "even"), incoming("other", "odd")])
    assert [e.event_id for e in follower.next_batch()] == ["later"]


def test_one_filter_for_a_page_and_for_a_follower(store: Store) -> None:
    rows = [
        Incoming(f"e{i}", Event("odd" if i % 2 else "even", f"n{i % 3}"), T0 + timedelta(minutes=i))
        for i in range(12)
    ]
    store.insert(rows)
    filters: EventFilter = {
        "types": ["even"],
        "since": T0 + timedelta(minutes=2),
        "until": T0 + timedelta(minutes=11),
        "q": "n1",
    }
    matching = ["e10", "e4"]  # even, minutes 2 to 10, payload n1
    assert [e.event_id for e in store.events(limit=50, **filters)] == matching
    assert [e.event_id for e in store.events(limit=50, before_id=10, **filters)] == ["e4"]
    assert [e.event_id for e in Follower(store, 0, **filters).next_batch()] == matching[::-1]


def test_a_large_batch_is_one_transaction(store: Store) -> None:
    assert len(store.insert([incoming(f"e{i}") for i in range(2500)])) == 2500
    assert store.count() == 2500


def test_ping(store: Store) -> None:
    store.ping()


def test_opening_a_missing_sqlite_file_is_an_error_and_creates_nothing(tmp_path: Path) -> None:
    path = tmp_path / "nothing.db"
    with pytest.raises(DatabaseError, match="does not exist"):
        Store.open(f"sqlite:///{path}")
    assert not path.exists()


def test_a_sqlite_file_without_the_table_is_an_error(tmp_path: Path) -> None:
    path = tmp_path / "other.db"
    Store.open(f"sqlite:///{path}", create=True).close()
    other = Store.open(f"sqlite:///{path}")
    other.database.drop_tables([other.model])
    other.close()
    with pytest.raises(DatabaseError, match="no events table"):
        Store.open(f"sqlite:///{path}")


def test_in_memory_sqlite_is_refused() -> None:
    with pytest.raises(DatabaseError, match="in-memory SQLite is not supported"):
        Store.open("sqlite:///:memory:", create=True)


def test_sqlite_is_durable_wal_and_synchronous_full(sqlite_url: str) -> None:
    store = Store.open(sqlite_url, create=True)
    try:
        pragma = store.database.execute_sql  # type: ignore[attr-defined]
        assert pragma("PRAGMA journal_mode").fetchone() == ("wal",)
        assert pragma("PRAGMA synchronous").fetchone() == (2,)
    finally:
        store.close()


@pytest.mark.postgres
def test_postgres_commits_synchronously() -> None:
    store = Store.open(postgres_url(), create=True)
    try:
        show = store.database.execute_sql  # type: ignore[attr-defined]
        assert show("SHOW synchronous_commit").fetchone() == ("on",)
    finally:
        store.close()


@pytest.mark.postgres
def test_postgres_connections_notice_a_dead_link_on_both_ends() -> None:
    store = Store.open(postgres_url(), create=True)
    try:
        dsn = store.database.connection().get_dsn_parameters()  # type: ignore[no-untyped-call]
        assert {k: dsn.get(k) for k in PG_CONNECTION_DEFAULTS} == {
            "connect_timeout": "5",
            "keepalives": "1",
            "keepalives_idle": "5",
            "keepalives_interval": "1",
            "keepalives_count": "5",
            "tcp_user_timeout": "5000",
        }
        # the server's end: a session whose client is gone ends and releases its locks
        show = store.database.execute_sql  # type: ignore[attr-defined]
        names = ("idle", "interval", "count")
        assert [show(f"SHOW tcp_keepalives_{k}").fetchone()[0] for k in names] == ["5", "1", "5"]
    finally:
        store.close()


@pytest.mark.postgres
def test_a_database_url_keeps_its_own_connection_parameters() -> None:
    url = postgres_url()
    store = Store.open(f"{url}{'&' if '?' in url else '?'}tcp_user_timeout=2000&keepalives=0")
    try:
        dsn = store.database.connection().get_dsn_parameters()  # type: ignore[no-untyped-call]
        assert (dsn.get("tcp_user_timeout"), dsn.get("keepalives")) == ("2000", "0")
        assert dsn.get("keepalives_idle") == str(PG_KEEPALIVES_IDLE)
    finally:
        store.close()


def test_a_directory_that_does_not_exist(tmp_path: Path) -> None:
    with pytest.raises(DatabaseError, match="cannot open the database"):
        Store.open(f"sqlite:///{tmp_path}/no/such/dir/events.db", create=True)


def test_unreachable_postgres_is_a_clean_error() -> None:
    with pytest.raises(DatabaseUnreachable) as caught:
        Store.open("postgresql://nobody:secret@127.0.0.1:1/none", create=True)
    assert "secret" not in str(caught.value)
    assert "cannot open the database" in str(caught.value)


def test_describe_url_hides_the_password() -> None:
    assert describe_url("postgresql://u:pw@h:5432/db") == "postgresql://u:***@h:5432/db"
    assert describe_url("sqlite:///events.db") == "sqlite:///events.db"


def test_per_bucket_counts_events_per_window_slice_in_the_database(store: Store) -> None:
    start = datetime(2026, 12, 1, 10, 0, 30, 250_000, tzinfo=UTC)  # on no minute boundary
    offsets = [0, 1, 59, 60, 61, 179, 180, -1, 300]  # seconds after start
    store.insert(
        [
            Incoming(f"e{i}", Event("t", "p"), start + timedelta(seconds=seconds))
            for i, seconds in enumerate(offsets)
        ]
    )
    assert store.per_bucket(start=start, bucket_seconds=60, buckets=3) == [3, 2, 1]
    assert store.per_bucket(start=start, bucket_seconds=60, buckets=4) == [3, 2, 1, 1]
    assert store.per_bucket(start=start, bucket_seconds=600, buckets=1) == [8]
