"""Durations and points in time, and the pattern that both parses and documents them."""

from __future__ import annotations

import random
import re
from datetime import UTC, datetime, timedelta

import pytest

from eventctl.config import ConsumerConfig
from eventctl.consumer.app import create_app
from eventctl.store import Store
from eventctl.timefmt import DURATION_PATTERN, DurationTooLong, parse_duration, parse_since
from tests.helpers import in_process

NOW = datetime(2026, 11, 27, 9, 0, tzinfo=UTC)
EARLIEST = datetime.min.replace(tzinfo=UTC)


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("30", 30.0),
        ("1.5", 1.5),
        ("30s", 30.0),
        ("250ms", 0.25),
        ("1h30m", 5400.0),
        ("2D", 172800.0),
        ("1w", 604800.0),
        (" 10m ", 600.0),
        ("0", 0.0),
    ],
)
def test_durations(text: str, seconds: float) -> None:
    assert parse_duration(text) == seconds
    assert re.search(DURATION_PATTERN, text)


@pytest.mark.parametrize(
    "text", ["", "m", "1e3", "-5", "+5", "inf", "nan", "1_000", "\u0663s", "1h 30m", "5 s", "1y"]
)
def test_what_is_not_a_duration(text: str) -> None:
    with pytest.raises(ValueError, match="not a duration"):
        parse_duration(text)
    assert not re.search(DURATION_PATTERN, text)


def test_an_endless_duration_is_refused_but_as_an_age_means_the_beginning() -> None:
    endless = "9" * 400
    with pytest.raises(ValueError, match=r"too long"):
        parse_duration(endless + "w")
    assert parse_since(endless, NOW) == EARLIEST
    assert parse_since("99999999999d", NOW) == EARLIEST  # finite, but before year 1


def test_points_in_time() -> None:
    assert parse_since("10m", NOW) == NOW - timedelta(minutes=10)
    assert parse_since("2026-11-27T08:00:00Z", NOW) == datetime(2026, 11, 27, 8, tzinfo=UTC)
    assert parse_since("2026-11-27T08:00:00", NOW) == datetime(2026, 11, 27, 8, tzinfo=UTC)
    assert parse_since("2026-11-27T10:00:00+02:00", NOW) == datetime(2026, 11, 27, 8, tzinfo=UTC)
    assert parse_since("0001-01-01T00:00:00+14:00", NOW) == EARLIEST
    assert parse_since("9999-12-31T23:59:59-14:00", NOW) == datetime.max.replace(tzinfo=UTC)
    with pytest.raises(ValueError, match="not a time: 'yesterday'"):
        parse_since("yesterday", NOW)


def accepts(text: str) -> bool:
    try:
        parse_duration(text)
    except DurationTooLong:
        return True
    except ValueError:
        return False
    return True


def test_the_pattern_is_exactly_what_parse_duration_takes() -> None:
    rng = random.Random(7)
    alphabet = "0123456789.msMShHdDwWy \t\n\u00a0\u2003\u0663+-e_"
    texts = ["".join(rng.choice(alphabet) for _ in range(rng.randint(0, 7))) for _ in range(20000)]
    for text in texts:
        assert accepts(text) == bool(re.search(DURATION_PATTERN, text)), repr(text)
    assert sum(map(accepts, texts)) > 500  # the alphabet makes durations often enough


@pytest.mark.anyio
async def test_the_openapi_document_states_the_parsers_pattern(sqlite_url: str) -> None:
    store = Store.open(sqlite_url, create=True)
    try:
        async with in_process(create_app(ConsumerConfig(), store)) as client:
            document = (await client.get("/openapi.json")).json()
    finally:
        store.close()
    parameters = {p["name"]: p for p in document["paths"]["/events"]["get"]["parameters"]}
    for name in ("since", "until"):
        forms = parameters[name]["schema"]["anyOf"]
        assert {"type": "string", "pattern": DURATION_PATTERN} in forms
