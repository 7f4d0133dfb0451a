"""Console page: vulnerabilities (``/console/vulns``).

Open findings per priority and how many are overdue; the findings, most
urgent first, a page at a time (``after``: the rank and id of the previous
page's last finding, as the API's cursor), filtered by priority, state and
overdue; and the CRA Article 14 cases with their deadlines (early warning
24 h, notification 72 h, final report 14 days after a fix), the next report
due and whether it is due soon or overdue. Reads go through the vulns face
with the viewer's principal; a bad filter is a 400 page.
"""

from __future__ import annotations

import datetime as dt
import json
import math
from typing import Any
from urllib.parse import urlencode

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse
from sqlalchemy.orm import Session

from fleetward import vulns
from fleetward.errors import InvalidInputError
from fleetward.tenancy import scope
from fleetward.web._page import show
from fleetward.web._params import query_choice, query_id
from fleetward.web._viewer import ViewerDep

__all__ = ["router"]

router = APIRouter(include_in_schema=False)

PAGE = 50  # findings per page
CASES = 50  # CRA cases shown (newest first)
PRIORITIES = ("P1", "P2", "P3", "P4")
STATES = ("open", "closed", "any")
DUE_SOON = dt.timedelta(hours=24)  # a CRA report due within this is flagged
MAX_CURSOR_CHARS = 60  # "<rank>,<id>": a float's repr and a 19-digit id
PRIORITY_COLOURS = {"P1": "#cf222e", "P2": "#bc4c00", "P3": "#9a6700", "P4": "#59636e"}


def _after(raw: str | None) -> tuple[float, int] | None:
    """The findings cursor: the previous page's last (rank, id).

    Raises:
        InvalidInputError: not a cursor this page gave out.
    """
    if raw is None or raw == "":
        return None
    rank, sep, last = raw.partition(",")
    if len(raw) > MAX_CURSOR_CHARS or not sep:
        raise InvalidInputError("after: not a cursor this page gave out")
    try:
        value = float(rank)
    except ValueError as exc:
        raise InvalidInputError("after: not a cursor this page gave out") from exc
    if not math.isfinite(value):
        raise InvalidInputError("after: not a cursor this page gave out")
    fid = query_id(last, "after")
    if fid is None:
        raise InvalidInputError("after: not a cursor this page gave out")
    return value, fid


def _case(v: Any, now: dt.datetime) -> dict[str, Any]:
    """A CRA case as the page shows it: deadlines and the next report's urgency."""
    nxt = v.next
    urgency = ""
    if nxt is not None and v.case.state == "open":
        urgency = "overdue" if nxt[1] < now else ("due soon" if nxt[1] - now < DUE_SOON else "")
    d = v.deadlines
    return {
        "id": v.case.id,
        "vulnerability": v.case.vulnerability,
        "trigger": v.case.trigger,
        "state": v.case.state,
        "aware_at": v.case.aware_at,
        "deadlines": [
            ("early-warning", "24 h", d.early_warning),
            ("notification", "72 h", d.notification),
            ("final", "14 days after a fix", d.final),
        ],
        "submitted": v.submitted,
        "next": nxt,
        "urgency": urgency,
        "findings": len(v.findings),
    }


@router.get("/console/vulns")
def vulnerabilities(request: Request, who: ViewerDep) -> HTMLResponse:
    """Open findings by priority, the findings table, and the CRA cases."""
    q = request.query_params

    def load(session: Session) -> dict[str, Any]:
        priority = query_choice(q.get("priority"), "priority", PRIORITIES)
        state = query_choice(q.get("state"), "state", STATES) or "open"
        overdue = query_choice(q.get("overdue"), "overdue", ("1",)) == "1"
        after = _after(q.get("after"))
        scope.authorize(who.principal, scope.VULN_READ)
        now = dt.datetime.now(dt.UTC)
        summary = vulns.counts(session, who.principal.tenant_id, now=now)
        rows = vulns.list_findings(
            session, who.principal, state=None if state == "any" else state, priority=priority,
            overdue=overdue, after=after, limit=PAGE + 1, now=now,
        )  # fmt: skip
        next_url = None
        if len(rows) > PAGE:
            rows = rows[:PAGE]
            last = rows[-1].finding
            params = {"after": f"{last.rank!r},{last.id}", "state": state}
            if priority:
                params["priority"] = priority
            if overdue:
                params["overdue"] = "1"
            next_url = "/console/vulns?" + urlencode(params)
        cases = [_case(v, now) for v in vulns.recent_cases(session, who.principal, limit=CASES)]
        per = summary["open"]
        return {
            "chart": [(p, per.get(p, 0), PRIORITY_COLOURS[p]) for p in PRIORITIES],
            "open_total": sum(per.values()),
            "overdue_total": summary["overdue"],
            "findings": rows,
            "reasons": {v.finding.id: json.loads(v.finding.reasons) for v in rows},
            "cases": cases,
            "priority": priority or "",
            "state": state,
            "overdue": overdue,
            "priorities": PRIORITIES,
            "states": STATES,
            "next_url": next_url,
        }

    return show(request, who, "vulns.html", load)
