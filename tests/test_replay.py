"""Replay's source (eventctl.replay) on real stores, and its pacing on a virtual clock."""

from __future__ import annotations

import dataclasses
import json
import os
import random
from collections.abc import Callable, Iterator, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest

from eventctl.errors import DatabaseError
from eventctl.events import Event
from eventctl.propagator.propagator import (
    Delivery,
    Observers,
    Pages,
    Plan,
    Propagator,
    Runtime,
    Scheduled,
    Spooling,
)
from eventctl.propagator.spool import Spool
from eventctl.replay import Pacing, Replay, ReplayInputError, Row, Selection
from eventctl.store import Incoming, Store
from tests.vclock import VirtualClock

T0 = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)
TO = "http://consumer.test/event"


def fill(store: Store, n: int, *, gap: float = 0.01, types: tuple[str, ...] = ("a", "b")) -> None:
    store.insert(
        [
            Incoming(
                f"id-{i:05d}",
                Event(types[i % len(types)], f"p{i}"),
                T0 + timedelta(seconds=i * gap),
            )
            for i in range(n)
        ]
    )


ReplayOf = Callable[..., Replay]


@pytest.fixture
def replay_of(store: Store, database_url: str) -> Iterator[ReplayOf]:
    opened: list[Replay] = []

    def make(selection: Selection | None = None, **kwargs: Any) -> Replay:
        replay = Replay.from_database(database_url, selection or Selection(), to=TO, **kwargs)
        opened.append(replay)
        return replay

    yield make
    for replay in opened:
        replay.close()


def ids_of(replay: Replay, after: int | None = None) -> list[str]:
    bounds = replay.bounds()
    return [row[1] for page in replay.rows(bounds, after) for row in page]


def test_reads_every_page_oldest_first(store: Store, replay_of: ReplayOf) -> None:
    fill(store, 2500)
    replay = replay_of()
    pages = list(replay.rows(replay.bounds()))
    assert [len(p) for p in pages] == [1000, 1000, 500]
    assert [row[1] for p in pages for row in p] == [f"id-{i:05d}" for i in range(2500)]


def test_selection_as_list_events_selects(store: Store, replay_of: ReplayOf) -> None:
    fill(store, 100)
    by_type = replay_of(Selection(types=("a",)))
    assert by_type.bounds().total == 50
    newest = replay_of(Selection(types=("b",), limit=3))
    assert ids_of(newest) == ["id-00095", "id-00097", "id-00099"]  # the newest 3, oldest first
    window = replay_of(
        Selection(since=T0 + timedelta(seconds=0.5), until=T0 + timedelta(seconds=0.53))
    )
    assert ids_of(window) == ["id-00050", "id-00051", "id-00052"]
    chosen = replay_of(Selection(event_ids=("id-00007", "id-00003")))
    assert ids_of(chosen) == ["id-00003", "id-00007"]
    assert ids_of(replay_of(Selection(q="p42"))) == ["id-00042"]


def test_a_snapshot_ends_where_it_began(store: Store, replay_of: ReplayOf) -> None:
    fill(store, 10)
    replay = replay_of()
    bounds = replay.bounds()
    store.insert([Incoming("late", Event("a", "late"), T0)])
    assert [row[1] for page in replay.rows(bounds) for row in page][-1] == "id-00009"
    after_row_8 = [row[1] for page in replay.rows(bounds, after=8) for row in page]
    assert after_row_8 == ["id-00008", "id-00009"]  # rows 9 and 10


def test_unknown_id_and_empty_selection_are_input_errors(store: Store, replay_of: ReplayOf) -> None:
    fill(store, 3)
    with pytest.raises(ReplayInputError, match="no event with event_id nope \\(and 1 more\\)"):
        replay_of(Selection(event_ids=("id-00001", "nope", "nah"))).bounds()
    with pytest.raises(ReplayInputError, match="no events match \\(--type zzz\\)"):
        replay_of(Selection(types=("zzz",))).bounds()


def test_the_key_names_source_selection_destination_and_ids(
    store: Store, replay_of: ReplayOf
) -> None:
    assert replay_of().key == replay_of().key
    assert replay_of().key != replay_of(Selection(types=("a",))).key
    assert replay_of().key != replay_of(new_ids=True).key


def test_speed_divides_the_recorded_gaps() -> None:
    rows: list[Row] = [
        (i + 1, f"e{i}", "t", "p", T0 + timedelta(seconds=s)) for i, s in enumerate([0, 1, 1.5, 4])
    ]
    pages = list(Pacing("speed", 10).schedule(iter([rows[:2], rows[2:]]), None))
    assert [s.due for page in pages for s in page] == pytest.approx([0, 0.1, 0.15, 0.4])
    assert [s.event_id for page in pages for s in page] == ["e0", "e1", "e2", "e3"]
    paced = list(Pacing("rate", 4).schedule(iter([rows]), lambda: "new"))
    assert [(s.due, s.event_id) for s in paced[0]] == [
        (0, "new"),
        (0.25, "new"),
        (0.5, "new"),
        (0.75, "new"),
    ]


class Peer:
    def __init__(self, clock: VirtualClock, fail_first: int = 0) -> None:
        self.clock = clock
        self.seen: list[tuple[float, str]] = []
        self.fail_first = fail_first

    async def __call__(self, request: httpx.Request) -> httpx.Response:
        self.seen.append((self.clock.now, request.headers["Idempotency-Key"]))
        if len(self.seen) <= self.fail_first:
            return httpx.Response(503, headers={"Retry-After": "1"})
        return httpx.Response(200, json={"status": "success"})


async def _inline(read: Callable[[], Sequence[Scheduled]]) -> Sequence[Scheduled]:
    return read()


def replayer(
    clock: VirtualClock,
    peer: Peer,
    pages: Pages,
    *,
    cap: int = 100,
    spool: Spool | None = None,
) -> Propagator:
    runtime = Runtime(
        clock=clock,
        sleep=clock.sleep,
        cpu_clock=clock,
        rng=random.Random(1),
        jitter_rng=random.Random(2),
        read_page=_inline,
    )
    return Propagator(
        Plan(replay=pages),
        Delivery(TO, httpx.MockTransport(peer), max_in_flight=cap),
        spooling=None if spool is None else Spooling(spool),
        runtime=runtime,
        observers=Observers(),
    )


def recorded(gaps: list[float]) -> list[Row]:
    at, rows = T0, list[Row]()
    for i, gap in enumerate(gaps):
        at += timedelta(seconds=gap)
        rows.append((i + 1, f"e{i}", "t", f"p{i}", at))
    return rows


@pytest.mark.anyio
async def test_speed_keeps_the_recorded_gaps_on_the_clock() -> None:
    rng = random.Random(7)
    rows = recorded([rng.expovariate(5) for _ in range(300)])
    clock = VirtualClock()
    clock.now = 1000.0
    peer = Peer(clock)
    pages = Pacing("speed", 10).schedule(iter([rows[:120], rows[120:]]), None)
    stats = await clock.run(replayer(clock, peer, pages).run())
    assert stats.delivered == 300
    assert [i for _, i in peer.seen] == [r[1] for r in rows]
    start = peer.seen[0][0]
    for (sent, _), row in zip(peer.seen, rows, strict=True):
        assert row[4] is not None
        assert rows[0][4] is not None
        intended = (row[4] - rows[0][4]).total_seconds() / 10
        assert abs((sent - start) - intended) < 0.002


@pytest.mark.anyio
async def test_flat_out_skips_nothing_and_keeps_the_cap() -> None:
    clock = VirtualClock()
    in_flight, most = 0, 0

    class Slow(Peer):
        async def __call__(self, request: httpx.Request) -> httpx.Response:
            nonlocal in_flight, most
            in_flight += 1
            most = max(most, in_flight)
            await clock.sleep(0.01)
            in_flight -= 1
            return await super().__call__(request)

    peer = Slow(clock)
    rows = recorded([0.0] * 1000)
    stats = await clock.run(
        replayer(clock, peer, Pacing().schedule(iter([rows]), None), cap=16).run()
    )
    assert stats.delivered == 1000
    assert stats.skipped_ticks == 0
    assert most == 16
    assert sorted(i for _, i in peer.seen) == sorted(r[1] for r in rows)


@pytest.mark.anyio
async def test_the_cursor_moves_with_the_spooled_events(tmp_path: Path) -> None:
    spool = Spool.open(tmp_path / "spool.db")
    run = spool.new_run(50, TO, "source", kind="replay", run_key="k", upto=50)
    clock = VirtualClock()
    peer = Peer(clock, fail_first=3)
    rows = recorded([0.0] * 50)
    pages = Pacing("rate", 100).schedule(iter([rows[:20], rows[20:]]), None)
    stats = await clock.run(replayer(clock, peer, pages, spool=spool).run())
    assert stats.delivered == 50
    after = spool.run(run.run_id)
    assert after is not None
    assert (after.cursor, after.generated, after.pending, after.unfinished) == (50, 50, 0, False)
    assert len(peer.seen) == 53  # three answered 503 and were sent again, with the same id
    spool.close()


def export(path: Path, lines: Sequence[object]) -> Path:
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    return path


def row(i: int, **extra: object) -> dict[str, object]:
    return {
        "id": i,
        "event_id": f"x{i}",
        "event_type": "t",
        "event_payload": f"p{i}",
        "received_at": (T0 + timedelta(seconds=i)).isoformat(),
        **extra,
    }


def test_an_export_is_replayed_oldest_first(tmp_path: Path) -> None:
    newest_first = [row(i) for i in range(5, 0, -1)]
    for path in (export(tmp_path / "e.ndjson", newest_first), tmp_path / "e.json"):
        if path.suffix == ".json":
            path.write_text(json.dumps(newest_first, indent=2))
        replay = Replay.from_file(path, Selection(), needs_times=True, to=TO)
        try:
            bounds = replay.bounds()
            got = [r for page in replay.rows(bounds, times=True) for r in page]
        finally:
            replay.close()
        assert [r[1] for r in got] == ["x1", "x2", "x3", "x4", "x5"]
        assert got[0][4] == T0 + timedelta(seconds=1)


@pytest.mark.parametrize(
    ("lines", "message"),
    [
        ([row(1), "not an object"], "line 2: not a JSON object"),
        ([row(1), row(2, colour="red")], "line 2: unknown field 'colour'"),
        ([row(1), row(2, event_type=7)], "line 2: event_type must be a string"),
        ([row(1), {**row(2), "event_id": None}], "line 2: no event_id"),
        ([row(1), row(1)], "line 2: event_id x1 or id 1 appears earlier"),
        ([row(1), {k: v for k, v in row(2).items() if k != "id"}], "line 2: no id, unlike"),
        ([row(1), row(2, received_at="yesterday")], "line 2: received_at must be an ISO 8601"),
        (
            [row(1), {k: v for k, v in row(2).items() if k != "received_at"}],
            "line 2: no received_at, which --speed",
        ),
    ],
)
def test_a_bad_export_names_its_line(tmp_path: Path, lines: list[object], message: str) -> None:
    path = export(tmp_path / "bad.ndjson", lines)
    with pytest.raises(ReplayInputError, match=message):
        Replay.from_file(path, Selection(), needs_times=True, to=TO)


def test_a_line_that_is_not_json_is_named(tmp_path: Path) -> None:
    path = tmp_path / "bad.ndjson"
    path.write_text(json.dumps(row(1)) + "\n\n" + '{"id": 2,\n')
    with pytest.raises(ReplayInputError, match=r"bad.ndjson line 3: not valid JSON"):
        Replay.from_file(path, Selection(), needs_times=False, to=TO)
    path.write_text('[\n  {"id": 1},\n  oops\n]')
    with pytest.raises(ReplayInputError, match=r"bad.ndjson line 3: not valid JSON"):
        Replay.from_file(path, Selection(), needs_times=False, to=TO)
    with pytest.raises(ReplayInputError, match="cannot read"):
        Replay.from_file(tmp_path / "missing.ndjson", Selection(), needs_times=False, to=TO)


def test_the_key_is_made_of_the_flags_as_typed_and_the_window_is_kept() -> None:
    an_hour_ago = Selection(since=T0, window_flags=("1h", None))
    later = Selection(since=T0 + timedelta(minutes=5), window_flags=("1h", None))
    assert an_hour_ago.key() == later.key()
    assert later.in_window(an_hour_ago.window()) == dataclasses.replace(later, since=T0)
    assert later.in_window(None) is later


def test_an_export_can_come_through_a_pipe(tmp_path: Path) -> None:
    read, write = os.pipe()
    os.write(write, ("\n" + json.dumps(row(1)) + "\n" + json.dumps(row(2)) + "\n").encode())
    os.close(write)
    try:
        replay = Replay.from_file(Path(f"/dev/fd/{read}"), Selection(), needs_times=False, to=TO)
    finally:
        os.close(read)
    try:
        assert [r[1] for page in replay.rows(replay.bounds()) for r in page] == ["x1", "x2"]
    finally:
        replay.close()


@pytest.mark.anyio
async def test_a_source_that_fails_stops_the_run_after_what_is_in_flight_settles() -> None:
    clock = VirtualClock()
    peer = Peer(clock)

    def pages() -> Pages:
        yield [Scheduled(f"e{i}", Event("t", "p"), 0.0, i + 1) for i in range(5)]
        raise DatabaseError("events.db: cannot read events: disk I/O error")

    propagator = replayer(clock, peer, pages())
    with pytest.raises(DatabaseError, match="disk I/O error"):
        await clock.run(propagator.run())
    assert propagator.stats.delivered == 5
    assert propagator.stats.in_flight == 0


def test_new_ids_take_an_export_that_repeats_an_event_id(tmp_path: Path) -> None:
    path = export(tmp_path / "copies.ndjson", [row(1), row(2, event_id="x1")])
    with pytest.raises(ReplayInputError, match="event_id x1 or id 2 appears earlier"):
        Replay.from_file(path, Selection(), needs_times=False, to=TO)
    replay = Replay.from_file(path, Selection(), needs_times=False, to=TO, new_ids=True)
    try:
        assert replay.bounds().total == 2
    finally:
        replay.close()
