"""The events file's template language, weights, and `send-once --set`."""

from __future__ import annotations

import json
import random
import uuid
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from eventctl.errors import ExitCode, InvalidEvent
from eventctl.propagator.templates import load_events_file
from tests.helpers import Server, propagate_quickly, run_cli

NOW = datetime(2026, 11, 27, 9, 30, 15, 250000, tzinfo=UTC)


def write(tmp_path: Path, events: list[dict[str, Any]]) -> Path:
    path = tmp_path / "events.json"
    path.write_text(json.dumps(events))
    return path


def test_every_placeholder_renders(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        [
            {
                "event_type": "order.{{choice created|paid}}",
                "event_payload": '{"id": "{{uuid}}", "at": "{{ now }}", "n": {{seq}}, '
                '"qty": {{randint 1 3}}, "region": "{{env REGION}}"}',
            }
        ],
    )
    source = load_events_file(path, {"REGION": "eu-west"})
    rng = random.Random(5)
    rendered = [source.pick(rng, seq, lambda: NOW) for seq in (1, 2, 3, 4, 5, 6)]
    for seq, event in enumerate(rendered, start=1):
        assert event.event_type in ("order.created", "order.paid")
        payload = json.loads(event.event_payload)
        assert uuid.UUID(payload["id"]).version == 4
        assert payload["at"] == "2026-11-27T09:30:15.250Z"
        assert payload["n"] == seq
        assert 1 <= payload["qty"] <= 3
        assert payload["region"] == "eu-west"
    assert len({json.loads(e.event_payload)["id"] for e in rendered}) == 6
    assert {e.event_type for e in rendered} == {"order.created", "order.paid"}


def test_a_seed_makes_rendering_reproducible(tmp_path: Path) -> None:
    source = load_events_file(write(tmp_path, [{"event_type": "t", "event_payload": "{{uuid}}"}]))
    first = [source.pick(random.Random(9), 1, lambda: NOW) for _ in range(2)]
    assert first[0] == first[1]


@pytest.mark.parametrize(
    ("payload", "message"),
    [
        ("{{nope}}", "[1]: event_payload has a bad placeholder: unknown placeholder {{nope}}"),
        ("{{randint 5 1}}", "randint needs A <= B"),
        ("{{randint a b}}", "randint takes two integers"),
        ("{{env EVENTCTL_SURELY_UNSET}}", "environment variable EVENTCTL_SURELY_UNSET is not set"),
        ("{{uuid 3}}", "unknown placeholder {{uuid 3}}"),
    ],
)
def test_bad_placeholders_are_load_errors_naming_file_index_and_placeholder(
    tmp_path: Path, payload: str, message: str
) -> None:
    path = write(
        tmp_path,
        [
            {"event_type": "ok", "event_payload": "x"},
            {"event_type": "ok", "event_payload": payload},
        ],
    )
    with pytest.raises(InvalidEvent) as caught:
        load_events_file(path, {})
    assert str(caught.value).startswith(f"{path}[1]: ")
    assert message.removeprefix("[1]: ") in str(caught.value)


def test_weights_steer_the_choice(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        [
            {"event_type": "rare", "event_payload": "", "weight": 1},
            {"event_type": "common", "event_payload": "", "weight": 9},
        ],
    )
    source = load_events_file(path)
    rng = random.Random(3)
    counts = Counter(source.pick(rng, 1, lambda: NOW).event_type for _ in range(5000))
    assert 4300 < counts["common"] < 4700


@pytest.mark.parametrize("weight", [0, -1, "heavy", True])
def test_bad_weights_are_load_errors(tmp_path: Path, weight: object) -> None:
    path = write(tmp_path, [{"event_type": "t", "event_payload": "", "weight": weight}])
    with pytest.raises(InvalidEvent, match=r"\[0\]: weight must be"):
        load_events_file(path)


def test_a_rendered_event_that_breaks_the_rules_is_refused(tmp_path: Path) -> None:
    path = write(tmp_path, [{"event_type": "{{env LONG}}", "event_payload": ""}])
    with pytest.raises(InvalidEvent, match=r"\[0\]: event_type must be at most 255"):
        load_events_file(path, {"LONG": "x" * 300})  # known at load time: refused then
    path = write(tmp_path, [{"event_type": "y" * 254 + "{{randint 10 99}}", "event_payload": ""}])
    source = load_events_file(path)  # "x" in place of the placeholder: 255 characters
    with pytest.raises(InvalidEvent, match=r"at most 255 characters, not 256 \(after rendering"):
        source.pick(random.Random(), 1, lambda: NOW)
    long_choice = "{{choice " + "|".join(f"option{i}" for i in range(60)) + "}}"
    assert len(long_choice) > 255
    choices = load_events_file(write(tmp_path, [{"event_type": long_choice, "event_payload": ""}]))
    assert choices.pick(random.Random(), 1, lambda: NOW).event_type.startswith("option")


def test_send_once_set_overrides_a_field(server: Server, tmp_path: Path) -> None:
    result = run_cli(
        "send-once",
        "--endpoint",
        server.url + "/event",
        "--type",
        "a",
        "--payload",
        "b",
        "--set",
        "event_payload=overridden",
        "--json",
    )
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["event"] == {"event_type": "a", "event_payload": "overridden"}
    templated = write(tmp_path, [{"event_type": "t", "event_payload": "n={{seq}}"}])
    rendered = run_cli(
        "send-once", "--endpoint", server.url + "/event", "--events-file", str(templated), "--json"
    )
    assert json.loads(rendered.stdout)["event"]["event_payload"] == "n=1"
    bad = run_cli("send-once", "--set", "colour=red")
    assert bad.returncode == ExitCode.USAGE
    empty = run_cli("send-once", "--type", "a", "--payload", "b", "--set", "event_type=")
    assert empty.returncode == ExitCode.INPUT


def test_propagate_renders_templates_per_event(server: Server, tmp_path: Path) -> None:
    templated = write(tmp_path, [{"event_type": "t", "event_payload": "{{seq}}"}])
    result = propagate_quickly(server.url, 5, "--events-file", str(templated))
    assert result.returncode == 0, result.stderr
    listed = json.loads(
        run_cli("list-events", "--json", "--database-url", server.database_url).stdout
    )
    assert sorted(int(e["event_payload"]) for e in listed) == [1, 2, 3, 4, 5]
