"""Baseline servers for bench/ingest.py, on the same uvicorn as eventctl.

    python bench/baselines.py bare  --port 8001
    python bench/baselines.py naive --port 8002 --database-url sqlite:////tmp/naive.db

bare:  an ASGI app that reads the body and answers 200 {"status":"success"}: the HTTP ceiling.
naive: the usual first version: a Starlette route that parses the JSON, validates nothing
       more than the two fields, and commits each event on its own through Peewee (in the
       thread pool), with the same durability as eventctl (WAL, synchronous=FULL).
"""

from __future__ import annotations

import argparse
import datetime
from typing import Any

import peewee
import uvicorn
from playhouse.db_url import connect
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

BODY = b'{"status":"success"}'
HEADERS = [(b"content-type", b"application/json"), (b"content-length", b"20")]


async def bare(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] != "http":
        return
    more = True
    while more:
        message = await receive()
        more = message.get("more_body", False)
    await send({"type": "http.response.start", "status": 200, "headers": HEADERS})
    await send({"type": "http.response.body", "body": BODY})


def naive(database_url: str) -> Starlette:
    db = connect(database_url, pragmas={"journal_mode": "wal", "synchronous": "full"})

    class NaiveEvent(peewee.Model):
        event_type = peewee.CharField()
        event_payload = peewee.TextField()
        received_at = peewee.DateTimeField()

        class Meta:
            database = db
            table_name = "events"

    db.create_tables([NaiveEvent])

    async def post_event(request: Request) -> JSONResponse:
        data = await request.json()
        if not isinstance(data.get("event_type"), str) or not isinstance(
            data.get("event_payload"), str
        ):
            return JSONResponse({"status": "error"}, status_code=422)
        await _in_thread(NaiveEvent, data)
        return JSONResponse({"status": "success"})

    return Starlette(routes=[Route("/event", post_event, methods=["POST"])])


async def _in_thread(model: Any, data: dict[str, str]) -> None:
    def insert() -> None:
        model.create(  # Peewee keeps one connection per pool thread
            event_type=data["event_type"],
            event_payload=data["event_payload"],
            received_at=datetime.datetime.now(datetime.UTC),
        )

    await run_in_threadpool(insert)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("kind", choices=["bare", "naive"])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--database-url", default="sqlite:////tmp/eventctl-naive.db")
    args = parser.parse_args()
    app: Any = bare if args.kind == "bare" else naive(args.database_url)
    uvicorn.run(app, host="127.0.0.1", port=args.port, log_level="warning", access_log=False)


if __name__ == "__main__":
    main()
