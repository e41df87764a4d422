"""Shell completion, as bash, zsh and fish ask for it: the real program, the real variables."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from eventctl.config import LOG_LEVELS
from tests.helpers import ROOT, cli_env

COMMANDS = {"serve", "list-events", "tail", "stats", "propagate", "send-once", "up", "verify"}


def run(cwd: Path, **env: str) -> subprocess.CompletedProcess[str]:
    """`python -m eventctl` of this checkout, in `cwd`, with the variables `env`."""
    return subprocess.run(
        [sys.executable, "-m", "eventctl"],
        capture_output=True,
        text=True,
        cwd=cwd,
        env=cli_env(PYTHONPATH=str(ROOT), **env),
        timeout=60,
        check=False,
    )


def complete(shell: str, line: str, cwd: Path) -> list[str]:
    """What `shell` offers for the command line `line` (the cursor at its end)."""
    if shell == "bash":
        words = line.split()
        cword = len(words) if line.endswith(" ") else len(words) - 1
        result = run(
            cwd, _EVENTCTL_COMPLETE="complete_bash", COMP_WORDS=line, COMP_CWORD=str(cword)
        )
        offered = [word for word in result.stdout.splitlines() if word]
    elif shell == "zsh":
        result = run(cwd, _EVENTCTL_COMPLETE="complete_zsh", _TYPER_COMPLETE_ARGS=line)
        # _arguments '*: :(("value":"help"\n"value"))'
        body = result.stdout.split("((", 1)[1].rsplit("))", 1)[0] if "((" in result.stdout else ""
        offered = [entry.split('":"', 1)[0].strip('"') for entry in body.splitlines()]
    else:
        result = run(
            cwd,
            _EVENTCTL_COMPLETE="complete_fish",
            _TYPER_COMPLETE_FISH_ACTION="get-args",
            _TYPER_COMPLETE_ARGS=line,
        )
        offered = [entry.split("\t", 1)[0] for entry in result.stdout.splitlines()]
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    return offered


@pytest.fixture
def project(tmp_path: Path) -> Path:
    """A directory whose propagator config names an events file of its own."""
    (tmp_path / "config").mkdir()
    (tmp_path / "config" / "propagator_config.yaml").write_text("events_file: mine.json\n")
    events = [
        {"event_type": "alpha.one", "event_payload": "x"},
        {"event_type": "beta.two", "event_payload": "y"},
        {"event_type": "alpha.one", "event_payload": "z"},
    ]
    (tmp_path / "mine.json").write_text(json.dumps(events))
    (tmp_path / "other.json").write_text(json.dumps([{"event_type": "gamma", "event_payload": ""}]))
    return tmp_path


SHELLS = ["bash", "zsh", "fish"]


@pytest.mark.parametrize("shell", SHELLS)
def test_commands_and_options_complete(shell: str, project: Path) -> None:
    assert COMMANDS | {"spool"} <= set(complete(shell, "eventctl ", project))
    assert set(complete(shell, "eventctl spool ", project)) == {"list", "retry"}
    options = set(complete(shell, "eventctl list-events --", project))
    assert {"--output", "--type", "--follow", "--since", "--limit"} <= options


@pytest.mark.parametrize("shell", SHELLS)
def test_known_values_complete(shell: str, project: Path) -> None:
    assert complete(shell, "eventctl list-events --output ", project) == [
        "table",
        "json",
        "ndjson",
        "csv",
    ]
    assert complete(shell, "eventctl list-events --output nd", project) == ["ndjson"]
    assert complete(shell, "eventctl serve --log-level ", project) == list(LOG_LEVELS)
    assert complete(shell, "eventctl list-events --type ", project) == ["alpha.one", "beta.two"]
    assert complete(shell, "eventctl tail --type be", project) == ["beta.two"]
    assert complete(shell, "eventctl send-once --events-file other.json --type ", project) == [
        "gamma"
    ]


def test_without_an_events_file_the_sample_types_complete(tmp_path: Path) -> None:
    """What `propagate` would send there: eventctl's sample events."""
    sample = json.loads((ROOT / "eventctl" / "sample_events.json").read_text())
    types = list(dict.fromkeys(event["event_type"] for event in sample))
    assert complete("bash", "eventctl send-once --type ", tmp_path) == types


def test_a_named_events_file_that_is_missing_completes_no_types(tmp_path: Path) -> None:
    line = "eventctl send-once --events-file missing.json --type "
    assert complete("bash", line, tmp_path) == []


@pytest.mark.parametrize("shell", SHELLS)
@pytest.mark.parametrize("order", ["source_{}", "{}_source"])
def test_the_source_scripts_are_produced(shell: str, order: str, tmp_path: Path) -> None:
    result = run(tmp_path, _EVENTCTL_COMPLETE=order.format(shell))
    assert result.returncode == 0, result.stderr
    assert f"_EVENTCTL_COMPLETE=complete_{shell}" in result.stdout
    assert "eventctl" in result.stdout


BASH = shutil.which("bash")
VENV_BIN = Path(sys.executable).parent


@pytest.mark.skipif(BASH is None, reason="needs bash")
def test_bash_offers_values_through_the_shown_script(tmp_path: Path) -> None:
    """--show-completion in a real bash, sourced, then bash's completion function called."""
    if not (VENV_BIN / "eventctl").exists():
        pytest.skip("needs the installed eventctl script")
    script = (
        'source <(eventctl --show-completion); COMP_WORDS=(eventctl list-events --output "");'
        ' COMP_CWORD=3; _eventctl_completion eventctl; printf "%s\\n" "${COMPREPLY[@]}"'
    )
    env = cli_env(PATH=f"{VENV_BIN}{os.pathsep}{os.environ['PATH']}", HOME=str(tmp_path))
    result = subprocess.run(
        [str(BASH), "--norc", "-c", script],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=env,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["table", "json", "ndjson", "csv"]


@pytest.mark.skipif(BASH is None, reason="needs bash")
def test_install_completion_writes_the_bash_script(tmp_path: Path) -> None:
    command = f"{sys.executable} -m eventctl --install-completion; true"
    result = subprocess.run(
        [str(BASH), "--norc", "-c", command],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=cli_env(HOME=str(tmp_path), PYTHONPATH=str(ROOT)),
        timeout=60,
        check=False,
    )
    assert "bash completion installed in" in result.stdout, result.stderr
    installed = tmp_path / ".bash_completions" / "eventctl.sh"
    assert "_EVENTCTL_COMPLETE=complete_bash" in installed.read_text()
    assert f"source '{installed}'" in (tmp_path / ".bashrc").read_text()
