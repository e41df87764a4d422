"""How a propagator run looks: a pure `render(stats, now)`, and the sinks that show records.

The live view draws on stderr; log lines go to stderr; NDJSON goes to stdout.
"""

from __future__ import annotations

import json
from typing import IO, Any

from rich.console import Console, Group, RenderableType
from rich.live import Live
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from eventctl.endpoints import Endpoints
from eventctl.histogram import Histogram
from eventctl.propagator.propagator import QUANTILES, Record, Stats
from eventctl.textsafe import visible

OUTCOME_STYLE = {"delivered": "green", "retrying": "yellow", "failed": "bold red"}
TITLE = "eventctl propagate"
RATE_MIN_SECONDS = 1.0
# below this many events, or this rate, CPU per event is mostly start-up and idle time
CPU_MIN_EVENTS = 100
CPU_MIN_RATE = 50.0
LIVE_QUANTILES = (("p50", 0.5), ("p99", 0.99), ("max", 1.0))


def _ms(seconds: float | None) -> str:
    return "-" if seconds is None else f"{seconds * 1000:.1f} ms"


def _elapsed(seconds: float) -> str:
    minutes, secs = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours:d}:{minutes:02d}:{secs:02d}"


def _counts(stats: Stats) -> Table:
    """The row of counts: sent, resent, delivered and what became of the rest."""
    counts = Table.grid(padding=(0, 3))
    names: tuple[str, ...] = ("sent", "resent", "delivered", "retrying", "failed", "replayed")
    values: tuple[int, ...] = (
        stats.generated,
        stats.resent,
        stats.delivered,
        stats.retrying,
        stats.failed,
        stats.replayed,
    )
    styles: tuple[str, ...] = ("", "", "green", "yellow", "red", "")
    if stats.pacing is None:  # a replay skips no tick: it waits
        names, values, styles = (
            (*names, "skipped"),
            (*values, stats.skipped_ticks),
            (*styles, "yellow"),
        )
    else:
        names = (*names[:-1], "already stored")
    for _ in names:
        counts.add_column(justify="right")
    counts.add_row(*(Text(n, style="dim") for n in names))
    counts.add_row(
        *(Text(str(v), style=s if v else "") for v, s in zip(values, styles, strict=True))
    )
    return counts


def _pace(stats: Stats, now: float) -> tuple[str, str]:
    """What paces the run: a replay's pacing, the schedule's stage and rate, or the interval;
    `(+/-)` when those keys change the rate."""
    schedule = stats.schedule
    keys = "  (+/-)" if stats.keys else ""
    if stats.pacing is not None:
        return "pacing", stats.pacing
    if schedule is not None and schedule.varies:
        t = now - stats.schedule_start
        i = schedule.stage_at(t)
        stage = f"{i + 1}/{len(schedule.stages)} {schedule.stages[i].label()}: "
        if len(schedule.stages) == 1:
            stage = ""
        return "plan", f"{stage}{schedule.rate_at(t):,.1f}/s{keys}"
    if stats.interval > 0:
        return "interval", f"{stats.interval:g} s ({1 / stats.interval:g}/s){keys}"
    return "interval", "none: flat out"


def _quantiles(histogram: Histogram) -> str:
    parts = (f"{name} {_ms(histogram.quantile(q))}" for name, q in LIVE_QUANTILES)
    return "   ".join(parts)


def render(stats: Stats, now: float, *, title: str = TITLE) -> RenderableType:
    """The live status of a run as a Rich renderable. Pure: same input, same output."""
    head = Table.grid(padding=(0, 2))
    head.add_column(style="dim")
    head.add_column()
    head.add_column(style="dim")
    head.add_column()
    in_flight = Text(f"{stats.in_flight} / {stats.max_in_flight}")
    if stats.capped:
        waiting = "waiting for room" if stats.pacing is not None else "ticks skipped"
        in_flight.append(f"  cap hit: {waiting}", style="bold yellow")
    if stats.spool_full:
        in_flight.append("  spool full: generation paused", style="bold yellow")
    endpoints = stats.endpoints
    several = endpoints is not None and len(endpoints) > 1
    shown = f"{len(endpoints)} endpoints" if several and endpoints else stats.endpoint
    head.add_row("endpoint", Text(visible(shown)), "elapsed", _elapsed(now - stats.started_at))
    head.add_row(*_pace(stats, now), "in flight", in_flight)

    counts = _counts(stats)

    last = stats.last
    latency = Table.grid(padding=(0, 2))
    latency.add_column(style="dim")
    latency.add_column()
    latency.add_row(
        "last",
        Text("-" if last is None else visible(f"{last.event_type}  {last.result}")),
    )
    latency.add_row("latency", _quantiles(stats.latency))
    latency.add_row("service", _quantiles(stats.service))
    elapsed = now - stats.started_at
    # a rate over less than two intervals is one or two events over a sliver of time
    rate = (
        f"{stats.achieved_rate(now):.1f}/s achieved"
        if stats.generated and elapsed >= max(RATE_MIN_SECONDS, 2 * stats.interval)
        else "-"
    )
    latency.add_row("rate", f"{rate}   lateness p99 {_ms(stats.percentile(0.99, stats.lateness))}")

    recent = Table(box=None, padding=(0, 1), show_edge=False, header_style="dim")
    recent.add_column("at", justify="right")
    recent.add_column("event_type", max_width=28, no_wrap=True, overflow="ellipsis")
    recent.add_column("outcome")
    recent.add_column("status", justify="right")
    recent.add_column("service", justify="right")
    recent.add_column("try", justify="right")
    for record in reversed(stats.recent):
        recent.add_row(
            f"{record.at - stats.started_at:.1f}s",
            Text(visible(record.event_type)),
            Text(record.outcome, style=OUTCOME_STYLE[record.outcome]),
            Text(visible(record.result)),
            _ms(record.latency),
            str(record.attempt),
        )
    parts: list[RenderableType] = [head, Text(), counts, Text(), latency]
    if several and endpoints is not None:
        parts += [Text(), endpoint_table(endpoints, now)]
    if stats.recent:
        parts += [Text(), recent]
    return Panel(Group(*parts), title=title, title_align="left", expand=False)


STATE_STYLE = {"up": "green", "down": "bold red", "probing": "yellow"}


def endpoint_table(endpoints: Endpoints, now: float) -> Table:
    """A row per endpoint: its state (how long it stays down), attempts, outcomes."""
    table = Table(box=None, padding=(0, 1), show_edge=False, header_style="dim")
    table.add_column("endpoint", max_width=40, no_wrap=True, overflow="ellipsis")
    for name in ("state", "attempts", "delivered", "failed"):
        table.add_column(name, justify="left" if name == "state" else "right")
    table.add_column("last error", max_width=30, no_wrap=True, overflow="ellipsis")
    for endpoint in endpoints.all:
        state = Text(endpoint.state, style=STATE_STYLE[endpoint.state])
        if endpoint.state == "down":
            left = endpoint.down_until - now
            state.append(f" {left:.1f}s" if left > 0 else " (next probes)", style="dim")
        table.add_row(
            Text(visible(endpoint.text)),
            state,
            str(endpoint.attempts),
            str(endpoint.delivered),
            Text(str(endpoint.failed), style="red" if endpoint.failed else ""),
            Text(visible(endpoint.last_error or "")),
        )
    return table


def log_line(record: Record, started_at: float) -> str:
    """One human line per record, for when there is no live view."""
    parts = [
        f"{record.at - started_at:8.3f}s",
        f"{record.outcome:<9}",
        visible(record.event_type),
        visible(record.result),
    ]
    if record.latency is not None:
        parts.append(_ms(record.latency))
    if record.attempt > 1 or record.outcome != "delivered":
        parts.append(f"attempt {record.attempt}")
    if record.retry_in is not None:
        parts.append(f"retry in {record.retry_in:.2f}s")
    if record.replayed:
        parts.append("replayed")
    if record.endpoint is not None:
        parts.append(f"to {visible(record.endpoint)}")
    parts.append(f"id={record.event_id}")
    return "  ".join(parts)


def record_json(record: Record, started_at: float) -> dict[str, Any]:
    return {
        "kind": record.outcome,
        "t": round(record.at - started_at, 6),
        "event_id": record.event_id,
        "event_type": record.event_type,
        "attempt": record.attempt,
        "status": record.status,
        "error": record.error,
        "latency_ms": None if record.latency is None else round(record.latency * 1000, 3),
        "retry_in": record.retry_in,
        "replayed": record.replayed,
        **({} if record.endpoint is None else {"endpoint": record.endpoint}),
    }


def _plural(n: int, word: str) -> str:
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


def _summary_ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f} ms"


def _summary_quantiles(summary: dict[str, Any], name: str) -> str:
    """`latency p50 3.2, p90 4.0, p99 5.1, p99.9 6.0, max 7.2 ms` (a dash for no value)."""
    values = [summary.get(f"{name}_{key}_ms") for key in QUANTILES]
    shown = ", ".join(
        f"{key.replace('p999', 'p99.9')} {'-' if v is None else f'{v:.1f}'}"
        for key, v in zip(QUANTILES, values, strict=True)
    )
    return f"{name} {shown}" + ("" if all(v is None for v in values) else " ms")


def stage_lines(summary: dict[str, Any]) -> list[str]:
    """A line per stage of the schedule: its plan, what was sent, and the ratio."""
    lines = []
    for i, stage in enumerate(summary.get("stages") or [], 1):
        ratio = stage["achieved_vs_plan"]
        lines.append(
            f"stage {i} {stage['stage']}: {stage['sent']} sent of {stage['planned_events']:g} "
            f"planned, {stage['achieved_rate']:,.1f}/s of {stage['planned_rate']:,.1f}/s"
            + ("" if ratio is None else f" ({ratio:.2%})")
        )
    return lines


def summary_lines(summary: dict[str, Any], *, title: str = TITLE) -> list[str]:
    """The end-of-run summary as a few plain lines, the first one starting with `title`.

    The achieved rate and lateness are shown only when at least two events were generated,
    CPU per event only for at least CPU_MIN_EVENTS events sent at CPU_MIN_RATE or faster.
    """
    resent = f"{summary['resent']} resent from the spool, " if summary["resent"] else ""
    elapsed = summary["elapsed_seconds"]
    if "pacing" in summary:  # a replay: it skips no tick, and says "replayed" plainly
        counted = f"{summary['replayed']} already stored"
    else:
        skipped = _plural(summary["skipped_ticks"], "tick")
        counted = f"{summary['replayed']} replayed, {skipped} skipped"
    first = (
        f"{title}: {summary['generated']} sent, {resent}{summary['delivered']} "
        f"delivered, {summary['failed']} failed, {summary['pending']} pending "
        f"in {elapsed:.1f}s ({_plural(summary['attempts'], 'attempt')}, {counted})"
    )
    if summary.get("dropped"):
        first += f"; {summary['dropped']} dropped: max-in-flight was full"
    second = [_summary_quantiles(summary, "latency"), _summary_quantiles(summary, "service")]
    if summary["generated"] >= 2:
        achieved = f"achieved {summary['achieved_rate']:.1f}/s"
        if summary["lateness_p99_ms"] is not None:  # a replay flat out has nothing due later
            achieved += f", lateness p99 {_summary_ms(summary['lateness_p99_ms'])}"
        second.append(achieved)
    sent = summary["generated"] + summary["resent"]
    cpu = summary["cpu_per_event_us"]
    if cpu is not None and sent >= CPU_MIN_EVENTS and sent >= CPU_MIN_RATE * elapsed:
        second.append(f"CPU {cpu:.1f} µs/event")
    return [first, "; ".join(second), *stage_lines(summary), *endpoint_lines(summary)]


def endpoint_lines(summary: dict[str, Any]) -> list[str]:
    """With several endpoints: the failovers, and a line per endpoint."""
    if "endpoints" not in summary:
        return []
    lines = [f"{_plural(summary['failovers'], 'failover')} to another endpoint"]
    for e in summary["endpoints"]:
        line = (
            f"  {visible(e['endpoint'])}: {e['state']}, {_plural(e['attempts'], 'attempt')}, "
            f"{e['delivered']} delivered, {e['failed']} failed"
        )
        if e["last_error"]:
            line += f" (last: {visible(e['last_error'])})"
        lines.append(line)
    return lines


class Display:
    """Where a run's progress goes: the base shows only the summary, on `console` (stderr)."""

    def __init__(self, stats: Stats, console: Console, *, title: str = TITLE) -> None:
        self.stats = stats
        self.console = console
        self.title = title

    def __enter__(self) -> Display:
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def record(self, record: Record) -> None:
        """Called for every attempt's outcome."""

    def refresh(self, now: float) -> None:
        """Called a few times a second."""

    def print(self, line: str) -> None:
        self.console.print(line, markup=False, highlight=False, soft_wrap=True)

    def summary(self, summary: dict[str, Any]) -> None:
        for line in summary_lines(summary, title=self.title):
            self.print(line)


class LiveDisplay(Display):
    """A Rich live panel on the console, redrawn by refresh()."""

    def __init__(self, stats: Stats, console: Console, now: float, *, title: str = TITLE) -> None:
        super().__init__(stats, console, title=title)
        self._live = Live(render(stats, now, title=title), console=console, auto_refresh=False)

    def __enter__(self) -> Display:
        self._live.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self._live.__exit__(None, None, None)

    def refresh(self, now: float) -> None:
        self._live.update(render(self.stats, now, title=self.title), refresh=True)


class LogDisplay(Display):
    """One line per record."""

    def record(self, record: Record) -> None:
        self.print(log_line(record, self.stats.started_at))


class JsonDisplay(Display):
    """NDJSON on `stream` (stdout): one object per record, then one `summary` object."""

    def __init__(
        self, stats: Stats, console: Console, stream: IO[str], *, title: str = TITLE
    ) -> None:
        super().__init__(stats, console, title=title)
        self.stream = stream

    def record(self, record: Record) -> None:
        self.stream.write(json.dumps(record_json(record, self.stats.started_at)) + "\n")
        self.stream.flush()

    def summary(self, summary: dict[str, Any]) -> None:
        self.stream.write(json.dumps({"kind": "summary", **summary}) + "\n")
        self.stream.flush()
        super().summary(summary)
