"""What a sender does when a try fails: how long it waits before the next (the propagator's
retries, `tail`'s reconnects), and a short reason for a failed connection."""

from __future__ import annotations

import random
import socket
from dataclasses import dataclass

import httpx


@dataclass(frozen=True)
class RetryPolicy:
    """Exponential backoff with jitter: attempt n waits about base * 2**(n-1), capped.

    An event is retried until `max_elapsed_seconds` have passed since its first attempt
    (the last attempt falls at that moment) or it has had `attempts` attempts, whichever
    comes first; with the defaults the time is the limit (about 17 to 30 attempts).
    """

    attempts: int = 100
    base_seconds: float = 0.2
    max_seconds: float = 10.0
    max_elapsed_seconds: float = 120.0

    def delay(self, attempt: int, rng: random.Random) -> float:
        """Seconds to wait after failed attempt `attempt` (from 1): half fixed, half random."""
        # the exponent is capped: 2.0 ** 1024 overflows, and a forwarding route's oldest
        # entry can be probed that often in its 24 h
        ceiling = min(self.max_seconds, self.base_seconds * 2.0 ** min(attempt - 1, 64))
        return ceiling / 2 + rng.uniform(0, ceiling / 2)


def transport_error_text(exc: httpx.TransportError) -> str:
    """A short reason for a failed connection, e.g. 'connection refused'."""
    cause: BaseException | None = exc
    while cause is not None:
        if isinstance(cause, ConnectionRefusedError):
            return "connection refused"
        if isinstance(cause, socket.gaierror):
            return "unknown host"
        if isinstance(cause, ConnectionResetError):
            return "connection reset"
        cause = cause.__cause__ or cause.__context__
    if isinstance(exc, httpx.TimeoutException):
        return "timeout"
    if isinstance(exc, httpx.RemoteProtocolError):
        return "connection dropped"
    text = str(exc) or type(exc).__name__
    return text.splitlines()[0][:80]
