"""The report of a load test: a per-second `Timeline`, the run's `Report`, and `write_report`,
which writes it as one JSON document or one self-contained HTML page (inline CSS and SVG).

The timeline's calls are made once per event, so they do a few additions on the current row
and allocate nothing but a row per second. Its memory is bounded for any duration: past
`max_rows` rows, neighbouring rows are merged pairwise and the row width doubles.
"""

from __future__ import annotations

import contextlib
import html
import math
import os
import random
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from eventctl.histogram import DEFAULT_HIGHEST, DEFAULT_LOWEST, Histogram

MAX_ROWS = 3600
"""Rows kept at most: an hour at one second a row (about 5 KB a row, 18 MB in all); a
longer run merges neighbouring rows pairwise and doubles the width, as often as needed."""
ROW_SUB_BITS = 3
"""A row's latency and service histograms: 8 sub-buckets per power of two (a quantile within
6.25%), 256 counts each; enough to plot p50 and p99 over time."""
MAX_POINTS = 1000
"""The most points a chart's series has; longer timelines are averaged (or, for peaks, their
maximum taken) over groups of neighbouring rows."""
QUANTILES = {"p50": 0.5, "p90": 0.9, "p99": 0.99, "p99.9": 0.999, "max": 1.0}
ROW_QUANTILES = {"p50": 0.5, "p99": 0.99}
SUFFIXES = (".json", ".html")
FORMAT = 1
JSON_OPTIONS = orjson.OPT_APPEND_NEWLINE | orjson.OPT_NON_STR_KEYS


_NO_ROW = -(2**62)
"""The cached row index when no row is cached (no t maps to it)."""


def _row_histogram() -> Histogram:
    return Histogram(lowest=DEFAULT_LOWEST, highest=DEFAULT_HIGHEST, sub_bits=ROW_SUB_BITS)


class Row:
    """What happened in one row (`width` seconds) of a run."""

    __slots__ = (
        "dropped",
        "in_flight",
        "latency",
        "results",
        "retries",
        "sent",
        "service",
        "target_rate",
    )

    def __init__(self) -> None:
        self.sent = 0
        self.dropped = 0
        self.retries = 0
        self.results: dict[str, int] = {}
        self.latency = _row_histogram()
        self.service = _row_histogram()
        self.target_rate: float | None = None
        self.in_flight: int | None = None

    def add(self, other: Row, *, side_by_side: bool) -> None:
        """Add `other`'s counts. Samples: their max when `other` is a neighbour in time
        (coarsening), their sum when it is the same time in another process (workers)."""
        self.sent += other.sent
        self.dropped += other.dropped
        self.retries += other.retries
        results = self.results
        for result, count in other.results.items():
            results[result] = results.get(result, 0) + count
        self.latency.merge(other.latency)
        self.service.merge(other.service)
        combine: Callable[[Any, Any], Any] = _sum if side_by_side else max
        if other.target_rate is not None:
            self.target_rate = (
                other.target_rate
                if self.target_rate is None
                else combine(self.target_rate, other.target_rate)
            )
        if other.in_flight is not None:
            self.in_flight = (
                other.in_flight
                if self.in_flight is None
                else combine(self.in_flight, other.in_flight)
            )

    def to_json(self, start: int) -> dict[str, Any]:
        return {
            "t": start,
            "sent": self.sent,
            "dropped": self.dropped,
            "retries": self.retries,
            "results": self.results,
            "answered": sum(self.results.values()),
            "target_rate": self.target_rate,
            "in_flight": self.in_flight,
            "latency": _row_histogram_json(self.latency),
            "service": _row_histogram_json(self.service),
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Row:
        row = cls()
        row.sent = int(data["sent"])
        row.dropped = int(data["dropped"])
        row.retries = int(data["retries"])
        row.results = {str(key): int(value) for key, value in data["results"].items()}
        row.latency.load(data["latency"])
        row.service.load(data["service"])
        target, in_flight = data["target_rate"], data["in_flight"]
        row.target_rate = None if target is None else float(target)
        row.in_flight = None if in_flight is None else int(in_flight)
        return row


def _sum(a: Any, b: Any) -> Any:
    return a + b


def _row_histogram_json(histogram: Histogram) -> dict[str, Any]:
    found = histogram.quantiles(ROW_QUANTILES.values())
    return {
        "count": histogram.count,
        "sum": histogram.sum,
        "min": histogram.min,
        "max": histogram.max,
        **{f"{key}_ms": _ms(found[q]) for key, q in ROW_QUANTILES.items()},
        "buckets": histogram.nonzero(),
    }


class Timeline:
    """Per-row counts of a run, rows keyed by whole seconds since its start.

    `t` is seconds since the run's start; its row is int(t / width) (width 1 s, doubled
    each time the run outgrows `max_rows` rows). `target_rate` and `in_flight` keep the
    largest sample of the row.
    """

    __slots__ = ("_current", "_current_index", "_inverse", "_rows", "max_rows", "width")

    def __init__(self, *, max_rows: int = MAX_ROWS) -> None:
        if max_rows < 2:
            raise ValueError(f"a timeline needs at least 2 rows, got {max_rows}")
        self.max_rows = max_rows
        self.width = 1
        self._inverse = 1.0
        self._rows: list[Row | None] = []
        self._current_index = _NO_ROW
        self._current = Row()

    def _row(self, t: float) -> Row:
        index = int(t * self._inverse)
        if index == self._current_index:
            return self._current
        if index < 0:  # noqa: PLR1730 (a call costs more than the comparison)
            index = 0
        while index >= self.max_rows:
            self._coarsen()
            index = int(t * self._inverse)
        rows = self._rows
        if index >= len(rows):
            rows.extend([None] * (index + 1 - len(rows)))
        row = rows[index]
        if row is None:
            row = rows[index] = Row()
        self._current_index = index
        self._current = row
        return row

    def _coarsen(self) -> None:
        """Merge rows pairwise and double the width."""
        rows = self._rows
        merged: list[Row | None] = []
        for i in range(0, len(rows), 2):
            first = rows[i]
            second = rows[i + 1] if i + 1 < len(rows) else None
            if first is None:
                merged.append(second)
            else:
                if second is not None:
                    first.add(second, side_by_side=False)
                merged.append(first)
        self._rows = merged
        self.width *= 2
        self._inverse = 1.0 / self.width
        self._current_index = _NO_ROW

    def sent(self, t: float, n: int = 1) -> None:
        """`n` events sent (first attempts) at `t`."""
        self._row(t).sent += n

    def dropped(self, t: float, n: int = 1) -> None:
        """`n` sends due at `t` and dropped because the in-flight cap was full."""
        self._row(t).dropped += n

    def retried(self, t: float) -> None:
        """One retry attempt at `t`."""
        self._row(t).retries += 1

    def answered(self, t: float, result: str, latency: float, service: float) -> None:
        """An attempt ended at `t` with `result` ("200", "connect error", ...): `latency`
        seconds after the event was due, `service` seconds after it was sent."""
        row = self._row(t)
        results = row.results
        results[result] = results.get(result, 0) + 1
        row.latency.record(latency)
        row.service.record(service)

    def sample(self, t: float, target_rate: float, in_flight: int) -> None:
        """The target rate (events/s) and the events in flight at `t`; a row keeps the largest."""
        row = self._row(t)
        if row.target_rate is None or target_rate > row.target_rate:
            row.target_rate = target_rate
        if row.in_flight is None or in_flight > row.in_flight:
            row.in_flight = in_flight

    def rows(self) -> list[tuple[int, Row]]:
        """The rows that hold anything, as (start second, row), in time order."""
        width = self.width
        return [(i * width, row) for i, row in enumerate(self._rows) if row is not None]

    @property
    def length(self) -> int:
        """How many rows the timeline spans (empty ones included), at most max_rows."""
        return len(self._rows)

    def merge(self, other: Timeline) -> None:
        """Add another process's timeline of the same run (same start): counts add, and so
        do the samples of target rate and in flight. The coarser width wins."""
        last = len(other._rows) - 1
        while self.width < other.width or last * other.width // self.width >= self.max_rows:
            self._coarsen()
        ratio = self.width // other.width
        incoming: dict[int, Row] = {}
        for i, row in enumerate(other._rows):
            if row is None:
                continue
            index = i // ratio
            combined = incoming.get(index)
            if combined is None:
                combined = incoming[index] = Row()
                combined.add(row, side_by_side=True)
            else:
                combined.add(row, side_by_side=False)
        rows = self._rows
        if incoming:
            rows.extend([None] * (max(incoming) + 1 - len(rows)))
        for index, row in incoming.items():
            mine = rows[index]
            if mine is None:
                rows[index] = row
            else:
                mine.add(row, side_by_side=True)
        self._current_index = _NO_ROW

    def to_json(self) -> dict[str, Any]:
        """The width (seconds per row), the row histograms' layout and the non-empty rows."""
        return {
            "width": self.width,
            "max_rows": self.max_rows,
            "layout": _row_histogram().layout,
            "rows": [row.to_json(start) for start, row in self.rows()],
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Timeline:
        """The timeline `to_json` wrote (ValueError when `data` is not one)."""
        try:
            timeline = cls(max_rows=int(data["max_rows"]))
            width = int(data["width"])
            if width < 1 or width & (width - 1):
                raise ValueError(f"a timeline's width is a power of two, got {width}")
            if data["layout"] != _row_histogram().layout:
                raise ValueError(f"a timeline's rows have layout {_row_histogram().layout}")
            timeline.width = width
            timeline._inverse = 1.0 / width
            for item in data["rows"]:
                start = int(item["t"])
                if start < 0 or start % width or start // width >= timeline.max_rows:
                    raise ValueError(f"a row at {start} s does not fit the timeline")
                index = start // width
                if index >= len(timeline._rows):
                    timeline._rows.extend([None] * (index + 1 - len(timeline._rows)))
                timeline._rows[index] = Row.from_json(item)
        except (KeyError, TypeError, AttributeError) as error:
            raise ValueError(f"not a timeline: {error!r}") from None
        return timeline


@dataclass
class Report:
    """A run's report: `meta` (command, endpoint, started_at, duration, workers, stages)
    and `summary` (totals) are rendered as given; the histograms and timeline are the data."""

    meta: dict[str, Any]
    summary: dict[str, Any]
    latency: Histogram = field(default_factory=Histogram)
    service: Histogram = field(default_factory=Histogram)
    timeline: Timeline = field(default_factory=Timeline)

    def to_json(self) -> dict[str, Any]:
        """The JSON document; percentiles in milliseconds, histograms and rows as stored."""
        return {
            "format": FORMAT,
            "meta": self.meta,
            "summary": self.summary,
            "latency_ms": percentiles_ms(self.latency),
            "service_ms": percentiles_ms(self.service),
            "histograms": {"latency": self.latency.to_json(), "service": self.service.to_json()},
            "timeline": self.timeline.to_json(),
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Report:
        """The report `to_json` wrote (the derived percentiles are recomputed, not read)."""
        try:
            return cls(
                meta=dict(data["meta"]),
                summary=dict(data["summary"]),
                latency=Histogram.from_json(data["histograms"]["latency"]),
                service=Histogram.from_json(data["histograms"]["service"]),
                timeline=Timeline.from_json(data["timeline"]),
            )
        except (KeyError, TypeError) as error:
            raise ValueError(f"not a report: {error!r}") from None


def percentiles_ms(histogram: Histogram) -> dict[str, Any]:
    """count, min, mean, p50, p90, p99, p99.9 and max of `histogram`, in milliseconds."""
    found = histogram.quantiles(QUANTILES.values())
    return {
        "count": histogram.count,
        "min": _ms(histogram.min),
        "mean": _ms(histogram.mean),
        **{key: _ms(found[q]) for key, q in QUANTILES.items()},
    }


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1000, 6)


def check_report_path(path: Path) -> None:
    """ValueError (one line) unless `path` ends in .json or .html."""
    if path.suffix.lower() not in SUFFIXES:
        raise ValueError(f"{path}: a report's file name must end in .json or .html")


def write_report(path: Path, report: Report) -> None:
    """Write `report` to `path`: JSON for .json, a self-contained page for .html (ValueError
    for any other suffix). Atomic: a temporary file in the same directory, then a rename."""
    check_report_path(path)
    if path.suffix.lower() == ".json":
        data = orjson.dumps(report.to_json(), default=str, option=JSON_OPTIONS)
    else:
        data = render_html(report).encode()
    _write_atomically(path, data)


def _write_atomically(path: Path, data: bytes) -> None:
    directory = path.parent
    for _ in range(100):
        temporary = directory / f".{path.name}.{random.getrandbits(48):012x}.tmp"
        try:
            # 0o666 so the file gets the usual umask's mode, as open() would give it.
            fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        except FileExistsError:
            continue
        break
    else:
        raise FileExistsError(f"{directory}: no free temporary name for {path.name}")
    try:
        with os.fdopen(fd, "wb") as file:
            file.write(data)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temporary)
        raise


# ---------------------------------------------------------------------------------------
# The HTML page


COLOURS = {
    "fg": "#1f2328",
    "muted": "#656d76",
    "line": "#d0d7de",
    "bg": "#f6f8fa",
    "blue": "#0969da",
    "green": "#1a7f37",
    "red": "#cf222e",
    "amber": "#9a6700",
    "purple": "#8250df",
    "teal": "#1b7c83",
    "pink": "#bf3989",
    "grey": "#8c959f",
}
RESULT_PALETTES = {
    "2": ["#1a7f37", "#2da44e", "#4ac26b"],
    "4": ["#9a6700", "#bc4c00", "#d4a72c"],
    "5": ["#cf222e", "#a40e26", "#fa4549"],
    "": ["#8250df", "#bf3989", "#1b7c83", "#656d76", "#0969da"],
}
MAX_RESULT_SERIES = 10

STYLE = """
:root { --fg: #1f2328; --muted: #656d76; --line: #d0d7de; --accent: #0969da; --bg: #f6f8fa; }
* { box-sizing: border-box; }
body { margin: 0; font: 14px/1.45 system-ui, -apple-system, "Segoe UI", sans-serif;
       color: var(--fg); }
header { padding: .8rem 1.2rem; border-bottom: 1px solid var(--line); }
header h1 { font-size: 1.1rem; margin: 0; word-break: break-all; }
header p { margin: .2rem 0 0; color: var(--muted); }
main { padding: 1rem 1.2rem; max-width: 70rem; }
h2 { font-size: .8rem; text-transform: uppercase; letter-spacing: .04em; color: var(--muted);
     margin: 1.4rem 0 .4rem; }
.tables { display: flex; flex-wrap: wrap; gap: 0 2rem; align-items: flex-start; }
table { border-collapse: collapse; margin-top: .2rem; }
th, td { text-align: left; padding: .25rem .6rem; border-bottom: 1px solid var(--line);
         vertical-align: top; }
th { font-weight: 600; color: var(--muted); font-size: .8rem; }
td.num, th.num { text-align: right; font-variant-numeric: tabular-nums; }
td.text { word-break: break-all; max-width: 40rem; }
figure { margin: .4rem 0 1.2rem; }
figcaption { font-weight: 600; margin-bottom: .2rem; }
figcaption .unit { font-weight: 400; color: var(--muted); font-size: .85rem; }
svg.chart { width: 100%; height: auto; background: var(--bg); border: 1px solid var(--line);
            border-radius: 6px; }
svg.chart text { font: 11px system-ui, sans-serif; fill: var(--muted); }
svg.chart .grid { stroke: var(--line); stroke-width: 1; }
svg.chart polyline { fill: none; stroke-width: 1.5; stroke-linejoin: round; }
svg.chart polyline:hover { stroke-width: 3; }
.legend { display: flex; flex-wrap: wrap; gap: .2rem 1rem; font-size: .85rem; }
.legend span::before { content: ""; display: inline-block; width: .9rem; height: .2rem;
                       margin: 0 .35rem .2rem 0; background: var(--c); vertical-align: middle; }
.legend span.dashed::before { background: repeating-linear-gradient(90deg, var(--c) 0 4px,
                              transparent 4px 7px); }
.hint { color: var(--muted); font-size: .85rem; margin: .3rem 0 0; }
.empty { color: var(--muted); }
"""


@dataclass
class Series:
    """One line of a chart: a value per row (None: no data there)."""

    name: str
    values: list[float | None]
    colour: str
    dashed: bool = False
    peak: bool = False
    """Downsampled by the group's maximum (a peak), rather than its mean."""


def _e(value: object) -> str:
    return html.escape(str(value), quote=True)


def _number(value: object) -> str:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return _e(value)
    if isinstance(value, int):
        return f"{value:,}"
    if not math.isfinite(value):
        return _e(value)
    if value == int(value) and abs(value) < 1e15:
        return f"{int(value):,}"
    if abs(value) >= 100:
        return f"{value:,.1f}"
    return f"{value:.4g}"


def _cell(value: object) -> str:
    if isinstance(value, int | float) and not isinstance(value, bool):
        return f'<td class="num">{_number(value)}</td>'
    if value is None:
        return '<td class="empty">-</td>'
    if isinstance(value, dict | list):
        text = orjson.dumps(value, default=str, option=orjson.OPT_NON_STR_KEYS).decode()
        return f'<td class="text">{_e(text)}</td>'
    return f'<td class="text">{_e(value)}</td>'


def _key_table(items: dict[str, Any], table_id: str) -> str:
    rows = "".join(f"<tr><th>{_e(key)}</th>{_cell(value)}</tr>" for key, value in items.items())
    return f'<table id="{table_id}"><tbody>{rows}</tbody></table>'


def _list_table(items: Sequence[Any], table_id: str) -> str:
    """A table of a list of dicts (columns: every key, in order of first appearance)."""
    columns: list[str] = []
    for item in items:
        for key in item if isinstance(item, dict) else ["value"]:
            if key not in columns:
                columns.append(str(key))
    head = "".join(f"<th>{_e(column)}</th>" for column in columns)
    body = "".join(
        "<tr>"
        + "".join(_cell(item.get(column) if isinstance(item, dict) else item) for column in columns)
        + "</tr>"
        for item in items
    )
    return f'<table id="{table_id}"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


def _percentile_table(report: Report) -> str:
    latency, service = percentiles_ms(report.latency), percentiles_ms(report.service)
    keys = ["count", "min", "mean", *QUANTILES]
    head = "".join(f'<th class="num">{_e(key)}</th>' for key in keys)
    rows = "".join(
        f"<tr><th>{name}</th>" + "".join(_cell(values[key]) for key in keys) + "</tr>"
        for name, values in (("latency (ms)", latency), ("service time (ms)", service))
    )
    return (
        f'<table id="percentiles"><thead><tr><th></th>{head}</tr></thead>'
        f"<tbody>{rows}</tbody></table>"
        '<p class="hint">Latency: from the time an event was due to its answer, so it includes'
        " any wait when the sender fell behind. Service time: from the actual send to the"
        " answer.</p>"
    )


def _downsample(
    xs: list[float], series: list[Series], points: int
) -> tuple[list[float], list[list[float | None]]]:
    if len(xs) <= points:
        return xs, [s.values for s in series]
    group = math.ceil(len(xs) / points)
    out_xs = [xs[i] for i in range(0, len(xs), group)]
    out: list[list[float | None]] = []
    for s in series:
        values: list[float | None] = []
        for i in range(0, len(xs), group):
            present = [v for v in s.values[i : i + group] if v is not None]
            if not present:
                values.append(None)
            elif s.peak:
                values.append(max(present))
            else:
                values.append(sum(present) / len(present))
        out.append(values)
    return out_xs, out


def _nice_step(span: float, ticks: int = 5) -> float:
    raw = span / ticks
    magnitude = 10.0 ** math.floor(math.log10(raw))
    for factor in (1.0, 2.0, 2.5, 5.0):
        if raw <= factor * magnitude:
            return factor * magnitude
    return 10.0 * magnitude


TIME_STEPS = [1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600, 7200, 10800, 21600]


def _time_label(seconds: float) -> str:
    seconds = int(seconds)
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        minutes, rest = divmod(seconds, 60)
        return f"{minutes}m{rest:02d}s" if rest else f"{minutes}m"
    hours, rest = divmod(seconds, 3600)
    return f"{hours}h{rest // 60:02d}m" if rest else f"{hours}h"


def _value_label(value: float) -> str:
    if value == 0:
        return "0"
    if abs(value) >= 1000:
        return f"{value / 1000:g}k" if abs(value) < 1e6 else f"{value / 1e6:g}M"
    return f"{value:g}"


WIDTH, HEIGHT = 900, 220
LEFT, RIGHT, TOP, BOTTOM = 56, 12, 10, 24


@dataclass
class Chart:
    """One chart of the page: its element id, caption, y unit and lines."""

    id: str
    title: str
    unit: str
    series: list[Series]
    log: bool = False
    """A log y axis, when the values span more than a factor of 30."""


def _chart(chart: Chart, xs: list[float], end: float) -> str:
    """A figure with an inline SVG line chart of the chart's series over `xs` (seconds,
    the axis running to `end`)."""
    chart_id, title, unit, log = chart.id, chart.title, chart.unit, chart.log
    series = [s for s in chart.series if any(v is not None for v in s.values)]
    if not series:
        return (
            f'<figure id="{chart_id}"><figcaption>{_e(title)}</figcaption>'
            '<p class="empty">No data.</p></figure>'
        )
    xs, columns = _downsample(xs, series, MAX_POINTS)
    present = [v for column in columns for v in column if v is not None]
    plot_w, plot_h = WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM
    x_end = max(end, 1.0)

    def x_of(x: float) -> float:
        return LEFT + plot_w * x / x_end

    y_ticks: list[tuple[float, str]]
    positive = [v for v in present if v > 0]
    if log and positive and max(positive) / min(positive) >= 30:
        low = math.floor(math.log10(min(positive)))
        high = math.ceil(math.log10(max(positive)))
        high = max(high, low + 1)

        def y_of(v: float) -> float:
            v = max(v, 10.0**low)
            return TOP + plot_h * (1 - (math.log10(v) - low) / (high - low))

        y_ticks = [(10.0**k, _value_label(10.0**k)) for k in range(low, high + 1)]
    else:
        top = max(present) if present else 1.0
        top = top if top > 0 else 1.0
        step = _nice_step(top)
        top = math.ceil(top / step - 1e-9) * step

        def y_of(v: float) -> float:
            return TOP + plot_h * (1 - v / top)

        count = round(top / step)
        y_ticks = [(k * step, _value_label(round(k * step, 12))) for k in range(count + 1)]

    parts = [
        f'<svg class="chart" viewBox="0 0 {WIDTH} {HEIGHT}" role="img"'
        f' aria-label="{_e(title)}" preserveAspectRatio="none">'
    ]
    for value, label in y_ticks:
        y = y_of(value)
        parts.append(
            f'<line class="grid" x1="{LEFT}" x2="{WIDTH - RIGHT}" y1="{y:.1f}" y2="{y:.1f}"/>'
            f'<text x="{LEFT - 6}" y="{y + 4:.1f}" text-anchor="end">{_e(label)}</text>'
        )
    time_step = next((s for s in TIME_STEPS if x_end / s <= 8), TIME_STEPS[-1])
    while x_end / time_step > 8:
        time_step *= 2
    tick = 0.0
    while tick <= x_end + 1e-9:
        x = x_of(tick)
        parts.append(
            f'<line class="grid" x1="{x:.1f}" x2="{x:.1f}" y1="{TOP}" y2="{HEIGHT - BOTTOM}"/>'
            f'<text x="{x:.1f}" y="{HEIGHT - 6}" text-anchor="middle">{_time_label(tick)}</text>'
        )
        tick += time_step
    for s, column in zip(series, columns, strict=True):
        dash = ' stroke-dasharray="5 3"' if s.dashed else ""
        for segment in _segments(xs, column):
            points = " ".join(f"{x_of(x):.1f},{y_of(v):.1f}" for x, v in segment)
            if len(segment) == 1:
                x, v = segment[0]
                parts.append(
                    f'<circle cx="{x_of(x):.1f}" cy="{y_of(v):.1f}" r="2" fill="{s.colour}">'
                    f"<title>{_e(s.name)}</title></circle>"
                )
                continue
            parts.append(
                f'<polyline stroke="{s.colour}"{dash} points="{points}">'
                f"<title>{_e(s.name)}</title></polyline>"
            )
    parts.append("</svg>")
    legend = "".join(
        f'<span{" class=dashed" if s.dashed else ""} style="--c: {s.colour}">{_e(s.name)}</span>'
        for s in series
    )
    return (
        f'<figure id="{chart_id}"><figcaption>{_e(title)}'
        f' <span class="unit">{_e(unit)}</span></figcaption>{"".join(parts)}'
        f'<div class="legend">{legend}</div></figure>'
    )


def _segments(xs: list[float], values: list[float | None]) -> Iterable[list[tuple[float, float]]]:
    segment: list[tuple[float, float]] = []
    for x, v in zip(xs, values, strict=True):
        if v is None:
            if segment:
                yield segment
            segment = []
        else:
            segment.append((x, v))
    if segment:
        yield segment


def _result_colours(results: list[str]) -> dict[str, str]:
    used: dict[str, int] = {}
    colours = {}
    for result in results:
        kind = result[:1] if result[:1] in ("2", "4", "5") and result[:3].isdigit() else ""
        palette = RESULT_PALETTES[kind]
        colours[result] = palette[used.get(kind, 0) % len(palette)]
        used[kind] = used.get(kind, 0) + 1
    return colours


def _run_duration(meta: dict[str, Any]) -> float | None:
    for key in ("duration", "duration_seconds"):
        value = meta.get(key)
        if isinstance(value, int | float) and not isinstance(value, bool) and value > 0:
            return float(value)
    return None


def _charts(timeline: Timeline, duration: float | None) -> str:
    """The charts of `timeline`. With the run's `duration`, they end with the run: the row it
    ends in has its rates per second of the part the run covered (or, under a quarter of a
    row, is left out: too short to give a rate), and rows after it are left out."""
    width = timeline.width
    dense: list[Row | None] = list(timeline._rows)
    spans = [float(width)] * len(dense)
    if dense and duration is not None:
        # Rows from the run's end on (a last sample, taken as it stopped) are outside it.
        del dense[max(1, math.ceil(duration / width)) :]
        del spans[len(dense) :]
        covered = duration - (len(dense) - 1) * width
        if covered < width / 4 and len(dense) > 1:
            dense.pop()
            spans.pop()
        elif 0 < covered < width:
            spans[-1] = covered
    xs = [i * width + span / 2 for i, span in enumerate(spans)]
    end = (len(dense) - 1) * width + spans[-1] if dense else 0.0

    def counts(get: Callable[[Row], int]) -> list[float | None]:
        return [
            0.0 if row is None else get(row) / span for row, span in zip(dense, spans, strict=True)
        ]

    def samples(get: Callable[[Row], float | None]) -> list[float | None]:
        return [None if row is None else get(row) for row in dense]

    quantiles: list[tuple[dict[float, float | None], dict[float, float | None]]] = [
        ({}, {})
        if row is None
        else (
            row.latency.quantiles(ROW_QUANTILES.values()),
            row.service.quantiles(ROW_QUANTILES.values()),
        )
        for row in dense
    ]

    def ms(which: int, q: float) -> list[float | None]:
        values: list[float | None] = []
        for pair in quantiles:
            value = pair[which].get(q)
            values.append(None if value is None else value * 1000)
        return values

    totals: dict[str, int] = {}
    for row in dense:
        if row is not None:
            for result, count in row.results.items():
                totals[result] = totals.get(result, 0) + count
    ordered = sorted(totals, key=lambda r: (-totals[r], r))
    shown, others = ordered[:MAX_RESULT_SERIES], ordered[MAX_RESULT_SERIES:]
    colours = _result_colours(shown)

    def of_result(result: str) -> Callable[[Row], int]:
        return lambda row: row.results.get(result, 0)

    result_series = [Series(r, counts(of_result(r)), colours[r]) for r in shown]
    if others:
        rest = set(others)
        result_series.append(
            Series(
                f"{len(others)} others",
                counts(lambda row: sum(c for r, c in row.results.items() if r in rest)),
                COLOURS["grey"],
                dashed=True,
            )
        )
    every = f" (rows of {width} s)" if width > 1 else ""
    charts = [
        Chart(
            "chart-rate",
            f"Target and achieved rate{every}",
            "events/s",
            [
                Series("target", samples(lambda r: r.target_rate), COLOURS["grey"], True),
                Series("sent", counts(lambda r: r.sent), COLOURS["blue"]),
                Series("answered", counts(lambda r: sum(r.results.values())), COLOURS["green"]),
            ],
        ),
        Chart(
            "chart-latency",
            "Latency and service time",
            "ms",
            [
                Series("latency p50", ms(0, 0.5), COLOURS["blue"]),
                Series("latency p99", ms(0, 0.99), COLOURS["blue"], True, peak=True),
                Series("service p50", ms(1, 0.5), COLOURS["purple"]),
                Series("service p99", ms(1, 0.99), COLOURS["purple"], True, peak=True),
            ],
            log=True,
        ),
        Chart("chart-results", "Results", "per second", result_series),
        Chart(
            "chart-in-flight",
            "In flight (largest sample of each row)",
            "events",
            [Series("in flight", samples(lambda r: r.in_flight), COLOURS["teal"], peak=True)],
        ),
        Chart(
            "chart-retries",
            "Retries and dropped sends",
            "per second",
            [
                Series("retries", counts(lambda r: r.retries), COLOURS["amber"]),
                Series("dropped", counts(lambda r: r.dropped), COLOURS["red"]),
            ],
        ),
    ]
    return "".join(_chart(chart, xs, end) for chart in charts)


def render_html(report: Report) -> str:
    """The report as one self-contained page: no external fonts, scripts or images."""
    meta = report.meta
    endpoint = meta.get("endpoint", "")
    started = meta.get("started_at", "")
    plain_meta = {k: v for k, v in meta.items() if k != "stages"}
    stages = meta.get("stages")
    stages_html = (
        "<h2>Planned stages</h2>" + _list_table(stages, "stages")
        if isinstance(stages, list) and stages
        else ""
    )
    return "".join(
        [
            '<!doctype html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
            '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
            '<link rel="icon" href="data:,">\n',
            f"<title>eventctl load test: {_e(endpoint)} at {_e(started)}</title>\n",
            f"<style>{STYLE}</style>\n</head>\n<body>\n<header>",
            f"<h1>Load test of {_e(endpoint)}</h1>",
            f"<p>started {_e(started)}</p></header>\n<main>\n",
            '<div class="tables"><div><h2>Summary</h2>',
            _key_table(report.summary, "summary"),
            "</div><div><h2>Run</h2>",
            _key_table(plain_meta, "meta"),
            "</div></div>\n",
            stages_html,
            "<h2>Latency and service time</h2>",
            _percentile_table(report),
            "\n<h2>Over time</h2>\n",
            _charts(report.timeline, _run_duration(meta)),
            "\n</main>\n</body>\n</html>\n",
        ]
    )
