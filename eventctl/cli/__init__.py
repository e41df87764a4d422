"""The `eventctl` command line: parse flags, load config, call the library, map errors.

Each module holds one family of commands (serve, read, send, spool); this one assembles
them into the `eventctl` group.
"""

from __future__ import annotations

import os
from typing import Annotated, Any

import typer
import typer.core

from eventctl import __version__
from eventctl.cli import read, replay, routes, send, serve, spool
from eventctl.cli.environment import Environment, bind

SHELLS = ("bash", "zsh", "fish", "powershell", "pwsh")


def _metavar(option: typer.core.TyperOption) -> str:
    """A short capitalised name for an option's value, from its name and type."""
    name = option.name or ""
    kind = option.type_descriptor
    if kind.is_path or kind.is_file or name in ("config", "spool", "file"):
        return "PATH"
    if name.endswith("_file"):
        return "PATH"
    if name in ("endpoint", "database_url"):
        return "URL"
    if name == "port":
        return "PORT"
    if name in ("interval", "keep_alive") or "seconds" in name or "timeout" in name:
        return "SECONDS"
    annotation = kind.annotation
    return {int: "N", float: "NUMBER"}.get(annotation, "TEXT")


def _plain_help(command: Any) -> None:
    """Click's plain help for `command` and its sub-commands (Rich's panels squeeze the
    descriptions into a narrow column at 80 columns), with a metavar on every option that
    takes a value and none on flags (Typer would show `<bool>`, `<str>`, `<list[str]>`)."""
    if isinstance(command, typer.core.TyperCommand | typer.core.TyperGroup):
        command.rich_markup_mode = None
    for param in command.params:
        if isinstance(param, typer.core.TyperOption) and not param.is_flag:
            param.metavar = param.metavar or _metavar(param)
    for sub in getattr(command, "commands", {}).values():
        _plain_help(sub)


class EventctlGroup(typer.core.TyperGroup):
    """The root command: plain help that reads at 80 columns, and shell completion that
    takes both orders of the instruction (Typer's `source_bash`, Click's `bash_source`)."""

    def __init__(self, **attrs: Any) -> None:
        super().__init__(**attrs)
        _plain_help(self)

    def format_commands(self, ctx: Any, formatter: Any) -> None:
        # Click cuts each command's line at the terminal width with "..."; wrap it instead
        rows = [
            (name, command.get_short_help_str(limit=1000))
            for name, command in self.commands.items()
            if not command.hidden
        ]
        if rows:
            with formatter.section("Commands"):
                formatter.write_dl(rows)

    def _main_shell_completion(
        self, ctx_args: Any, prog_name: str, complete_var: str | None = None
    ) -> None:
        var = complete_var or f"_{prog_name}_COMPLETE".replace("-", "_").upper()
        shell, _, instruction = os.environ.get(var, "").partition("_")
        if shell in SHELLS and instruction in ("source", "complete"):
            os.environ[var] = f"{instruction}_{shell}"
        super()._main_shell_completion(ctx_args, prog_name, complete_var)


app = typer.Typer(
    name="eventctl",
    cls=EventctlGroup,
    help="Fire events at an HTTP endpoint, and catch, validate and store them.",
    no_args_is_help=True,
    rich_markup_mode=None,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"eventctl {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    ctx: typer.Context,
    version: Annotated[
        bool,
        typer.Option("--version", callback=_version, is_eager=True, help="Show the version."),
    ] = False,
) -> None:
    """Fire events at an HTTP endpoint, and catch, validate and store them."""
    bind(ctx.ensure_object(Environment))


app.command("serve")(serve.serve_command)
app.command("list-events")(read.list_events)
app.command()(read.tail)
app.command()(read.stats)
app.command()(send.propagate)
app.command("send-once")(send.send_once)
app.command()(replay.replay)
app.command()(serve.up)
spool_app = typer.Typer(
    help="Look at and retry the propagator's spool of generated events.",
    no_args_is_help=True,
)
spool_app.command("list")(spool.spool_list)
spool_app.command("retry")(spool.spool_retry)
app.add_typer(spool_app, name="spool")
app.command()(spool.verify)
routes_app = typer.Typer(
    help="Show serve's forwarding routes (store and forward); retry or enable one.",
    no_args_is_help=False,
)
routes_app.callback(invoke_without_command=True)(routes.routes_list)
routes_app.command("retry")(routes.routes_retry)
routes_app.command("enable")(routes.routes_enable)
app.add_typer(routes_app, name="routes")


def main() -> None:
    """Entry point of the `eventctl` console script and `python -m eventctl`."""
    # one program name however it was started, so completion reads _EVENTCTL_COMPLETE
    app(prog_name="eventctl", obj=Environment())
