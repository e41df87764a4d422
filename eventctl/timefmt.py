"""Durations like `30s` or `1h30m`, and points in time like `10m` (ago) or an ISO timestamp."""

from __future__ import annotations

import math
import re
from datetime import UTC, datetime, timedelta

_UNITS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d|w)")


def parse_duration(text: str) -> float:
    """Seconds in `text`: a plain number of seconds, or parts like `1h30m`, `250ms`, `2d`."""
    text = text.strip().lower()
    try:
        seconds = float(text)
    except ValueError:
        pos = 0
        seconds = 0.0
        for match in _PART.finditer(text):
            if match.start() != pos:
                break
            seconds += float(match.group(1)) * _UNITS[match.group(2)]
            pos = match.end()
        if pos == 0 or pos != len(text):
            raise ValueError(f"not a duration: {text!r} (try 30s, 10m, 2h or 1h30m)") from None
    if not 0 <= seconds < math.inf:
        raise ValueError(f"not a duration: {text!r}")
    return seconds


def parse_since(text: str, now: datetime) -> datetime:
    """A point in time: an ISO-8601 timestamp (UTC when no offset is given), or a duration ago."""
    try:
        moment = datetime.fromisoformat(text.strip())
    except ValueError:
        try:
            return now - timedelta(seconds=parse_duration(text))
        except ValueError:
            raise ValueError(
                f"not a time: {text!r} (use an ISO time like 2026-11-27T09:00:00Z, "
                "or an age like 10m, 2h, 1d)"
            ) from None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)
