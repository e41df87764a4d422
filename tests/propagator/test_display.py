"""Terminal safety: `visible` and `json_text`, and the propagator's live view and log lines."""

from __future__ import annotations

import json
import unicodedata
from io import StringIO
from typing import Any

import pytest
from rich.console import Console

from eventctl.propagator.display import Display, LogDisplay, log_line, render, summary_lines
from eventctl.propagator.propagator import Record, Stats
from eventctl.propagator.schedule import Schedule, parse_stages
from eventctl.textsafe import json_text, visible
from tests.helpers import HOSTILE, HOSTILE_SHOWN, ROOT, UNSAFE_CATEGORIES, unsafe_characters


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


def summary_of(**fields: Any) -> dict[str, Any]:
    """A summary as Stats.summary() makes it: a quiet run of one event, unless overridden."""
    summary: dict[str, Any] = {
        "endpoint": "http://127.0.0.1:8000/event",
        "elapsed_seconds": 0.2,
        "generated": 1,
        "delivered": 1,
        "failed": 0,
        "pending": 0,
        "attempts": 1,
        "replayed": 0,
        "skipped_ticks": 0,
        "resent": 0,
        **{f"latency_{key}_ms": 3.417 for key in ("p50", "p90", "p99", "p999", "max")},
        **{f"service_{key}_ms": 3.217 for key in ("p50", "p90", "p99", "p999", "max")},
        "achieved_rate": 5.0,
        "lateness_p50_ms": 0.1,
        "lateness_p99_ms": 0.1,
        "cpu_per_event_us": 137785.8,
    }
    return {**summary, **fields}


def test_a_quiet_run_has_no_cpu_per_event_and_singular_words() -> None:
    lines = summary_lines(summary_of())
    assert lines == [
        "eventctl propagate: 1 sent, 1 delivered, 0 failed, 0 pending in 0.2s "
        "(1 attempt, 0 replayed, 0 ticks skipped)",
        "latency p50 3.4, p90 3.4, p99 3.4, p99.9 3.4, max 3.4 ms; "
        "service p50 3.2, p90 3.2, p99 3.2, p99.9 3.2, max 3.2 ms",
    ]


def test_a_fast_long_run_shows_rate_lateness_and_cpu_per_event() -> None:
    summary = summary_of(
        generated=2000, delivered=2000, attempts=2001, skipped_ticks=1, elapsed_seconds=10.0,
        achieved_rate=200.0, lateness_p99_ms=1.5, cpu_per_event_us=151.26,
    )  # fmt: skip
    assert summary_lines(summary) == [
        "eventctl propagate: 2000 sent, 2000 delivered, 0 failed, 0 pending in 10.0s "
        "(2001 attempts, 0 replayed, 1 tick skipped)",
        "latency p50 3.4, p90 3.4, p99 3.4, p99.9 3.4, max 3.4 ms; "
        "service p50 3.2, p90 3.2, p99 3.2, p99.9 3.2, max 3.2 ms; "
        "achieved 200.0/s, lateness p99 1.5 ms; CPU 151.3 µs/event",
    ]
    slow = {**summary, "elapsed_seconds": 2000.0, "achieved_rate": 1.0}
    assert "CPU" not in summary_lines(slow)[1]


def test_no_latency_is_a_dash_without_a_unit() -> None:
    nothing = {
        f"{name}_{key}_ms": None
        for name in ("latency", "service")
        for key in ("p50", "p90", "p99", "p999", "max")
    }
    summary = summary_of(
        generated=0, delivered=0, attempts=0, **nothing,
        achieved_rate=0.0, lateness_p50_ms=None, lateness_p99_ms=None, cpu_per_event_us=None,
    )  # fmt: skip
    assert summary_lines(summary)[1] == (
        "latency p50 -, p90 -, p99 -, p99.9 -, max -; service p50 -, p90 -, p99 -, p99.9 -, max -"
    )


def test_dropped_sends_and_stages_are_said() -> None:
    stage = {
        "stage": "2s@100-300",
        "sent": 399,
        "planned_events": 400.0,
        "achieved_rate": 199.5,
        "planned_rate": 200.0,
        "achieved_vs_plan": 0.9975,
    }
    lines = summary_lines(summary_of(dropped=7, skipped_ticks=7, stages=[stage]))
    assert lines[0].endswith(
        "(1 attempt, 0 replayed, 7 ticks skipped); 7 dropped: max-in-flight was full"
    )
    assert lines[2] == "stage 1 2s@100-300: 399 sent of 400 planned, 199.5/s of 200.0/s (99.75%)"


def test_a_spool_retry_summary_has_its_own_title_and_no_achieved_rate() -> None:
    summary = summary_of(generated=0, resent=3, delivered=3, attempts=3, achieved_rate=0.0)
    first, second = summary_lines(summary, title="eventctl spool retry")
    assert first.startswith("eventctl spool retry: 0 sent, 3 resent from the spool, 3 delivered")
    assert "achieved" not in second
    console = Console(file=StringIO(), width=80, color_system=None)
    Display(Stats("http://x/event", 1.0, 1), console, title="eventctl spool retry").summary(summary)
    assert console.file.getvalue().startswith("eventctl spool retry: ")  # type: ignore[attr-defined]


def rendered(stats: Stats, now: float) -> str:
    console = Console(file=StringIO(), width=80, color_system=None)
    console.print(render(stats, now))
    return console.file.getvalue()  # type: ignore[attr-defined, no-any-return]


def test_the_live_view_shows_no_rate_before_two_intervals() -> None:
    stats = Stats("http://127.0.0.1:8000/event", 1.0, 100, started_at=10.0)
    stats.generated = 1
    assert "achieved" not in rendered(stats, 10.001)
    assert "rate     -   lateness p99 -" in rendered(stats, 10.001)
    stats.generated = 3
    assert "1.5/s achieved" in rendered(stats, 12.0)


README_TYPES = ["order.created", "invoice.paid", "heartbeat", "order.created", "user.signed_up"]


def readme_stats() -> Stats:
    """The run the README shows: `eventctl up --interval 1`, six events, 5.6 s in."""
    stats = Stats("http://127.0.0.1:8000/event", 1.0, 100, started_at=100.0)
    latencies = [0.0098, 0.0060, 0.0052, 0.0055, 0.0047, 0.0050]
    types = [*README_TYPES, "payment.succeeded"]
    for i, (event_type, latency) in enumerate(zip(types, latencies, strict=True)):
        record = Record("delivered", f"id{i}", event_type, 1, 100.0 + i, 200, latency=latency)
        stats.recent.append(record)
        stats.service.record(latency)
        stats.lateness.append(0.0004 + i * 0.0001)
        stats.latency.record(latency + 0.0004 + i * 0.0001)
        stats.last = record
    stats.generated = stats.delivered = stats.attempts = len(types)
    stats.finished_at = 105.6
    return stats


def readme_block(text: str, first: str) -> list[str]:
    """The lines of the first sample in `text` starting with `first`, up to its code fence."""
    lines = text.split(first, 1)[1].split("\n```", 1)[0]
    return (first + lines).splitlines()


@pytest.mark.parametrize("doc", ["README.md", "docs/cli.md"])
def test_the_sample_panel_and_summary_are_what_the_tool_draws(doc: str) -> None:
    stats = readme_stats()
    panel = [line.rstrip() for line in rendered(stats, 105.0).splitlines()]
    summary = summary_lines(stats.summary(105.6))
    text = (ROOT / doc).read_text()
    sample = readme_block(text, "╭─ eventctl propagate")
    assert sample[: len(panel)] == panel
    after = [line for line in sample[len(panel) :] if line != "^C"]
    assert after[:2] == summary


def test_a_replay_says_its_pacing_and_already_stored_and_skips_no_tick() -> None:
    summary = summary_of(
        generated=500, delivered=500, attempts=500, replayed=500, elapsed_seconds=0.1,
        achieved_rate=5000.0, lateness_p50_ms=None, lateness_p99_ms=None, pacing="flat out",
    )  # fmt: skip
    first, second = summary_lines(summary, title="eventctl replay")
    assert first == (
        "eventctl replay: 500 sent, 500 delivered, 0 failed, 0 pending in 0.1s "
        "(500 attempts, 500 already stored)"
    )
    assert "achieved 5000.0/s" in second
    assert "lateness" not in second  # flat out, nothing was due later
    stats = Stats("http://x/event", 0.0, 100, pacing="--speed 10: recorded gaps / 10")
    stats.capped = True
    console = Console(file=StringIO(), width=100, color_system=None)
    console.print(render(stats, 0.0, title="eventctl replay"))
    shown = console.file.getvalue()  # type: ignore[attr-defined]
    assert "pacing" in shown
    assert "--speed 10: recorded gaps / 10" in shown
    assert "cap hit: waiting for room" in shown
    assert "already stored" in shown
    assert "skipped" not in shown
    flat = Console(file=StringIO(), width=100, color_system=None)
    flat.print(render(Stats("http://x/event", 0.0, 100), 0.0))
    assert "none: flat out" in flat.file.getvalue()  # type: ignore[attr-defined]


def test_the_live_view_shows_the_stage_its_target_rate_and_the_keys() -> None:
    stats = Stats("http://127.0.0.1:8000/event", 0.01, 100, started_at=0.0)
    stats.schedule = Schedule(parse_stages("30s@100,1m@100-2000,30s@2000"))
    stats.keys = True
    assert "plan      2/3 60s@100-2000: 575.0/s  (+/-)" in rendered(stats, 45.0)
    stats.keys = False
    assert "(+/-)" not in rendered(stats, 45.0)
    stats.schedule.scale(2.0, 100.0)
    assert "3/3 30s@2000: 4,000.0/s" in rendered(stats, 100.5)
