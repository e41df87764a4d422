"""Terminal safety: `visible` and `json_text`, and the propagator's live view and log lines."""

from __future__ import annotations

import json
import unicodedata
from io import StringIO

import pytest
from rich.console import Console

from eventctl.display import LogDisplay, log_line, render
from eventctl.propagator import Record, Stats
from eventctl.textsafe import json_text, visible

UNSAFE_CATEGORIES = frozenset({"Cc", "Cf", "Zl", "Zp", "Cs"})

# ESC and CSI sequences (C0 and C1), a bidi override, a zero-width space, the Unicode line and
# paragraph separators, NEL, a tab, a newline, a carriage return and a bell
HOSTILE = "a\x1b[31mred\x9b2J\u202egnp.exe\u200bx\u2028y\u2029z\x85w\tt\nn\rr\x07b"
HOSTILE_SHOWN = "a\\x1b[31mred\\x9b2J\\u202egnp.exe\\u200bx\\u2028y\\u2029z\\x85w\\tt\\nn\\rr\\x07b"


def unsafe_characters(text: str) -> list[str]:
    """The characters of `text` a terminal could act on, apart from the newlines ending lines."""
    return [ch for ch in text if ch != "\n" and unicodedata.category(ch) in UNSAFE_CATEGORIES]


def raw_in_json(text: str) -> list[str]:
    """The characters JSON output must escape but `ensure_ascii=False` leaves raw."""
    return [ch for ch in text if "\x80" <= ch <= "\x9f" or ch in "\u2028\u2029"]


def test_visible_escapes_controls_format_characters_and_separators() -> None:
    assert visible(HOSTILE) == HOSTILE_SHOWN
    assert visible("\x7f\x80\x9f\xad\u061c\ufeff\U000e0001") == (
        "\\x7f\\x80\\x9f\\xad\\u061c\\ufeff\\U000e0001"
    )


def test_visible_leaves_printable_text_alone() -> None:
    text = 'order.créé {"ünïcode": "日本語 ✓", "tab": "\\t"} \u00a0end'
    assert visible(text) == text


def test_visible_covers_every_character_of_the_unsafe_categories() -> None:
    for code in range(0x110000):
        ch = chr(code)
        if unicodedata.category(ch) in UNSAFE_CATEGORIES:
            shown = visible(ch)
            assert shown.encode("ascii").decode("unicode_escape") == ch, hex(code)


def test_json_text_escapes_c1_controls_separators_and_keeps_the_value() -> None:
    value = {"k\u2028": "x\x85y\x9b\u2029\u202e é \x1b", "n": [1, 2.5, None, True]}
    text = json_text(value)
    assert json.loads(text) == value
    assert text == (
        '{"k\\u2028": "x\\u0085y\\u009b\\u2029\u202e é \\u001b", "n": [1, 2.5, null, true]}'
    )
    assert json_text(value, indent=2) == json.dumps(value, ensure_ascii=False, indent=2).replace(
        "\x85", "\\u0085"
    ).replace("\x9b", "\\u009b").replace("\u2028", "\\u2028").replace("\u2029", "\\u2029")


def hostile_stats() -> Stats:
    stats = Stats("http://127.0.0.1:1/event", 1.0, 100, started_at=10.0)
    record = Record(
        "failed", "id-1", "evil\x9b2J\u202etype", 1, 11.0, error="reset\x1b]0;title\x07"
    )
    stats.recent.append(record)
    stats.last = record
    return stats


def test_the_live_view_shows_event_types_and_errors_escaped() -> None:
    console = Console(file=StringIO(), width=80, color_system=None)
    console.print(render(hostile_stats(), 12.0))
    out = console.file.getvalue()  # type: ignore[attr-defined]
    assert unsafe_characters(out) == []
    assert "evil\\x9b2J\\u202etype" in out
    assert "reset\\x1b]0;title\\x07" in out


@pytest.mark.parametrize("markup", ["[red]x[/red]", "[link=file:///etc/passwd]x[/link]"])
def test_the_live_view_does_not_read_event_types_as_markup(markup: str) -> None:
    stats = Stats("http://127.0.0.1:1/event", 1.0, 100, started_at=10.0)
    stats.recent.append(Record("delivered", "id-1", markup, 1, 11.0, status=200))
    stats.last = stats.recent[0]
    console = Console(file=StringIO(), width=80, color_system=None)
    console.print(render(stats, 12.0))
    assert markup in console.file.getvalue()  # type: ignore[attr-defined]


def test_log_lines_show_event_types_and_errors_escaped() -> None:
    stats = hostile_stats()
    line = log_line(stats.recent[0], stats.started_at)
    assert unsafe_characters(line) == []
    assert "evil\\x9b2J\\u202etype  reset\\x1b]0;title\\x07" in line
    console = Console(file=StringIO(), width=80, color_system=None)
    LogDisplay(stats, console).record(stats.recent[0])
    assert unsafe_characters(console.file.getvalue()) == []  # type: ignore[attr-defined]
