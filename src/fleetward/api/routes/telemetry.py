"""REST routes of the telemetry domain: post and query events."""

from __future__ import annotations

import datetime as dt
import json
from typing import Annotated, Any, Self

from fastapi import APIRouter, Query
from pydantic import BaseModel, Field

from fleetward.api import problems
from fleetward.api.deps import Allow, Ctx
from fleetward.api.pagination import Cursor, Limit, Page, decode, page
from fleetward.telemetry import service
from fleetward.tenancy import scope
from fleetward.tenancy.roles import Principal

router = APIRouter(prefix="/api/v1/telemetry", tags=["telemetry"], responses=problems.OPERATOR)


class EventIn(BaseModel):
    """One event about one of the tenant's devices."""

    device: str = Field(max_length=64)
    type: str = Field(max_length=48)
    at: dt.datetime | None = None
    fields: dict[str, Any] = Field(default_factory=dict)


class EventsIn(BaseModel):
    """A batch of events (all stored, or none)."""

    events: list[EventIn] = Field(max_length=service.MAX_EVENTS_PER_REQUEST)


class TelemetryEventOut(BaseModel):
    """One stored event."""

    id: int
    device: str | None
    type: str
    at: dt.datetime
    count: int
    fields: dict[str, Any]

    @classmethod
    def of(cls, row: tuple[Any, str | None]) -> Self:
        """From an event row and its device id."""
        event, device = row
        return cls(
            id=event.id,
            device=device,
            type=event.type,
            at=event.at,
            count=event.count,
            fields=json.loads(event.fields),
        )


class StoredOut(BaseModel):
    """How many events were stored."""

    stored: int


@router.post("/events", status_code=201, response_model=StoredOut)
def post_events(
    body: EventsIn, ctx: Ctx, who: Annotated[Principal, Allow(scope.TELEMETRY_POST)]
) -> StoredOut:
    """Store events for the tenant's devices."""
    with ctx.operator_work(who, action="telemetry.post", subject="events") as s:
        n = service.post_events(s, who, [e.model_dump() for e in body.events])
    return StoredOut(stored=n)


@router.get("/events", response_model=Page[TelemetryEventOut])
def query(
    ctx: Ctx,
    who: Annotated[Principal, Allow(scope.DEVICE_READ)],
    device: Annotated[str | None, Query(max_length=64)] = None,
    type: Annotated[str | None, Query(max_length=48)] = None,
    since: dt.datetime | None = None,
    cursor: Cursor = None,
    limit: Limit = 100,
) -> Page[TelemetryEventOut]:
    """The tenant's events, newest first (``type`` matches as a prefix)."""
    before = decode(cursor, int)
    with ctx.db.read() as s:
        rows = service.query(
            s,
            who,
            device_id=device,
            type_prefix=type,
            since=since,
            before=int(before[0]) if before else None,
            limit=limit + 1,
        )
        return page(
            rows,
            limit=limit,
            key=lambda row: (row[0].id,),
            shape=TelemetryEventOut.of,
        )
