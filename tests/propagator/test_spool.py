"""The spool: durable record, replay with original ids, bounds, verify; no real waiting."""

from __future__ import annotations

import asyncio
import random
from datetime import UTC, datetime
from pathlib import Path

import httpx
import pytest

from eventctl.events import Event
from eventctl.propagator import spool as spool_module
from eventctl.propagator.propagator import Delivery, Plan, Propagator, Runtime, Spooling
from eventctl.propagator.spool import Spool, SpoolError
from eventctl.retry import RetryPolicy
from eventctl.store import Incoming, Store
from eventctl.verify import compare
from tests.vclock import VirtualClock

pytestmark = pytest.mark.anyio

EVENTS = [Event("a", "1"), Event("b", "2")]


def propagator(
    clock: VirtualClock,
    handler: httpx.MockTransport,
    spooling: Spooling,
    plan: Plan | None = None,
    *,
    policy: RetryPolicy | None = None,
) -> Propagator:
    """A propagator of `plan` (default: five events, one a second) spooled by `spooling`."""
    return Propagator(
        plan or Plan(EVENTS, 1.0, count=5),
        Delivery("http://consumer.test/event", handler, policy=policy or RetryPolicy()),
        spooling=spooling,
        runtime=Runtime(clock=clock, sleep=clock.sleep, rng=random.Random(1)),
    )


def ok(request: httpx.Request) -> httpx.Response:
    return httpx.Response(200)


async def test_every_generated_event_is_recorded_and_settled(tmp_path: Path) -> None:
    spool = Spool.open(tmp_path / "spool.db")
    clock = VirtualClock()
    await clock.run(propagator(clock, httpx.MockTransport(ok), Spooling(spool)).run())
    counts = spool.counts()
    assert counts == {"pending": 0, "delivered": 5, "failed": 0}
    assert all(e.attempts == 1 and e.last_result == "200" for e in spool.entries())


async def test_failures_stay_in_the_spool_as_failed(tmp_path: Path) -> None:
    spool = Spool.open(tmp_path / "spool.db")
    clock = VirtualClock()

    def refuse(request: httpx.Request) -> httpx.Response:
        return httpx.Response(422)

    await clock.run(
        propagator(
            clock, httpx.MockTransport(refuse), Spooling(spool), Plan(EVENTS, 1.0, count=2)
        ).run()
    )
    failed = spool.entries("failed")
    assert len(failed) == 2
    assert failed[0].last_result == "422"
    assert spool.requeue_failed() == 2
    assert spool.counts()["pending"] == 2


async def test_pending_events_are_resent_first_with_their_ids(tmp_path: Path) -> None:
    path = tmp_path / "spool.db"
    spool = Spool.open(path)
    spool.add("old-1", Event("a", "x"))
    spool.add("old-2", Event("b", "y"))
    spool.close()

    seen: list[str] = []

    def record(request: httpx.Request) -> httpx.Response:
        seen.append(request.headers["Idempotency-Key"])
        return httpx.Response(200)

    spool = Spool.open(path)
    clock = VirtualClock()
    pending = spool.entries("pending")
    spool.track(pending)
    replay = [(e.event_id, e.event) for e in pending]
    stats = await clock.run(
        propagator(
            clock,
            httpx.MockTransport(record),
            Spooling(spool, resend=replay),
            Plan(EVENTS, 1.0, count=3),
        ).run()
    )
    assert seen[:2] == ["old-1", "old-2"]
    assert len(seen) == 5
    assert (stats.resent, stats.generated, stats.delivered) == (2, 3, 5)
    assert spool.counts() == {"pending": 0, "delivered": 5, "failed": 0}


async def test_a_full_spool_pauses_generation_and_says_so(tmp_path: Path) -> None:
    spool = Spool.open(tmp_path / "spool.db")
    clock = VirtualClock()

    async def slow(request: httpx.Request) -> httpx.Response:
        await clock.sleep(5)
        return httpx.Response(200)

    run = propagator(
        clock,
        httpx.MockTransport(slow),
        Spooling(spool, max_pending=2),
        Plan(EVENTS, 1.0, count=6),
    )
    flags: list[bool] = []

    async def watch() -> None:
        for _ in range(6):
            await clock.sleep(1)
            flags.append(run.stats.spool_full)

    watcher = asyncio.ensure_future(watch())
    stats = await clock.run(run.run())
    await watcher
    assert stats.generated == 6
    assert stats.skipped_ticks > 0
    assert any(flags)
    assert spool.counts()["delivered"] == 6


async def test_retrying_events_keep_one_spool_row(tmp_path: Path) -> None:
    spool = Spool.open(tmp_path / "spool.db")
    clock = VirtualClock()
    answers = [httpx.Response(503), httpx.Response(200)]

    def flaky(request: httpx.Request) -> httpx.Response:
        return answers.pop(0) if answers else httpx.Response(200)

    policy = RetryPolicy(3, 0.1, 1)
    await clock.run(
        propagator(
            clock,
            httpx.MockTransport(flaky),
            Spooling(spool),
            Plan(EVENTS, 1.0, count=1),
            policy=policy,
        ).run()
    )
    [entry] = spool.entries()
    assert (entry.state, entry.attempts) == ("delivered", 2)


def test_verify_reports_lost_other_pending_and_latency(tmp_path: Path, sqlite_url: str) -> None:
    spool = Spool.open(tmp_path / "spool.db")
    store = Store.open(sqlite_url, create=True)
    now = datetime.now(UTC)
    for event_id in ("ok-1", "ok-2", "lost-1", "pending-1", "failed-1"):
        spool.add(event_id, Event("t", event_id), now.timestamp() - 1)
    for event_id in ("ok-1", "ok-2", "lost-1"):
        spool.settle(event_id, "delivered", 1, "200")
    spool.settle("failed-1", "failed", 8, "503")
    store.insert([Incoming(i, Event("t", i), now) for i in ("ok-1", "ok-2", "pending-1", "stray")])
    report = compare(spool, store).to_json()
    assert report["ok"] is False
    assert (report["generated"], report["acknowledged"], report["stored"]) == (5, 3, 3)
    assert report["lost_ids"] == ["lost-1"]
    assert report["other_ids"] == ["stray"]
    assert (report["pending"], report["failed"], report["duplicated"]) == (1, 1, 0)
    assert report["stored_unacknowledged"] == 1
    assert 900 < report["latency_p50_ms"] < 1500
    spool.close()
    store.close()


def test_verify_is_ok_when_everything_arrived(tmp_path: Path, sqlite_url: str) -> None:
    spool = Spool.open(tmp_path / "spool.db")
    store = Store.open(sqlite_url, create=True)
    spool.add("e1", Event("t", "p"))
    spool.settle("e1", "delivered", 1, "200")
    store.insert([Incoming("e1", Event("t", "p"), datetime.now(UTC))])
    assert compare(spool, store).ok
    spool.close()
    store.close()


def test_an_unwritable_spool_is_a_clean_error(tmp_path: Path) -> None:
    from eventctl.propagator.spool import SpoolError

    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    with pytest.raises(SpoolError, match="cannot open the spool"):
        Spool.open(blocker / "spool.db")


async def test_ticks_found_due_together_are_spooled_in_one_transaction(tmp_path: Path) -> None:
    spool = Spool.open(tmp_path / "spool.db")
    clock = VirtualClock()
    sent: list[str] = []

    def record(request: httpx.Request) -> httpx.Response:
        sent.append(request.headers["Idempotency-Key"])
        return httpx.Response(200)

    async def oversleep(seconds: float) -> None:
        await clock.sleep(seconds + 0.0095)  # every wake-up finds about ten ticks due

    run = Propagator(
        Plan(EVENTS, 0.001, count=40),
        Delivery("http://consumer.test/event", httpx.MockTransport(record)),
        spooling=Spooling(spool),
        runtime=Runtime(clock=clock, sleep=oversleep, rng=random.Random(1)),
    )
    stats = await clock.run(run.run())
    entries = spool.entries()
    assert stats.generated == stats.delivered == 40
    assert sorted(sent) == sorted(e.event_id for e in entries)
    batches = {e.created_at for e in entries}  # one created_at per transaction
    assert len(batches) <= 6
    assert max(stats.lateness) >= 0.009


def test_a_run_is_resumed_only_when_unfinished_with_the_same_target_endpoint_and_file(
    tmp_path: Path,
) -> None:
    spool = Spool.open(tmp_path / "spool.db")
    first, resumed = spool.begin_run(3, "http://a/event", "/events.json")
    assert (first.run_id, first.generated, resumed) == (1, 0, False)
    spool.add_many([("e1", Event("t", "1")), ("e2", Event("t", "2"))])
    again, resumed = spool.begin_run(3, "http://a/event", "/events.json")
    assert (again.run_id, again.generated, again.target, resumed) == (1, 2, 3, True)
    assert [e.run_id for e in spool.entries()] == [1, 1]
    assert spool.begin_run(4, "http://a/event", "/events.json") == (spool.run(2), False)
    assert spool.begin_run(3, "http://b/event", "/events.json")[0].run_id == 3
    assert spool.begin_run(3, "http://a/event", "/other.json")[0].run_id == 4
    assert spool.begin_run(None, "http://a/event", "/events.json")[0].run_id == 5
    spool.begin_run(3, "http://b/event", "/events.json")
    fresh, resumed = spool.begin_run(3, "http://b/event", "/events.json", new=True)
    assert (fresh.run_id, resumed) == (7, False)
    assert [r.run_id for r in spool.runs()] == [1, 2, 3, 4, 5, 6, 7]
    spool.close()


def test_a_run_that_generated_everything_but_left_events_pending_is_resumed(
    tmp_path: Path,
) -> None:
    spool = Spool.open(tmp_path / "spool.db")
    run, _ = spool.begin_run(2, "http://a/event", "/f")
    spool.add_many([("e1", Event("t", "1")), ("e2", Event("t", "2"))])
    spool.settle("e1", "delivered", 1, "200")
    assert spool.begin_run(2, "http://a/event", "/f") == (spool.run(run.run_id), True)
    spool.settle("e2", "delivered", 1, "200")
    assert spool.begin_run(2, "http://a/event", "/f")[0].run_id == 2
    spool.close()


def test_a_spool_from_before_runs_is_upgraded_in_place(tmp_path: Path) -> None:
    import sqlite3

    path = tmp_path / "old.db"
    with sqlite3.connect(path) as db:
        db.executescript(
            """CREATE TABLE spool (event_id TEXT PRIMARY KEY, event_type TEXT NOT NULL,
            event_payload TEXT NOT NULL, state TEXT NOT NULL, created_at REAL NOT NULL,
            settled_at REAL, attempts INTEGER NOT NULL DEFAULT 0, last_result TEXT);
            INSERT INTO spool VALUES ('old', 't', 'p', 'pending', 1.0, NULL, 0, NULL);"""
        )
    db.close()
    spool = Spool.open(path)
    [entry] = spool.entries()
    assert (entry.event_id, entry.run_id, spool.latest_run()) == ("old", None, None)
    spool.close()


def test_a_spool_from_before_replay_is_upgraded_and_keeps_its_runs(tmp_path: Path) -> None:
    import sqlite3

    path = tmp_path / "old.db"
    with sqlite3.connect(path) as db:
        db.executescript(
            """CREATE TABLE spool (event_id TEXT PRIMARY KEY, event_type TEXT NOT NULL,
            event_payload TEXT NOT NULL, state TEXT NOT NULL, created_at REAL NOT NULL,
            settled_at REAL, attempts INTEGER NOT NULL DEFAULT 0, last_result TEXT,
            run_id INTEGER);
            CREATE TABLE runs (run_id INTEGER PRIMARY KEY AUTOINCREMENT, target INTEGER,
            endpoint TEXT NOT NULL, events_file TEXT NOT NULL, started_at REAL NOT NULL);
            INSERT INTO runs VALUES (1, 2, 'http://a/event', '/f', 1.0);
            INSERT INTO spool VALUES ('e1', 't', 'p', 'delivered', 1.0, 2.0, 1, '200', 1);
            INSERT INTO spool VALUES ('e2', 't', 'p', 'pending', 1.5, NULL, 0, NULL, 1);"""
        )
    db.close()
    spool = Spool.open(path)
    assert [(e.event_id, e.state, e.run_id) for e in spool.entries()] == [
        ("e1", "delivered", 1),
        ("e2", "pending", 1),
    ]
    old = spool.latest_run()
    assert old is not None
    assert (old.kind, old.generated, old.pending, old.unfinished) == ("propagate", 2, 1, True)
    # since replay, one id may be in several runs: each replay of a stored event is recorded
    replay = spool.new_run(1, "http://b/event", "db", kind="replay", run_key="k", upto=9)
    spool.add_many([("e1", Event("t", "p"))], cursor=9)
    assert spool.latest_run("replay", "k") == replay._replace(generated=1, pending=1, cursor=9)
    # a replay's events are resent and retried by the replay, never by propagate
    assert [e.event_id for e in spool.entries("pending", kind="propagate")] == ["e2"]
    spool.settle("e1", "failed", 1, "500")
    assert spool.requeue_failed() == 0
    spool.close()


def test_an_id_pending_in_two_runs_settles_in_its_own(tmp_path: Path) -> None:
    spool = Spool.open(tmp_path / "spool.db")
    first = spool.new_run(1, "http://a/event", "db", kind="replay", run_key="a")
    spool.add_many([("x", Event("t", "p"))])
    second = spool.new_run(1, "http://b/event", "db", kind="replay", run_key="b")
    spool.add_many([("x", Event("t", "p"))])
    spool.settle("x", "delivered", 1, "200")
    spool.flush()
    states = {e.run_id: e.state for e in spool.entries()}
    assert states == {first.run_id: "pending", second.run_id: "delivered"}
    spool.close()
    # a later process resends the first run's pending entry and settles it there alone
    spool = Spool.open(tmp_path / "spool.db")
    pending = spool.entries("pending", run_id=first.run_id)
    spool.track(pending)
    spool.settle("x", "failed", 3, "503")
    spool.flush()
    assert {e.run_id: e.state for e in spool.entries()} == {
        first.run_id: "failed",
        second.run_id: "delivered",
    }
    spool.close()


def test_pending_replay_events_do_not_fill_propagate_s_spool(tmp_path: Path) -> None:
    spool = Spool.open(tmp_path / "spool.db")
    spool.new_run(3, "http://a/event", "db", kind="replay", run_key="a")
    spool.add_many([(f"r{i}", Event("t", "p")) for i in range(3)])
    spool.close()
    assert Spool.open(tmp_path / "spool.db").pending_count == 0


def test_verify_checks_the_latest_run_and_other_senders_are_not_unexpected(
    tmp_path: Path, sqlite_url: str
) -> None:
    spool = Spool.open(tmp_path / "spool.db")
    store = Store.open(sqlite_url, create=True)
    now = datetime.now(UTC)
    for run_number, ids in enumerate((["a1", "a2"], ["b1", "b2", "b3"]), start=1):
        spool.begin_run(len(ids), "http://a/event", "/f", new=True)
        spool.add_many([(i, Event("t", i)) for i in ids], now.timestamp() - 2 + run_number)
        for i in ids:
            spool.settle(i, "delivered", 1, "200")
    sent_by_hand = ["curl-1", "send-once-1"]
    store.insert([Incoming(i, Event("t", i), now) for i in ["a1", "a2", "b1", "b2", "b3"]])
    store.insert([Incoming(i, Event("t", i), now) for i in sent_by_hand])
    latest = compare(spool, store)
    assert latest.ok
    assert (latest.run_id, latest.generated, latest.stored) == (2, 3, 3)
    assert sorted(latest.other) == sent_by_hand  # a1 and a2 are of run 1, not others
    first = compare(spool, store, spool.run(1))
    assert (first.run_id, first.generated, first.ok) == (1, 2, True)
    everything = compare(spool, store, all_runs=True)
    assert (everything.run_id, everything.generated, everything.runs) == (None, 5, 2)
    assert sorted(everything.other) == sent_by_hand
    spool.close()
    store.close()


def test_verify_is_not_ok_when_events_of_the_run_failed_or_are_pending(
    tmp_path: Path, sqlite_url: str
) -> None:
    spool = Spool.open(tmp_path / "spool.db")
    store = Store.open(sqlite_url, create=True)
    spool.begin_run(4, "http://a/event", "/f")
    spool.add_many([(i, Event("t", i)) for i in ("d", "f", "p")])
    spool.settle("d", "delivered", 1, "200")
    spool.settle("f", "failed", 30, "connection refused")
    store.insert([Incoming("d", Event("t", "d"), datetime.now(UTC))])
    report = compare(spool, store)
    assert (report.ok, report.verdict, report.failed, report.pending) == (
        False,
        "INCOMPLETE",
        1,
        1,
    )
    assert report.unfinished  # 3 of 4 generated
    assert report.to_json()["verdict"] == "INCOMPLETE"
    spool.close()
    store.close()


def test_a_settle_touches_no_index_but_the_pending_one_and_pending_reads_use_it(
    tmp_path: Path,
) -> None:
    """The state is in one index only, of pending rows (a settle removes one entry); the
    reads of what is pending find it there, not by scanning every row of every run."""
    spool = Spool.open(tmp_path / "spool.db")
    spool.new_run(None, "http://x/event", "events.json")
    spool.add_many([(f"id-{i}", Event("t", "p")) for i in range(5)])
    spool.settle("id-0", "delivered", 1, "200")
    spool.flush()
    indexed = {
        row[0]: row[1]
        for row in spool.connection.execute(
            "SELECT name, sql FROM sqlite_master WHERE type = 'index' AND tbl_name = 'spool'"
        )
    }
    assert {name for name, sql in indexed.items() if sql and "state" in sql} == {"spool_pending"}
    plan = spool.connection.execute(
        "EXPLAIN QUERY PLAN SELECT event_id FROM spool WHERE 1 AND state = 'pending' "
        "AND run_id = ? ORDER BY created_at, rowid",
        (1,),
    ).fetchall()
    assert any("spool_pending" in row[-1] for row in plan)
    assert [e.event_id for e in spool.entries("pending")] == [f"id-{i}" for i in range(1, 5)]
    assert spool.counts() == {"pending": 4, "delivered": 1, "failed": 0}
    spool.close()


def test_a_settle_goes_by_the_row_and_an_unknown_id_is_refused(tmp_path: Path) -> None:
    """An event settles by the row it was added (or tracked) as: nothing is looked up by
    event_id, which no index holds; an id this spool neither added nor tracked is a bug."""
    spool = Spool.open(tmp_path / "spool.db")
    spool.new_run(None, "http://x/event", "events.json")
    spool.add_many([("a", Event("t", "p")), ("b", Event("t", "p"))])
    with pytest.raises(ValueError, match="'c' was neither added nor tracked"):
        spool.settle("c", "delivered", 1, "200")
    spool.close()
    spool = Spool.open(tmp_path / "spool.db")
    with pytest.raises(ValueError, match="neither added nor tracked"):
        spool.settle("a", "delivered", 1, "200")  # pending, but not tracked by this one
    pending = spool.entries("pending")
    assert [e.seq for e in pending] == [1, 2]
    spool.track(pending[1:])
    spool.settle("b", "delivered", 1, "200")
    assert spool.counts() == {"pending": 1, "delivered": 1, "failed": 0}
    indexed = spool.connection.execute(
        "SELECT group_concat(sql, ' ') FROM sqlite_master WHERE type = 'index'"
    ).fetchone()[0]
    assert "event_id" not in indexed
    spool.close()


async def test_a_spool_that_cannot_be_written_at_a_settle_stops_the_run_with_its_error(
    tmp_path: Path,
) -> None:
    """Settlements are committed in batches; when such a commit fails, the run stops and
    says why (before, the sender's task died and the error was dropped)."""
    spool = Spool.open(tmp_path / "spool.db")
    spool.new_run(None, "http://x/event", "events.json")
    spool.add_many([(f"id-{i}", Event("t", "p")) for i in range(300)])
    spool.close()
    spool = Spool.open(tmp_path / "spool.db")
    pending = spool.entries("pending")
    spool.track(pending)
    spool.connection.execute("PRAGMA query_only = 1")
    clock = VirtualClock()
    run = propagator(
        clock,
        httpx.MockTransport(lambda request: httpx.Response(200)),
        Spooling(spool, resend=[(e.event_id, e.event) for e in pending]),
        Plan(EVENTS, 1.0, count=0),
    ).run()
    with pytest.raises(SpoolError, match="cannot write the spool: attempt to write a readonly"):
        await clock.run(run)
    spool.connection.execute("PRAGMA query_only = 0")
    # the batch whose commit failed stays pending (to be resent); the 44 settled after it
    # are committed now
    assert spool.counts() == {"pending": 256, "delivered": 44, "failed": 0}
    spool.close()


@pytest.mark.parametrize("update_from", [True, False], ids=["update-from", "one-by-one"])
def test_a_commit_of_many_rows_keeps_each_events_row_and_settlement(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, update_from: bool
) -> None:
    # 300 = 128 + 128 + 32 + 8 + 4: several pieces of a statement each; one-by-one is the
    # way of SQLite before 3.33, which has no UPDATE ... FROM
    monkeypatch.setattr(spool_module, "UPDATE_FROM", update_from)
    spool = Spool.open(tmp_path / "spool.db")
    spool.new_run(None, "http://x/event", "events.json")
    events = [(f"id-{i:03d}", Event("t", f"p{i}")) for i in range(300)]
    spool.add_many(events[:3])
    spool.add_many(events[3:])
    for i, (event_id, _) in enumerate(events):
        state = "failed" if i % 7 == 0 else "delivered"
        spool.settle(event_id, state, i % 3 + 1, f"r{i}")
    spool.flush()
    rows = spool.connection.execute(
        "SELECT seq, event_id, event_payload, state, attempts, last_result FROM spool ORDER BY seq"
    ).fetchall()
    assert [row[1:3] for row in rows] == [(i, e.event_payload) for i, e in events]
    expected = [("failed" if i % 7 == 0 else "delivered", i % 3 + 1, f"r{i}") for i in range(300)]
    assert [row[3:] for row in rows] == expected
    assert spool.pending_count == 0
    spool.close()
