"""The posture page (``/``): the fleet's trust state at a glance."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse
from sqlalchemy.orm import Session

from fleetward import detection
from fleetward.web._page import show
from fleetward.web._viewer import ViewerDep

__all__ = ["router"]

router = APIRouter(include_in_schema=False)


@router.get("/")
def posture(request: Request, who: ViewerDep) -> HTMLResponse:
    """The posture of the viewer's tenant."""

    def load(session: Session) -> dict[str, Any]:
        alerts = detection.list_alerts(session, who.principal, state="open", limit=100)
        return {"alerts": alerts}

    return show(request, who, "posture.html", load)
