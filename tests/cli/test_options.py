"""An option that overrides a config key says what the key's own field says."""

from __future__ import annotations

import dataclasses

import pytest
import typer.main

from eventctl.cli import app
from eventctl.config import ConsumerConfig, PropagatorConfig, flag_name


@pytest.mark.parametrize("name", ["serve", "propagate", "send-once", "list-events", "verify"])
def test_config_backed_options_take_help_and_default_from_the_config_field(name: str) -> None:
    command = typer.main.get_command(app).commands[name]  # type: ignore[attr-defined]
    fields = {
        flag_name(f): f
        for cls in (ConsumerConfig, PropagatorConfig)
        for f in dataclasses.fields(cls)
        if not (cls is ConsumerConfig and name in ("propagate", "send-once"))
        and not (cls is PropagatorConfig and name in ("serve", "list-events"))
    }
    checked = 0
    for param in command.params:
        flag = next((opt for opt in param.opts if opt in fields), None)
        if flag is None:
            continue
        f = fields[flag]
        doc = f.metadata["doc"]
        assert param.help.lower().startswith(doc.lower()), (flag, param.help)
        default = f.default
        if isinstance(default, int | float) and not isinstance(default, bool):
            shown = f"{default:g}" if isinstance(default, float) else str(default)
            assert f"(default: {shown})" in param.help, (flag, param.help)
        checked += 1
    assert checked >= 1


def test_serve_help_names_every_consumer_key_it_overrides() -> None:
    command = typer.main.get_command(app).commands["serve"]  # type: ignore[attr-defined]
    opts = {opt.split("/")[0] for param in command.params for opt in param.opts}
    for f in dataclasses.fields(ConsumerConfig):
        assert flag_name(f) in opts, flag_name(f)


def test_forward_to_is_repeatable_and_shows_no_empty_default() -> None:
    command = typer.main.get_command(app).commands["serve"]  # type: ignore[attr-defined]
    param = next(param for param in command.params if "--forward-to" in param.opts)
    assert param.multiple
    assert param.metavar == "URL"
    assert "(default" not in param.help
