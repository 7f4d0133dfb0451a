"""The authentication gate: credentials are checked before a body is read.

FastAPI reads and parses a route's body before it runs the route's
dependencies, so :class:`~fleetward.api.deps.Authorize` and
:data:`~fleetward.api.deps.DeviceCaller` alone let an anonymous caller make
the server read and parse a body it will refuse. :class:`AuthGate` is a
pure ASGI middleware in front of the app that, for each HTTP request:

1. finds the route the router will pick (the first route whose path matches
   and whose methods include the request's; ``HEAD`` as ``GET``) in a table
   built once from the app's own routes: a route that declares an
   :class:`~fleetward.api.deps.Authorize` dependency needs an **operator**
   (an API token), one that declares
   :func:`~fleetward.api.deps.device_identity` needs a **device** (its TLS
   client certificate); every other route (and a path no route matches, or
   a method it does not serve) is public and passes untouched. No hand-kept
   list: a new route is covered by what it declares.
2. refuses a source that is over its failure limit at once, on the event
   loop, from memory (:func:`~fleetward.api.deps.refuse_limited_source`:
   no thread hop, no database read: a flood costs little); otherwise
   authenticates the caller from the headers and the TLS scope alone
   (:func:`~fleetward.api.deps.authenticate_operator`,
   :func:`~fleetward.api.deps.authenticate_device`: rate limited, refusals
   counted), in a worker thread (it reads the database);
3. refuses with the problem response (401, or 429 with ``Retry-After``)
   **without calling the app**, so not one byte of the body is read; or
   leaves the caller in the request's state for the dependencies, which do
   not authenticate again and go on to authorize.

**The console** (:mod:`fleetward.web`). A route that declares
:func:`fleetward.web.viewer` needs a **console session**: the gate reads the
session cookie (:func:`~fleetward.api.deps.authenticate_console`), leaves a
:class:`fleetward.web.Viewer` in the request's state, and answers a ``GET``
without a live session with a redirect to the sign-in page. An operator
route called with no ``Authorization`` header but a session cookie is the
console's script: the gate requires the session's CSRF token and a
same-origin request (:func:`~fleetward.api.deps.check_csrf`) before it lets
the session act as its token.

EST ``simpleenroll`` takes its token in the handler (the route has no
dependency), which authenticates before it reads the body.

The gate also writes the counts of refusal windows that ended
(:meth:`fleetward.runtime.context.AppContext.flush_refusals`): at most once
per :data:`FLUSH_EVERY` seconds when requests come in, and all of them when
the app shuts down.
"""

from __future__ import annotations

import logging
import re
import time
from dataclasses import dataclass
from typing import Any, Literal
from urllib.parse import urlencode

from fastapi import FastAPI
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import Headers
from starlette.requests import cookie_parser
from starlette.responses import RedirectResponse, Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from fleetward import observe, web
from fleetward.api import problems
from fleetward.api.deps import (
    DEVICE,
    PRINCIPAL,
    Authorize,
    authenticate_console,
    authenticate_device,
    authenticate_operator,
    check_csrf,
    device_identity,
    refuse_limited_source,
    source_of,
    token_of,
)
from fleetward.api.ratelimit import FailureLimiter, limiter_of
from fleetward.errors import FleetwardError, TooManyRequestsError
from fleetward.runtime.context import AppContext
from fleetward.tenancy import csrf_token

__all__ = ["FLUSH_EVERY", "AuthGate", "Need", "install", "needs_of"]

FLUSH_EVERY = 10.0  # seconds between checks for ended refusal windows
MAX_COOKIE_HEADER = 4096  # bytes of a Cookie header the gate parses at all

Need = Literal["operator", "device", "console"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class _Route:
    regex: re.Pattern[str]
    methods: frozenset[str]
    need: Need | None


def needs_of(route: Any) -> Need | None:
    """What a route's dependencies ask of the caller (rule 1)."""
    dependant = getattr(route, "dependant", None)
    stack = list(dependant.dependencies) if dependant is not None else []
    while stack:
        dep = stack.pop()
        if isinstance(dep.call, Authorize):
            return "operator"
        if dep.call is device_identity:
            return "device"
        if dep.call is web.viewer:
            return "console"
        stack.extend(dep.dependencies)
    return None


def _leaves(routes: list[Any]) -> list[Any]:
    """Every route in matching order, through included routers."""
    out: list[Any] = []
    for route in routes:
        if hasattr(route, "effective_candidates"):
            out.extend(_leaves(route.effective_candidates()))
        else:
            out.append(route)
    return out


def _table(app: FastAPI) -> list[_Route]:
    table = []
    for route in _leaves(list(app.routes)):
        regex = getattr(route, "path_regex", None)
        if regex is None:
            continue
        methods = frozenset(getattr(route, "methods", None) or {"GET"})
        table.append(_Route(regex, methods, needs_of(route)))
    return table


class AuthGate:
    """The middleware (see the module docstring).

    Args:
        app: The next ASGI app.
        owner: The FastAPI app whose routes, context and limiter these are.
    """

    def __init__(self, app: ASGIApp, *, owner: FastAPI) -> None:
        self.app = app
        self.owner = owner
        self._routes: list[_Route] | None = None
        self._checked = time.monotonic()

    @property
    def ctx(self) -> AppContext:
        ctx: AppContext = self.owner.state.ctx
        return ctx

    @property
    def limiter(self) -> FailureLimiter:
        return limiter_of(self.owner)

    def need(self, scope: Scope) -> Need | None:
        """What the request's route asks of the caller (rule 1)."""
        if self._routes is None:  # the routers are included after install()
            self._routes = _table(self.owner)
        path = scope.get("path", "")
        method = scope.get("method", "GET")
        method = "GET" if method == "HEAD" else method
        for route in self._routes:
            if route.regex.match(path) and method in route.methods:
                return route.need
        return None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await self.app(scope, receive, self._flush_at_shutdown(send))
            return
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        await self._flush_now_and_then()
        need = self.need(scope)
        if need is None:
            await self.app(scope, receive, send)
            return
        headers = Headers(scope=scope)
        session = _session_cookie(headers)
        try:
            # A source over its limit is refused here, on the loop, from memory.
            refuse_limited_source(
                self.ctx, self.limiter, source=source_of(scope), operator=need != "device"
            )
            if need == "console":
                scope.setdefault("state", {})[web.VIEWER] = await self._console(scope, session)
            elif need == "operator" and "authorization" not in headers and session is not None:
                # The console's script calling the API: the session, and its CSRF token.
                who = await self._console_call(scope, headers, session)
                scope.setdefault("state", {})[PRINCIPAL] = who
            elif need == "operator":
                who = await run_in_threadpool(
                    lambda: authenticate_operator(
                        self.ctx,
                        self.limiter,
                        token=token_of(headers),
                        source=source_of(scope),
                        path=str(scope.get("path", "")),
                    )
                )
                scope.setdefault("state", {})[PRINCIPAL] = who
            else:
                device = await run_in_threadpool(
                    lambda: authenticate_device(
                        self.ctx, self.limiter, scope=scope, headers=headers
                    )
                )
                scope.setdefault("state", {})[DEVICE] = device
        except FleetwardError as exc:
            path = str(scope.get("path", ""))
            response: Response
            if need == "console" and scope.get("method") in ("GET", "HEAD"):
                observe.refusal(exc.code)
                response = _to_sign_in(scope, exc)
            else:
                response = problems.error_response(exc, instance=path)
            await response(scope, receive, send)
            return
        await self.app(scope, receive, send)

    async def _console(self, scope: Scope, session: str | None) -> web.Viewer:
        principal = await run_in_threadpool(
            lambda: authenticate_console(
                self.ctx, self.limiter, secret=session, source=source_of(scope)
            )
        )
        secret = session or ""  # authenticate_console refused a missing one
        return web.Viewer(principal=principal, csrf=csrf_token(secret), session=secret)

    async def _console_call(self, scope: Scope, headers: Headers, session: str) -> Any:
        check_csrf(headers, secret=session, origin=_origin(scope, headers))
        return await run_in_threadpool(
            lambda: authenticate_console(
                self.ctx, self.limiter, secret=session, source=source_of(scope)
            )
        )

    async def _flush_now_and_then(self) -> None:
        now = time.monotonic()
        if now - self._checked < FLUSH_EVERY or not len(self.ctx.refusals):
            return
        self._checked = now
        try:
            await run_in_threadpool(self.ctx.flush_refusals)
        except Exception:  # a database hiccup must not fail the request (those counts are lost)
            log.exception("writing refusal counts failed")

    def _flush_at_shutdown(self, send: Send) -> Send:
        async def sending(message: Message) -> None:
            if message["type"] == "lifespan.shutdown.complete":
                try:
                    await run_in_threadpool(lambda: self.ctx.flush_refusals(everything=True))
                except Exception:  # the counts are lost, shutdown goes on
                    log.exception("writing refusal counts at shutdown failed")
            await send(message)

        return sending


def _session_cookie(headers: Headers) -> str | None:
    raw = headers.get("cookie")
    if not raw or len(raw) > MAX_COOKIE_HEADER:
        return None
    return cookie_parser(raw).get(web.COOKIE)


def _origin(scope: Scope, headers: Headers) -> str:
    """This server's origin as the browser names it (scheme and Host)."""
    return f"{scope.get('scheme', 'http')}://{headers.get('host', '')}"


def _to_sign_in(scope: Scope, error: FleetwardError) -> RedirectResponse:
    """A console page without a live session goes to the sign-in page, which
    then returns to it (a 429 too: the sign-in page shows the limit)."""
    path = str(scope.get("path", "/"))
    target = web.LOGIN if path == "/" else f"{web.LOGIN}?{urlencode({'next': path})}"
    response = RedirectResponse(target, status_code=303)
    response.headers["Cache-Control"] = "no-store"
    if isinstance(error, TooManyRequestsError):
        response.headers["Retry-After"] = str(error.retry_after)
    return response


def install(app: FastAPI) -> None:
    """Put the gate in front of ``app`` (call once, before it starts; install
    it before ``fleetward.api.access`` so the access log sees its refusals)."""
    if getattr(app.state, "auth_gate", False):
        return
    app.state.auth_gate = True
    limiter_of(app)  # made now, not raced for by the first requests
    app.add_middleware(AuthGate, owner=app)
