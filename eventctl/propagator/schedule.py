"""When each event of a run is due: stages of held or ramping rates, scaled while it runs.

A plan is a list of stages, each a duration and a rate that holds (`30s@100`) or moves in
a straight line from one rate to another (`1m@100-2000`). The planned count N(t) of events
due by t seconds after the start is the integral of the rate; event k (from 0) is due at
the t where N(t) = k, so the schedule is drift-free like a fixed interval (which is one
stage at 1/interval). `scale(factor, at)` multiplies the rate from `at` on (the `+` and `-`
keys of the live display): the plan's shape in time stays, its rate changes.
"""

from __future__ import annotations

import bisect
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass

from eventctl.timefmt import parse_duration

MAX_STAGES = 100
MAX_RATE = 1_000_000.0
_RATE = r"[^-@]*?(?:[eE]-[^-@]*)?"
STAGE_PATTERN = re.compile(rf"^(?P<time>[^@]+)@(?P<start>{_RATE})(?:-(?P<end>{_RATE}))?$")


class StagesError(ValueError):
    """A --stages text that does not say a plan."""


@dataclass(frozen=True)
class Stage:
    """`seconds` long (math.inf: until stopped), the rate moving from `start_rate` to
    `end_rate` events/s in a straight line (the same for a hold)."""

    seconds: float
    start_rate: float
    end_rate: float

    @property
    def events(self) -> float:
        """How many events the stage plans (inf for an endless stage of a rate above 0)."""
        if math.isinf(self.seconds):
            return math.inf if self.start_rate > 0 else 0.0
        return (self.start_rate + self.end_rate) / 2 * self.seconds

    def offset(self, n: float) -> float:
        """Seconds into the stage at which `n` of its events are due (0 <= n < events)."""
        r0 = self.start_rate
        slope = 0.0 if math.isinf(self.seconds) else (self.end_rate - r0) / self.seconds
        if n <= 0:
            return 0.0
        if slope == 0.0:
            return n / r0
        # r0 t + slope t^2 / 2 = n, in the form that loses no precision when slope is small;
        # at the end of a ramp down to 0 rounding may leave a tiny negative under the root
        t = 2 * n / (r0 + math.sqrt(max(0.0, r0 * r0 + 2 * slope * n)))
        return min(t, self.seconds)

    def rate_at(self, t: float) -> float:
        if math.isinf(self.seconds):
            return self.start_rate
        return self.start_rate + (self.end_rate - self.start_rate) * min(t / self.seconds, 1.0)

    def count_at(self, t: float) -> float:
        """Events the stage plans in its first `t` seconds."""
        if math.isinf(self.seconds):
            return self.start_rate * t
        t = min(t, self.seconds)
        return self.start_rate * t + (self.end_rate - self.start_rate) / self.seconds * t * t / 2

    def label(self) -> str:
        rates = f"{self.start_rate:g}" + (
            "" if self.end_rate == self.start_rate else f"-{self.end_rate:g}"
        )
        return f"{'' if math.isinf(self.seconds) else f'{self.seconds:g}s'}@{rates}"


def parse_stages(text: str) -> tuple[Stage, ...]:
    """`30s@100,1m@100-2000,30s@2000`: comma-separated DURATION@RATE or DURATION@FROM-TO."""
    items = [item.strip() for item in text.split(",")]
    if not text.strip() or not all(items):
        raise StagesError(f"{text!r}: give stages as DURATION@RATE[-RATE], comma-separated")
    if len(items) > MAX_STAGES:
        raise StagesError(f"{len(items)} stages: at most {MAX_STAGES}")
    stages = []
    for item in items:
        found = STAGE_PATTERN.match(item)
        if found is None:
            raise StagesError(
                f"{item!r}: a stage is DURATION@RATE or DURATION@FROM-TO, e.g. 1m@100"
            )
        try:
            seconds = parse_duration(found["time"].strip())
        except ValueError as exc:
            raise StagesError(f"{item!r}: {exc}") from None
        if seconds <= 0:
            raise StagesError(f"{item!r}: a stage lasts more than 0s")
        start = _rate(found["start"], item)
        end = start if found["end"] is None else _rate(found["end"], item)
        stages.append(Stage(seconds, start, end))
    if not any(stage.events > 0 for stage in stages):
        raise StagesError(f"{text!r}: every stage has a rate of 0; nothing would be sent")
    return tuple(stages)


def _rate(text: str, item: str) -> float:
    try:
        rate = float(text)
    except ValueError:
        raise StagesError(f"{item!r}: {text.strip()!r} is not a rate in events/s") from None
    if not 0 <= rate <= MAX_RATE or math.isnan(rate):
        raise StagesError(f"{item!r}: a rate is between 0 and {MAX_RATE:,.0f} events/s")
    return rate


class Schedule:
    """The due time (seconds after the start) of each event of a plan of `stages`."""

    def __init__(self, stages: Sequence[Stage]) -> None:
        self.stages = tuple(stages)
        self._starts = [0.0]
        self._firsts = [0.0]
        for stage in self.stages:
            self._starts.append(self._starts[-1] + stage.seconds)
            self._firsts.append(self._firsts[-1] + stage.events)
        self.seconds = self._starts[-1]
        # (from t, the count N(t) there, the plan's count B(t) there, the factor since)
        self._anchors: list[tuple[float, float, float, float]] = [(0.0, 0.0, 0.0, 1.0)]
        self.factor = 1.0
        self.phase, self.stride = 0, 1
        only = self.stages[0] if len(self.stages) == 1 else None
        # one rate, never changed: due(k) is k / rate (most runs; due runs for every tick)
        self._steady = only.start_rate if only and only.start_rate == only.end_rate else 0.0

    def share(self, i: int, n: int) -> Schedule:
        """Worker i's share of n: events i, i + n, i + 2n, ... of this plan (as a copy)."""
        shared = Schedule(self.stages)
        shared.phase, shared.stride = i, n
        return shared

    @classmethod
    def steady(cls, rate: float, seconds: float | None = None) -> Schedule:
        """One rate, for `seconds` (None: until stopped)."""
        return cls([Stage(math.inf if seconds is None else seconds, rate, rate)])

    def _base_count(self, t: float) -> float:
        """B(t): the events the plan (unscaled) has due in its first t seconds."""
        i = min(bisect.bisect_right(self._starts, t) - 1, len(self.stages) - 1)
        return self._firsts[i] + self.stages[i].count_at(t - self._starts[i])

    def _base_time(self, n: float) -> float | None:
        """The t where B(t) = n; None when the plan ends first."""
        i = bisect.bisect_right(self._firsts, n) - 1
        if i >= len(self.stages):
            return None
        return self._starts[i] + self.stages[i].offset(n - self._firsts[i])

    def due(self, k: int) -> float | None:
        """When event k (from 0) is due, in seconds after the start; None: after the end.
        (Of a share, its k-th event: event phase + k * stride of the plan.)"""
        k = self.phase + k * self.stride
        if self._steady:
            steady = k / self._steady
            return None if steady >= self.seconds else steady
        anchors = self._anchors
        i = len(anchors) - 1
        while i and anchors[i][1] > k:  # due before the last change of the rate
            i -= 1
        at, count, base, factor = anchors[i]
        t = self._base_time(base + (k - count) / factor)
        return None if t is None or t >= self.seconds else max(t, at)

    def count_at(self, t: float) -> float:
        """N(t): events due by `t` as planned and scaled so far (of a share, its part)."""
        return self._count_at(t) / self.stride

    def _count_at(self, t: float) -> float:
        for at, count, base, factor in reversed(self._anchors):
            if t >= at:
                return count + factor * (self._base_count(min(t, self.seconds)) - base)
        return 0.0

    def rate_at(self, t: float) -> float:
        """The planned rate at `t` (events/s), scaled; 0 after the end."""
        if t >= self.seconds:
            return 0.0
        i = bisect.bisect_right(self._starts, t) - 1
        factor = next(f for at, _, _, f in reversed(self._anchors) if t >= at)
        return factor * self.stages[i].rate_at(t - self._starts[i]) / self.stride

    def stage_at(self, t: float) -> int:
        """The index of the stage running at `t`; the last one after the end."""
        return min(max(bisect.bisect_right(self._starts, t) - 1, 0), len(self.stages) - 1)

    def stage_window(self, i: int) -> tuple[float, float]:
        return self._starts[i], self._starts[i + 1]

    def scale(self, factor: float, at: float) -> None:
        """Multiply the rate by `factor` from `at` seconds after the start on."""
        count = self._count_at(at)
        self._steady = 0.0
        self.factor *= factor
        self._anchors.append((at, count, self._base_count(min(at, self.seconds)), self.factor))

    @property
    def scaled(self) -> bool:
        return len(self._anchors) > 1

    @property
    def varies(self) -> bool:
        """The rate is not one rate throughout: several stages, a ramp, or a change."""
        return not self._steady  # which is set for one unchanged rate, and only then

    def describe(self) -> list[dict[str, object]]:
        """The plan, a dict per stage: as typed, seconds, rates, planned events."""
        return [
            {
                "stage": stage.label(),
                "seconds": None if math.isinf(stage.seconds) else stage.seconds,
                "start_rate": stage.start_rate,
                "end_rate": stage.end_rate,
                "planned_events": None if math.isinf(stage.events) else stage.events,
            }
            for stage in self.stages
        ]
