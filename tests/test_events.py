from __future__ import annotations

import json
import random
import re
import sys
import unicodedata
from pathlib import Path

import pytest

from eventctl.consumer.openapi import EVENT
from eventctl.errors import InvalidEvent
from eventctl.events import (
    EVENT_TYPE_PATTERN,
    MAX_EVENT_TYPE_LENGTH,
    NO_NUL_PATTERN,
    Event,
    unique_keys,
    validate_event,
)
from eventctl.propagator.templates import load_events_file

ROOT = Path(__file__).resolve().parent.parent


def test_a_valid_event() -> None:
    assert validate_event({"event_type": "a.b", "event_payload": ""}) == Event("a.b", "")


@pytest.mark.parametrize(
    ("obj", "field", "problem"),
    [
        ([], None, "an event must be a JSON object, not array"),
        ("x", None, "an event must be a JSON object, not string"),
        ({"event_payload": "p"}, "event_type", "is required"),
        ({"event_type": "t"}, "event_payload", "is required"),
        ({"event_type": "t", "event_payload": "p", "extra": 1}, "extra", "is not allowed"),
        ({"event_type": 1, "event_payload": "p"}, "event_type", "must be a string, not number"),
        ({"event_type": True, "event_payload": "p"}, "event_type", "not boolean"),
        ({"event_type": "t", "event_payload": None}, "event_payload", "not null"),
        ({"event_type": "t", "event_payload": {"a": 1}}, "event_payload", "not object"),
        ({"event_type": "t", "event_payload": [1]}, "event_payload", "not array"),
        ({"event_type": "", "event_payload": "p"}, "event_type", "must not be empty"),
        ({"event_type": "  ", "event_payload": "p"}, "event_type", "must not be empty"),
        ({"event_type": "x" * 256, "event_payload": "p"}, "event_type", "at most 255"),
        ({"event_type": "a\nb", "event_payload": "p"}, "event_type", "control characters"),
        ({"event_type": "t", "event_payload": "a\x00b"}, "event_payload", "NUL"),
        ({"event_type": "t", "event_payload": "\ud800"}, "event_payload", "unpaired surrogate"),
    ],
)
def test_invalid_events_name_the_field(obj: object, field: str | None, problem: str) -> None:
    with pytest.raises(InvalidEvent) as caught:
        validate_event(obj)
    assert caught.value.field == field
    assert problem in str(caught.value)
    if field:
        assert str(caught.value).startswith(field)


def test_event_type_of_exactly_255_characters_is_fine() -> None:
    assert validate_event({"event_type": "x" * 255, "event_payload": "p"}).event_type == "x" * 255


def test_shipped_events_file_is_valid_and_varied() -> None:
    events = load_events_file(ROOT / "events" / "events.json").as_written()
    assert len(events) >= 8
    types = [e.event_type for e in events]
    assert len(set(types)) >= 4
    assert max(types.count(t) for t in types) <= 0.4 * len(types)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("{}", "must be a JSON list of events, not object"),
        ("[]", "the list of events is empty"),
        ("[1", "not valid JSON"),
        (
            json.dumps([{"event_type": "a", "event_payload": "b"}, {"event_type": 5}]),
            "[1]: event_type must be a string",
        ),
    ],
)
def test_events_file_errors_name_file_and_index(tmp_path: Path, content: str, message: str) -> None:
    path = tmp_path / "events.json"
    path.write_text(content)
    with pytest.raises(InvalidEvent) as caught:
        load_events_file(path)
    assert str(caught.value).startswith(str(path))
    assert message in str(caught.value)


def test_missing_events_file(tmp_path: Path) -> None:
    with pytest.raises(InvalidEvent, match="no such file"):
        load_events_file(tmp_path / "nope.json")


def test_new_event_ids_are_uuid7_unique_and_sortable() -> None:
    import time
    import uuid

    from eventctl.events import new_event_id

    first = [new_event_id() for _ in range(1000)]
    time.sleep(0.002)
    later = new_event_id()
    assert len(set(first)) == 1000
    for text in [*first[:10], later]:
        parsed = uuid.UUID(text)
        assert (str(parsed), parsed.version, parsed.variant) == (text, 7, uuid.RFC_4122)
    assert later > max(first)


@pytest.mark.parametrize(
    "event_type",
    ["a\x85b", "\x9f", "a\u2028b", "a\u2029b", "\x7f", "tab\there"],
)
def test_event_type_refuses_every_control_character_and_line_separator(event_type: str) -> None:
    with pytest.raises(InvalidEvent, match="control characters") as caught:
        validate_event({"event_type": event_type, "event_payload": "p"})
    assert caught.value.field == "event_type"


@pytest.mark.parametrize(
    "event_type", ["\u200b", "\u200b \ufeff", "\u00a0", "\u3000\u00ad", "\u2060\t", "\U000e0001"]
)
def test_event_type_of_only_whitespace_and_format_characters_is_blank(event_type: str) -> None:
    with pytest.raises(InvalidEvent, match="must not be empty"):
        validate_event({"event_type": event_type, "event_payload": "p"})


@pytest.mark.parametrize(
    "event_type", ["ünïcode.événement", "order\u00a0created", "👩\u200d💻", "\u200bx", "注文.作成"]
)
def test_event_type_accepts_visible_unicode(event_type: str) -> None:
    assert validate_event({"event_type": event_type, "event_payload": "\x85"}).event_type == (
        event_type
    )


def test_the_format_character_table_is_unicodedatas() -> None:
    from eventctl.events import FORMAT_CHARACTERS

    table = re.compile(f"[{FORMAT_CHARACTERS}]")
    for code in range(sys.maxunicode + 1):
        char = chr(code)
        assert bool(table.match(char)) == (unicodedata.category(char) == "Cf"), hex(code)


@pytest.mark.parametrize(
    ("text", "field"),
    [
        ('{"event_type": "a", "event_type": "b", "event_payload": "x"}', "event_type"),
        ('{"event_type": "a", "event_payload": "x", "event_payload": "y"}', "event_payload"),
        ('{"event_type": "a", "\\u0065vent_type": "b", "event_payload": "x"}', "event_type"),
    ],
)
def test_duplicate_keys_are_refused_naming_the_field(text: str, field: str) -> None:
    data = json.loads(text, object_pairs_hook=unique_keys)
    with pytest.raises(InvalidEvent, match="more than once") as caught:
        validate_event(data)
    assert caught.value.field == field
    assert json.loads('{"a": {"b": 1, "c": 2}}', object_pairs_hook=unique_keys) == {
        "a": {"b": 1, "c": 2}
    }


def test_duplicate_keys_in_the_events_file_name_file_index_and_field(tmp_path: Path) -> None:
    path = tmp_path / "events.json"
    path.write_text(
        '[{"event_type": "a", "event_payload": "x"},'
        ' {"event_type": "a", "event_payload": "x", "weight": 1, "weight": 2}]'
    )
    with pytest.raises(InvalidEvent, match=r"\[1\]: weight is given more than once"):
        load_events_file(path)
    path.write_text('[{"event_type": "a", "event_type": "b", "event_payload": "x"}]')
    with pytest.raises(InvalidEvent, match=r"\[0\]: event_type is given more than once"):
        load_events_file(path)


def test_the_openapi_event_schema_states_the_validators_rules() -> None:
    properties = EVENT["properties"]
    assert properties["event_type"]["pattern"] is EVENT_TYPE_PATTERN
    assert properties["event_type"]["maxLength"] == MAX_EVENT_TYPE_LENGTH
    assert properties["event_payload"]["pattern"] is NO_NUL_PATTERN


def test_validate_event_takes_an_event_type_exactly_when_the_pattern_matches_it() -> None:
    rng = random.Random(3)
    pieces = ["a", "é", " ", "\t", "\n", "\x00", "\x1f", "\x7f", "\x85", "\x9f", "\u00a0"]
    pieces += ["\u200b", "\u2028", "\u2029", "\u3000", "\ufeff", "\U000e0001", "👩\u200d💻"]
    for _ in range(20000):
        event_type = "".join(rng.choice(pieces) for _ in range(rng.randint(1, 6)))
        try:
            validate_event({"event_type": event_type, "event_payload": ""})
        except InvalidEvent:
            valid = False
        else:
            valid = True
        # a JSON Schema pattern's $ is the end of the text (ECMA 262), as in fullmatch
        assert valid == bool(re.fullmatch(EVENT_TYPE_PATTERN, event_type)), repr(event_type)
