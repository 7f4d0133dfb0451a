"""Alerts as the response domain takes them: found, acknowledged, waited for.

An incident may be opened from an alert, and a drill waits for the alert
its injected fault raises; both go through these functions, never the
alerts table.
"""

from __future__ import annotations

from collections.abc import Collection

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from fleetward.detection.models import Alert
from fleetward.errors import NotFoundError

__all__ = ["first_alert_after", "get_alert", "last_alert_id", "mark_acknowledged"]


def get_alert(session: Session, *, tenant_id: int, alert_id: int) -> Alert:
    """One of the tenant's alerts.

    Raises:
        NotFoundError: no such alert, or another tenant's.
    """
    alert = session.get(Alert, alert_id)
    if alert is None or alert.tenant_id != tenant_id:
        raise NotFoundError(f"alert {alert_id} not found")
    return alert


def mark_acknowledged(alert: Alert) -> None:
    """An open alert an incident took over is acknowledged (the incident's
    opening is the audit entry that says so)."""
    if alert.state == "open":
        alert.state = "acknowledged"


def last_alert_id(session: Session, *, tenant_id: int) -> int:
    """The id of the tenant's newest alert (0 for none)."""
    return int(
        session.execute(
            select(func.coalesce(func.max(Alert.id), 0)).where(Alert.tenant_id == tenant_id)
        ).scalar_one()
    )


def first_alert_after(
    session: Session, *, tenant_id: int, after: int, keys: Collection[str]
) -> int | None:
    """The id of the tenant's first alert after alert ``after`` with one of ``keys``."""
    found = session.execute(
        select(func.min(Alert.id)).where(
            Alert.tenant_id == tenant_id, Alert.id > after, Alert.key.in_(sorted(keys))
        )
    ).scalar()
    return int(found) if found is not None else None
