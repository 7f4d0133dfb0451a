"""REST routes of the detection domain: alerts and automatic responses."""

from __future__ import annotations

import datetime as dt
import json
from typing import Annotated, Any, Literal

from fastapi import APIRouter
from pydantic import BaseModel

from fleetward.api import problems
from fleetward.api.deps import Allow, Ctx
from fleetward.api.pagination import Cursor, Limit, Page, decode, page
from fleetward.api.params import DbId
from fleetward.detection import Alert, service
from fleetward.tenancy import scope
from fleetward.tenancy.roles import Principal

router = APIRouter(prefix="/api/v1/alerts", tags=["detection"], responses=problems.OPERATOR)

AlertState = Literal["open", "acknowledged", "resolved"]


class AlertOut(BaseModel):
    """An alert with its evidence."""

    id: int
    kind: str
    key: str
    severity: str
    state: str
    subject: str
    summary: str
    evidence: dict[str, Any]
    count: int
    response: str
    first_seen: dt.datetime
    last_seen: dt.datetime

    @classmethod
    def of(cls, a: Alert) -> AlertOut:
        """From the ORM row."""
        return cls(
            id=a.id,
            kind=a.kind,
            key=a.key,
            severity=a.severity,
            state=a.state,
            subject=a.subject,
            summary=a.summary,
            evidence=json.loads(a.evidence),
            count=a.count,
            response=a.response,
            first_seen=a.first_seen,
            last_seen=a.last_seen,
        )


class ResponseIn(BaseModel):
    """The automatic response to a kind of alert."""

    action: Literal["none", "quarantine-device", "quarantine-cohort"]


class ResponseOut(BaseModel):
    """The automatic response now configured for a kind of alert."""

    kind: str
    action: str


class AlertStateIn(BaseModel):
    """Triage: acknowledge an alert, or resolve it (a new finding then raises a new one)."""

    state: Literal["acknowledged", "resolved"]


@router.get("", response_model=Page[AlertOut])
def list_alerts(
    ctx: Ctx,
    who: Annotated[Principal, Allow(scope.ALERT_READ)],
    state: AlertState | None = None,
    cursor: Cursor = None,
    limit: Limit = 100,
) -> Page[AlertOut]:
    """The tenant's alerts, newest first."""
    before = decode(cursor, int)
    with ctx.db.read() as s:
        rows = service.list_alerts(
            s, who, state=state, before=int(before[0]) if before else None, limit=limit + 1
        )
        return page(rows, limit=limit, key=lambda a: (a.id,), shape=AlertOut.of)


@router.post("/{alert_id}/state", response_model=AlertOut)
def set_state(
    alert_id: DbId,
    body: AlertStateIn,
    ctx: Ctx,
    who: Annotated[Principal, Allow(scope.ALERT_TRIAGE)],
) -> AlertOut:
    """Acknowledge or resolve an alert."""
    with ctx.operator_work(who, action=f"alert.{body.state}", subject=f"alert:{alert_id}") as s:
        return AlertOut.of(service.set_alert_state(s, who, alert_id, body.state))


@router.put("/responses/{kind}", response_model=ResponseOut)
def set_response(
    kind: str,
    body: ResponseIn,
    ctx: Ctx,
    who: Annotated[Principal, Allow(scope.ALERT_RESPONSE_SET)],
) -> ResponseOut:
    """Configure the automatic response (none, quarantine-device, quarantine-cohort)."""
    with ctx.operator_work(who, action="detection.response.set", subject=f"alert-kind:{kind}") as s:
        service.set_response(s, who, kind, body.action)
    return ResponseOut(kind=kind, action=body.action)
