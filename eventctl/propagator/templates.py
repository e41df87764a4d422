"""A small template language for the events file, rendered at send time.

    {{uuid}}            a random UUID (version 4)
    {{now}}             the current time, ISO-8601 UTC with Z
    {{seq}}             the number of the event in this run: 1, 2, 3, ...
    {{randint A B}}     a random integer from A to B, both included
    {{choice a|b|c}}    one of the listed words, at random
    {{env NAME}}        the value of environment variable NAME (read once, at load time)

Spaces inside the braces are optional. Anything else between {{ and }} is an error at load
time. Events in the file may also carry `"weight": <number>` (default 1) to be picked more
or less often.
"""

from __future__ import annotations

import math
import os
import random
import re
import uuid
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, NamedTuple

from eventctl.errors import InvalidEvent
from eventctl.events import DuplicateKeys, Event, json_type, parse_json, validate_event

PLACEHOLDER = re.compile(r"\{\{\s*(.*?)\s*\}\}")


class Context(NamedTuple):
    rng: random.Random
    seq: int
    now: datetime


Part = str | Callable[[Context], str]


class TemplateError(ValueError):
    """A placeholder that is not part of the language (the message names it)."""


def _placeholder(text: str, environ: Mapping[str, str]) -> Part:
    name, _, rest = text.partition(" ")
    args = rest.split()
    if name == "uuid" and not args:
        return lambda ctx: str(uuid.UUID(int=ctx.rng.getrandbits(128), version=4))
    if name == "now" and not args:
        return lambda ctx: ctx.now.isoformat(timespec="milliseconds").replace("+00:00", "Z")
    if name == "seq" and not args:
        return lambda ctx: str(ctx.seq)
    if name == "randint" and len(args) == 2:
        try:
            low, high = int(args[0]), int(args[1])
        except ValueError:
            raise TemplateError(f"{{{{{text}}}}}: randint takes two integers") from None
        if low > high:
            raise TemplateError(f"{{{{{text}}}}}: randint needs A <= B")
        return lambda ctx: str(ctx.rng.randint(low, high))
    if name == "choice" and len(args) == 1:
        options = args[0].split("|")
        return lambda ctx: ctx.rng.choice(options)
    if name == "env" and len(args) == 1:
        if args[0] not in environ:
            raise TemplateError(f"{{{{{text}}}}}: environment variable {args[0]} is not set")
        return environ[args[0]]
    raise TemplateError(f"unknown placeholder {{{{{text}}}}}")


class Template:
    """One string of the events file, split into literal text and placeholders."""

    def __init__(self, text: str, environ: Mapping[str, str]) -> None:
        self.parts: list[Part] = []
        position = 0
        for match in PLACEHOLDER.finditer(text):
            self.parts.append(text[position : match.start()])
            self.parts.append(_placeholder(match.group(1), environ))
            position = match.end()
        self.parts.append(text[position:])
        self.parts = [p for p in self.parts if p != ""]
        self.source = text
        static = all(isinstance(p, str) for p in self.parts)
        self.text = "".join(p for p in self.parts if isinstance(p, str)) if static else None

    def render(self, ctx: Context) -> str:
        if self.text is not None:
            return self.text
        return "".join(p if isinstance(p, str) else p(ctx) for p in self.parts)


class EventTemplate(NamedTuple):
    event_type: Template
    event_payload: Template
    weight: float


class EventPool:
    """What the propagator picks from: events (templates) with weights."""

    def __init__(self, templates: Sequence[EventTemplate]) -> None:
        self.templates = list(templates)
        self.weights = [t.weight for t in self.templates]
        self.uniform = len(set(self.weights)) <= 1

    @classmethod
    def plain(cls, events: Sequence[Event]) -> EventPool:
        return cls(
            [
                EventTemplate(Template(e.event_type, {}), Template(e.event_payload, {}), 1.0)
                for e in events
            ]
        )

    def __len__(self) -> int:
        return len(self.templates)

    def pick(self, rng: random.Random, seq: int, now: Callable[[], datetime]) -> Event:
        """Choose an event (by weight) and render it; InvalidEvent if the result breaks
        the event rules (a placeholder can make an event_type too long, say)."""
        if self.uniform:
            chosen = rng.choice(self.templates)
        else:
            chosen = rng.choices(self.templates, self.weights)[0]
        event_type, payload = chosen.event_type, chosen.event_payload
        if event_type.text is not None and payload.text is not None:
            return Event(event_type.text, payload.text)
        ctx = Context(rng, seq, now().astimezone(UTC))
        rendered = {"event_type": event_type.render(ctx), "event_payload": payload.render(ctx)}
        try:
            return validate_event(rendered)
        except InvalidEvent as exc:
            raise InvalidEvent(exc.field, f"{exc.problem} (after rendering)") from None

    def as_written(self) -> list[Event]:
        """The events as written in the file, placeholders unrendered."""
        return [Event(t.event_type.source, t.event_payload.source) for t in self.templates]


def _weight(value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise InvalidEvent("weight", f"must be a number, not {json_type(value)}")
    if not 0 < value < math.inf:
        raise InvalidEvent("weight", "must be greater than 0")
    return float(value)


def load_events_file(path: Path, environ: Mapping[str, str] | None = None) -> EventPool:
    """Read and check a JSON list of events (with optional `weight` and placeholders).

    Every error names the file and the 0-based index of the event at fault.
    """
    environ = os.environ if environ is None else environ
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise InvalidEvent(None, f"{path}: no such file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise InvalidEvent(None, f"{path}: cannot read: {exc}") from None
    data: Any = parse_json(text, str(path))
    if not isinstance(data, list):
        raise InvalidEvent(None, f"{path}: must be a JSON list of events, not {json_type(data)}")
    if not data:
        raise InvalidEvent(None, f"{path}: the list of events is empty")
    templates = []
    for index, item in enumerate(data):
        try:
            templates.append(_event_template(item, environ))
        except InvalidEvent as exc:
            raise InvalidEvent(None, f"{path}[{index}]: {exc}") from None
    return EventPool(templates)


def _event_template(item: object, environ: Mapping[str, str]) -> EventTemplate:
    """One entry of the events file. The event rules apply to its literal text now (each
    placeholder standing in as "x"), and to every rendered event at send time."""
    weight = 1.0
    if isinstance(item, DuplicateKeys):
        raise InvalidEvent(item.key, "is given more than once")
    if isinstance(item, dict) and "weight" in item:
        weight = _weight(item["weight"])
        item = {k: v for k, v in item.items() if k != "weight"}
    if isinstance(item, dict):
        literal = {k: PLACEHOLDER.sub("x", v) if isinstance(v, str) else v for k, v in item.items()}
        validate_event(literal)
    else:
        validate_event(item)
    assert isinstance(item, dict)
    template = EventTemplate(
        _template("event_type", item["event_type"], environ),
        _template("event_payload", item["event_payload"], environ),
        weight,
    )
    if template.event_type.text is not None and template.event_payload.text is not None:
        validate_event(
            {"event_type": template.event_type.text, "event_payload": template.event_payload.text}
        )
    return template


def _template(field: str, text: str, environ: Mapping[str, str]) -> Template:
    try:
        return Template(text, environ)
    except TemplateError as exc:
        raise InvalidEvent(field, f"has a bad placeholder: {exc}") from None
