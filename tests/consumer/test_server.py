"""consumer/server.py takes its credentials from the `environ` it is given, not from
os.environ, and hands them to `--workers` processes through theirs."""

from __future__ import annotations

import io
import os
from pathlib import Path

import pytest
from rich.console import Console

from eventctl.auth import AUTH_TOKEN_ENV, WEBHOOK_SECRETS_ENV
from eventctl.config import ConsumerConfig, ForwardRoute
from eventctl.consumer.app import ConsumerApp
from eventctl.consumer.server import (
    PROMETHEUS_ENV,
    WORKER_CONFIG_ENV,
    _environment,
    consumer_credentials,
    consumer_server,
    listen,
    serve,
    worker_app,
    worker_environment,
)
from eventctl.errors import ConfigError
from eventctl.store import Store
from tests.helpers import Server, in_process

SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
EVENT = {"event_type": "t", "event_payload": "p"}


def test_credentials_come_from_the_environ_given() -> None:
    cfg = ConsumerConfig()
    credentials = consumer_credentials(cfg, {AUTH_TOKEN_ENV: "t0ken", WEBHOOK_SECRETS_ENV: SECRET})
    assert credentials.token == "t0ken"
    assert len(credentials.keys) == 1
    assert AUTH_TOKEN_ENV not in os.environ
    empty = consumer_credentials(cfg, {})
    assert (empty.token, empty.keys) == (None, [])


@pytest.mark.anyio
async def test_the_server_requires_the_token_of_its_environ(sqlite_url: str) -> None:
    store = Store.open(sqlite_url, create=True)
    try:
        server = consumer_server(ConsumerConfig(), store, environ={AUTH_TOKEN_ENV: "t0ken"})
        app = server.config.app
        assert isinstance(app, ConsumerApp)
        async with in_process(app) as client:
            refused = await client.post("/event", json=EVENT)
            taken = await client.post(
                "/event", json=EVENT, headers={"Authorization": "Bearer t0ken"}
            )
    finally:
        store.close()
    assert refused.status_code == 401
    assert taken.status_code == 200


@pytest.mark.anyio
async def test_workers_get_the_credentials_of_the_parents_environ(
    sqlite_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(WEBHOOK_SECRETS_ENV, SECRET)  # the parent's own, not given: not passed
    cfg = ConsumerConfig(database_url=sqlite_url)
    Store.open(sqlite_url, create=True).close()
    values = worker_environment(cfg, str(tmp_path), {AUTH_TOKEN_ENV: "t0ken"})
    assert values[AUTH_TOKEN_ENV] == "t0ken"
    assert values[WEBHOOK_SECRETS_ENV] is None
    assert values[PROMETHEUS_ENV] == str(tmp_path)
    with _environment(values):
        assert WEBHOOK_SECRETS_ENV not in os.environ
        app = worker_app()  # what each worker process runs, from its environment
    assert os.environ[WEBHOOK_SECRETS_ENV] == SECRET
    assert WORKER_CONFIG_ENV not in os.environ
    async with in_process(app) as client:
        refused = await client.post("/event", json=EVENT)
        taken = await client.post("/event", json=EVENT, headers={"Authorization": "Bearer t0ken"})
    assert refused.status_code == 401
    assert taken.status_code == 200  # no signature asked for: the parent's variable stayed out


@pytest.mark.parametrize("workers", [1, 2])
def test_serve_refuses_a_bad_secret_of_its_environ_before_it_starts(
    sqlite_url: str, workers: int
) -> None:
    cfg = ConsumerConfig(database_url=sqlite_url, port=0, workers=workers)
    sock = listen(cfg.host, 0)
    out = io.StringIO()
    with pytest.raises(ConfigError, match="a signing secret must be whsec_ and base64"):
        serve(cfg, sock, Console(file=out), environ={WEBHOOK_SECRETS_ENV: "whsec_!"})
    assert sock.fileno() == -1  # closed
    assert out.getvalue() == ""  # nothing said it was listening


@pytest.mark.parametrize("workers", [1, 2])
def test_serve_refuses_a_route_whose_secret_file_is_missing_before_it_starts(
    sqlite_url: str, tmp_path: Path, workers: int
) -> None:
    missing = tmp_path / "nope.whsec"
    route = ForwardRoute("http://127.0.0.1:9/event", signing_secret_file=str(missing))
    cfg = ConsumerConfig(database_url=sqlite_url, port=0, workers=workers, forward=(route,))
    sock = listen(cfg.host, 0)
    out = io.StringIO()
    with pytest.raises(ConfigError, match=f"{missing}: cannot read the secrets file"):
        serve(cfg, sock, Console(file=out), environ={})
    assert sock.fileno() == -1
    assert out.getvalue() == ""


def test_serve_says_where_it_forwards(sqlite_url: str, tmp_path: Path) -> None:
    config = tmp_path / "consumer.yaml"
    config.write_text(
        "forward:\n"
        "  - http://127.0.0.1:9/all\n"
        "  - {url: 'http://127.0.0.1:9/pay', name: billing, match: ['pay.*'], ordered: true}\n"
    )
    running = Server(sqlite_url, tmp_path, "--config", str(config))
    _, err = running.stop()
    assert "forwarding to http://127.0.0.1:9/all\n" in err
    assert (
        "forwarding to http://127.0.0.1:9/pay as billing (pay.* only), one at a time in order"
        in err
    )
