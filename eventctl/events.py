"""The Event type and the one set of rules every event must follow."""

from __future__ import annotations

import json
import random
import re
import time
from typing import Any, NamedTuple

from eventctl.errors import InvalidEvent

MAX_EVENT_TYPE_LENGTH = 255
FIELDS = frozenset({"event_type", "event_payload"})
# Regex classes (Python `re` syntax, shared with the OpenAPI schema). Unicode's Cf (format)
# characters are invisible: an event_type of only these and whitespace is blank (test_events.py
# checks the list against unicodedata). Cc (C0, DEL, C1) and the line and paragraph separators
# (Zl, Zp) are refused anywhere in an event_type.
FORMAT_CHARACTERS = (
    r"\u00ad\u0600-\u0605\u061c\u06dd\u070f\u0890-\u0891\u08e2\u180e\u200b-\u200f"
    r"\u202a-\u202e\u2060-\u2064\u2066-\u206f\ufeff\ufff9-\ufffb\U000110bd\U000110cd"
    r"\U00013430-\U00013438\U0001bca0-\U0001bca3\U0001d173-\U0001d17a\U000e0001"
    r"\U000e0020-\U000e007f"
)
CONTROL_CHARACTERS = r"\x00-\x1f\x7f-\x9f\u2028\u2029"
EVENT_TYPE_PATTERN = (
    f"^(?:[^\\S{CONTROL_CHARACTERS}]|[{FORMAT_CHARACTERS}])*"
    f"[^{CONTROL_CHARACTERS}\\s{FORMAT_CHARACTERS}][^{CONTROL_CHARACTERS}]*$"
)
"""The characters of an event_type, as validate_event checks them and the OpenAPI schema
states them: no control character, and not blank (some character that is neither
whitespace nor a format character). Written as blanks, the first other character, and the
rest, so that a match never backtracks."""
NO_NUL_PATTERN = r"^[^\x00]*$"
"""Text that a database can store: no NUL (checked by validate_event, and by the consumer
for query parameters, with `"\x00" in text`, which is faster than the regex)."""
_EVENT_TYPE = re.compile(EVENT_TYPE_PATTERN)
_BLANK = re.compile(f"[\\s{FORMAT_CHARACTERS}]*")


class DuplicateKeys(dict[str, Any]):
    """A JSON object that had `key` more than once (it holds the last value, as dict does)."""

    def __init__(self, pairs: list[tuple[str, Any]], key: str) -> None:
        super().__init__(pairs)
        self.key = key


def unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """`object_pairs_hook` for json.loads: an object with a repeated key is parsed into a
    DuplicateKeys, which validate_event refuses naming the key."""
    obj = dict(pairs)
    if len(obj) == len(pairs):
        return obj
    seen: set[str] = set()
    for key, _ in pairs:
        if key in seen:
            return DuplicateKeys(pairs, key)
        seen.add(key)
    raise AssertionError("unreachable: a shorter dict has a repeated key")


def parse_json(text: str, where: str) -> Any:
    """JSON text as the events files and `send-once --file` give it: an object with a
    repeated key becomes a DuplicateKeys (see unique_keys); InvalidEvent naming `where`
    when it is not JSON."""
    try:
        return json.loads(text, object_pairs_hook=unique_keys)
    except (json.JSONDecodeError, RecursionError) as exc:
        raise InvalidEvent(None, f"{where}: not valid JSON: {exc}") from None


class Event(NamedTuple):
    """One event as the consumer accepts it: two strings and nothing else."""

    event_type: str
    event_payload: str

    def to_json(self) -> dict[str, str]:
        return {"event_type": self.event_type, "event_payload": self.event_payload}


def new_event_id() -> str:
    """A UUIDv7 (RFC 9562): sortable by creation time to the millisecond, random after that."""
    millis = time.time_ns() // 1_000_000
    # Not os.urandom: it releases the GIL, and on the hot path the writer thread then takes it.
    # The random module is seeded from the OS and reseeded in forked children.
    rand = random.getrandbits(74)
    # unix_ts_ms (48 bits), version 7, rand_a (12), variant 0b10, rand_b (62): one format
    # operation, a third less CPU than building the 128-bit integer and slicing its digits
    return "%08x-%04x-7%03x-%04x-%012x" % (  # noqa: UP031
        millis >> 16 & 0xFFFFFFFF,
        millis & 0xFFFF,
        rand >> 62,
        0x8000 | rand >> 48 & 0x3FFF,
        rand & 0xFFFFFFFFFFFF,
    )


def json_type(value: object) -> str:
    """The JSON name of a parsed value's type, for error messages."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int | float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    return "object"


def _check_text(field: str, value: str) -> None:
    if "\x00" in value:
        raise InvalidEvent(field, "must not contain NUL characters")
    if not value.isascii():
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            problem = "must be valid Unicode (it has an unpaired surrogate)"
            raise InvalidEvent(field, problem) from None


def _string(obj: dict[Any, Any], name: str) -> str:
    value = obj.get(name)
    if not isinstance(value, str):
        if name not in obj:
            raise InvalidEvent(name, "is required")
        raise InvalidEvent(name, f"must be a string, not {json_type(value)}")
    _check_text(name, value)
    return value


def validate_event(obj: object) -> Event:
    """Return `obj` as an Event, or raise InvalidEvent naming the first field at fault.

    The rules: a JSON object with exactly the string fields `event_type` and
    `event_payload`, each once; `event_type` is 1-255 characters, not blank (only whitespace
    and Unicode format characters such as U+200B) and without control characters (Unicode Cc,
    C1 included, and the line and paragraph separators U+2028, U+2029); neither field holds
    NUL or unpaired surrogates (no database stores those).
    """
    if not isinstance(obj, dict):
        raise InvalidEvent(None, f"an event must be a JSON object, not {json_type(obj)}")
    if type(obj) is DuplicateKeys:
        raise InvalidEvent(obj.key, "is given more than once")
    if len(obj) != 2 and (extra := sorted(obj.keys() - FIELDS)):
        raise InvalidEvent(extra[0], "is not allowed (an event has only two fields)")
    event_type = _string(obj, "event_type")
    payload = _string(obj, "event_payload")
    if len(event_type) > MAX_EVENT_TYPE_LENGTH:
        problem = f"must be at most {MAX_EVENT_TYPE_LENGTH} characters, not {len(event_type)}"
        raise InvalidEvent("event_type", problem)
    if not _EVENT_TYPE.fullmatch(event_type):
        if not event_type.strip() if event_type.isascii() else _BLANK.fullmatch(event_type):
            raise InvalidEvent("event_type", "must not be empty")
        raise InvalidEvent("event_type", "must not contain control characters")
    return Event(event_type, payload)
