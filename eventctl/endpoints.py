"""Several endpoints: which one each attempt goes to, and which are healthy.

Each attempt goes to the healthy endpoint with the fewest attempts under way (in turn among
equals): a host that stops answering without refusing (a hung server, a cut link) holds its
attempts until they time out, so the next ones go to the others. An endpoint that gives no
answer (connection refused, reset, a timeout) or a 5xx is down for a back-off, doubled for
each failure in a row up to a cap; when it is over, one attempt at a time probes it, and the
first answer that is not a failure makes it healthy again. While every endpoint is down,
attempts go to the one whose back-off ends first (the retry policy then spaces them).
With one endpoint, nothing of this changes where or when an attempt goes; its state is
only shown.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import httpx

BACKOFF_SECONDS = 1.0
"""How long an endpoint is down after its first failure in a row."""
MAX_BACKOFF_SECONDS = 30.0
"""The longest back-off, as failures in a row double it."""

State = Literal["up", "down", "probing"]


@dataclass(eq=False)
class Endpoint:
    """One URL events are sent to, and what its attempts got."""

    text: str
    url: httpx.URL
    failures: int = 0  # in a row
    down_until: float = 0.0
    probing: bool = False  # an attempt is testing it after its back-off
    outstanding: int = 0  # attempts under way
    attempts: int = 0
    delivered: int = 0
    failed: int = 0
    last_error: str | None = None

    @property
    def state(self) -> State:
        if self.probing:
            return "probing"
        return "down" if self.failures else "up"


class Endpoints:
    """The endpoints of a run, in the order given, and the choice among them."""

    def __init__(
        self,
        urls: Sequence[str],
        clock: Callable[[], float],
        *,
        backoff: float = BACKOFF_SECONDS,
        max_backoff: float = MAX_BACKOFF_SECONDS,
    ) -> None:
        if not urls:
            raise ValueError("no endpoint to send to")
        self.all = [Endpoint(url, httpx.URL(url)) for url in urls]
        self.clock = clock
        self.backoff = backoff
        self.max_backoff = max_backoff
        self.failovers = 0  # attempts sent to another endpoint after a failure
        self._next = 0

    def __len__(self) -> int:
        return len(self.all)

    def pick(self, failed: Endpoint | None = None) -> Endpoint:
        """The endpoint of the next attempt: one whose back-off is over (as its probe), else
        a healthy one in turn (another than `failed`, the one the last attempt failed on,
        when there is another), else the one whose back-off ends first."""
        endpoints = self.all
        if len(endpoints) == 1:
            return endpoints[0]
        now = self.clock()
        for endpoint in endpoints:
            if endpoint.failures and not endpoint.probing and now >= endpoint.down_until:
                endpoint.probing = True
                return self._chosen(endpoint, failed)
        n = len(endpoints)
        best: Endpoint | None = None
        best_k = 0
        for k in range(n):
            endpoint = endpoints[(self._next + k) % n]
            if endpoint is failed or endpoint.failures:
                continue
            if best is None or endpoint.outstanding < best.outstanding:
                best, best_k = endpoint, k
        if best is not None:
            self._next = (self._next + best_k + 1) % n
            return self._chosen(best, failed)
        return self._chosen(min(endpoints, key=lambda e: e.down_until), failed)

    def _chosen(self, endpoint: Endpoint, failed: Endpoint | None) -> Endpoint:
        if failed is not None and endpoint is not failed:
            self.failovers += 1
        endpoint.outstanding += 1
        return endpoint

    def has_healthy(self, besides: Endpoint) -> bool:
        """Whether an attempt could go at once to an endpoint other than `besides`."""
        if len(self.all) == 1:
            return False
        now = self.clock()
        return any(
            e is not besides and (not e.failures or (not e.probing and now >= e.down_until))
            for e in self.all
        )

    def answered(self, endpoint: Endpoint, status: int | None, error: str | None) -> None:
        """Count one attempt's outcome (status None: no answer) into `endpoint`'s health."""
        endpoint.attempts += 1
        endpoint.outstanding -= endpoint.outstanding > 0  # one endpoint is not counted
        endpoint.probing = False
        if status is None or status >= 500:
            endpoint.failed += 1
            endpoint.failures += 1
            endpoint.last_error = error if status is None else str(status)
            backoff = min(self.backoff * 2 ** (endpoint.failures - 1), self.max_backoff)
            endpoint.down_until = self.clock() + backoff
            return
        if 200 <= status < 300:
            endpoint.delivered += 1
        endpoint.failures = 0
        endpoint.down_until = 0.0

    def released(self, endpoint: Endpoint) -> None:
        """An attempt on `endpoint` ended without an answer of its own (cancelled)."""
        endpoint.outstanding -= endpoint.outstanding > 0
        endpoint.probing = False

    def to_json(self) -> dict[str, Any]:
        """What a worker of several tells its parent (`add_up` sums them)."""
        return {
            "failovers": self.failovers,
            "endpoints": [
                [
                    e.attempts,
                    e.delivered,
                    e.failed,
                    e.failures,
                    e.down_until,
                    e.probing,
                    e.last_error,
                ]
                for e in self.all
            ],
        }

    def add_up(self, parts: Sequence[dict[str, Any]]) -> None:
        """Become the sum of the workers' endpoints (`to_json` of each, same URLs in the same
        order): counts added; down (until the latest) where any worker finds it down. The
        monotonic clock is the machine's, the same in every process."""
        self.failovers = sum(int(part["failovers"]) for part in parts)
        for i, endpoint in enumerate(self.all):
            rows = [part["endpoints"][i] for part in parts]
            endpoint.attempts = sum(row[0] for row in rows)
            endpoint.delivered = sum(row[1] for row in rows)
            endpoint.failed = sum(row[2] for row in rows)
            endpoint.failures = max(row[3] for row in rows)
            endpoint.down_until = max(row[4] for row in rows)
            endpoint.probing = any(row[5] for row in rows) and not endpoint.failures
            endpoint.last_error = next((row[6] for row in rows if row[6]), None)

    def summary(self, now: float) -> list[dict[str, object]]:
        return [
            {
                "endpoint": e.text,
                "state": e.state,
                "down_for_seconds": round(max(e.down_until - now, 0.0), 3) if e.failures else None,
                "attempts": e.attempts,
                "delivered": e.delivered,
                "failed": e.failed,
                "last_error": e.last_error,
            }
            for e in self.all
        ]
