"""Live updates: a server-sent event stream per open console page.

``GET /console/events`` answers ``text/event-stream``. Every :data:`POLL`
seconds the stream looks at the audit log's head and the newest telemetry
event (two one-row reads); only when either moved does it ask whether the
viewer's **own tenant** has a newer entry or event (reading only the new
rows), and then sends ``event: change``. Another tenant's activity never
reaches the stream, not even as timing. The page's script answers a change
by fetching the page's main block again (see ``static/console.js``).

The stream re-checks the session on every poll: when the session ends (sign
out, expiry, its token revoked) it sends ``event: ended`` and closes, and
the script goes to the sign-in page. A stream lasts at most
:data:`MAX_STREAM` seconds (the browser reconnects on its own, which
re-authenticates), and a process serves at most :data:`MAX_STREAMS` at once
(429 beyond), so open pages cannot pin every worker thread.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator
from dataclasses import dataclass

from fastapi import APIRouter, Request
from fastapi.responses import StreamingResponse
from starlette.concurrency import run_in_threadpool

from fleetward import audit, telemetry
from fleetward import tenancy as tenancy_face
from fleetward.errors import AuthenticationError, TooManyRequestsError
from fleetward.runtime.context import AppContext
from fleetward.web._viewer import Viewer, ViewerDep, context

__all__ = ["MAX_STREAM", "MAX_STREAMS", "PATH", "POLL", "router"]

PATH = "/console/events"
POLL = 2.0  # seconds between looks at the heads
MAX_STREAM = 300.0  # seconds a stream lasts before the browser reconnects
MAX_STREAMS = 64  # open streams per process
KEEPALIVE = 20.0  # seconds between comments that keep proxies from closing an idle stream

router = APIRouter(include_in_schema=False)
_open = 0
_lock = threading.Lock()


@dataclass
class _Cursor:
    audit: int
    events: int


def _heads(ctx: AppContext) -> _Cursor:
    with ctx.db.read() as session:
        return _Cursor(audit.head_seq(session), telemetry.head_event_id(session))


def _look(ctx: AppContext, who: Viewer, seen: _Cursor) -> tuple[bool, bool]:
    """``(session still live, the tenant changed since seen)``; moves ``seen``."""
    tenant = who.principal.tenant_id
    with ctx.db.read() as session:
        try:
            tenancy_face.session_principal(session, who.session)
        except AuthenticationError:
            return False, False
        head = audit.head_seq(session)
        newest = telemetry.head_event_id(session)
        changed = False
        if head > seen.audit:
            changed = audit.tenant_changed_since(session, tenant_id=tenant, after=seen.audit)
        if not changed and newest > seen.events:
            changed = telemetry.tenant_changed_since(session, tenant_id=tenant, after=seen.events)
    seen.audit, seen.events = head, newest
    return True, changed


async def _stream(ctx: AppContext, who: Viewer, request: Request) -> AsyncIterator[str]:
    global _open
    try:
        seen = await run_in_threadpool(_heads, ctx)
        yield "retry: 3000\n\n"
        loop = asyncio.get_running_loop()
        started = last_sent = loop.time()
        while loop.time() - started < MAX_STREAM:
            await asyncio.sleep(POLL)
            if await request.is_disconnected():
                return
            live, changed = await run_in_threadpool(_look, ctx, who, seen)
            if not live:
                yield "event: ended\ndata: sign in again\n\n"
                return
            if changed:
                yield f"event: change\ndata: {seen.audit}.{seen.events}\n\n"
                last_sent = loop.time()
            elif loop.time() - last_sent > KEEPALIVE:
                yield ": keepalive\n\n"
                last_sent = loop.time()
    finally:
        with _lock:
            _open -= 1


@router.get(PATH)
def stream(request: Request, who: ViewerDep) -> StreamingResponse:
    """The event stream of the viewer's tenant (see the module docstring)."""
    global _open
    with _lock:
        if _open >= MAX_STREAMS:
            raise TooManyRequestsError("too many open console event streams", retry_after=30)
        _open += 1
    return StreamingResponse(
        _stream(context(request), who, request),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"},
    )
