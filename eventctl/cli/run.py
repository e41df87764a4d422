"""`eventctl up`: the consumer and the propagator in one process, where the two meet."""

from __future__ import annotations

import socket
import threading
import time
from dataclasses import replace

from rich.console import Console

from eventctl.config import ConsumerConfig, PropagatorConfig
from eventctl.consumer.server import consumer_server, local_url
from eventctl.errors import EventctlError
from eventctl.propagator.propagator import Stats
from eventctl.propagator.run import DisplayMode, propagate_events
from eventctl.propagator.templates import EventPool
from eventctl.store import Store, describe_url

STARTUP_TIMEOUT_SECONDS = 15.0


def run_up(
    ccfg: ConsumerConfig,
    pcfg: PropagatorConfig,
    events: EventPool,
    sock: socket.socket,
    *,
    count: int | None,
    duration: float | None,
    seed: int | None,
    mode: DisplayMode,
    new_run: bool = False,
) -> Stats:
    """The consumer on `sock` in a background thread, the propagator in front, both stopped
    together; the port is free again when this returns."""
    console = Console(stderr=True, highlight=False)
    store = Store.open(ccfg.database_url, create=True)
    server = consumer_server(ccfg, store)
    thread = threading.Thread(
        target=server.run, kwargs={"sockets": [sock]}, name="eventctl-consumer", daemon=True
    )
    try:
        thread.start()
        deadline = time.monotonic() + STARTUP_TIMEOUT_SECONDS
        while not server.started:
            if not thread.is_alive() or time.monotonic() > deadline:
                raise EventctlError("the consumer did not start (see the log above)")
            time.sleep(0.01)
        endpoint = local_url(sock, "/event")
        console.print(
            f"eventctl up: consumer on {local_url(sock)} "
            f"(database {describe_url(ccfg.database_url)}), "
            f"sending every {pcfg.interval_seconds:g}s; Ctrl-C stops",
            markup=False,
            soft_wrap=True,
        )
        stats = propagate_events(
            replace(pcfg, api_endpoint=endpoint),
            events,
            count=count,
            duration=duration,
            seed=seed,
            mode=mode,
            new_run=new_run,
        )
    finally:
        server.should_exit = True
        thread.join()
        sock.close()
        stored = store.count()
        store.close()
    console.print(f"eventctl up: {stored} events in the database", highlight=False)
    return stats
