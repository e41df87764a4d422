"""Several endpoints: which one each attempt goes to, and which are healthy.

Each attempt goes to the healthy endpoint with the fewest attempts under way (in turn among
equals): a host that stops answering without refusing (a hung server, a cut link) holds its
attempts until they time out, so the next ones go to the others. An endpoint that gives no
answer (connection refused, reset, a timeout) or a 5xx is down for a back-off, doubled for
each failure in a row up to a cap; when it is over, one attempt (the probe) tests it, and
the first answer that is not a failure makes it healthy again. Only attempts sent since it
last went down count toward the next back-off: the ones it held when it went down fail
together, as one failure. While every endpoint is down, attempts go to the one whose
back-off ends first (the retry policy then spaces them). With one endpoint, nothing of this
changes where or when an attempt goes; its state is only shown.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal, NamedTuple

import httpx

BACKOFF_SECONDS = 1.0
"""How long an endpoint is down after its first failure in a row."""
MAX_BACKOFF_SECONDS = 30.0
"""The longest back-off, as failures in a row double it."""
NO_PROBE = -1

State = Literal["up", "down", "probing"]


@dataclass(eq=False)
class Endpoint:
    """One URL events are sent to, and what its attempts got."""

    text: str
    url: httpx.URL
    failures: int = 0  # in a row
    down_until: float = 0.0
    marked: int = NO_PROBE  # the serial of the last pick before it last went down
    probe: int = NO_PROBE  # the serial of the attempt probing it, if one is under way
    outstanding: int = 0  # attempts under way
    attempts: int = 0
    delivered: int = 0
    failed: int = 0
    last_error: str | None = None

    @property
    def probing(self) -> bool:
        return self.probe != NO_PROBE

    @property
    def state(self) -> State:
        if self.probing:
            return "probing"
        return "down" if self.failures else "up"


class Ticket(NamedTuple):
    """One attempt's endpoint, and the order in which it was picked."""

    endpoint: Endpoint
    serial: int


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
        self.failovers = 0  # failed attempts sent again at once, to another endpoint
        self._next = 0
        self._serial = 0
        self._only = Ticket(self.all[0], 0) if len(self.all) == 1 else None

    def __len__(self) -> int:
        return len(self.all)

    def pick(self, failed: Endpoint | None = None) -> Ticket:
        """The endpoint of the next attempt: one whose back-off is over (as its probe), else
        a healthy one with the fewest attempts under way (another than `failed`, the one
        the last attempt failed on, when there is another), else the one whose back-off
        ends first."""
        if self._only is not None:
            return self._only
        endpoints = self.all
        self._serial += 1
        serial = self._serial
        now = self.clock()
        for endpoint in endpoints:
            if endpoint.failures and not endpoint.probing and now >= endpoint.down_until:
                endpoint.probe = serial
                endpoint.outstanding += 1
                return Ticket(endpoint, serial)
        n = len(endpoints)
        best: Endpoint | None = None
        best_k = 0
        for k in range(n):
            endpoint = endpoints[(self._next + k) % n]
            if endpoint is failed or endpoint.failures:
                continue
            if best is None or endpoint.outstanding < best.outstanding:
                best, best_k = endpoint, k
        if best is None:
            best = min(endpoints, key=lambda e: e.down_until)
        else:
            self._next = (self._next + best_k + 1) % n
        best.outstanding += 1
        return Ticket(best, serial)

    def has_healthy(self, besides: Endpoint) -> bool:
        """Whether an attempt could go at once to an endpoint other than `besides`."""
        if self._only is not None:
            return False
        now = self.clock()
        return any(
            e is not besides and (not e.failures or (not e.probing and now >= e.down_until))
            for e in self.all
        )

    def fails_over(self, endpoint: Endpoint, status: int | None) -> bool:
        """Whether an attempt on `endpoint` that got `status` (None: no answer) is tried
        again at once elsewhere (a failover, counted): after no answer or a 5xx, when
        another endpoint is healthy. A 408 or 429 says to wait, not to go elsewhere."""
        if (status is not None and status < 500) or not self.has_healthy(besides=endpoint):
            return False
        self.failovers += 1
        return True

    def answered(self, ticket: Ticket, status: int | None, error: str | None) -> None:
        """Count one attempt's outcome (status None: no answer) into its endpoint's health:
        no answer or a 5xx is a failure; any other answer makes the endpoint healthy."""
        endpoint, serial = ticket
        endpoint.attempts += 1
        self._end(ticket)
        if status is not None and status < 500:
            endpoint.delivered += 200 <= status < 300
            endpoint.failures = 0
            endpoint.down_until = 0.0
            endpoint.probe = NO_PROBE
            return
        endpoint.failed += 1
        endpoint.last_error = error if status is None else str(status)
        if serial <= endpoint.marked:
            return  # sent before it went down: that failure is counted already
        endpoint.failures += 1
        endpoint.marked = self._serial
        backoff = min(self.backoff * 2 ** (endpoint.failures - 1), self.max_backoff)
        endpoint.down_until = self.clock() + backoff

    def released(self, ticket: Ticket) -> None:
        """An attempt ended without an answer of its own (cancelled)."""
        self._end(ticket)

    def _end(self, ticket: Ticket) -> None:
        endpoint, serial = ticket
        if ticket is self._only:
            return
        endpoint.outstanding -= 1
        if endpoint.probe == serial:
            endpoint.probe = NO_PROBE

    def to_json(self) -> dict[str, Any]:
        """What a worker of several tells its parent (`add_up` sums them)."""
        return {
            "failovers": self.failovers,
            "endpoints": [
                {
                    "attempts": e.attempts,
                    "delivered": e.delivered,
                    "failed": e.failed,
                    "failures": e.failures,
                    "down_until": e.down_until,
                    "probing": e.probing,
                    "last_error": e.last_error,
                }
                for e in self.all
            ],
        }

    def add_up(self, parts: Sequence[dict[str, Any]]) -> None:
        """Become the sum of the workers' endpoints (`to_json` of each, same URLs in the same
        order): counts added; probing where a worker probes it, else down (until the
        latest) where any worker finds it down. The monotonic clock is the machine's, the
        same in every process."""
        self.failovers = sum(int(part["failovers"]) for part in parts)
        for i, endpoint in enumerate(self.all):
            rows = [part["endpoints"][i] for part in parts]
            endpoint.attempts = sum(row["attempts"] for row in rows)
            endpoint.delivered = sum(row["delivered"] for row in rows)
            endpoint.failed = sum(row["failed"] for row in rows)
            endpoint.failures = max(row["failures"] for row in rows)
            endpoint.down_until = max(row["down_until"] for row in rows)
            endpoint.probe = 0 if any(row["probing"] for row in rows) else NO_PROBE
            errors = [row["last_error"] for row in rows if row["last_error"]]
            endpoint.last_error = errors[-1] if errors else None

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
