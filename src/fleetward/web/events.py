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
(429 beyond), and one session at most :data:`MAX_STREAMS_PER_SESSION`, so
one browser cannot take the others' share. A slot is held by the stream's
generator and given back when it is collected, however the stream ended
(finished, failed, or never started).

**Nothing missed across a reconnect.** Every message carries the heads it
saw as its ``id`` (``<audit seq>.<event id>``; an id-only message on quiet
polls), so the browser's reconnect sends them back as ``Last-Event-ID`` and
the new stream starts from there: a change in the gap is sent at once (a
cursor more than :data:`MAX_GAP` behind counts as a change, so the catch-up
read stays bounded).

**Shutdown.** An open page keeps its stream open, and uvicorn's graceful
shutdown waits for open responses: :func:`close_streams` (called when the
servers are told to stop, ``fleetward.api.serve``) ends every stream of the
app at its next poll.
"""

from __future__ import annotations

import asyncio
import hashlib
import re
import threading
import weakref
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import StreamingResponse
from starlette.concurrency import run_in_threadpool

from fleetward import audit, telemetry
from fleetward import tenancy as tenancy_face
from fleetward.errors import AuthenticationError, TooManyRequestsError
from fleetward.runtime.context import AppContext
from fleetward.web._viewer import Viewer, ViewerDep, context

__all__ = [
    "MAX_GAP",
    "MAX_STREAM",
    "MAX_STREAMS",
    "MAX_STREAMS_PER_SESSION",
    "PATH",
    "POLL",
    "close_streams",
    "open_streams",
    "router",
]

PATH = "/console/events"
POLL = 2.0  # seconds between looks at the heads
MAX_STREAM = 120.0  # seconds a stream lasts before the browser reconnects
MAX_GAP = 100_000  # audit entries or events behind the heads a resumed cursor may be
MAX_STREAMS = 64  # open streams per process
MAX_STREAMS_PER_SESSION = 8  # open streams of one console session (tabs of one browser)
KEEPALIVE = 20.0  # seconds between comments that keep proxies from closing an idle stream

router = APIRouter(include_in_schema=False)
_CURSOR = re.compile(r"[0-9]{1,19}\.[0-9]{1,19}")  # ASCII digits only: int() takes others too
# The open streams and whose they are: an entry leaves when its generator is
# collected, so a stream that never started (or failed) cannot keep a slot.
_streams: weakref.WeakKeyDictionary[AsyncIterator[str], str] = weakref.WeakKeyDictionary()
_lock = threading.Lock()


@dataclass
class _Cursor:
    audit: int
    events: int

    @property
    def id(self) -> str:
        return f"{self.audit}.{self.events}"


def open_streams() -> int:
    """How many event streams this process holds open."""
    with _lock:
        return len(_streams)


def close_streams(app: Any) -> None:
    """End every console event stream of ``app`` at its next poll."""
    _closing(app).set()


def _closing(app: Any) -> threading.Event:
    event: threading.Event | None = getattr(app.state, "console_closing", None)
    if event is None:
        event = app.state.console_closing = threading.Event()
    return event


def _resumed(last_event_id: str | None) -> _Cursor | None:
    """The cursor a reconnecting browser sent back, if it is one of ours."""
    if not last_event_id or not _CURSOR.fullmatch(last_event_id):
        return None
    first, _, second = last_event_id.partition(".")
    return _Cursor(int(first), int(second))


def _heads(ctx: AppContext, resumed: _Cursor | None) -> tuple[_Cursor, bool]:
    """Where the stream starts, and whether the tenant must be told of a
    change at once (its resumed cursor is too far behind to catch up)."""
    with ctx.db.read() as session:
        now = _Cursor(audit.head_seq(session), telemetry.head_event_id(session))
    if resumed is None or resumed.audit > now.audit or resumed.events > now.events:
        return now, False
    if now.audit - resumed.audit > MAX_GAP or now.events - resumed.events > MAX_GAP:
        return now, True
    return resumed, False


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


async def _stream(
    ctx: AppContext, who: Viewer, request: Request, resumed: _Cursor | None
) -> AsyncIterator[str]:
    closing = _closing(request.app)
    seen, behind = await run_in_threadpool(_heads, ctx, resumed)
    yield "retry: 3000\n\n"
    if behind:
        yield f"id: {seen.id}\nevent: change\ndata: {seen.id}\n\n"
    loop = asyncio.get_running_loop()
    started = last_sent = loop.time()
    while loop.time() - started < MAX_STREAM and not closing.is_set():
        await asyncio.sleep(POLL)
        if closing.is_set() or await request.is_disconnected():
            return
        live, changed = await run_in_threadpool(_look, ctx, who, seen)
        if not live:
            yield "event: ended\ndata: sign in again\n\n"
            return
        if changed:
            yield f"id: {seen.id}\nevent: change\ndata: {seen.id}\n\n"
            last_sent = loop.time()
        elif loop.time() - last_sent > KEEPALIVE:
            yield f"id: {seen.id}\n\n"  # moves the browser's Last-Event-ID, dispatches nothing
            last_sent = loop.time()


@router.get(PATH)
def stream(request: Request, who: ViewerDep) -> StreamingResponse:
    """The event stream of the viewer's tenant (see the module docstring)."""
    resumed = _resumed(request.headers.get("last-event-id"))
    owner = hashlib.sha256(who.session.encode()).hexdigest()
    with _lock:
        owners = list(_streams.values())
        if len(owners) >= MAX_STREAMS:
            raise TooManyRequestsError("too many open console event streams", retry_after=30)
        if owners.count(owner) >= MAX_STREAMS_PER_SESSION:
            raise TooManyRequestsError(
                "this console session has too many open event streams: close some pages",
                retry_after=30,
            )
        stream = _stream(context(request), who, request, resumed)
        _streams[stream] = owner
    return StreamingResponse(
        stream,
        media_type="text/event-stream",
        headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"},
    )
