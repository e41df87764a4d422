"""Domain errors and the process exit codes they map to."""

from __future__ import annotations

from enum import IntEnum


class ExitCode(IntEnum):
    """Exit codes of every `eventctl` command (documented in docs/cli.md)."""

    OK = 0
    FAILURE = 1
    USAGE = 2
    CONFIG = 3
    INPUT = 4
    DATABASE = 5
    UNAVAILABLE = 6
    REFUSED = 7
    SERVER_ERROR = 8
    UNDELIVERED = 9
    MISMATCH = 10


class EventctlError(Exception):
    """An error with a one-line message meant for the user."""

    exit_code: ExitCode = ExitCode.FAILURE


class ConfigError(EventctlError):
    """A config file, environment variable or flag value is wrong."""

    exit_code = ExitCode.CONFIG


class InvalidEvent(EventctlError):
    """An event breaks the rules in `eventctl.events.validate_event`."""

    exit_code = ExitCode.INPUT

    def __init__(self, field: str | None, problem: str) -> None:
        self.field = field
        self.problem = problem
        super().__init__(f"{field} {problem}" if field else problem)


class DatabaseError(EventctlError):
    """The database is missing, unreachable or not an eventctl database."""

    exit_code = ExitCode.DATABASE


class DatabaseUnreachable(DatabaseError):
    """No connection to the database server could be opened (it is down, or the network to
    it is): another attempt at once would only wait as long again."""


class IdempotencyConflict(EventctlError):
    """An event id (an `Idempotency-Key`, or a batch's `<key>/<index>`) is already stored
    with a different event_type or event_payload: the request is refused, not replayed."""

    exit_code = ExitCode.INPUT

    def __init__(self, event_id: str, index: int) -> None:
        self.event_id = event_id
        self.index = index
        super().__init__(
            f"event_id {event_id} is already stored with a different event_type or event_payload"
        )


class Unavailable(EventctlError):
    """A socket could not be bound, or a peer could not be reached."""

    exit_code = ExitCode.UNAVAILABLE


class Refused(EventctlError):
    """The consumer answered 4xx: the event itself was refused."""

    exit_code = ExitCode.REFUSED


class ServerFailed(EventctlError):
    """The consumer answered 5xx."""

    exit_code = ExitCode.SERVER_ERROR
