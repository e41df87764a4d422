"""The run report: the timeline, the JSON document, the HTML page (also in headless Chromium)."""

from __future__ import annotations

import json
import os
import random
import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from eventctl.histogram import Histogram
from eventctl.propagator.report import (
    MAX_POINTS,
    Report,
    Timeline,
    check_report_path,
    render_html,
    write_report,
)
from tests.helpers import chromium_page

HOSTILE = "http://x/<script>alert(1)</script>"


def run(seconds: int, rate: int, seed: int = 1, **options: int) -> Report:
    """A report of a simulated run: `rate` events a second for `seconds`, some answered 503
    and retried, a few dropped, the target and in-flight sampled ten times a second."""
    rng = random.Random(seed)
    timeline = Timeline(**options)
    latency, service = Histogram(), Histogram()
    for i in range(seconds * rate):
        t = i / rate
        timeline.sent(t)
        took = rng.lognormvariate(-7.0, 0.6)
        late = took + rng.expovariate(5000.0)
        result = "503" if rng.random() < 0.05 else "200"
        timeline.answered(t + took, result, late, took)
        latency.record(late)
        service.record(took)
        if result == "503":
            timeline.retried(t + took + 0.01)
        if i % 997 == 0:
            timeline.dropped(t)
        if i % max(1, rate // 10) == 0:
            timeline.sample(t, float(rate), rng.randint(0, 20))
    meta = {
        "command": "eventctl propagate --rate 100",
        "endpoint": "http://127.0.0.1:8000/event",
        "started_at": "2026-12-03T06:00:00Z",
        "duration": float(seconds),
        "workers": 1,
        "stages": [{"rate": rate, "duration": f"{seconds}s"}],
    }
    summary = {"generated": seconds * rate, "delivered": seconds * rate, "achieved_rate": 99.5}
    return Report(meta, summary, latency, service, timeline)


def totals(timeline: Timeline) -> dict[str, int]:
    found = {"sent": 0, "dropped": 0, "retries": 0}
    for _, row in timeline.rows():
        found["sent"] += row.sent
        found["dropped"] += row.dropped
        found["retries"] += row.retries
        for result, count in row.results.items():
            found[result] = found.get(result, 0) + count
        found["latency"] = found.get("latency", 0) + row.latency.count
    return found


def test_rows_count_what_happened_in_each_second() -> None:
    timeline = Timeline()
    timeline.sent(0.1)
    timeline.sent(0.9, 3)
    timeline.dropped(1.5, 2)
    timeline.retried(1.2)
    timeline.answered(1.01, "200", 0.02, 0.01)
    timeline.answered(1.99, "connect error", 1.5, 1.0)
    timeline.sample(1.1, 50.0, 4)
    timeline.sample(1.7, 40.0, 9)
    timeline.sent(-0.5)  # before the start (a clock read early) counts in the first row
    timeline.sent(5.0)
    rows = timeline.to_json()["rows"]
    assert timeline.to_json()["width"] == 1
    assert [row["t"] for row in rows] == [0, 1, 5]
    first, second, last = rows
    assert first["sent"] == 5
    assert (second["sent"], second["dropped"], second["retries"]) == (0, 2, 1)
    assert second["results"] == {"200": 1, "connect error": 1}
    assert second["answered"] == 2
    assert (second["target_rate"], second["in_flight"]) == (50.0, 9)  # the largest sample
    assert first["target_rate"] is None
    assert first["in_flight"] is None
    assert second["latency"]["count"] == 2
    assert (second["latency"]["min"], second["latency"]["max"]) == (0.02, 1.5)
    assert second["service"]["p99_ms"] == 1000.0
    assert last["sent"] == 1


def test_report_json_has_percentiles_consistent_with_its_histograms() -> None:
    report = run(5, 200)
    data = json.loads(json.dumps(report.to_json()))
    assert data["format"] == 1
    assert data["meta"]["stages"] == [{"rate": 200, "duration": "5s"}]
    for name, histogram in (("latency", report.latency), ("service", report.service)):
        shown = data[f"{name}_ms"]
        assert set(shown) == {"count", "min", "mean", "p50", "p90", "p99", "p99.9", "max"}
        assert shown["count"] == 1000
        for key, q in {"p50": 0.5, "p90": 0.9, "p99": 0.99, "p99.9": 0.999}.items():
            seconds = histogram.quantile(q)
            assert seconds is not None
            assert shown[key] == pytest.approx(seconds * 1000)
        assert shown["max"] == pytest.approx(histogram.max * 1000)  # type: ignore[operator]
        assert shown["min"] <= shown["p50"] <= shown["p90"] <= shown["p99"] <= shown["max"]
        assert Histogram.from_json(data["histograms"][name]) == histogram
    rows = data["timeline"]["rows"]
    assert [row["t"] for row in rows][:5] == [0, 1, 2, 3, 4]  # a 6th when answers spill over
    assert sum(row["sent"] for row in rows) == 1000
    assert sum(row["answered"] for row in rows) == 1000
    assert sum(row["latency"]["count"] for row in rows) == report.latency.count


def test_a_report_round_trips_through_json() -> None:
    report = run(4, 100)
    again = Report.from_json(json.loads(json.dumps(report.to_json())))
    assert again.to_json() == report.to_json()


def test_two_workers_timelines_merge_to_the_whole_run() -> None:
    a, b = run(6, 100, seed=1), run(6, 100, seed=2)
    a_rows, b_rows = dict(a.timeline.rows()), dict(b.timeline.rows())
    expected_in_flight = {
        t: (a_rows[t].in_flight or 0) + (b_rows[t].in_flight or 0) for t in range(6)
    }
    want = {key: totals(a.timeline)[key] + totals(b.timeline)[key] for key in totals(a.timeline)}

    # Through JSON, as --workers will: each worker's report read back and merged.
    parts = [Report.from_json(json.loads(json.dumps(r.to_json()))) for r in (a, b)]
    whole = parts[0]
    whole.timeline.merge(parts[1].timeline)
    whole.latency.merge(parts[1].latency)
    whole.service.merge(parts[1].service)

    assert totals(whole.timeline) == want
    rows = dict(whole.timeline.rows())
    for second in range(6):
        assert rows[second].target_rate == 200.0  # both workers sampled 100/s: summed
        assert rows[second].in_flight == expected_in_flight[second]
    assert whole.latency.count == a.latency.count + b.latency.count
    one = Histogram()
    one.merge(a.latency)
    one.merge(b.latency)
    assert whole.latency.nonzero() == one.nonzero()


def test_timelines_of_different_widths_merge_at_the_coarser() -> None:
    fine, coarse = Timeline(max_rows=16), Timeline(max_rows=16)
    for second in range(10):
        fine.sent(second + 0.5)
        fine.sample(second, 10.0 + second, second)
    for second in range(40):
        coarse.sent(second + 0.5)
    assert (fine.width, coarse.width) == (1, 4)
    fine.merge(coarse)
    assert fine.width == 4
    assert totals(fine)["sent"] == 50
    first = dict(fine.rows())[0]
    assert first.sent == 4 + 4
    assert (first.target_rate, first.in_flight) == (13.0, 3)  # fine's max over its 4 seconds

    coarse2 = Timeline(max_rows=16)
    for second in range(40):
        coarse2.sent(second + 0.5)
    late = Timeline(max_rows=16)
    late.sent(100.0)  # past coarse2's 64 s of rows: the merge coarsens once more
    coarse2.merge(late)
    assert coarse2.width == 8
    assert coarse2.length <= 16
    assert totals(coarse2)["sent"] == 41


def test_coarsening_keeps_rows_bounded_and_totals_exact() -> None:
    report = run(1000, 3, max_rows=64)
    timeline = report.timeline
    assert timeline.length <= 64
    assert timeline.width == 16
    assert totals(timeline)["sent"] == 3000
    assert totals(timeline)["latency"] == 3000
    assert sum(totals(timeline)[r] for r in ("200", "503")) == 3000
    data = timeline.to_json()
    assert data["width"] == 16
    assert all(row["t"] % 16 == 0 for row in data["rows"])
    assert max(row["target_rate"] for row in data["rows"]) == 3.0
    again = Timeline.from_json(json.loads(json.dumps(data)))
    assert again.to_json() == data
    again.sent(5000.0)  # goes on coarsening after a round trip
    assert again.length <= 64
    assert totals(again)["sent"] == 3001


def test_a_day_long_timeline_stays_within_its_rows() -> None:
    timeline = Timeline()
    for second in range(0, 86_400, 7):
        timeline.sent(float(second))
        timeline.answered(second + 0.5, "200", 0.01, 0.005)
    assert timeline.length <= 3600
    assert timeline.width == 32
    assert totals(timeline)["sent"] == len(range(0, 86_400, 7))


def test_from_json_refuses_what_is_not_a_timeline() -> None:
    good = run(3, 10).timeline.to_json()
    with pytest.raises(ValueError, match="not a timeline"):
        Timeline.from_json({"rows": []})
    with pytest.raises(ValueError, match="power of two"):
        Timeline.from_json({**good, "width": 3})
    with pytest.raises(ValueError, match="does not fit"):
        Timeline.from_json({**good, "rows": [{**good["rows"][0], "t": 10**9}]})
    with pytest.raises(ValueError, match="layout"):
        Timeline.from_json({**good, "layout": {"sub_bits": 7}})
    with pytest.raises(ValueError, match="not a report"):
        Report.from_json({"meta": {}})


@pytest.mark.parametrize("name", ["run.txt", "run", "run.htm", "report.json.gz"])
def test_a_report_is_json_or_html_only(tmp_path: Path, name: str) -> None:
    path = tmp_path / name
    with pytest.raises(ValueError, match=r"\.json or \.html") as caught:
        write_report(path, run(1, 10))
    assert str(path) in str(caught.value)
    assert "\n" not in str(caught.value)
    with pytest.raises(ValueError, match=re.escape(str(path))):
        check_report_path(path)
    assert list(tmp_path.iterdir()) == []


def test_reports_are_written_whole_and_replace_the_old(tmp_path: Path) -> None:
    report = run(3, 50)
    for name in ("run.json", "RUN.HTML"):
        path = tmp_path / name
        path.write_text("old")
        write_report(path, report)
        assert path.read_text() != "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["RUN.HTML", "run.json"]
    data = json.loads((tmp_path / "run.json").read_text())
    assert data == json.loads(json.dumps(report.to_json()))
    mode = (tmp_path / "run.json").stat().st_mode & 0o777
    umask = os.umask(0)
    os.umask(umask)
    assert mode == 0o666 & ~umask


def hostile_report() -> Report:
    report = run(3, 20)
    report.meta["endpoint"] = HOSTILE
    report.meta["<b>key</b>"] = "<img src=x onerror=alert(2)>"
    report.meta["stages"] = [{"<i>rate</i>": "<u>10</u>", "duration": {"<s>": "</td>"}}]
    report.summary["<em>odd</em>"] = "<script>alert(3)</script>"
    report.timeline.answered(1.0, "<script>alert(4)</script>", 0.1, 0.1)
    return report


def test_html_escapes_everything_from_outside() -> None:
    page = render_html(hostile_report())
    assert "<script" not in page
    for tag in ("<img", "<b>", "<i>", "<u>", "<em>", "<s>", '<td>"<'):
        assert tag not in page.replace("&lt;", "")
    assert "http://x/&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert "&lt;script&gt;alert(4)&lt;/script&gt;" in page  # the result, in the chart legend


def test_html_references_nothing_outside_itself() -> None:
    page = render_html(hostile_report())
    # The only URLs in the page are the endpoint shown as text (escaped, in the title, the
    # heading and the run table); no src=, href= or url() points anywhere.
    without_data = page.replace("http://x/&lt;script&gt;alert(1)&lt;/script&gt;", "")
    without_data = without_data.replace("http://127.0.0.1:8000/event", "")
    assert "http://" not in without_data
    assert "https://" not in without_data
    assert re.findall(r'(?:src|href)="([^"]*)"', page) == ["data:,"]
    assert "url(" not in page
    assert "@import" not in page


def test_charts_have_at_most_max_points_per_line() -> None:
    report = run(4000, 1, max_rows=8192)
    assert report.timeline.length == 4000
    page = render_html(report)
    lines = re.findall(r'<polyline [^>]*points="([^"]*)"', page)
    assert lines
    assert max(len(points.split()) for points in lines) <= MAX_POINTS
    assert len(page) < 1_000_000


def test_an_empty_report_renders() -> None:
    report = Report(meta={}, summary={})
    page = render_html(report)
    assert "No data." in page
    assert json.loads(json.dumps(report.to_json()))["latency_ms"]["p50"] is None


@pytest.fixture
def browser_page() -> Iterator[object]:
    with chromium_page(1280, 900) as page:
        yield page


def test_the_page_renders_in_chromium(browser_page: object, tmp_path: Path) -> None:
    from playwright.sync_api import Page, expect

    page = browser_page
    assert isinstance(page, Page)
    errors: list[str] = []
    page.on("console", lambda message: errors.append(message.text))
    page.on("pageerror", lambda error: errors.append(str(error)))
    requests: list[str] = []
    page.on("request", lambda request: requests.append(request.url))
    path = tmp_path / "run.html"
    write_report(path, hostile_report())
    page.goto(path.as_uri())

    expect(page.locator("h1")).to_contain_text(HOSTILE)
    expect(page.locator("#summary tr")).to_have_count(4)
    expect(page.locator("#summary")).to_contain_text("generated")
    expect(page.locator("#percentiles tbody tr")).to_have_count(2)
    expect(page.locator("#stages")).to_contain_text("<u>10</u>")
    expect(page.locator("svg.chart")).to_have_count(5)
    rate_line = page.locator("#chart-rate polyline").first
    points = rate_line.get_attribute("points") or ""
    assert len(points.split()) >= 3
    box = page.locator("#chart-latency svg").bounding_box()
    assert box is not None
    assert box["width"] > 500
    assert box["height"] > 100
    expect(page.locator("#chart-results .legend")).to_contain_text("<script>alert(4)</script>")
    assert errors == []
    assert requests == [path.as_uri()]


def sent_line(report: Report) -> list[tuple[float, float]]:
    """The points of the rate chart's `sent` line (its second series, after `target`)."""
    page = render_html(report)
    chart = page[page.index('id="chart-rate"') :]
    chart = chart[: chart.index("</figure>")]
    lines = re.findall(r'<polyline [^>]*points="([^"]*)"><title>sent</title>', chart)
    assert len(lines) == 1
    return [(float(x), float(y)) for x, y in (p.split(",") for p in lines[0].split())]


@pytest.mark.parametrize("key", ["duration", "duration_seconds"])
def test_the_last_row_is_a_rate_over_the_part_the_run_covered(key: str) -> None:
    timeline = Timeline()
    for i in range(25):  # 10 a second for 2.5 s
        timeline.sent(i / 10)
    points = sent_line(Report({key: 2.5}, {}, timeline=timeline))
    assert len(points) == 3
    assert len({y for _, y in points}) == 1  # the half row is 10/s too, not 5/s
    assert points[0][0] < points[1][0] < points[2][0]

    short = Timeline()
    for i in range(21):  # the run ends 0.1 s into its third row: too short for a rate
        short.sent(i / 10)
    assert len(sent_line(Report({key: 2.1}, {}, timeline=short))) == 2
    assert len(sent_line(Report({}, {}, timeline=short))) == 3  # no duration: as counted

    after = Timeline()
    for i in range(30):
        after.sent(i / 10)
    after.sample(3.0, 10.0, 0)  # the sample taken as the run stopped, in a row of its own
    points = sent_line(Report({key: 3.0}, {}, timeline=after))
    assert len(points) == 3
    assert len({y for _, y in points}) == 1
