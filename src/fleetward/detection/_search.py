"""Alerts as the console lists them: filtered by state and severity, paged.

:func:`~fleetward.detection.service.list_alerts` (the API's list) filters by
state only; the console's triage view also narrows by severity. Both page
the same way: newest first, by id.
"""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.orm import Session

from fleetward.detection.models import Alert
from fleetward.errors import InvalidInputError
from fleetward.tenancy.roles import Permission, Principal, require

__all__ = ["ALERT_SEVERITIES", "ALERT_STATES", "search_alerts"]

ALERT_STATES = ("open", "acknowledged", "resolved")
ALERT_SEVERITIES = ("low", "medium", "high", "critical")
MAX_PAGE = 1001  # a caller's largest page (1,000) and the one row that says a next page exists


def search_alerts(
    session: Session,
    principal: Principal,
    *,
    state: str | None = None,
    severity: str | None = None,
    before: int | None = None,
    limit: int = 100,
) -> list[Alert]:
    """The tenant's alerts, newest first, optionally of one state and one severity.

    Args:
        state: ``open``, ``acknowledged`` or ``resolved`` (``None``: any).
        severity: ``low``, ``medium``, ``high`` or ``critical`` (``None``: any).
        before: the id of the last alert of the previous page.
        limit: rows at most (capped at :data:`MAX_PAGE`).

    Raises:
        PermissionDeniedError: the role may not read devices.
        InvalidInputError: an unknown state or severity.
    """
    require(principal, Permission.DEVICE_READ)
    if state is not None and state not in ALERT_STATES:
        raise InvalidInputError(f"alert state must be one of {', '.join(ALERT_STATES)}")
    if severity is not None and severity not in ALERT_SEVERITIES:
        raise InvalidInputError(f"alert severity must be one of {', '.join(ALERT_SEVERITIES)}")
    query = select(Alert).where(Alert.tenant_id == principal.tenant_id)
    if state is not None:
        query = query.where(Alert.state == state)
    if severity is not None:
        query = query.where(Alert.severity == severity)
    if before is not None:
        query = query.where(Alert.id < before)
    query = query.order_by(Alert.id.desc()).limit(max(1, min(limit, MAX_PAGE)))
    return list(session.execute(query).scalars())
