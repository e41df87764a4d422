"""The commands that run the consumer: `serve`, and `up` (with a propagator in front)."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from eventctl.cli.environment import current, guarded
from eventctl.cli.options import (
    ConfigOption,
    CountOption,
    DatabaseUrlOption,
    DurationOption,
    IntervalOption,
    QuietOption,
    SeedOption,
    complete_log_levels,
    config_option,
    consumer_config,
    duration,
    propagator_config,
    with_events,
)
from eventctl.config import ConsumerConfig as C
from eventctl.errors import ExitCode
from eventctl.propagator.templates import load_events_file

if TYPE_CHECKING:
    from eventctl.propagator.propagator import Stats


@guarded
def serve_command(
    config: ConfigOption = None,
    host: Annotated[str | None, config_option(C, "host", metavar="HOST")] = None,
    port: Annotated[int | None, config_option(C, "port")] = None,
    database_url: DatabaseUrlOption = None,
    max_body_bytes: Annotated[int | None, config_option(C, "max_body_bytes")] = None,
    log_level: Annotated[
        str | None,
        config_option(C, "log_level", metavar="LEVEL", autocompletion=complete_log_levels),
    ] = None,
    workers: Annotated[int | None, config_option(C, "workers")] = None,
    metrics: Annotated[bool | None, config_option(C, "metrics", "--metrics/--no-metrics")] = None,
    max_batch: Annotated[int | None, config_option(C, "max_batch")] = None,
    commit_max_events: Annotated[int | None, config_option(C, "commit_max_events")] = None,
    commit_max_wait_ms: Annotated[
        float | None, config_option(C, "commit_max_wait_ms", metavar="MS")
    ] = None,
    max_queued_events: Annotated[int | None, config_option(C, "max_queued_events")] = None,
    fail_rate: Annotated[float | None, config_option(C, "fail_rate")] = None,
    fail_status: Annotated[int | None, config_option(C, "fail_status", metavar="STATUS")] = None,
    latency: Annotated[str | None, config_option(C, "latency_seconds", metavar="TIME")] = None,
    webhook_secrets_file: Annotated[str | None, config_option(C, "webhook_secrets_file")] = None,
    webhook_tolerance_seconds: Annotated[
        float | None, config_option(C, "webhook_tolerance_seconds")
    ] = None,
    auth_token_file: Annotated[str | None, config_option(C, "auth_token_file")] = None,
    max_header_bytes: Annotated[int | None, config_option(C, "max_header_bytes")] = None,
    max_headers: Annotated[int | None, config_option(C, "max_headers")] = None,
    header_timeout: Annotated[float | None, config_option(C, "header_timeout_seconds")] = None,
    body_timeout: Annotated[float | None, config_option(C, "body_timeout_seconds")] = None,
    keep_alive: Annotated[float | None, config_option(C, "keep_alive_seconds")] = None,
    max_connections: Annotated[int | None, config_option(C, "max_connections")] = None,
    allowed_hosts: Annotated[str | None, config_option(C, "allowed_hosts", metavar="NAMES")] = None,
    forward_to: Annotated[list[str] | None, config_option(C, "forward", metavar="URL")] = None,
    responses: Annotated[str | None, config_option(C, "responses", metavar="RULES")] = None,
) -> None:
    """Run the Event Consumer: accept events on POST /event and store them."""
    from eventctl.consumer.server import listen, serve

    cfg = consumer_config(
        config,
        host=host,
        port=port,
        database_url=database_url,
        max_body_bytes=max_body_bytes,
        log_level=log_level,
        workers=workers,
        metrics=metrics,
        max_batch=max_batch,
        commit_max_events=commit_max_events,
        commit_max_wait_ms=commit_max_wait_ms,
        max_queued_events=max_queued_events,
        fail_rate=fail_rate,
        fail_status=fail_status,
        latency_seconds=None if latency is None else duration(latency, allow_zero=True),
        webhook_secrets_file=webhook_secrets_file,
        webhook_tolerance_seconds=webhook_tolerance_seconds,
        auth_token_file=auth_token_file,
        max_header_bytes=max_header_bytes,
        max_headers=max_headers,
        header_timeout_seconds=header_timeout,
        body_timeout_seconds=body_timeout,
        keep_alive_seconds=keep_alive,
        max_connections=max_connections,
        allowed_hosts=allowed_hosts,
        forward=forward_to,
        responses=responses,
    )
    env = current()
    serve(cfg, listen(cfg.host, cfg.port), env.console(stderr=True), environ=env.environ)


@guarded
def up(
    port: Annotated[int | None, config_option(C, "port")] = None,
    interval: IntervalOption = None,
    database_url: DatabaseUrlOption = None,
    count: CountOption = None,
    duration_text: DurationOption = None,
    seed: SeedOption = None,
    quiet: QuietOption = False,
) -> None:
    """Run the consumer and the propagator together, until Ctrl-C (or --count/--duration)."""
    from eventctl.cli.run import run_up
    from eventctl.consumer.server import listen
    from eventctl.propagator.run import DisplayMode, propagate_events

    env = current()
    ccfg = consumer_config(None, port=port, database_url=database_url)
    pcfg = with_events(propagator_config(None, interval_seconds=interval))
    seconds = duration(duration_text)
    events = load_events_file(Path(pcfg.events_file))
    mode = DisplayMode.choose(quiet=quiet, json_log=False, tty=bool(env.stderr_isatty))

    def propagate(endpoint: str) -> Stats:
        return propagate_events(
            dataclasses.replace(pcfg, api_endpoint=(endpoint,)),
            events,
            count=count,
            duration=seconds,
            seed=seed,
            mode=mode,
            environ=env.environ,
            stdout=env.stdout,
            stderr=env.stderr,
        )

    sock = listen(ccfg.host, ccfg.port)
    stats = run_up(ccfg, sock, pcfg.interval_seconds, propagate, env)
    if not stats.all_delivered:
        raise typer.Exit(ExitCode.UNDELIVERED)
