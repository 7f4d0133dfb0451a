"""One way every console page is answered: load, render, or show the refusal.

:func:`show` reads the page's data in one read-only database session through
the domain services (which apply the viewer's tenant and scope exactly as
they do for the API), then renders the template with the layout's values
(:func:`layout`). A domain error becomes an HTML error page with its status:
another tenant's device is a 404 page, an action outside the role a 403.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from fastapi import Request
from fastapi.responses import HTMLResponse
from sqlalchemy.orm import Session

from fleetward.errors import FleetwardError
from fleetward.web._render import error_page, render
from fleetward.web._viewer import Viewer, context

__all__ = ["NAV", "layout", "show"]

NAV: tuple[tuple[str, str], ...] = (
    ("/", "Posture"),
    ("/console/devices", "Devices"),
    ("/console/campaigns", "Campaigns"),
    ("/console/alerts", "Alerts"),
    ("/console/incidents", "Incidents"),
    ("/console/drills", "Drills"),
    ("/console/vulns", "Vulnerabilities"),
    ("/console/trustmap", "Trust maps"),
    ("/console/audit", "Audit"),
)
"""The navigation, in order (path, label)."""


def layout(request: Request, who: Viewer) -> dict[str, Any]:
    """What the layout template needs on every page."""
    path = request.url.path
    current = max(
        (href for href, _ in NAV if path == href or (href != "/" and path.startswith(href))),
        key=len,
        default="",
    )
    return {"viewer": who, "csrf": who.csrf, "nav": NAV, "current": current}


def show(
    request: Request,
    who: Viewer,
    template: str,
    load: Callable[[Session], Mapping[str, Any]],
) -> HTMLResponse:
    """Render ``template`` with what ``load`` reads (one read-only session),
    or the error page of the domain error it raised."""
    base = layout(request, who)
    try:
        with context(request).db.read() as session:
            values = load(session)
    except FleetwardError as exc:
        return error_page(request, exc, base)
    return render(request, template, {**base, **values})
