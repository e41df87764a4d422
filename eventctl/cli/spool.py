"""The spool's commands: `spool list`, `spool retry`, and `verify` (the spool against the
database)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table
from rich.text import Text

from eventctl.cli import output as out
from eventctl.cli.environment import current, guarded
from eventctl.cli.options import (
    ConsumerConfigOption,
    DatabaseUrlOption,
    EndpointOption,
    PropagatorConfigOption,
    QuietOption,
    SpoolOption,
    consumer_config,
    propagator_config,
)
from eventctl.errors import ExitCode
from eventctl.propagator.templates import EventPool
from eventctl.textsafe import visible

spool_app = typer.Typer(
    help="Look at and retry the propagator's spool of generated events.",
    no_args_is_help=True,
)


@guarded
def spool_list(
    config: PropagatorConfigOption = None,
    spool: SpoolOption = None,
    state: Annotated[
        str,
        typer.Option(help="pending, failed, delivered, unsettled (pending and failed) or all"),
    ] = "unsettled",
    as_json: Annotated[bool, typer.Option("--json", help="Print a JSON array.")] = False,
) -> None:
    """Show events in the spool: by default the ones not delivered yet."""
    from eventctl.propagator.spool import SELECTIONS, Spool

    if state not in SELECTIONS:
        raise typer.BadParameter(f"not one of {', '.join(SELECTIONS)}", param_hint="--state")
    env = current()
    cfg = propagator_config(config, spool_path=spool)
    if not Path(cfg.spool_path).exists():  # a command that only reads creates nothing
        if as_json:
            out.document(env.stdout, [])
        env.say(f"{cfg.spool_path}: no spool here (nothing generated yet)")
        return
    opened = Spool.open(Path(cfg.spool_path))
    try:
        entries = opened.entries(*SELECTIONS[state])
        counts = opened.counts()
    finally:
        opened.close()
    if as_json:
        out.document(env.stdout, [e.to_json() for e in entries])
        return
    env.say(
        f"{cfg.spool_path}: {counts['pending']} pending, {counts['failed']} failed, "
        f"{counts['delivered']} delivered"
    )
    if entries:
        console = env.console()
        # event_id, state and tries are shown whole; the two free texts share what is left
        fixed = 36 + len("delivered") + len("tries") + 2 * 5
        free = max(console.width - fixed, 16)
        result_width = min(20, free // 2)
        table = Table(box=None, header_style="dim")
        table.add_column("event_id", no_wrap=True, width=36)
        table.add_column("state", no_wrap=True, width=len("delivered"))
        table.add_column("tries", justify="right", no_wrap=True, width=len("tries"))
        table.add_column("last result", no_wrap=True, width=result_width, overflow="ellipsis")
        table.add_column(
            "event_type", no_wrap=True, max_width=free - result_width, overflow="ellipsis"
        )
        for e in entries:
            table.add_row(
                Text(visible(e.event_id)),
                e.state,
                str(e.attempts),
                Text(visible(e.last_result or "-")),
                Text(visible(e.event.event_type)),
            )
        console.print(table)


@guarded
def spool_retry(
    config: PropagatorConfigOption = None,
    spool: SpoolOption = None,
    endpoint: EndpointOption = None,
    quiet: QuietOption = False,
) -> None:
    """Make failed events pending again and send everything pending now."""
    from eventctl.propagator.run import DisplayMode, propagate_events
    from eventctl.propagator.spool import Spool

    cfg = propagator_config(config, spool_path=spool, api_endpoint=endpoint)
    opened = Spool.open(Path(cfg.spool_path))
    try:
        requeued = opened.requeue_failed()
    finally:
        opened.close()
    env = current()
    env.say(f"eventctl spool retry: {requeued} failed events are pending again")
    mode = DisplayMode.choose(quiet=quiet, json_log=False, tty=bool(env.stderr_isatty))
    stats = propagate_events(
        cfg,
        EventPool([]),
        count=0,
        duration=None,
        seed=None,
        mode=mode,
        title="eventctl spool retry",
        environ=env.environ,
        stdout=env.stdout,
        stderr=env.stderr,
    )
    if not stats.all_delivered:
        raise typer.Exit(ExitCode.UNDELIVERED)


@guarded
def verify(
    config: PropagatorConfigOption = None,
    spool: SpoolOption = None,
    consumer_config_path: ConsumerConfigOption = None,
    database_url: DatabaseUrlOption = None,
    run_id: Annotated[
        int | None, typer.Option("--run", help="Check this run (default: the latest).", min=1)
    ] = None,
    all_runs: Annotated[
        bool, typer.Option("--all", help="Check every event in the spool, of every run.")
    ] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print the report as JSON.")] = False,
) -> None:
    """Prove delivery: compare the spool's record of a run with what the database holds."""
    from eventctl.propagator.spool import Spool, SpoolError
    from eventctl.store import Store, describe_url
    from eventctl.verify import compare

    if run_id is not None and all_runs:
        raise typer.BadParameter("give either --run or --all", param_hint="--all")
    pcfg = propagator_config(config, spool_path=spool)
    ccfg = consumer_config(consumer_config_path, database_url=database_url)
    spool_path = Path(pcfg.spool_path)
    if not spool_path.exists():
        raise SpoolError(f"{spool_path}: no spool here; run `eventctl propagate` first")
    opened = Spool.open(spool_path)
    try:
        run = None if run_id is None else opened.run(run_id)
        if run_id is not None and run is None:
            known = [r.run_id for r in opened.runs()]
            shown = f"runs {known[0]} to {known[-1]}" if known else "no runs"
            raise typer.BadParameter(
                f"no run {run_id} in {spool_path} ({shown})", param_hint="--run"
            )
        checked = run or (None if all_runs else opened.latest_run())
        if (
            checked is not None
            and checked.kind == "replay"
            and checked.events_file == describe_url(ccfg.database_url)
        ):
            raise typer.BadParameter(
                f"run {checked.run_id} replayed the events of this database; check it against "
                "the receiver's database",
                param_hint="--database-url",
            )
        store = Store.open(ccfg.database_url)
        try:
            report = compare(opened, store, run, all_runs=all_runs)
        finally:
            store.close()
    finally:
        opened.close()
    result = report.to_json()
    if as_json:
        out.document(current().stdout, result)
    else:
        for line in _verify_lines(report, result, spool_path):
            current().print(line)
    if report.verdict == "FAILED":
        raise typer.Exit(ExitCode.MISMATCH)
    if report.verdict == "INCOMPLETE":
        raise typer.Exit(ExitCode.UNDELIVERED)


def _verify_lines(report: Any, result: dict[str, Any], spool_path: Path) -> list[str]:
    """verify's report: the verdict line, then what is wrong and how to mend it."""
    if report.run_id is not None:
        scope = f"run {report.run_id}"
    else:
        scope = f"all {report.runs} runs" if report.runs != 1 else "all of the spool"
    lines = [
        f"{report.verdict}: {result['generated']} generated, {result['acknowledged']} "
        f"acknowledged, {result['stored']} stored; lost {result['lost']}, duplicated "
        f"{result['duplicated']}, pending {result['pending']}, failed {result['failed']}; "
        f"latency p50 {result['latency_p50_ms']} ms, p99 {result['latency_p99_ms']} ms ({scope})"
    ]
    for kind in ("lost", "duplicated"):
        lines += [f"  {kind}: {visible(event_id)}" for event_id in result[f"{kind}_ids"]]
    if report.kind == "replay":
        if report.failed or report.pending or report.unfinished:
            lines.append(
                f"  {report.failed} failed, {report.pending} pending, "
                f"{report.target - report.generated if report.target else 0} not yet sent: "
                "the same `eventctl replay` command resumes an unfinished replay, or sends "
                "a finished one again"
            )
        return lines
    if report.failed:
        lines.append(
            f"  {report.failed} failed: they are in {spool_path}; "
            "`eventctl spool retry` resends them"
        )
    if report.pending:
        lines.append(
            f"  {report.pending} pending: `eventctl propagate --drain` (or the next "
            "`eventctl propagate`) sends them"
        )
    if report.unfinished:
        lines.append(
            f"  unfinished: {report.generated} of {report.target} generated; "
            f"`eventctl propagate --count {report.target}` resumes the run"
        )
    if report.other:
        lines.append(
            f"  other: {len(report.other)} stored since, not from this spool "
            "(send-once, curl, other senders); not checked"
        )
    return lines
