"""Console pages: alerts, incidents (with a playbook's dry run) and drills.

- ``/console/alerts``: the tenant's alerts, filtered by state and severity,
  with their evidence; acknowledge, resolve, or open an incident from one.
- ``/console/incidents`` and ``/console/incidents/{id}``: the list; one
  incident with its timeline, runs and stragglers; add a note, close it,
  approve or execute a run.
- **A run's dry run comes first.** The incident page's playbook form is a
  plain ``GET`` of the same page with the run's parameters: the page then
  shows the blast radius (:func:`fleetward.response.dry_run`, which writes
  nothing, exactly what ``POST /api/v1/incidents/{id}/blast-radius``
  answers), and only then a form that plans that run through the API,
  pinned to the playbook version shown and stating its effect. A refusal
  (empty cohort, size not confirmed) shows instead of the form. The page
  does not refresh itself while a dry run is shown, so what the operator
  confirms is what they read.
- ``/console/drills`` and ``/console/drills/{id}``: drill reports and their
  timings (time to detect, to contain, stragglers).

Every read passes the viewer's principal to the response and detection
faces, so another tenant's incident or drill is a 404 page; a filter or id
that does not parse is a 400 page, never a 500. Actions are offered only
when :meth:`Viewer.can` allows them; the API refuses forged ones.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlencode

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse
from sqlalchemy.orm import Session

from fleetward import detection, response
from fleetward.errors import InvalidInputError
from fleetward.tenancy import ENVIRONMENTS, scope
from fleetward.web._page import show
from fleetward.web._viewer import Viewer, ViewerDep

__all__ = ["router"]

router = APIRouter(include_in_schema=False)

PAGE = 50  # rows per page of every list here
MAX_ID = 2**53 - 1  # ids and cursors above this are refused (the API's MAX_REQUEST_INT)
MAX_PARAM_CHARS = 200  # a filter or name in a query string
MAX_RUN_PARAMS_CHARS = 4096  # a run's parameters (JSON) in a dry run's query string
MAX_STRAGGLERS_SHOWN = 200  # stragglers listed on an incident page (the count is exact)
INCIDENT_STATES = ("open", "contained", "closed")
# A drill report's timings, in the order a drill measures them (seconds):
# report key, what it measures, and a short label for the chart.
DRILL_TIMINGS = (
    ("detect_s", "time to detect", "detect"),
    ("execute_s", "run executed", "executed"),
    ("contain_s", "time to contain", "contained"),
    ("contain_from_fault_s", "contained, from the fault", "from fault"),
    ("latency_p50_s", "containment latency p50", "p50"),
    ("latency_p99_s", "containment latency p99", "p99"),
    ("stragglers_s", "stragglers complied", "stragglers"),
    ("server_contained_s", "server saw it contained", "server agrees"),
    ("ca_migrated_s", "no device on the old CA", "CA migrated"),
    ("ca_untrusted_s", "old CA trusted nowhere", "CA untrusted"),
)


# --------------------------------------------------------------------------- query parameters


def _text(request: Request, name: str, *, limit: int = MAX_PARAM_CHARS) -> str | None:
    """A query parameter as text (``None`` when absent or empty)."""
    value = request.query_params.get(name)
    if value is None or value == "":
        return None
    if len(value) > limit or not value.isprintable():
        raise InvalidInputError(f"{name} must be printable text of at most {limit} characters")
    return value


def _choice(request: Request, name: str, options: tuple[str, ...]) -> str | None:
    value = _text(request, name)
    if value is not None and value not in options:
        raise InvalidInputError(f"{name} must be one of {', '.join(options)}")
    return value


def _number(value: str | None, name: str, *, low: int = 1) -> int | None:
    """An integer from ``low`` to :data:`MAX_ID`, from a query string or a path."""
    if value is None or value == "":
        return None
    if not value.isascii() or not value.isdigit() or len(value) > 16 or int(value) < low:
        raise InvalidInputError(f"{name} must be a whole number from {low} to {MAX_ID}")
    number = int(value)
    if number > MAX_ID:
        raise InvalidInputError(f"{name} must be a whole number from {low} to {MAX_ID}")
    return number


def _id(value: str, name: str) -> int:
    number = _number(value, name)
    if number is None:
        raise InvalidInputError(f"{name} is missing")
    return number


def _next(request: Request, rows: list[Any], key: str, filters: Mapping[str, str | None]) -> str:
    """The next page's URL (same filters) when ``rows`` had one row too many."""
    if len(rows) <= PAGE:
        return ""
    query = {k: v for k, v in filters.items() if v is not None}
    query["before"] = str(getattr(rows[PAGE - 1], key))
    return f"{request.url.path}?{urlencode(query)}"


def _json(text: str) -> Any:
    try:
        return json.loads(text or "{}")
    except ValueError:  # never written by fleetward; show it as it is
        return {"unreadable": text[:500]}


def _pretty(value: Any) -> str:
    return json.dumps(value, indent=2, sort_keys=True, default=str)


# --------------------------------------------------------------------------- alerts


@router.get("/console/alerts")
def alerts(request: Request, who: ViewerDep) -> HTMLResponse:
    """The tenant's alerts, newest first, with their evidence."""

    def load(session: Session) -> dict[str, Any]:
        scope.authorize(who.principal, scope.ALERT_READ)
        state = _choice(request, "state", detection.ALERT_STATES)
        severity = _choice(request, "severity", detection.ALERT_SEVERITIES)
        before = _number(request.query_params.get("before"), "before")
        rows = detection.search_alerts(
            session, who.principal, state=state, severity=severity, before=before, limit=PAGE + 1
        )
        shown = [{"alert": a, "evidence": _pretty(_json(a.evidence))} for a in rows[:PAGE]]
        return {
            "rows": shown,
            "state": state or "",
            "severity": severity or "",
            "states": detection.ALERT_STATES,
            "severities": detection.ALERT_SEVERITIES,
            "next_url": _next(request, rows, "id", {"state": state, "severity": severity}),
            "can_triage": who.can(scope.ALERT_TRIAGE),
            "can_open": who.can(scope.INCIDENT_MANAGE),
        }

    return show(request, who, "alerts.html", load)


# --------------------------------------------------------------------------- incidents


@router.get("/console/incidents")
def incidents(request: Request, who: ViewerDep) -> HTMLResponse:
    """The tenant's incidents, newest first."""

    def load(session: Session) -> dict[str, Any]:
        scope.authorize(who.principal, scope.INCIDENT_READ)
        state = _choice(request, "state", INCIDENT_STATES)
        before = _number(request.query_params.get("before"), "before")
        rows = response.list_incidents(
            session, who.principal, state=state, before=before, limit=PAGE + 1
        )
        return {
            "rows": rows[:PAGE],
            "state": state or "",
            "states": INCIDENT_STATES,
            "severities": response.SEVERITIES,
            "next_url": _next(request, rows, "id", {"state": state}),
            "can_open": who.can(scope.INCIDENT_MANAGE),
        }

    return show(request, who, "incidents.html", load)


def _run_view(run: response.PlaybookRun, who: Viewer) -> dict[str, Any]:
    radius = _json(run.blast_radius)
    radius.pop("device_pks", None)  # up to 100,000 keys: never on a page
    radius.pop("online_pks", None)
    approvals = _json(run.approvals)
    approvals = [str(a) for a in approvals] if isinstance(approvals, list) else []
    return {
        "run": run,
        "playbook": f"{radius.get('playbook', '?')} v{radius.get('version', '?')}",
        "steps": ", ".join(str(s.get("action", "?")) for s in radius.get("steps", [])),
        "approvals": approvals,
        "radius": _pretty(radius),
        "may_approve": (
            run.state == "awaiting-approval"
            and who.principal.role == "security"
            and who.principal.actor != run.requested_by
            and who.principal.actor not in approvals
            and who.can(scope.RUN_MANAGE)
        ),
        "may_execute": run.state == "ready" and who.can(scope.RUN_MANAGE),
    }


def _default_environment(incident: response.Incident) -> str:
    """Where a run acts unless the operator picks: a drill's runs never leave the drill."""
    return "drill" if incident.drill else "production"


def _dry_run_request(request: Request, incident: response.Incident) -> dict[str, Any] | None:
    """The run the page's dry-run form asked about, validated (``None``: none asked)."""
    playbook = _text(request, "playbook", limit=64)
    if playbook is None:
        return None
    environment = _choice(request, "environment", ENVIRONMENTS) or _default_environment(incident)
    raw = _text(request, "params", limit=MAX_RUN_PARAMS_CHARS) or "{}"
    try:
        params = json.loads(raw)
    except ValueError as exc:
        raise InvalidInputError('params must be a JSON object, e.g. {"batch": 21}') from exc
    if not isinstance(params, dict):
        raise InvalidInputError('params must be a JSON object, e.g. {"batch": 21}')
    return {
        "playbook": playbook,
        "version": _number(request.query_params.get("version"), "version"),
        "environment": environment,
        "params": params,
        "params_json": json.dumps(params, sort_keys=True),
        "confirm": _number(request.query_params.get("confirm"), "confirm", low=0),
    }


def _effect(incident_id: int, radius: dict[str, Any]) -> str:
    """What planning the run does, in the words of the confirmation dialog."""
    steps = ", ".join(str(s.get("action", "?")) for s in radius["steps"])
    wait = (
        f" It then waits for {radius['approvals_needed']} security approval(s);"
        if radius["approvals_needed"]
        else " It needs no approval;"
    )
    return (
        f"Plan a run of {radius['playbook']} v{radius['version']} in incident {incident_id}: "
        f"its cohort is fixed now at {radius['devices']} device(s) ({radius['online']} online) "
        f"in {radius['environment']}, and its steps ({steps}) will act on them.{wait} "
        "nothing touches a device until the run is executed."
    )


@router.get("/console/incidents/{incident_id}")
def incident(request: Request, incident_id: str, who: ViewerDep) -> HTMLResponse:
    """One incident: facts, timeline, runs, stragglers, actions and a dry run."""

    def load(session: Session) -> dict[str, Any]:
        scope.authorize(who.principal, scope.INCIDENT_READ)
        number = _id(incident_id, "incident id")
        row = response.get_incident(session, who.principal, number)
        asked = _dry_run_request(request, row)
        can_run = who.can(scope.RUN_MANAGE) and row.state != "closed"
        radius = None
        if asked is not None:
            scope.authorize(who.principal, scope.RUN_MANAGE)
            radius = response.dry_run(
                session, who.principal, incident_id=number, playbook=asked["playbook"],
                version=asked["version"], params=asked["params"],
                environment=asked["environment"], confirm=asked["confirm"],
            ).as_dict()  # fmt: skip
        stragglers = response.stragglers(session, who.principal, number)
        return {
            "incident": row,
            "events": response.timeline(session, who.principal, number),
            "runs": [_run_view(r, who) for r in response.list_runs(session, who.principal, number)],
            "stragglers": stragglers[:MAX_STRAGGLERS_SHOWN],
            "straggler_count": len(stragglers),
            "playbooks": response.playbook_summaries(session, who.principal) if can_run else [],
            "environments": ("drill",) if row.drill else ENVIRONMENTS,
            "env_selected": asked["environment"] if asked else _default_environment(row),
            "asked": asked,
            "radius": radius,
            "effect": _effect(number, radius) if radius else "",
            "can_manage": who.can(scope.INCIDENT_MANAGE) and row.state != "closed",
            "can_run": can_run,
            "can_audit": who.can(scope.AUDIT_READ),
            # A dry run on screen stays as the operator read it until they act.
            "live_updates": radius is None,
        }

    return show(request, who, "incident.html", load)


# --------------------------------------------------------------------------- drills


@router.get("/console/drills")
def drills(request: Request, who: ViewerDep) -> HTMLResponse:
    """The tenant's drills, newest first, with their headline timings."""

    def load(session: Session) -> dict[str, Any]:
        scope.authorize(who.principal, scope.INCIDENT_READ)
        before = _number(request.query_params.get("before"), "before")
        rows = response.list_drills(session, who.principal, before=before, limit=PAGE + 1)
        return {"rows": rows[:PAGE], "next_url": _next(request, rows, "id", {})}

    return show(request, who, "drills.html", load)


def _timings(report: Mapping[str, Any]) -> list[tuple[str, float, str]]:
    """The report's timings that were measured, as (what, seconds, chart label)."""
    out = []
    for key, label, short in DRILL_TIMINGS:
        value = report.get(key)
        if isinstance(value, int | float) and not isinstance(value, bool):
            out.append((label, float(value), short))
    return out


@router.get("/console/drills/{drill_id}")
def drill(request: Request, drill_id: str, who: ViewerDep) -> HTMLResponse:
    """One drill's report: its timings, stragglers and what else it saw."""

    def load(session: Session) -> dict[str, Any]:
        scope.authorize(who.principal, scope.INCIDENT_READ)
        row = response.get_drill(session, who.principal, _id(drill_id, "drill id"))
        report = _json(row.report)
        if not isinstance(report, dict):
            report = {"unreadable": str(report)[:500]}
        lists = {
            k: [str(d) for d in report.get(k) or []][:50]
            for k in ("stragglers", "bystanders_touched")
            if isinstance(report.get(k) or [], list)
        }
        timings = _timings(report)
        return {
            "drill": row,
            "report": report,
            "timings": timings,
            "chart": [(short, seconds) for _, seconds, short in timings],
            "lists": lists,
            "report_json": _pretty(report),
        }

    return show(request, who, "drill.html", load)
