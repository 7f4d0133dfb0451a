"""Request ids and the access log: one small ASGI middleware.

Every HTTP request gets a fresh id (16 hex digits). It is set in
:data:`fleetward.logs.request_id` while the request is handled, so every log
line written on its behalf carries it; it is returned in the ``X-Request-ID``
response header, so an operator can find the lines of a request a client
reports; and it is on the request's access-log line (logger
``fleetward.access``, level INFO): method, path, route template, status,
duration and peer.

An id a client sends is not adopted: it would let one client write lines
that look like another's. The path is logged without its query string
(queries may carry secrets; paths here never do), and the peer is the one
uvicorn established (``X-Forwarded-For`` only from trusted proxies, see
``fleetward.api.workers.proxy_options``).
"""

from __future__ import annotations

import logging
import secrets
import time

from fastapi import FastAPI
from starlette.datastructures import MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from fleetward import logs

__all__ = ["HEADER", "AccessLog", "install", "route_template"]

HEADER = "X-Request-ID"
MAX_LOGGED_PATH = 300  # characters of a path on an access line

log = logging.getLogger("fleetward.access")


def route_template(scope: Scope) -> str | None:
    """The path template of the route that handled the request (``None`` if none did)."""
    route = scope.get("route")
    path = getattr(route, "path_format", None) or getattr(route, "path", None)
    return path if isinstance(path, str) else None


class AccessLog:
    """Sets the request id, adds the header, writes the access-log line."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        rid = secrets.token_hex(8)
        token = logs.request_id.set(rid)
        status = 500  # what the client gets if the app fails before answering
        started = time.perf_counter()

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
                MutableHeaders(scope=message).append(HEADER, rid)
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        finally:
            client = scope.get("client")
            log.info(
                "%s %s %d",
                scope.get("method", ""),
                str(scope.get("path", ""))[:MAX_LOGGED_PATH],
                status,
                extra={
                    "route": route_template(scope) or "-",
                    "status": status,
                    "duration_ms": round((time.perf_counter() - started) * 1000, 2),
                    "peer": client[0] if client else "-",
                },
            )
            logs.request_id.reset(token)


def install(app: FastAPI) -> None:
    """Give ``app`` request ids and access-log lines (call before it starts;
    once per app, later calls do nothing)."""
    if getattr(app.state, "access_log", False):
        return
    app.state.access_log = True
    app.add_middleware(AccessLog)
