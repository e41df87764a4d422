"""Durations like `30s` or `1h30m`, and points in time like `10m` (ago) or an ISO timestamp."""

from __future__ import annotations

import math
import re
from datetime import UTC, datetime, timedelta

_UNITS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
_NUMBER = r"[0-9]+(?:\.[0-9]+)?"
_UNIT = "[mM][sS]|[sSmMhHdDwW]"
DURATION_PATTERN = rf"^\s*(?:{_NUMBER}|(?:{_NUMBER}(?:{_UNIT}))+)\s*$"
"""What parse_duration takes (Python `re` syntax, as the OpenAPI document states it): ASCII
digits, seconds alone or parts with units in any case, whitespace around."""
_DURATION = re.compile(DURATION_PATTERN)
_PART = re.compile(rf"({_NUMBER})({_UNIT})")


class DurationTooLong(ValueError):
    """A duration too long to be a float (as a `since`, it means: from the beginning)."""


def _shown(text: str) -> str:
    return repr(text if len(text) <= 40 else text[:37] + "...")


def parse_duration(text: str) -> float:
    """Seconds in `text`: a plain number of seconds, or parts like `1h30m`, `250ms`, `2d`
    (units in any case; ASCII digits only, no signs or exponents)."""
    shown = _shown(text.strip().lower())
    if not _DURATION.fullmatch(text):
        raise ValueError(f"not a duration: {shown} (try 30s, 10m, 2h or 1h30m)")
    seconds = 0.0
    parts = _PART.findall(text)
    for number, unit in parts:
        seconds += float(number) * _UNITS[unit.lower()]
    if not parts:
        seconds = float(text)
    if seconds == math.inf:
        raise DurationTooLong(f"not a duration: {shown} (too long)")
    return seconds


def parse_since(text: str, now: datetime) -> datetime:
    """A point in time: an ISO-8601 timestamp (UTC when no offset is given), or a duration ago."""
    try:
        moment = datetime.fromisoformat(text.strip())
    except ValueError:
        try:
            return now - timedelta(seconds=parse_duration(text))
        except (DurationTooLong, OverflowError):
            return datetime.min.replace(tzinfo=UTC)  # further back than any event
        except ValueError:
            raise ValueError(
                f"not a time: {_shown(text)} (use an ISO time like 2026-11-27T09:00:00Z, "
                "or an age like 10m, 2h, 1d)"
            ) from None
    if moment.tzinfo is None:
        return moment.replace(tzinfo=UTC)
    try:
        return moment.astimezone(UTC)
    except OverflowError:  # within hours of year 1 or 9999: as far as UTC goes
        return (datetime.min if moment.year == 1 else datetime.max).replace(tzinfo=UTC)
