"""REST routes of the detection domain: alerts and automatic responses."""

from __future__ import annotations

import datetime as dt
import json
from typing import Annotated, Any

from fastapi import APIRouter, Query
from pydantic import BaseModel

from fleetward.api.deps import Allow, Ctx
from fleetward.detection import service
from fleetward.detection.models import Alert
from fleetward.tenancy import scope
from fleetward.tenancy.roles import Principal

router = APIRouter(prefix="/api/v1/alerts", tags=["detection"])


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

    action: str


@router.get("", response_model=list[AlertOut])
def list_alerts(
    ctx: Ctx,
    who: Annotated[Principal, Allow(scope.ALERT_READ)],
    state: str | None = None,
    limit: int = Query(100, ge=1, le=1000),
) -> list[AlertOut]:
    """The tenant's alerts, newest first."""
    with ctx.db.read() as s:
        return [AlertOut.of(a) for a in service.list_alerts(s, who, state=state, limit=limit)]


@router.post("/{alert_id}/ack", response_model=AlertOut)
def ack(alert_id: int, ctx: Ctx, who: Annotated[Principal, Allow(scope.ALERT_TRIAGE)]) -> AlertOut:
    """Acknowledge an alert."""
    with ctx.operator_work(who, action="alert.acknowledged", subject=f"alert:{alert_id}") as s:
        return AlertOut.of(service.set_alert_state(s, who, alert_id, "acknowledged"))


@router.post("/{alert_id}/resolve", response_model=AlertOut)
def resolve(
    alert_id: int, ctx: Ctx, who: Annotated[Principal, Allow(scope.ALERT_TRIAGE)]
) -> AlertOut:
    """Resolve an alert (a new finding then raises a new one)."""
    with ctx.operator_work(who, action="alert.resolved", subject=f"alert:{alert_id}") as s:
        return AlertOut.of(service.set_alert_state(s, who, alert_id, "resolved"))


@router.put("/responses/{kind}")
def set_response(
    kind: str,
    body: ResponseIn,
    ctx: Ctx,
    who: Annotated[Principal, Allow(scope.ALERT_RESPONSE_SET)],
) -> dict[str, str]:
    """Configure the automatic response (none, quarantine-device, quarantine-cohort)."""
    with ctx.operator_work(who, action="detection.response.set", subject=f"alert-kind:{kind}") as s:
        service.set_response(s, who, kind, body.action)
    return {"kind": kind, "action": body.action}
