"""A bounded, mergeable log-linear (HDR-style) histogram of durations in seconds.

The range `lowest`..`highest` (1 µs to 1 hour by default) is cut into powers of two, each
power into 2**sub_bits equal sub-buckets (128 by default), so a bucket is at most 1/128 of
its lower bound wide and a bucket's midpoint is within 1/256 (0.39%) of any value in it.
The counts are one flat list whose length depends only on the layout (4,096 by default),
never on how many values were recorded. Values below the range count in the lowest bucket,
above it in the highest; the exact min, max and sum are kept beside the counts.

`record` costs about 0.3 µs a call on CPython 3.11 (`timeit` of 1,000,000 calls on the
development machine): one `math.frexp`, one multiply-add for the index, a list increment.
"""

from __future__ import annotations

import math
from bisect import bisect_left
from collections.abc import Iterable
from itertools import accumulate
from typing import Any

DEFAULT_LOWEST = 1e-6
DEFAULT_HIGHEST = 3600.0
DEFAULT_SUB_BITS = 7


class Histogram:
    """Counts of durations (seconds) in log-linear buckets; see the module's docstring."""

    __slots__ = (
        "_count",
        "_counts",
        "_max",
        "_min",
        "_offset",
        "_scale",
        "_sub",
        "_sub2",
        "_sum",
        "_top",
        "highest",
        "lowest",
        "sub_bits",
    )

    def __init__(
        self,
        *,
        lowest: float = DEFAULT_LOWEST,
        highest: float = DEFAULT_HIGHEST,
        sub_bits: int = DEFAULT_SUB_BITS,
    ) -> None:
        """A histogram of values from `lowest` to `highest` seconds, with 2**sub_bits
        sub-buckets per power of two (relative error of a quantile at most 2**-(sub_bits+1))."""
        if not (0 < lowest < highest < math.inf):
            raise ValueError(f"need 0 < lowest < highest, got {lowest!r} and {highest!r}")
        if not 0 <= sub_bits <= 16:
            raise ValueError(f"sub_bits must be 0 to 16, got {sub_bits!r}")
        self.lowest = float(lowest)
        self.highest = float(highest)
        self.sub_bits = int(sub_bits)
        sub = 1 << self.sub_bits
        # In units of `lowest`, a value x has frexp(x) = (m, e) with m in [0.5, 1); the
        # range starts at x = 1 (e = 1) and its last power of two is the one holding highest.
        powers = math.frexp(self.highest / self.lowest)[1]
        self._sub = sub
        self._sub2 = 2 * sub
        self._offset = -2 * sub
        self._scale = 1.0 / self.lowest
        self._top = powers * sub - 1
        self._counts = [0] * (powers * sub)
        self._count = 0
        self._sum = 0.0
        self._min = math.inf
        self._max = -math.inf

    @property
    def layout(self) -> dict[str, Any]:
        """The parameters two histograms must share to be merged."""
        return {"lowest": self.lowest, "highest": self.highest, "sub_bits": self.sub_bits}

    @property
    def buckets(self) -> int:
        """How many buckets the layout has (the length of the counts, whatever the count)."""
        return len(self._counts)

    def record(self, seconds: float) -> None:
        """Count one duration. A negative one counts as 0; NaN and infinity are refused."""
        # Plain comparisons rather than min()/max(): a call costs more than the rest here.
        if seconds < 0.0:  # noqa: PLR1730
            seconds = 0.0
        m, e = math.frexp(seconds * self._scale)
        try:
            i = int(m * self._sub2) + e * self._sub + self._offset
        except (OverflowError, ValueError):
            raise ValueError(f"not a duration: {seconds!r}") from None
        if i < 0:
            i = 0
        elif i > self._top:
            i = self._top
        self._counts[i] += 1
        self._count += 1
        self._sum += seconds
        if seconds > self._max:  # noqa: PLR1730
            self._max = seconds
        if seconds < self._min:  # noqa: PLR1730
            self._min = seconds

    def merge(self, other: Histogram) -> None:
        """Add `other`'s counts to these; both must have the same layout (else ValueError)."""
        if other.layout != self.layout:
            raise ValueError(f"cannot merge histograms of layouts {self.layout} and {other.layout}")
        if not other._count:
            return
        self._counts = [a + b for a, b in zip(self._counts, other._counts, strict=True)]
        self._count += other._count
        self._sum += other._sum
        self._min = min(self._min, other._min)
        self._max = max(self._max, other._max)

    @property
    def count(self) -> int:
        """How many values were recorded."""
        return self._count

    @property
    def sum(self) -> float:
        """The sum of the values recorded (negative ones counted as 0)."""
        return self._sum

    @property
    def min(self) -> float | None:
        """The smallest value recorded, exactly; None when empty."""
        return self._min if self._count else None

    @property
    def max(self) -> float | None:
        """The largest value recorded, exactly; None when empty."""
        return self._max if self._count else None

    @property
    def mean(self) -> float | None:
        """The mean of the values recorded; None when empty."""
        return self._sum / self._count if self._count else None

    def bucket_bounds(self, index: int) -> tuple[float, float]:
        """The values (seconds) bucket `index` holds: from the first, up to the second."""
        power, sub = divmod(index, self._sub)
        low = math.ldexp(self._sub + sub, power - self.sub_bits)
        width = math.ldexp(1.0, power - self.sub_bits)
        return low * self.lowest, (low + width) * self.lowest

    def quantile(self, q: float) -> float | None:
        """The q-quantile (q in [0, 1]) in seconds: the midpoint of the bucket holding the
        value of rank ceil(q·count), clamped to [min, max]; quantile(0) is min and
        quantile(1) max, exactly. None when empty."""
        return self.quantiles([q])[q]

    def quantiles(self, qs: Iterable[float]) -> dict[float, float | None]:
        """`quantile(q)` for each q, from one pass over the counts."""
        qs = list(qs)
        for q in qs:
            if not 0.0 <= q <= 1.0:
                raise ValueError(f"a quantile is between 0 and 1, got {q!r}")
        if not self._count:
            return dict.fromkeys(qs)
        cumulative = list(accumulate(self._counts))
        found: dict[float, float | None] = {}
        for q in qs:
            if q <= 0.0:
                found[q] = self._min
            elif q >= 1.0:
                found[q] = self._max
            else:
                rank = max(1, math.ceil(q * self._count))
                low, high = self.bucket_bounds(bisect_left(cumulative, rank))
                found[q] = min(self._max, max(self._min, (low + high) / 2))
        return found

    def nonzero(self) -> list[list[int]]:
        """The buckets that hold anything, as [index, count] pairs in index order."""
        return [[i, c] for i, c in enumerate(self._counts) if c]

    def to_json(self) -> dict[str, Any]:
        """A compact JSON-ready dict: the layout, totals and non-zero buckets; from_json
        reads it back exactly, so histograms of several processes merge through JSON."""
        return {
            "layout": self.layout,
            "count": self._count,
            "sum": self._sum,
            "min": self.min,
            "max": self.max,
            "buckets": self.nonzero(),
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Histogram:
        """The histogram `to_json` wrote (ValueError when `data` is not one)."""
        try:
            made = cls(**data["layout"])
            made.load(data)
        except (KeyError, TypeError) as error:
            raise ValueError(f"not a histogram: {error!r}") from None
        return made

    def load(self, data: dict[str, Any]) -> None:
        """Set totals and buckets from a to_json dict (or its layout-less form), replacing
        what this histogram held; its layout is taken as this one's."""
        counts = [0] * len(self._counts)
        for index, count in data["buckets"]:
            if not (isinstance(index, int) and isinstance(count, int) and count > 0):
                raise ValueError(f"not a histogram bucket: {[index, count]!r}")
            if not 0 <= index < len(counts):
                raise ValueError(f"histogram bucket {index} is outside the layout")
            counts[index] += count
        total = int(data["count"])
        if total != sum(counts):
            raise ValueError(f"histogram count {total} is not the sum of its buckets")
        self._counts = counts
        self._count = total
        self._sum = float(data["sum"])
        self._min = float(data["min"]) if total else math.inf
        self._max = float(data["max"]) if total else -math.inf

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Histogram):
            return NotImplemented
        return (
            self.layout == other.layout
            and self._counts == other._counts
            and self._count == other._count
            and self._sum == other._sum
            and self.min == other.min
            and self.max == other.max
        )

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return (
            f"Histogram(count={self._count}, min={self.min!r}, max={self.max!r},"
            f" layout={self.layout!r})"
        )
