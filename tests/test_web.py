"""The live web page at GET /, driven in headless Chromium (Debian's, no downloaded browser)."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.conftest import ROOT, Server

CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


@pytest.fixture
def browser_page() -> Iterator[object]:
    path = shutil.which("chromium") or shutil.which("chromium-browser")
    if path is None:
        if os.environ.get("CI") == "true":
            pytest.fail("CI=true but there is no chromium (apt-get install chromium)")
        pytest.skip("no chromium on this machine (apt-get install chromium)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=path, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1280, "height": 760})
        try:
            yield page
        finally:
            browser.close()


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

    shot = tmp_path / "web.png"
    page.screenshot(path=str(shot))
    assert shot.stat().st_size > 10_000
    if os.environ.get("EVENTCTL_TEST_SCREENSHOT") == "1":
        shutil.copy(shot, ROOT / "docs" / "web.png")
