"""What requests to the consumer may say: the limits and patterns its handlers enforce.

The handlers (app.py) check them; the OpenAPI document (openapi.py) states them from here.
"""

from __future__ import annotations

IDEMPOTENCY_KEY_PATTERN = r"^[\x21-\x7e]([\x20-\x7e]{0,253}[\x21-\x7e])?$"
CURSOR_PREFIX = "c1."
CURSOR_PATTERN = r"^c1\.\d{1,18}$"
DEFAULT_PAGE = 50
MAX_PAGE = 1000
MAX_ROW_ID = 2**63 - 1
ROW_ID_HEADER_PATTERN = rf"^\d{{1,{len(str(MAX_ROW_ID)) - 1}}}$"
"""A Last-Event-ID as the document states it: digits too few to pass MAX_ROW_ID (the
handler takes any row id up to MAX_ROW_ID; a pattern cannot say "at most" of a number)."""


class SummaryLimits:
    """Defaults and maxima of GET /events/summary: the window and bucket in seconds, and
    how many event types are listed. The window is bounded, so the series reads at most a
    day of the received_at index; at most 86400 buckets are answered."""

    window = 300
    max_window = 86_400
    bucket = 1
    max_bucket = 3_600
    top = 100
    max_top = 1_000
