"""Console page: trust maps (``/console/trustmap``).

Each product's registered map (version, digest, who registered it), its
latest check against the live system (when it ran, the drifts with their
kind, subject, severity and the objects they name, the controls the check
confirmed), and, when the viewer's role allows ``trustmap.manage``, an
action to check it now (``POST /api/v1/trustmap/maps/{product}/checks``,
which also raises a ``trust-drift`` alert per drift). Reads go through the
trustmap face with the viewer's principal.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse
from sqlalchemy.orm import Session

from fleetward import trustmap
from fleetward.tenancy import scope
from fleetward.web._page import show
from fleetward.web._viewer import ViewerDep

__all__ = ["router"]

router = APIRouter(include_in_schema=False)

MAX_OBJECTS = 20  # objects named per drift on the page (the API lists them all)
SEVERITY_ORDER = {"critical": 0, "high": 1, "medium": 2, "low": 3, "info": 4}


def _drifts(check: trustmap.StoredCheck | None) -> list[dict[str, Any]]:
    """A check's drifts, most severe first, each naming at most MAX_OBJECTS objects."""
    if check is None:
        return []
    out = []
    for d in check.drifts:
        raw = d.get("objects")
        objects = [str(o) for o in raw] if isinstance(raw, list) else []
        out.append(
            {
                "kind": str(d.get("kind", "")),
                "severity": str(d.get("severity", "")),
                "subject": str(d.get("subject", "")),
                "message": str(d.get("message", "")),
                "control": d.get("control"),
                "objects": objects[:MAX_OBJECTS],
                "more": max(0, len(objects) - MAX_OBJECTS),
            }
        )
    return sorted(out, key=lambda d: (SEVERITY_ORDER.get(d["severity"], 9), d["kind"]))


@router.get("/console/trustmap")
def trust_maps(request: Request, who: ViewerDep) -> HTMLResponse:
    """Registered maps per product with their latest check's drifts."""

    def load(session: Session) -> dict[str, Any]:
        maps = trustmap.maps_overview(session, who.principal)
        return {
            "maps": [{"m": m, "drifts": _drifts(m.check)} for m in maps],
            "can_check": who.can(scope.TRUSTMAP_MANAGE),
        }

    return show(request, who, "trustmap.html", load)
