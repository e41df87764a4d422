"""The live web page at GET /, driven in headless Chromium (Debian's, no downloaded browser)."""

from __future__ import annotations

import json
import math
import os
import random
import subprocess
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest

from eventctl.events import Event
from eventctl.outbox import Outbox
from eventctl.store import Incoming, Store
from tests.consumer.test_routes_api import BILLING_URL, PLAIN, fill_routes
from tests.helpers import ROOT, Server, chromium_page


@pytest.fixture
def browser_page() -> Iterator[object]:
    with chromium_page(1280, 760) as page:
        yield page


def post(server: Server, events: list[tuple[str, str]]) -> None:
    with httpx.Client(base_url=server.url) as client:
        for event_type, payload in events:
            client.post("/event", json={"event_type": event_type, "event_payload": payload})


def test_the_page_shows_stored_and_new_events_live(
    browser_page: object, server: Server, tmp_path: Path
) -> None:
    from playwright.sync_api import Page, expect

    page = browser_page
    assert isinstance(page, Page)
    post(server, [("order.created", '{"order_id": 1}'), ("user.signed_up", '{"user": "ada"}')])
    page.goto(server.url + "/")
    expect(page.locator("#status")).to_have_text("live")
    expect(page.locator("#rows tr")).to_have_count(2)

    post(
        server,
        [("order.created", f'{{"order_id": {i}}}') for i in range(2, 6)]
        + [("payment.failed", '{"reason": "card_declined"}')],
    )
    expect(page.locator("#rows tr")).to_have_count(7)
    expect(page.locator("#rows tr").first).to_contain_text("payment.failed")
    expect(page.locator("#total")).to_have_text("7 events")
    expect(page.locator("#types label").first).to_contain_text("order.created")
    expect(page.locator("#types label").first.locator(".count")).to_have_text("5")

    page.locator('#types input[data-type="order.created"]').uncheck()
    expect(page.locator("#rows tr:visible")).to_have_count(2)
    page.locator('#types input[data-type="order.created"]').check()
    expect(page.locator("#rows tr:visible")).to_have_count(7)
    expect(page.locator("#rate")).to_contain_text("events/s")
    expect(page.locator("#forwarding")).to_be_hidden()  # no forwarding routes here


def test_the_forwarding_panel_shows_each_route_and_follows_changes(
    browser_page: object, sqlite_url: str, tmp_path: Path
) -> None:
    from playwright.sync_api import Page, expect

    page = browser_page
    assert isinstance(page, Page)
    fill_routes(sqlite_url)
    server = Server(sqlite_url, tmp_path)
    try:
        page.goto(server.url + "/")
        expect(page.locator("#status")).to_have_text("live")
        panel = page.locator("#forwarding")
        expect(panel).to_be_visible()
        expect(panel.locator("#routes tr")).to_have_count(3)
        cells = panel.locator('#routes tr[data-route="billing"] td')
        expect(cells).to_have_text(["billing", "paused", "2", "2h00m", "1", "1"])
        assert "5 failures in a row" in (cells.nth(1).get_attribute("title") or "")
        assert cells.nth(0).get_attribute("title") == BILLING_URL
        expect(panel.locator('#routes tr[data-route="gone"] td').nth(1)).to_have_text("disabled")
        expect(panel.locator(f'#routes tr[data-route="{PLAIN}"] td').nth(2)).to_have_text("4")

        # the panel reads GET /routes again by itself
        store = Store.open(sqlite_url)
        try:
            Outbox(store).enable("billing")
            Outbox(store).retry("billing")
        finally:
            store.close()
        expect(cells.nth(1)).to_have_text("active")
        expect(cells).to_have_text(["billing", "active", "3", "2h00m", "1", "0"])
    finally:
        server.stop()


TYPES = {"order.created": 1700, "order.paid": 1200, "user.signed_up": 700, "payment.failed": 400}
SPECIAL = '{"order_id": 5531, "note": "it\'s \u00fcn\u00efcode, \\"quoted\\"", "items": [1, 2]}'


def fill(store: Store) -> None:
    """4,000 events: half in the last five minutes, half hours ago; then one to click."""
    now = datetime.now(UTC)
    records = []
    rng = random.Random(7)
    n = 0
    for event_type, how_many in TYPES.items():
        for i in range(how_many):
            if event_type == "payment.failed":
                reason = "insufficient_funds" if i % 50 == 0 else "card_declined"
                payload = f'{{"order_id": "ord_{n:05}", "reason": "{reason}"}}'
            else:
                payload = f'{{"order_id": "ord_{n:05}"}}'
            recent = timedelta(seconds=rng.triangular(0, 295, 60) * (1.3 + math.sin(n)) / 2.3)
            age = recent if n % 2 else timedelta(hours=3, seconds=n)
            records.append(Incoming(f"seed/{n}", Event(event_type, payload), now - age))
            n += 1
    records.sort(key=lambda r: r.received_at)
    store.insert(records)
    store.insert([Incoming("order-5531-created", Event("order.created", SPECIAL), now)])


def type_counts_on_page(page: Any) -> dict[str, int]:
    labels = page.locator("#types label")
    return {
        labels.nth(i).locator("input").get_attribute("data-type"): int(
            labels.nth(i).locator(".count").inner_text().replace(",", "")
        )
        for i in range(labels.count())
    }


def recent_in_chart(page: Any) -> int:
    """The events the page's chart holds for the last 300 s (of the server's clock)."""
    return int(
        page.evaluate(
            """() => { const now = serverSecond(); let sum = 0;
                 for (const [s, n] of perSecond) if (s > now - WINDOW && s <= now) sum += n;
                 return sum; }"""
        )
    )


def test_a_new_event_lands_in_the_servers_present_second_whatever_the_pages_clock(
    browser_page: object, server: Server
) -> None:
    """The page read its summary 0.1 s after a second ticked over on its own clock, but 0.05 s
    before it did on the server's; an event received 0.25 s later belongs to the server's
    new second. Measuring the skew in whole seconds put that second in the future, so the
    chart left it out until the next tick."""
    from playwright.sync_api import Page, expect

    page = browser_page
    assert isinstance(page, Page)
    page.add_init_script(
        "window.fakeNow = null; const realNow = Date.now.bind(Date);"
        " Date.now = () => window.fakeNow ?? realNow();"
    )
    page.goto(server.url + "/")
    expect(page.locator("#status")).to_have_text("live")
    second = 1_800_000_000
    window = [0] * 299 + [1]
    placed = page.evaluate(
        """([second, counts]) => {
             const iso = (s) => new Date(s * 1000).toISOString();
             window.fakeNow = (second + 1.05) * 1000;
             applySummary({total: 1, last_id: 1, type_count: 1,
                           types: [{event_type: "t", count: 1}], now: iso(second + 0.95),
                           series: {start: iso(second - 299), bucket_seconds: 1, counts}});
             window.fakeNow = (second + 1.3) * 1000;
             count({id: 2, event_type: "t", received_at: iso(second + 1.2)});
             return serverSecond();
           }""",
        [second, window],
    )
    assert placed == second + 1
    assert recent_in_chart(page) == 2


def test_the_page_counts_the_whole_database_shows_details_and_searches(
    browser_page: object, sqlite_url: str, tmp_path: Path
) -> None:
    from playwright.sync_api import Page, expect

    page = browser_page
    assert isinstance(page, Page)
    store = Store.open(sqlite_url, create=True)
    fill(store)
    server = Server(sqlite_url, tmp_path)
    problems: list[str] = []
    page.on("console", lambda m: problems.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: problems.append(str(e)))
    page.on(
        "response",
        lambda r: problems.append(f"{r.status} {r.url}") if r.status >= 400 else None,
    )
    page.add_init_script(
        "window.cspViolations = [];"
        "document.addEventListener('securitypolicyviolation',"
        " (e) => window.cspViolations.push(e.violatedDirective + ' ' + e.blockedURI));"
    )
    page.context.grant_permissions(["clipboard-read", "clipboard-write"], origin=server.url)
    try:
        page.goto(server.url + "/")
        expect(page.locator("#status")).to_have_text("live")
        total = store.count()
        assert total == 4001
        expect(page.locator("#total")).to_have_text(f"{total:,} events")
        expected = {kind: n for kind, n, _, _ in store.type_counts()}
        assert type_counts_on_page(page) == expected
        recent = len(store.ids_since(datetime.now(UTC) - timedelta(seconds=299)))
        assert abs(recent_in_chart(page) - recent) <= 2  # the edge second may have moved
        assert recent_in_chart(page) >= 2000
        expect(page.locator("#rows tr")).to_have_count(100)

        if os.environ.get("EVENTCTL_TEST_SCREENSHOT") == "1":
            page.wait_for_timeout(1500)  # the first rows' highlight fades
            page.screenshot(path=str(ROOT / "docs" / "web.png"))

        # streamed events keep every count right
        post(server, [("order.paid", '{"order_id": "ord_x"}')] * 3 + [("brand.new", "{}")])
        expect(page.locator("#total")).to_have_text(f"{total + 4:,} events")
        expected = {kind: n for kind, n, _, _ in store.type_counts()}
        expect(page.locator('#types label:has(input[data-type="brand.new"]) .count')).to_have_text(
            "1"
        )
        assert type_counts_on_page(page) == expected
        assert recent_in_chart(page) >= recent + 4 - 2

        # the detail of a clicked row
        page.locator('#rows tr[data-event-id="order-5531-created"]').click()
        dialog = page.locator("#detail")
        expect(dialog).to_be_visible()
        stored = store.event("order-5531-created")
        assert stored is not None
        expect(page.locator("#d-id")).to_have_text(str(stored.id))
        expect(page.locator("#d-event-id")).to_have_text("order-5531-created")
        expect(page.locator("#d-type")).to_have_text("order.created")
        expect(page.locator("#d-received")).to_have_text(stored.to_json()["received_at"])
        pretty = json.dumps(json.loads(SPECIAL), indent=2, ensure_ascii=False)
        assert page.locator("#d-payload").inner_text() == pretty
        curl = page.locator("#d-curl").inner_text()
        page.locator("#copy-curl").click()
        expect(page.locator("#copy-curl")).to_have_text("Copied")
        assert page.evaluate("navigator.clipboard.readText()") == curl
        page.locator("#copy-payload").click()
        assert page.evaluate("navigator.clipboard.readText()") == SPECIAL
        page.locator("#copy-id").click()
        assert page.evaluate("navigator.clipboard.readText()") == "order-5531-created"
        before = store.count()
        sent = subprocess.run(
            ["bash", "-c", curl.replace("curl -sS", "curl -sS -i", 1)],
            capture_output=True,
            text=True,
            timeout=30,
            check=True,
        )
        assert "HTTP/1.1 200" in sent.stdout, sent.stdout + sent.stderr
        assert "idempotent-replayed: true" in sent.stdout.lower()  # the same event, again
        assert store.count() == before
        # and the same command with another id stores that very event anew
        again = curl.replace("Idempotency-Key: order-5531-created", "Idempotency-Key: copy-1")
        subprocess.run(["bash", "-c", again], capture_output=True, timeout=30, check=True)
        copied = store.event("copy-1")
        assert copied is not None
        assert (copied.event_type, copied.event_payload) == ("order.created", SPECIAL)
        page.locator("#close").click()
        expect(dialog).to_be_hidden()

        # the search box is GET /events?q=
        page.locator("#search").fill("insufficient_funds")
        matching = store.events(limit=1000, q="insufficient_funds")
        assert len(matching) == 8
        expect(page.locator("#rows tr")).to_have_count(8)
        expect(page.locator("#matches")).to_have_text("8 matching")
        shown = page.locator("#rows tr").evaluate_all("rows => rows.map(r => r.dataset.eventId)")
        assert shown == [e.event_id for e in matching]
        post(server, [("payment.failed", '{"reason": "insufficient_funds"}'), ("x", "other")])
        expect(page.locator("#rows tr")).to_have_count(9)
        page.locator("#search").fill("")
        expect(page.locator("#rows tr")).to_have_count(100)
        expect(page.locator("#rows tr").first).to_contain_text("other")

        assert page.evaluate("window.cspViolations") == []
        assert problems == []
        icon = httpx.get(server.url + page.locator('link[rel="icon"]').get_attribute("href"))
        assert icon.status_code == 200
    finally:
        store.close()
        server.stop()
