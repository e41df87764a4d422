"""The log-linear histogram: quantiles within 1%, merging, JSON, bounds."""

from __future__ import annotations

import json
import math
import random

import pytest

from eventctl.histogram import Histogram

QS = [0.0, 0.001, 0.01, 0.1, 0.25, 0.5, 0.75, 0.9, 0.99, 0.999, 1.0]


def exact(values: list[float], q: float) -> float:
    """The value of rank ceil(q·n) (1-based) of the sorted values, the rank quantile() uses."""
    ordered = sorted(values)
    return ordered[max(1, math.ceil(q * len(ordered))) - 1]


def filled(values: list[float], **layout: float) -> Histogram:
    histogram = Histogram(**layout)  # type: ignore[arg-type]
    for value in values:
        histogram.record(value)
    return histogram


def lognormal(seed: int, n: int = 20_000) -> list[float]:
    rng = random.Random(seed)
    # Spread over 1 µs .. 3600 s: exp(N(-5, 3)) clipped to the range.
    return [min(3600.0, max(1e-6, rng.lognormvariate(-5.0, 3.0))) for _ in range(n)]


def uniform(seed: int, n: int = 20_000) -> list[float]:
    rng = random.Random(seed)
    return [rng.uniform(1e-6, 3600.0) for _ in range(n)]


def log_uniform(seed: int, n: int = 20_000) -> list[float]:
    rng = random.Random(seed)
    return [10 ** rng.uniform(-6, math.log10(3600)) for _ in range(n)]


@pytest.mark.parametrize("sample", [lognormal, uniform, log_uniform])
@pytest.mark.parametrize("seed", [1, 2, 3])
def test_quantiles_are_within_one_percent(sample: object, seed: int) -> None:
    assert callable(sample)
    values = sample(seed)
    histogram = filled(values)
    for q in QS:
        want = exact(values, q)
        got = histogram.quantile(q)
        assert got is not None
        assert abs(got - want) <= 0.01 * want, (q, got, want)
    many = histogram.quantiles(QS)
    assert many == {q: histogram.quantile(q) for q in QS}


def test_every_quantile_of_a_wide_sample_is_within_one_percent() -> None:
    values = log_uniform(7, 5_000)
    histogram = filled(values)
    ordered = sorted(values)
    for rank in range(1, len(ordered) + 1):
        q = rank / len(ordered)
        got = histogram.quantile(q)
        assert got is not None
        want = ordered[max(1, math.ceil(q * len(ordered))) - 1]
        assert abs(got - want) <= 0.01 * want


def test_ends_min_max_count_and_mean_are_exact() -> None:
    values = lognormal(4)
    histogram = filled(values)
    assert histogram.count == len(values)
    assert histogram.min == min(values) == histogram.quantile(0)
    assert histogram.max == max(values) == histogram.quantile(1)
    assert histogram.mean == pytest.approx(sum(values) / len(values), rel=1e-12)
    assert histogram.sum == pytest.approx(sum(values), rel=1e-12)


def test_a_single_value_is_every_quantile() -> None:
    histogram = filled([0.0123])
    assert {histogram.quantile(q) for q in QS} == {0.0123}


def test_the_coarse_layout_bounds_its_error_too() -> None:
    values = lognormal(5)
    histogram = filled(values, sub_bits=3)
    assert histogram.buckets == 32 * 8
    for q in QS:
        want = exact(values, q)
        got = histogram.quantile(q)
        assert got is not None
        assert abs(got - want) <= want / 16 * (1 + 1e-9)


def test_merge_equals_recording_everything_in_one() -> None:
    a_values, b_values = lognormal(10), uniform(11)
    a, b = filled(a_values), filled(b_values)
    a.merge(b)
    whole = filled(a_values + b_values)
    assert a.nonzero() == whole.nonzero()
    assert (a.count, a.min, a.max) == (whole.count, whole.min, whole.max)
    assert a.sum == pytest.approx(whole.sum, rel=1e-12)
    assert a.quantiles(QS) == whole.quantiles(QS)


def test_merge_with_an_empty_histogram_changes_nothing() -> None:
    a = filled([0.5, 0.25])
    before = Histogram.from_json(a.to_json())
    a.merge(Histogram())
    assert a == before
    empty = Histogram()
    empty.merge(a)
    assert empty == a


def test_merge_refuses_another_layout() -> None:
    with pytest.raises(ValueError, match="layout"):
        Histogram().merge(Histogram(sub_bits=3))
    with pytest.raises(ValueError, match="layout"):
        Histogram().merge(Histogram(highest=60.0))


def test_json_round_trip_is_exact_and_merges() -> None:
    a_values, b_values = lognormal(20), lognormal(21)
    a, b = filled(a_values), filled(b_values)
    text = json.dumps(a.to_json())
    again = Histogram.from_json(json.loads(text))
    assert again == a
    assert again.quantiles(QS) == a.quantiles(QS)
    assert again.mean == a.mean
    again.merge(Histogram.from_json(json.loads(json.dumps(b.to_json()))))
    a.merge(b)
    assert again == a


def test_json_is_compact() -> None:
    histogram = filled([0.001] * 1000 + [0.002] * 10)
    data = histogram.to_json()
    assert data["buckets"] == [[i, c] for i, c in histogram.nonzero()]
    assert len(data["buckets"]) == 2
    assert data["layout"] == {"lowest": 1e-6, "highest": 3600.0, "sub_bits": 7}
    assert (data["count"], data["min"], data["max"]) == (1010, 0.001, 0.002)


def test_from_json_refuses_what_is_not_a_histogram() -> None:
    good = filled([0.1]).to_json()
    with pytest.raises(ValueError, match="not a histogram"):
        Histogram.from_json({"count": 1})
    with pytest.raises(ValueError, match="outside"):
        Histogram.from_json({**good, "buckets": [[99_999, 1]]})
    with pytest.raises(ValueError, match="sum of its buckets"):
        Histogram.from_json({**good, "count": 2})
    with pytest.raises(ValueError, match="bucket"):
        Histogram.from_json({**good, "buckets": [[1, -1]]})


def test_an_empty_histogram() -> None:
    histogram = Histogram()
    assert histogram.count == 0
    assert (histogram.min, histogram.max, histogram.mean) == (None, None, None)
    assert histogram.quantile(0.5) is None
    assert histogram.quantiles([0.5, 0.99]) == {0.5: None, 0.99: None}
    data = histogram.to_json()
    assert (data["count"], data["min"], data["max"], data["buckets"]) == (0, None, None, [])
    assert Histogram.from_json(json.loads(json.dumps(data))) == histogram


def test_values_outside_the_range_count_in_the_end_buckets() -> None:
    histogram = filled([0.0, 1e-9, -5.0, 7200.0, 1e12])
    pairs = histogram.nonzero()
    assert pairs == [[0, 3], [histogram.buckets - 1, 2]]
    assert histogram.min == 0.0
    assert histogram.max == 1e12 == histogram.quantile(1.0)
    assert histogram.quantile(0.0) == 0.0
    assert histogram.sum == 7200.0 + 1e12 + 1e-9
    low, high = histogram.bucket_bounds(0)
    assert (low, high) == pytest.approx((1e-6, 1e-6 * (1 + 1 / 128)))
    top_low, top_high = histogram.bucket_bounds(histogram.buckets - 1)
    assert 3600.0 < top_low < top_high < 7200.0


def test_the_range_ends_land_in_range() -> None:
    histogram = filled([1e-6, 3600.0])
    assert histogram.quantile(0.01) == pytest.approx(1e-6, rel=0.01)
    assert histogram.quantile(0.99) == pytest.approx(3600.0, rel=0.01)
    first, last = histogram.nonzero()
    assert first[0] == 0
    assert last[0] < histogram.buckets - 1


@pytest.mark.parametrize("value", [math.nan, math.inf])
def test_what_is_not_a_duration_is_refused(value: float) -> None:
    histogram = Histogram()
    with pytest.raises(ValueError, match="not a duration"):
        histogram.record(value)
    assert histogram.count == 0


@pytest.mark.parametrize("q", [-0.1, 1.5, math.nan])
def test_quantile_outside_zero_to_one_is_refused(q: float) -> None:
    with pytest.raises(ValueError, match="between 0 and 1"):
        filled([1.0]).quantile(q)


def test_memory_does_not_grow_with_the_count() -> None:
    histogram = Histogram()
    size = histogram.buckets
    assert size == 32 * 128
    rng = random.Random(3)
    for _ in range(200_000):
        histogram.record(rng.expovariate(100.0))
    assert histogram.buckets == size
    assert len(histogram._counts) == size


def test_bucket_bounds_tile_the_range() -> None:
    histogram = Histogram(sub_bits=2)
    previous_high = histogram.bucket_bounds(0)[0]
    for index in range(histogram.buckets):
        low, high = histogram.bucket_bounds(index)
        assert low == pytest.approx(previous_high)
        mid = (low + high) / 2
        one = Histogram(sub_bits=2)
        one.record(mid)
        assert one.nonzero() == [[index, 1]]
        previous_high = high


def test_layout_is_checked() -> None:
    with pytest.raises(ValueError, match="lowest"):
        Histogram(lowest=0.0)
    with pytest.raises(ValueError, match="lowest"):
        Histogram(lowest=2.0, highest=1.0)
    with pytest.raises(ValueError, match="sub_bits"):
        Histogram(sub_bits=17)
