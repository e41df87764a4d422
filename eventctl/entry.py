"""One `eventctl` sub-command run as a program of its own (the seed's run commands)."""

from __future__ import annotations

import sys

import typer


def run_as(command: str, prog_name: str) -> None:
    """Run `eventctl COMMAND ARGS` from `prog_name ARGS`: same flags, variables and exits."""
    from eventctl.cli import app  # noqa: PLC0415 (the CLI's imports only when run)

    commands = typer.main.get_command(app).commands  # type: ignore[attr-defined]
    commands[command].main(args=sys.argv[1:], prog_name=prog_name)
