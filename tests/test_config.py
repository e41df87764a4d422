from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import pytest

from eventctl.config import (
    DEFAULT_CONSUMER_CONFIG,
    DEFAULT_PROPAGATOR_CONFIG,
    MAX_ENDPOINTS,
    MAX_RESPONSE_BODY_BYTES,
    MAX_RESPONSE_LATENCY_SECONDS,
    MAX_RESPONSE_RULES,
    MAX_RETRY_AFTER_SECONDS,
    ConsumerConfig,
    ForwardRoute,
    PropagatorConfig,
    ResponseRule,
    load_config,
)
from eventctl.consumer.server import WORKER_CONFIG_ENV, worker_environment
from eventctl.errors import ConfigError, ExitCode
from tests.helpers import invoke

ROOT = Path(__file__).resolve().parent.parent


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "config.yaml"
    path.write_text(text)
    return path


def test_shipped_config_files_hold_the_contract() -> None:
    assert (ROOT / DEFAULT_CONSUMER_CONFIG).read_text().split("\n")[:2] == [
        "port: 8000",
        'database_url: "sqlite:///events.db"',
    ]
    consumer = load_config(
        ConsumerConfig, ROOT / DEFAULT_CONSUMER_CONFIG, required=True, environ={}
    )
    assert (consumer.port, consumer.database_url) == (8000, "sqlite:///events.db")
    propagator = load_config(
        PropagatorConfig, ROOT / DEFAULT_PROPAGATOR_CONFIG, required=True, environ={}
    )
    assert propagator == PropagatorConfig(
        5.0, ("http://localhost:8000/event",), "events/events.json"
    )


def test_defaults_when_the_default_file_is_absent(tmp_path: Path) -> None:
    config = load_config(ConsumerConfig, tmp_path / "absent.yaml", required=False, environ={})
    assert config == ConsumerConfig()


def test_precedence_defaults_file_environment_flags(tmp_path: Path) -> None:
    path = write(tmp_path, "port: 9001\nhost: 0.0.0.0\nlog_level: info\n")
    environ = {"EVENTCTL_PORT": "9002", "EVENTCTL_HOST": "::1"}
    config = load_config(
        ConsumerConfig, path, required=True, environ=environ, overrides={"port": 9003, "host": None}
    )
    assert config.port == 9003  # flag beats environment
    assert config.host == "::1"  # environment beats file; a flag left as None does not count
    assert config.log_level == "info"  # file beats default
    assert config.database_url == "sqlite:///events.db"  # default


def test_integers_are_accepted_for_float_keys(tmp_path: Path) -> None:
    path = write(tmp_path, "interval_seconds: 2\n")
    assert load_config(PropagatorConfig, path, required=True, environ={}).interval_seconds == 2.0


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("port: [", "config.yaml: not valid YAML at line 1"),
        ("- 1\n- 2\n", "config.yaml: must be a mapping"),
        ("prot: 80\n", "config.yaml: unknown key 'prot' (did you mean port?)"),
        ("port: '8000'\n", "config.yaml: port: must be an integer, not '8000'"),
        ("port: true\n", "config.yaml: port: must be an integer, not True"),
        ("port: 70000\n", "config.yaml: port: must be between 0 and 65535"),
        ("database_url: mysql://x\n", "config.yaml: database_url: must start with sqlite:///"),
        ("max_body_bytes: 0\n", "config.yaml: max_body_bytes: must be a number greater than 0"),
        ("log_level: loud\n", "config.yaml: log_level: must be one of"),
    ],
)
def test_consumer_config_errors_name_file_and_key(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load_config(ConsumerConfig, write(tmp_path, text), required=True, environ={})
    assert message in str(caught.value)
    assert "\n" not in str(caught.value)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("interval_seconds: 0\n", "interval_seconds: must be a number greater than 0"),
        ("interval_seconds: fast\n", "interval_seconds: must be a number, not 'fast'"),
        ("api_endpoint: localhost:8000\n", "api_endpoint: must be an http:// or https:// URL"),
        (
            "api_endpoint: [http://a:1/e, b:2]\n",
            "api_endpoint: must be an http:// or https:// URL, not 'b:2'",
        ),
        ("api_endpoint: [http://a:1/e, http://a:1/e]\n", "'http://a:1/e' is given twice"),
        ("api_endpoint: []\n", "api_endpoint: must name at least one http:// or https:// URL"),
        ("api_endpoint: 8000\n", "api_endpoint: must be a URL or a list of URLs, not 8000"),
        ("api_endpoint: [http://a:1/e, 2]\n", "must be a URL or a list of URLs"),
        ("events_file: 3\n", "events_file: must be a string, not 3"),
    ],
)
def test_propagator_config_errors(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_config(PropagatorConfig, write(tmp_path, text), required=True, environ={})


def test_a_named_file_that_is_missing_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"absent.yaml: config file not found"):
        load_config(ConsumerConfig, tmp_path / "absent.yaml", required=True, environ={})


def test_an_empty_file_means_defaults(tmp_path: Path) -> None:
    assert load_config(ConsumerConfig, write(tmp_path, ""), required=True, environ={}) == (
        ConsumerConfig()
    )


@pytest.mark.parametrize(
    ("environ", "message"),
    [
        ({"EVENTCTL_PORT": "eighty"}, "EVENTCTL_PORT: must be an integer, not 'eighty'"),
        ({"EVENTCTL_PORT": "-1"}, "EVENTCTL_PORT: must be between 0 and 65535"),
    ],
)
def test_environment_errors_name_the_variable(
    tmp_path: Path, environ: dict[str, str], message: str
) -> None:
    with pytest.raises(ConfigError, match=message):
        load_config(ConsumerConfig, tmp_path / "absent.yaml", required=False, environ=environ)


def test_flag_errors_name_the_flag(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="--interval: must be a number greater than 0"):
        load_config(
            PropagatorConfig,
            tmp_path / "absent.yaml",
            required=False,
            environ={},
            overrides={"interval_seconds": -1.0},
        )


# store and forward: `forward:`, EVENTCTL_FORWARD, --forward-to

FULL_ROUTE = """\
forward:
  - http://localhost:9000/event
  - url: https://hooks.example.com/in
    name: billing
    match: ["payment.*", "invoice.paid"]
    ordered: true
    signing_secret_file: secrets/billing.whsec
    auth_token_file: secrets/billing.token
    timeout_seconds: 10
    max_in_flight: 8
    retry_base_seconds: 0.5
    retry_max_seconds: 30
    retry_max_elapsed_seconds: 3600
    breaker_failures: 5
    breaker_cooldown_seconds: 5
    breaker_max_cooldown_seconds: 60
"""


def consumer(path: Path, environ: dict[str, str] | None = None, **overrides: Any) -> ConsumerConfig:
    return load_config(
        ConsumerConfig, path, required=path.exists(), environ=environ or {}, overrides=overrides
    )


def test_no_routes_by_default(tmp_path: Path) -> None:
    assert ConsumerConfig().forward == ()
    assert consumer(tmp_path / "absent.yaml").forward == ()
    assert consumer(write(tmp_path, "forward:\n")).forward == ()  # every item commented out
    assert consumer(write(tmp_path, "forward: []\n")).forward == ()


def test_a_plain_string_is_a_route_with_that_url_and_the_defaults(tmp_path: Path) -> None:
    config = consumer(write(tmp_path, "forward:\n  - http://localhost:9000/event\n"))
    assert config.forward == (ForwardRoute("http://localhost:9000/event"),)
    route = config.forward[0]
    assert route.name == "http://localhost:9000/event"
    assert (route.match, route.ordered, route.max_in_flight) == ((), False, 32)
    assert route.matches("anything.at.all")


def test_a_mapping_sets_every_field_of_a_route(tmp_path: Path) -> None:
    config = consumer(write(tmp_path, FULL_ROUTE))
    assert config.forward == (
        ForwardRoute("http://localhost:9000/event"),
        ForwardRoute(
            url="https://hooks.example.com/in",
            name="billing",
            match=("payment.*", "invoice.paid"),
            ordered=True,
            signing_secret_file="secrets/billing.whsec",
            auth_token_file="secrets/billing.token",
            timeout_seconds=10.0,
            max_in_flight=8,
            retry_base_seconds=0.5,
            retry_max_seconds=30.0,
            retry_max_elapsed_seconds=3600.0,
            breaker_failures=5,
            breaker_cooldown_seconds=5.0,
            breaker_max_cooldown_seconds=60.0,
        ),
    )
    billing = config.forward[1]
    assert isinstance(billing.match, tuple)
    assert isinstance(billing.timeout_seconds, float)  # an integer in YAML, a float here
    assert billing.matches("payment.refunded")
    assert billing.matches("invoice.paid")
    assert not billing.matches("invoice.created")


def test_match_may_be_one_glob_and_name_defaults_to_the_url(tmp_path: Path) -> None:
    text = "forward:\n  - url: https://a.example/in\n    match: order.*\n"
    (route,) = consumer(write(tmp_path, text)).forward
    assert route == ForwardRoute("https://a.example/in", match=("order.*",))
    assert route.name == "https://a.example/in"


def routes(*items: str) -> str:
    return "forward:\n" + "".join(f"  - {item}\n" for item in items)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("forward: http://a.example\n", "forward: must be a list, not 'http://a.example'"),
        ("forward: {url: http://a.example}\n", "forward: must be a list, not {'url': "),
        (routes("5"), "forward[0]: must be a URL or a mapping with a url, not 5"),
        (routes("[http://a.example]"), "forward[0]: must be a URL or a mapping with a url, not"),
        (
            routes("http://a.example", "{url: http://b.example, match: 5}"),
            "forward[1].match: must be a list of strings, not 5",
        ),
        (
            routes("{url: http://b.example, match: [a, 5]}"),
            "forward[0].match: must be a list of strings, not ['a', 5]",
        ),
        (
            routes("{url: http://b.example, match: []}"),
            "forward[0].match: must hold at least one glob; leave match out to forward every event",
        ),
        (
            routes("{url: http://b.example, match: ['order.*', '']}"),
            "forward[0].match[1]: must be a non-empty glob, not ''",
        ),
        (
            routes("{url: http://b.example, match: ' '}"),
            "forward[0].match: must be a non-empty glob, not ' '",
        ),
        (
            routes("{url: http://b.example, matches: [a]}"),
            "forward[0]: unknown key 'matches' (did you mean match?); known keys: url, name, "
            "match, ordered, signing_secret_file, auth_token_file, timeout_seconds, "
            "max_in_flight, retry_base_seconds, retry_max_seconds, retry_max_elapsed_seconds, "
            "breaker_failures, breaker_cooldown_seconds, breaker_max_cooldown_seconds",
        ),
        (routes("localhost:9000"), "forward[0].url: must be an http:// or https:// URL, not"),
        (
            routes("{url: ftp://a.example}"),
            "forward[0].url: must be an http:// or https:// URL, not 'ftp://a.example'",
        ),
        (
            routes("'http://a.example/x y'"),
            "forward[0].url: must be an http:// or https:// URL, not 'http://a.example/x y'",
        ),
        (routes("{url: 5}"), "forward[0].url: must be a string, not 5"),
        (routes("{name: billing}"), "forward[0]: has no url; every route needs one"),
        (routes("{url: http://a.example, name: 5}"), "forward[0].name: must be a string, not 5"),
        (
            routes(
                "{url: http://a.example, name: billing}",
                "http://b.example",
                "{url: http://c.example, name: billing}",
            ),
            "forward[2]: the name 'billing' is used twice; give each route its own name",
        ),
        (
            routes("http://a.example", "http://a.example"),
            "forward[1]: the name 'http://a.example' is used twice; give each route its own name",
        ),
        (
            routes("{url: http://a.example, max_in_flight: true}"),
            "forward[0].max_in_flight: must be an integer, not True",
        ),
        (
            routes("{url: http://a.example, max_in_flight: 8.5}"),
            "forward[0].max_in_flight: must be an integer, not 8.5",
        ),
        (
            routes("{url: http://a.example, max_in_flight: 0}"),
            "forward[0].max_in_flight: must be a number greater than 0, not 0",
        ),
        (
            routes("{url: http://a.example, breaker_failures: false}"),
            "forward[0].breaker_failures: must be an integer, not False",
        ),
        (
            routes("{url: http://a.example, timeout_seconds: 0}"),
            "forward[0].timeout_seconds: must be a number greater than 0, not 0.0",
        ),
        (
            routes("{url: http://a.example, retry_max_elapsed_seconds: -1}"),
            "forward[0].retry_max_elapsed_seconds: must be a number greater than 0, not -1.0",
        ),
        (
            routes("{url: http://a.example, retry_base_seconds: '1'}"),
            "forward[0].retry_base_seconds: must be a number, not '1'",
        ),
        (
            routes("{url: http://a.example, ordered: 'yes'}"),
            "forward[0].ordered: must be true or false, not 'yes'",
        ),
        (
            routes("{url: http://a.example, ordered: null}"),
            "forward[0].ordered: must be true or false, not None",
        ),
        (
            routes("{url: http://a.example, auth_token_file: 5}"),
            "forward[0].auth_token_file: must be a string, not 5",
        ),
    ],
)
def test_route_errors_name_file_position_and_field(tmp_path: Path, text: str, message: str) -> None:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as caught:
        consumer(path)
    assert str(caught.value).startswith(f"{path}: {message}")
    assert "\n" not in str(caught.value)


def test_an_unknown_top_level_key_still_suggests_forward(tmp_path: Path) -> None:
    path = write(tmp_path, "froward: []\n")
    with pytest.raises(ConfigError, match=r"unknown key 'froward' \(did you mean forward\?\)"):
        consumer(path)


def test_the_environment_replaces_the_files_routes(tmp_path: Path) -> None:
    path = write(tmp_path, FULL_ROUTE)
    environ = {"EVENTCTL_FORWARD": "  http://a.example/in\thttps://b.example/in \n"}
    assert consumer(path, environ).forward == (
        ForwardRoute("http://a.example/in"),
        ForwardRoute("https://b.example/in"),
    )
    assert consumer(path, {"EVENTCTL_FORWARD": ""}).forward == ()
    assert consumer(path, {"EVENTCTL_FORWARD": "   "}).forward == ()


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("http://a.example nonsense", "must be an http:// or https:// URL, not 'nonsense'"),
        ("http://a.example http://a.example", "'http://a.example' is given twice"),
    ],
)
def test_environment_route_errors_name_the_variable(
    tmp_path: Path, value: str, message: str
) -> None:
    with pytest.raises(ConfigError) as caught:
        consumer(tmp_path / "absent.yaml", {"EVENTCTL_FORWARD": value})
    assert str(caught.value).startswith(f"EVENTCTL_FORWARD: {message}")


def test_the_flag_replaces_the_environments_and_files_routes(tmp_path: Path) -> None:
    path = write(tmp_path, FULL_ROUTE)
    environ = {"EVENTCTL_FORWARD": "http://env.example/in"}
    flagged = consumer(path, environ, forward=["http://flag.example/a", "https://flag.example/b"])
    assert flagged.forward == (
        ForwardRoute("http://flag.example/a"),
        ForwardRoute("https://flag.example/b"),
    )
    assert consumer(path, environ, forward=[""]).forward == ()  # --forward-to '': none
    assert consumer(path, environ, forward=None).forward == (  # not given
        ForwardRoute("http://env.example/in"),
    )


@pytest.mark.parametrize(
    ("urls", "message"),
    [
        (["x"], "--forward-to: must be an http:// or https:// URL, not 'x'"),
        (["http://a.example", "mailto:a@b"], "--forward-to: must be an http:// or https:// URL"),
        (["http://a.example", "http://a.example"], "--forward-to: 'http://a.example' is given"),
    ],
)
def test_flag_route_errors_name_the_flag(tmp_path: Path, urls: list[str], message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        consumer(tmp_path / "absent.yaml", forward=urls)
    assert str(caught.value).startswith(message)


def test_routes_follow_the_one_precedence_with_the_scalar_keys(tmp_path: Path) -> None:
    path = write(tmp_path, "port: 9001\n" + FULL_ROUTE)
    from_file = consumer(path)
    assert (from_file.port, [r.name for r in from_file.forward]) == (
        9001,
        ["http://localhost:9000/event", "billing"],
    )
    environ = {"EVENTCTL_FORWARD": "http://env.example/in", "EVENTCTL_PORT": "9002"}
    from_env = consumer(path, environ)
    assert (from_env.port, from_env.forward) == (9002, (ForwardRoute("http://env.example/in"),))
    from_flag = consumer(path, environ, port=9003, forward=["http://flag.example/in"])
    assert (from_flag.port, from_flag.forward) == (9003, (ForwardRoute("http://flag.example/in"),))


def test_the_worker_json_round_trip_rebuilds_routes(tmp_path: Path) -> None:
    config = dataclasses.replace(
        consumer(write(tmp_path, FULL_ROUTE + FULL_RESPONSES)), port=0, metrics=True
    )
    again = ConsumerConfig.from_json(config.to_json())
    assert again == config
    assert isinstance(again.forward, tuple)
    assert all(isinstance(route, ForwardRoute) for route in again.forward)
    assert again.forward[1].match == ("payment.*", "invoice.paid")
    assert len(again.responses) == 4
    assert all(isinstance(rule, ResponseRule) for rule in again.responses)
    assert again.responses[0].match == ("payment.*",)
    assert again.responses[1].latency == (0.05, 0.2)
    assert hash(again) == hash(config)  # frozen all the way down: tuples, not lists
    assert ConsumerConfig.from_json(ConsumerConfig().to_json()) == ConsumerConfig()
    # what `serve --workers N` puts in its workers' environment is that JSON
    handed = worker_environment(config, str(tmp_path / "metrics"), {})[WORKER_CONFIG_ENV]
    assert handed is not None
    assert ConsumerConfig.from_json(handed) == config


# response rules: `responses:`, EVENTCTL_RESPONSES, --responses

FULL_RESPONSES = """\
responses:
  - match: "payment.*"
    status: 503
    probability: 0.3
    retry_after: 2
  - match: order.*
    latency: 50ms-200ms
  - match: ["audit.*", "legacy.*"]
    latency: [0.5, 1s]
    status: 422
    body: {"detail": "gone", "n": [1, 2.5, null, true], "é": "ü"}
  - latency: 10
"""


def test_no_response_rules_by_default(tmp_path: Path) -> None:
    assert ConsumerConfig().responses == ()
    assert consumer(tmp_path / "absent.yaml").responses == ()
    assert consumer(write(tmp_path, "responses:\n")).responses == ()
    assert consumer(write(tmp_path, "responses: []\n")).responses == ()
    shipped = load_config(ConsumerConfig, ROOT / DEFAULT_CONSUMER_CONFIG, required=True, environ={})
    assert shipped.responses == ()  # the example in the shipped file is commented out


def test_a_rule_sets_each_field(tmp_path: Path) -> None:
    assert consumer(write(tmp_path, FULL_RESPONSES)).responses == (
        ResponseRule(match=("payment.*",), status=503, probability=0.3, retry_after=2.0),
        ResponseRule(match=("order.*",), latency=(0.05, 0.2)),
        ResponseRule(
            match=("audit.*", "legacy.*"),
            status=422,
            latency=(0.5, 1.0),
            body='{"detail":"gone","n":[1,2.5,null,true],"é":"ü"}',
        ),
        ResponseRule(latency=(10.0, 10.0)),
    )


@pytest.mark.parametrize(
    ("latency", "seconds"),
    [
        ("50ms", (0.05, 0.05)),
        (0.05, (0.05, 0.05)),
        (0, (0.0, 0.0)),
        ("'2'", (2.0, 2.0)),
        ("50ms-200ms", (0.05, 0.2)),
        ("50ms - 200ms", (0.05, 0.2)),
        ("1s-1s", (1.0, 1.0)),
        ("[0.05, 0.2]", (0.05, 0.2)),
        ("['50ms', 1]", (0.05, 1.0)),
        (str(MAX_RESPONSE_LATENCY_SECONDS), (60.0, 60.0)),
    ],
)
def test_a_latency_is_fixed_or_a_range(tmp_path: Path, latency: Any, seconds: Any) -> None:
    (rule,) = consumer(write(tmp_path, f"responses:\n  - latency: {latency}\n")).responses
    assert rule.latency == seconds


def rule(text: str) -> str:
    return f"responses:\n  - {text}\n"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("responses: {match: a}\n", "responses: must be a list, not {'match': 'a'}"),
        (rule("payment.*"), "responses[0]: must be a mapping of match, status, probability"),
        (
            rule("{stauts: 503}"),
            "responses[0]: unknown key 'stauts' (did you mean status?); known keys: match, "
            "status, probability, latency, retry_after, body",
        ),
        (rule("{match: 5}"), "responses[0].match: must be a list of strings, not 5"),
        (
            rule("{match: [], status: 503}"),
            "responses[0].match: must hold at least one glob; leave match out to match every "
            "event type",
        ),
        (rule("{match: ''}"), "responses[0].match: must be a non-empty glob, not ''"),
        (rule("{status: '503'}"), "responses[0].status: must be an integer, not '503'"),
        (rule("{status: true}"), "responses[0].status: must be an integer, not True"),
        (
            rule("{status: 200}"),
            "responses[0].status: must be an HTTP error status (400-599), not 200",
        ),
        (
            rule("{status: 600}"),
            "responses[0].status: must be an HTTP error status (400-599), not 600",
        ),
        (
            rule("{status: 503, probability: 1.5}"),
            "responses[0].probability: must be between 0 and 1, not 1.5",
        ),
        (
            rule("{status: 503, probability: high}"),
            "responses[0].probability: must be a number, not 'high'",
        ),
        (
            rule("{probability: 0.5}"),
            "responses[0].probability: applies to a status only; give the rule a status (400-599)",
        ),
        (
            rule("{retry_after: 2}"),
            "responses[0].retry_after: applies to a status only; give the rule a status",
        ),
        (rule("{body: {a: 1}}"), "responses[0].body: applies to a status only"),
        (
            rule("{latency: soon}"),
            "responses[0].latency: must be a duration (50ms, 0.05) or a range (50ms-200ms, "
            "[0.05, 0.2]), not 'soon'",
        ),
        (rule("{latency: true}"), "responses[0].latency: must be a duration"),
        (rule("{latency: -1}"), "responses[0].latency: must be a number of at least 0, not -1"),
        (rule("{latency: '-5ms'}"), "responses[0].latency: must be a duration"),
        (rule("{latency: [1, 2, 3]}"), "responses[0].latency: must be a duration"),
        (rule("{latency: 1s-1ms}"), "responses[0].latency: the range must run from low to high"),
        (rule("{latency: 61}"), "responses[0].latency: must be at most 60 seconds, not 61"),
        (rule("{latency: 1s-2m}"), "responses[0].latency: must be at most 60 seconds, not 120"),
        (
            rule("{status: 503, retry_after: -1}"),
            "responses[0].retry_after: must be a number of at least 0, not -1",
        ),
        (
            rule("{status: 503, retry_after: 2s}"),
            "responses[0].retry_after: must be a number, not '2s'",
        ),
        (
            rule("{status: 503, retry_after: 86401}"),
            "responses[0].retry_after: must be at most 86400 seconds, not 86401",
        ),
        (
            rule("{status: 503, body: null}"),
            "responses[0].body: is empty; leave body out for the consumer's own error body",
        ),
        (
            rule("{status: 503, body: .nan}"),
            "responses[0].body: must be a JSON value, not nan",
        ),
        (
            rule("{status: 503, body: 2026-01-01}"),
            "responses[0].body: must be a JSON value, not datetime.date(2026, 1, 1)",
        ),
        (
            "responses:\n  - {latency: 1}\n  - {status: 503, probability: 2}\n",
            "responses[1].probability: must be between 0 and 1, not 2.0",
        ),
    ],
)
def test_rule_errors_name_file_position_and_field(tmp_path: Path, text: str, message: str) -> None:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as caught:
        consumer(path)
    assert str(caught.value).startswith(f"{path}: {message}")
    assert "\n" not in str(caught.value)


def test_rule_limits(tmp_path: Path) -> None:
    most = "responses:\n" + "  - {status: 503}\n" * MAX_RESPONSE_RULES
    assert len(consumer(write(tmp_path, most)).responses) == MAX_RESPONSE_RULES == 100
    with pytest.raises(ConfigError, match=r"responses: holds 101 rules; at most 100 are allowed"):
        consumer(write(tmp_path, most + "  - {status: 503}\n"))
    assert MAX_RESPONSE_LATENCY_SECONDS == 60
    assert MAX_RETRY_AFTER_SECONDS == 86_400
    (longest,) = consumer(write(tmp_path, rule("{status: 503, retry_after: 86400}"))).responses
    assert longest.retry_after == MAX_RETRY_AFTER_SECONDS
    assert MAX_RESPONSE_BODY_BYTES == 65_536
    fits = "x" * (MAX_RESPONSE_BODY_BYTES - 2)  # two bytes of quotes
    (big,) = consumer(write(tmp_path, rule(f"{{status: 503, body: {fits}}}"))).responses
    assert big.body is not None
    assert len(big.body.encode()) == MAX_RESPONSE_BODY_BYTES
    with pytest.raises(ConfigError, match=r"body: must be at most 65536 bytes as JSON, not 65537"):
        consumer(write(tmp_path, rule(f"{{status: 503, body: {fits}x}}")))


def test_the_environment_and_the_flag_take_the_rules_as_yaml_or_json(tmp_path: Path) -> None:
    path = write(tmp_path, FULL_RESPONSES)
    environ = {"EVENTCTL_RESPONSES": '[{"match": "a.*", "status": 429, "retry_after": 1}]'}
    from_env = ResponseRule(match=("a.*",), status=429, retry_after=1.0)
    assert consumer(path, environ).responses == (from_env,)
    flagged = consumer(path, environ, responses="[{match: b, latency: 1ms-2ms}]")
    assert flagged.responses == (ResponseRule(match=("b",), latency=(0.001, 0.002)),)
    assert consumer(path, environ, responses="").responses == ()  # --responses '': none
    assert consumer(path, {"EVENTCTL_RESPONSES": ""}).responses == ()
    with pytest.raises(ConfigError) as caught:
        consumer(path, {"EVENTCTL_RESPONSES": "[{status: 200}]"})
    assert str(caught.value) == (
        "EVENTCTL_RESPONSES[0].status: must be an HTTP error status (400-599), not 200"
    )
    with pytest.raises(ConfigError, match=r"^--responses: not valid YAML or JSON: "):
        consumer(path, responses="[{")


def test_the_example_in_configuration_md_loads(tmp_path: Path) -> None:
    text = (ROOT / "docs" / "configuration.md").read_text()
    example = text.split("### Response rules", 1)[1].split("```yaml\n", 1)[1].split("```")[0]
    loaded = consumer(write(tmp_path, example)).responses
    assert loaded[0] == ResponseRule(
        match=("payment.*",), status=503, probability=0.3, retry_after=2.0
    )
    assert loaded[1] == ResponseRule(match=("order.*",), latency=(0.05, 0.2))
    assert loaded[3] == ResponseRule(match=("health.*",))


def test_every_rule_field_and_its_default_is_in_configuration_md() -> None:
    text = (ROOT / "docs" / "configuration.md").read_text()
    section = text.split("### Response rules", 1)[1].split("\n### ", 1)[0]
    for f in dataclasses.fields(ResponseRule):
        row = next(line for line in section.splitlines() if line.startswith(f"| `{f.name}:` |"))
        if f.name == "probability":
            assert "| `1` |" in row
        if f.name == "latency":
            assert "| `0` |" in row
    for limit in ("100 rules", "60 s", "86400 s", "65536 bytes"):
        assert limit in section, limit


def test_serve_names_a_bad_rule_in_its_config_file(tmp_path: Path) -> None:
    config = write(tmp_path, "responses:\n  - {latency: 1}\n  - {match: 'a.*', status: 200}\n")
    result = invoke("serve", "--config", str(config), cwd=tmp_path)
    assert result.returncode == ExitCode.CONFIG
    assert result.stderr.strip().splitlines() == [
        f"eventctl: error: {config}: responses[1].status: must be an HTTP error status "
        "(400-599), not 200"
    ]


def test_every_route_field_and_its_default_is_in_configuration_md() -> None:
    text = (ROOT / "docs" / "configuration.md").read_text()
    assert "EVENTCTL_FORWARD" in text
    assert "--forward-to" in text
    for f in dataclasses.fields(ForwardRoute):
        row = next((line for line in text.splitlines() if line.startswith(f"| `{f.name}:` |")), "")
        assert row, f"route field {f.name} has no row in docs/configuration.md"
        default = f.default
        if isinstance(default, bool):
            assert f"`{str(default).lower()}`" in row
        elif isinstance(default, int | float):
            assert f"`{default:g}`" in row, (f.name, row)
        assert f"{f.name}:" in text.split("### Store and forward", 1)[1].split("```")[1]


def test_serve_forward_to_nonsense_is_a_one_line_config_error(tmp_path: Path) -> None:
    result = invoke("serve", "--forward-to", "nonsense", cwd=tmp_path)
    assert result.returncode == ExitCode.CONFIG
    assert result.stderr.strip().splitlines() == [
        "eventctl: error: --forward-to: must be an http:// or https:// URL, not 'nonsense'"
    ]


def test_serve_names_a_bad_route_in_its_config_file(tmp_path: Path) -> None:
    config = write(tmp_path, routes("http://a.example", "{url: http://b.example, match: 5}"))
    result = invoke("serve", "--config", str(config), cwd=tmp_path)
    assert result.returncode == ExitCode.CONFIG
    assert result.stderr.strip().splitlines() == [
        f"eventctl: error: {config}: forward[1].match: must be a list of strings, not 5"
    ]


def test_api_endpoint_is_one_url_or_a_list_from_the_file_the_environment_or_repeated_flags(
    tmp_path: Path,
) -> None:
    one = write(tmp_path, 'api_endpoint: "http://a:1/event"\n')
    assert load_config(PropagatorConfig, one, required=True, environ={}).api_endpoint == (
        "http://a:1/event",
    )
    listed = write(tmp_path, "api_endpoint:\n  - http://a:1/event\n  - http://b:2/event\n")
    cfg = load_config(PropagatorConfig, listed, required=True, environ={})
    assert cfg.api_endpoint == ("http://a:1/event", "http://b:2/event")
    assert cfg.endpoints_text == "http://a:1/event http://b:2/event"
    environ = {"EVENTCTL_API_ENDPOINT": " http://c:3/e\thttp://d:4/e "}
    from_env = load_config(PropagatorConfig, listed, required=True, environ=environ)
    assert from_env.api_endpoint == ("http://c:3/e", "http://d:4/e")
    flags = {"api_endpoint": ["http://e:5/e", "http://f:6/e", "http://g:7/e"]}
    from_flags = load_config(
        PropagatorConfig, listed, required=True, environ=environ, overrides=flags
    )
    assert from_flags.api_endpoint == ("http://e:5/e", "http://f:6/e", "http://g:7/e")
    with pytest.raises(ConfigError, match="EVENTCTL_API_ENDPOINT: must name at least one"):
        load_config(PropagatorConfig, listed, required=True, environ={"EVENTCTL_API_ENDPOINT": ""})
    too_many = {"api_endpoint": [f"http://h:{port}/e" for port in range(1, MAX_ENDPOINTS + 2)]}
    with pytest.raises(ConfigError, match=f"--endpoint: names {MAX_ENDPOINTS + 1} URLs; at most"):
        load_config(PropagatorConfig, listed, required=True, environ={}, overrides=too_many)


def test_a_forwarding_route_may_take_several_urls(tmp_path: Path) -> None:
    text = "forward:\n  - name: both\n    url: [http://a:1/e, http://b:2/e]\n  - http://c:3/e\n"
    cfg = load_config(ConsumerConfig, write(tmp_path, text), required=True, environ={})
    assert [r.urls for r in cfg.forward] == [("http://a:1/e", "http://b:2/e"), ("http://c:3/e",)]
    assert ConsumerConfig.from_json(cfg.to_json()) == cfg
    bad = "forward:\n  - name: x\n    url: [http://a:1/e, 3]\n"
    with pytest.raises(ConfigError, match=r"forward\[0\]\.url: must be a URL or a list of URLs"):
        load_config(ConsumerConfig, write(tmp_path, bad), required=True, environ={})
    unnamed = "forward:\n  - url: [http://a:1/e, http://b:2/e]\n"
    with pytest.raises(ConfigError, match=r"forward\[0\]: a route of several URLs needs a name"):
        load_config(ConsumerConfig, write(tmp_path, unnamed), required=True, environ={})
    twice = "forward:\n  - name: x\n    url: [http://a:1/e, http://a:1/e]\n"
    with pytest.raises(ConfigError, match=r"forward\[0\]\.url: 'http://a:1/e' is given twice"):
        load_config(ConsumerConfig, write(tmp_path, twice), required=True, environ={})
