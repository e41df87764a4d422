from __future__ import annotations

from pathlib import Path

import pytest

from eventctl.config import (
    DEFAULT_CONSUMER_CONFIG,
    DEFAULT_PROPAGATOR_CONFIG,
    ConsumerConfig,
    PropagatorConfig,
    load_config,
)
from eventctl.errors import ConfigError

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
    assert propagator == PropagatorConfig(5.0, "http://localhost:8000/event", "events/events.json")


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
