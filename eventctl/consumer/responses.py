"""Response rules (config `responses:`): the consumer as a test double.

A rule matches event types by glob; the first rule that matches an event answers for it:
it waits its latency, then (with its probability) answers its status instead of storing the
event. `POST /events` is answered by the first rule, in config order, that matches any
event of the batch, and a batch answered with a failure stores nothing. The check runs
after the event rules and before the writer, so a refused event is never stored and its
Idempotency-Key stays unused. Without rules the handlers never reach this module.
"""

from __future__ import annotations

import asyncio
import json
import math
import random
from collections.abc import Iterable, Sequence
from dataclasses import replace
from typing import Any

from eventctl.config import ResponseRule
from eventctl.consumer.problems import ApiError, Problem

MAX_CACHED_TYPES = 10_000
"""Event types whose rule is remembered (fnmatch is slow); past it the memory starts over."""

INJECTED_RESPONSE = Problem(
    503,
    "injected_response",
    "a response rule of the config (responses:) answered for this event type; the status, "
    "Retry-After and body are the rule's",
    retry_after=True,
    any_status=True,
)
"""The answer of a rule with a status. It stays out of problems.CATALOG, whose problems any
server may answer: this one only a server whose config has rules, and at their statuses."""


class InjectedResponse(ApiError):
    """A rule's failure answer: the problem's body, or the rule's own."""

    def __init__(
        self, problem: Problem, message: str, headers: dict[str, str], body: Any | None
    ) -> None:
        super().__init__(problem, message, errors=[], headers=headers)
        self.custom_body = body

    def body(self) -> Any:
        return super().body() if self.custom_body is None else self.custom_body


def answered_statuses(rules: Sequence[ResponseRule]) -> list[Problem]:
    """The problems `rules` can answer, one per status (with Retry-After if any rule of
    that status sends it)."""
    retry: dict[int, bool] = {}
    for rule in rules:
        if rule.status is not None and rule.probability > 0:
            retry[rule.status] = retry.get(rule.status, False) or rule.retry_after is not None
    return [
        replace(INJECTED_RESPONSE, status=status, retry_after=retry[status])
        for status in sorted(retry)
    ]


def custom_bodies(rules: Sequence[ResponseRule]) -> dict[int, list[Any]]:
    """The rules' own bodies by status, for the document."""
    bodies: dict[int, list[Any]] = {}
    for rule in rules:
        if rule.status is not None and rule.probability > 0 and rule.body is not None:
            found = bodies.setdefault(rule.status, [])
            if (body := json.loads(rule.body)) not in found:
                found.append(body)
    return bodies


def _describe(rule: ResponseRule) -> str:
    return ", ".join(rule.match) if rule.match else "every event type"


class Responses:
    """The rules of one handler: which rule answers an event type, and its answer."""

    def __init__(self, rules: Sequence[ResponseRule]) -> None:
        self.rules = tuple(rules)
        self.none = len(self.rules)
        self._bodies = [None if rule.body is None else json.loads(rule.body) for rule in rules]
        self._headers = [
            {} if rule.retry_after is None else {"Retry-After": str(math.ceil(rule.retry_after))}
            for rule in rules
        ]
        self._index: dict[str, int] = {}

    def index(self, event_type: str) -> int:
        """The index of the first rule that matches `event_type`, or `self.none`."""
        found = self._index.get(event_type)
        if found is None:
            found = next(
                (i for i, rule in enumerate(self.rules) if rule.matches(event_type)), self.none
            )
            if len(self._index) >= MAX_CACHED_TYPES:
                self._index.clear()
            self._index[event_type] = found
        return found

    def first(self, event_types: Iterable[str]) -> tuple[int, str]:
        """The first rule, in config order, that matches any of `event_types`, and the
        first of them it matches; (`self.none`, "") when none does."""
        best, which = self.none, ""
        for event_type in event_types:
            found = self.index(event_type)
            if found < best:
                best, which = found, event_type
                if found == 0:
                    break
        return best, which

    async def answer(self, event_types: Iterable[str], rng: random.Random, *, batch: bool) -> None:
        """Apply the rule that answers for `event_types` (one event's, or a batch's): wait
        its latency, then raise its InjectedResponse with its probability."""
        index, event_type = self.first(event_types)
        if index == self.none:
            return
        rule = self.rules[index]
        low, high = rule.latency
        if high:
            await asyncio.sleep(low if low == high else rng.uniform(low, high))
        if rule.status is not None and rng.random() < rule.probability:
            what = f"the batch's event type {event_type}" if batch else event_type
            message = (
                f"response rule {index} ({_describe(rule)}) answered {rule.status} "
                f"for {what}; nothing was stored"
            )
            problem = replace(INJECTED_RESPONSE, status=rule.status)
            headers = dict(self._headers[index])
            raise InjectedResponse(problem, message, headers, self._bodies[index])
