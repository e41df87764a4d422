"""What a command reads and writes besides its flags, and how its errors leave the process.

`Environment` holds the standard streams, whether stdout and stderr are terminals, and the
environment variables (httpie's `Environment` is the model). `main` builds it from the
process; a test hands its own to Typer's `CliRunner` as `obj`. Commands reach it through
`current()`, never through `sys.stdout`, `os.environ` or a `Console()` of their own.
"""

from __future__ import annotations

import functools
import os
import sys
from collections.abc import Callable, Mapping
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import ParamSpec, TextIO, TypeVar

import typer
from rich.console import Console

from eventctl.errors import EventctlError, ExitCode
from eventctl.textsafe import visible


def _isatty(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


@dataclass
class Environment:
    """The process's streams and variables, as a command sees them (the process's own by
    default, read when the Environment is made)."""

    stdin: TextIO = field(default_factory=lambda: sys.stdin)
    stdout: TextIO = field(default_factory=lambda: sys.stdout)
    stderr: TextIO = field(default_factory=lambda: sys.stderr)
    environ: Mapping[str, str] = field(default_factory=lambda: os.environ)
    stdout_isatty: bool | None = None
    stderr_isatty: bool | None = None
    stdin_isatty: bool | None = None

    def __post_init__(self) -> None:
        if self.stdin_isatty is None:
            self.stdin_isatty = _isatty(self.stdin)
        if self.stdout_isatty is None:
            self.stdout_isatty = _isatty(self.stdout)
        if self.stderr_isatty is None:
            self.stderr_isatty = _isatty(self.stderr)

    def console(self, *, stderr: bool = False) -> Console:
        """A Rich console on stdout (or stderr): a terminal when the stream is one, and
        otherwise as Rich decides from the variables (FORCE_COLOR, NO_COLOR, COLUMNS)."""
        tty = self.stderr_isatty if stderr else self.stdout_isatty
        return Console(
            file=self.stderr if stderr else self.stdout,
            force_terminal=True if tty else None,
            highlight=False,
            _environ=self.environ,  # COLUMNS, NO_COLOR, TERM: the Environment's own
        )

    def say(self, text: str) -> None:
        """A status line on stderr."""
        typer.echo(text, file=self.stderr)

    def print(self, text: str) -> None:
        """A line of data on stdout."""
        typer.echo(text, file=self.stdout)


_CURRENT: ContextVar[Environment | None] = ContextVar("eventctl_environment", default=None)


def bind(env: Environment) -> None:
    """Make `env` the running command's Environment (the root callback does, from the
    `obj` that `main` or a test's CliRunner passed)."""
    _CURRENT.set(env)


def current() -> Environment:
    """The running command's Environment (the process's own outside a command)."""
    env = _CURRENT.get()
    return Environment() if env is None else env


def _stdout_is_devnull(stdout: TextIO) -> bool:
    try:
        out, null = os.fstat(stdout.fileno()), os.stat(os.devnull)
    except (OSError, ValueError, AttributeError):
        return False
    return (out.st_dev, out.st_ino) == (null.st_dev, null.st_ino)


def _reader_went_away(stdout: TextIO) -> typer.Exit:
    """Exit 0 quietly: whoever read stdout (`| head -1`) has all it wanted. What is still
    buffered goes to /dev/null, so the flush at exit cannot fail again."""
    try:
        fd = stdout.fileno()
    except (OSError, ValueError, AttributeError):
        return typer.Exit(ExitCode.OK)
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, fd)
    os.close(devnull)
    return typer.Exit(ExitCode.OK)


P = ParamSpec("P")
R = TypeVar("R")


def fail(message: str, code: ExitCode) -> typer.Exit:
    """Say `message` as the one error line on stderr; the Exit to raise with `code`."""
    current().say(f"eventctl: error: {visible(message)}")
    return typer.Exit(code)


def guarded(command: Callable[P, R]) -> Callable[P, R]:
    """Turn domain errors into one line on stderr and the error's exit code, and a closed
    stdout into a quiet exit 0."""

    @functools.wraps(command)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return command(*args, **kwargs)
        except EventctlError as exc:
            raise fail(str(exc), exc.exit_code) from None
        except BrokenPipeError:
            raise _reader_went_away(current().stdout) from None
        except SystemExit as exc:
            # Rich's Console answers a closed stdout by pointing it at /dev/null and exiting 1
            if exc.code == 1 and _stdout_is_devnull(current().stdout):
                raise _reader_went_away(current().stdout) from None
            raise

    return wrapper
