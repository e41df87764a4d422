"""`eventctl up`: the consumer and the propagator in one process, where the two meet."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable

from eventctl.cli.environment import Environment
from eventctl.config import ConsumerConfig
from eventctl.consumer.server import consumer_server, local_url
from eventctl.errors import EventctlError
from eventctl.propagator.propagator import Stats
from eventctl.store import Store, describe_url

STARTUP_TIMEOUT_SECONDS = 15.0


def run_up(
    ccfg: ConsumerConfig,
    sock: socket.socket,
    interval: float,
    propagate: Callable[[str], Stats],
    env: Environment,
) -> Stats:
    """The consumer on `sock` in a background thread, `propagate(endpoint)` in front (sending
    every `interval` seconds), both stopped together; the port is free again when this
    returns. Credentials come from the Environment's variables, the lines go to its stderr."""
    console = env.console(stderr=True)
    store = Store.open(ccfg.database_url, create=True)
    server = consumer_server(ccfg, store, environ=env.environ)
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
        console.print(
            f"eventctl up: consumer on {local_url(sock)} "
            f"(database {describe_url(ccfg.database_url)}), "
            f"sending every {interval:g}s; Ctrl-C stops",
            markup=False,
            soft_wrap=True,
        )
        stats = propagate(local_url(sock, "/event"))
    finally:
        server.should_exit = True
        thread.join()
        sock.close()
        stored = store.count()
        store.close()
    console.print(f"eventctl up: {stored} events in the database", highlight=False)
    return stats
