"""Alerts counted by severity, for the fleet's posture (one grouped query)."""

from __future__ import annotations

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from fleetward.detection.models import Alert
from fleetward.errors import InvalidInputError
from fleetward.tenancy import scope
from fleetward.tenancy.roles import Principal

__all__ = ["alert_counts"]

_STATES = ("open", "acknowledged", "resolved")


def alert_counts(session: Session, principal: Principal, *, state: str = "open") -> dict[str, int]:
    """How many of the tenant's alerts in ``state`` there are per severity.

    Raises:
        PermissionDeniedError / OutOfScopeError: the token may not read alerts.
        InvalidInputError: an unknown state.
    """
    scope.authorize(principal, scope.ALERT_READ)
    if state not in _STATES:
        raise InvalidInputError(f"alert state must be one of {', '.join(_STATES)}")
    return {
        str(severity): int(n)
        for severity, n in session.execute(
            select(Alert.severity, func.count())
            .where(Alert.tenant_id == principal.tenant_id, Alert.state == state)
            .group_by(Alert.severity)
        )
    }
