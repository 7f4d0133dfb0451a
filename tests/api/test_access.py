"""Request ids: one per request, in the response header, on the access-log
line and on every line written while the request is handled."""

from __future__ import annotations

import io
import json
import logging
import re
from collections.abc import Iterator

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from fleetward import logs
from fleetward.api import access


@pytest.fixture
def lines() -> Iterator[io.StringIO]:
    """Logging configured as JSON lines into a buffer (restored after)."""
    root = logging.getLogger()
    saved = (list(root.handlers), root.level)
    out = io.StringIO()
    handler = logs.configure(level="info", fmt="json", stream=out)
    yield out
    root.removeHandler(handler)
    root.handlers[:] = saved[0]
    root.setLevel(saved[1])
    logging.getLogger("uvicorn.access").disabled = False
    for name in ("httpx", "httpcore"):
        logging.getLogger(name).setLevel(logging.NOTSET)


@pytest.fixture
def app() -> FastAPI:
    app = FastAPI()

    @app.get("/things/{thing_id}")
    def thing(thing_id: str) -> dict[str, str]:
        # A sync handler runs in a worker thread: the id must follow it there.
        logging.getLogger("fleetward.test").info("looking up a thing")
        return {"id": thing_id}

    access.install(app)
    access.install(app)  # idempotent
    return app


def test_each_request_gets_an_id_on_every_line_and_in_the_header(
    app: FastAPI, lines: io.StringIO
) -> None:
    with TestClient(app) as c:
        first = c.get("/things/t-1?token=s3cret", headers={"X-Request-ID": "chosen-by-client"})
        second = c.get("/things/t-2")
    rid = first.headers[access.HEADER]
    assert re.fullmatch(r"[0-9a-f]{16}", rid)
    assert rid != second.headers[access.HEADER]  # fresh each time, and not the client's
    records = [json.loads(line) for line in lines.getvalue().splitlines()]
    mine = [r for r in records if r.get("request_id") == rid]
    inside, line = mine
    assert inside["message"] == "looking up a thing"
    assert inside["thread"] != "MainThread"
    assert line["logger"] == "fleetward.access"
    assert line["message"] == "GET /things/t-1 200"
    assert (line["route"], line["status"]) == ("/things/{thing_id}", 200)
    assert line["duration_ms"] >= 0 and line["peer"]
    assert "s3cret" not in lines.getvalue()  # no query strings (httpx's URL lines are off)
