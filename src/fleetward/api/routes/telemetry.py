"""REST routes of the telemetry domain: post and query events."""

from __future__ import annotations

import datetime as dt
import json
from typing import Annotated, Any

from fastapi import APIRouter, Query
from pydantic import BaseModel, Field

from fleetward.api.deps import Allow, Ctx
from fleetward.telemetry import service
from fleetward.tenancy import scope
from fleetward.tenancy.roles import Principal

router = APIRouter(prefix="/api/v1/telemetry", tags=["telemetry"])


class EventIn(BaseModel):
    """One event about one of the tenant's devices."""

    device: str = Field(max_length=64)
    type: str = Field(max_length=48)
    at: dt.datetime | None = None
    fields: dict[str, Any] = Field(default_factory=dict)


class EventsIn(BaseModel):
    """A batch of events (all stored, or none)."""

    events: list[EventIn] = Field(max_length=service.MAX_EVENTS_PER_REQUEST)


class EventOut(BaseModel):
    """One stored event."""

    id: int
    device: str | None
    type: str
    at: dt.datetime
    count: int
    fields: dict[str, Any]


@router.post("/events", status_code=201)
def post_events(
    body: EventsIn, ctx: Ctx, who: Annotated[Principal, Allow(scope.TELEMETRY_POST)]
) -> dict[str, int]:
    """Store events for the tenant's devices."""
    with ctx.operator_work(who, action="telemetry.post", subject="events") as s:
        n = service.post_events(s, who, [e.model_dump() for e in body.events])
    return {"stored": n}


@router.get("/events", response_model=list[EventOut])
def query(
    ctx: Ctx,
    who: Annotated[Principal, Allow(scope.DEVICE_READ)],
    device: str | None = None,
    type: str | None = Query(default=None, max_length=48),
    since: dt.datetime | None = None,
    limit: int = Query(default=100, ge=1, le=1000),
) -> list[EventOut]:
    """The tenant's events, newest first (``type`` matches as a prefix)."""
    with ctx.db.read() as s:
        return [
            EventOut(
                id=e.id, device=d, type=e.type, at=e.at, count=e.count, fields=json.loads(e.fields)
            )
            for e, d in service.query(
                s, who, device_id=device, type_prefix=type, since=since, limit=limit
            )
        ]
