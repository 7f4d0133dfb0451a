"""REST routes of the response domain: playbooks, incidents, runs and drills."""

from __future__ import annotations

import datetime as dt
import json
from typing import Annotated, Any, Literal

from fastapi import APIRouter
from pydantic import BaseModel, Field
from sqlalchemy.orm import Session

from fleetward.api import problems
from fleetward.api.deps import Allow, Ctx
from fleetward.api.pagination import Cursor, Limit, Page, decode, page, page_of
from fleetward.api.params import Counter, DbId, Version
from fleetward.response import (
    Drill,
    Incident,
    IncidentEvent,
    Playbook,
    PlaybookRun,
    compliance,
    drills,
    runs,
    service,
)
from fleetward.response.effects import LiveEffects
from fleetward.tenancy import scope
from fleetward.tenancy.roles import Principal

router = APIRouter(prefix="/api/v1", tags=["response"], responses=problems.OPERATOR)

IncidentState = Literal["open", "contained", "closed"]


class PlaybookIn(BaseModel):
    """A playbook's text (YAML or JSON)."""

    source: str = Field(max_length=64 * 1024)


class PlaybookOut(BaseModel):
    """One version of a playbook."""

    name: str
    version: int
    source: str
    created_by: str
    created_at: dt.datetime

    @classmethod
    def of(cls, p: Playbook) -> PlaybookOut:
        """From the ORM row."""
        return cls(
            name=p.name, version=p.version, source=p.source,
            created_by=p.created_by, created_at=p.created_at,
        )  # fmt: skip


class IncidentIn(BaseModel):
    """Open an incident by hand, or from an alert."""

    title: str | None = Field(default=None, max_length=200)
    severity: str | None = None
    alert_id: DbId | None = None
    drill: bool = False


class TimelineEventOut(BaseModel):
    """One line of a timeline (``audit_seq`` is the audit entry it made)."""

    at: dt.datetime
    actor: str
    kind: str
    summary: str
    details: dict[str, Any]
    audit_seq: int | None

    @classmethod
    def of(cls, e: IncidentEvent) -> TimelineEventOut:
        """From the ORM row."""
        return cls(
            at=e.at, actor=e.actor, kind=e.kind, summary=e.summary,
            details=json.loads(e.details), audit_seq=e.audit_seq,
        )  # fmt: skip


class RunOut(BaseModel):
    """A playbook run."""

    id: int
    incident_id: int
    playbook_id: int
    environment: str | None
    state: str
    requested_by: str
    approvals_needed: int
    approvals: list[str]
    cohort_size: int
    step: int
    outcome: str
    blast_radius: dict[str, Any]

    @classmethod
    def of(cls, r: PlaybookRun) -> RunOut:
        """From the ORM row (device keys left out of the blast radius)."""
        radius = json.loads(r.blast_radius)
        radius.pop("device_pks", None)
        radius.pop("online_pks", None)
        return cls(
            id=r.id, incident_id=r.incident_id, playbook_id=r.playbook_id,
            environment=r.environment, state=r.state, requested_by=r.requested_by,
            approvals_needed=r.approvals_needed, approvals=json.loads(r.approvals),
            cohort_size=r.cohort_size, step=r.step, outcome=r.outcome, blast_radius=radius,
        )  # fmt: skip


class IncidentOut(BaseModel):
    """An incident (with its timeline, runs and stragglers when asked for one)."""

    id: int
    title: str
    severity: str
    state: str
    alert_id: int | None
    drill: bool
    opened_by: str
    detected_at: dt.datetime
    opened_at: dt.datetime
    contained_at: dt.datetime | None
    closed_at: dt.datetime | None
    timeline: list[TimelineEventOut] = []
    runs: list[RunOut] = []
    stragglers: list[dict[str, Any]] = []

    @classmethod
    def of(cls, i: Incident) -> IncidentOut:
        """From the ORM row."""
        return cls(
            id=i.id, title=i.title, severity=i.severity, state=i.state, alert_id=i.alert_id,
            drill=i.drill, opened_by=i.opened_by, detected_at=i.detected_at,
            opened_at=i.opened_at, contained_at=i.contained_at, closed_at=i.closed_at,
        )  # fmt: skip


class RunIn(BaseModel):
    """Which playbook, with what parameters, where, and the size confirmed."""

    playbook: str
    version: Version | None = None
    params: dict[str, Any] = {}
    environment: str = "production"
    confirm: Counter | None = None


class NoteIn(BaseModel):
    """An operator's note."""

    text: str = Field(max_length=4000)


class IncidentStateIn(BaseModel):
    """Close an incident (``force`` leaves devices that have not complied behind)."""

    state: Literal["closed"]
    force: bool = False


class InstalledOut(BaseModel):
    """The playbooks an install added (none when the tenant had them all)."""

    installed: list[PlaybookOut]


class BlastRadiusOut(BaseModel):
    """What a run would touch, before anything happens."""

    playbook: str
    version: int
    environment: str
    cohort: str
    devices: int
    online: int
    offline: int
    population: int
    states: dict[str, int] = Field(description="devices of the cohort per lifecycle state")
    certificates: int
    sample_devices: list[str]
    sample_certificates: list[str]
    steps: list[dict[str, Any]]
    approvals_needed: int
    refusal: str | None = Field(description="why the run would be refused (null: it would not)")


class DrillOut(BaseModel):
    """A drill and its report."""

    id: int
    playbook: str
    playbook_version: int
    scenario: str
    incident_id: int | None
    state: str
    devices: int
    affected: int
    detect_s: float | None
    contain_s: float | None
    stragglers: int
    report: dict[str, Any]
    started_by: str
    started_at: dt.datetime
    finished_at: dt.datetime | None

    @classmethod
    def of(cls, d: Drill) -> DrillOut:
        """From the ORM row."""
        return cls(
            id=d.id, playbook=d.playbook, playbook_version=d.playbook_version,
            scenario=d.scenario, incident_id=d.incident_id, state=d.state, devices=d.devices,
            affected=d.affected, detect_s=d.detect_s, contain_s=d.contain_s,
            stragglers=d.stragglers, report=json.loads(d.report), started_by=d.started_by,
            started_at=d.started_at, finished_at=d.finished_at,
        )  # fmt: skip


# --------------------------------------------------------------------------- playbooks


@router.get("/playbooks", response_model=Page[PlaybookOut])
def list_playbooks(
    ctx: Ctx,
    who: Annotated[Principal, Allow(scope.INCIDENT_READ)],
    cursor: Cursor = None,
    limit: Limit = 100,
) -> Page[PlaybookOut]:
    """The newest version of each playbook, by name."""
    with ctx.db.read() as s:
        return page_of(
            service.list_playbooks(s, who),
            cursor=cursor,
            limit=limit,
            key=lambda p: (p.name,),
            kinds=(str,),
            shape=PlaybookOut.of,
        )


@router.get("/playbooks/{name}", response_model=PlaybookOut)
def get_playbook(
    name: str,
    ctx: Ctx,
    who: Annotated[Principal, Allow(scope.INCIDENT_READ)],
    version: Version | None = None,
) -> PlaybookOut:
    """A playbook (newest, or ``?version=``)."""
    with ctx.db.read() as s:
        return PlaybookOut.of(service.get_playbook(s, who, name, version))


@router.put("/playbooks", response_model=PlaybookOut, status_code=201)
def put_playbook(
    body: PlaybookIn, ctx: Ctx, who: Annotated[Principal, Allow(scope.PLAYBOOK_MANAGE)]
) -> PlaybookOut:
    """Store a new version of a playbook."""
    with ctx.operator_work(who, action="playbook.put", subject="playbook") as s:
        return PlaybookOut.of(service.put_playbook(s, who, body.source))


@router.post("/playbooks/standard", response_model=InstalledOut, status_code=201)
def install_standard(
    ctx: Ctx, who: Annotated[Principal, Allow(scope.PLAYBOOK_MANAGE)]
) -> InstalledOut:
    """Install the shipped playbooks the tenant does not have."""
    with ctx.operator_work(who, action="playbook.put", subject="playbook:standard") as s:
        return InstalledOut(installed=[PlaybookOut.of(p) for p in service.install_standard(s, who)])


# --------------------------------------------------------------------------- incidents


@router.post("/incidents", response_model=IncidentOut, status_code=201)
def open_incident(
    body: IncidentIn, ctx: Ctx, who: Annotated[Principal, Allow(scope.INCIDENT_MANAGE)]
) -> IncidentOut:
    """Open an incident by hand or from an alert."""
    with ctx.operator_work(who, action="incident.open", subject="incident") as s:
        return IncidentOut.of(
            service.open_incident(
                s, who, title=body.title, severity=body.severity, alert_id=body.alert_id,
                drill=body.drill,
            )
        )  # fmt: skip


@router.get("/incidents", response_model=Page[IncidentOut])
def list_incidents(
    ctx: Ctx,
    who: Annotated[Principal, Allow(scope.INCIDENT_READ)],
    state: IncidentState | None = None,
    cursor: Cursor = None,
    limit: Limit = 100,
) -> Page[IncidentOut]:
    """The tenant's incidents, newest first."""
    before = decode(cursor, int)
    with ctx.db.read() as s:
        rows = service.list_incidents(
            s, who, state=state, before=int(before[0]) if before else None, limit=limit + 1
        )
        return page(rows, limit=limit, key=lambda i: (i.id,), shape=IncidentOut.of)


@router.get("/incidents/{incident_id}", response_model=IncidentOut)
def get_incident(
    incident_id: DbId, ctx: Ctx, who: Annotated[Principal, Allow(scope.INCIDENT_READ)]
) -> IncidentOut:
    """An incident with its timeline, runs and stragglers."""
    with ctx.db.read() as s:
        return incident_detail(s, who, incident_id)


def incident_detail(s: Session, who: Principal, incident_id: int) -> IncidentOut:
    """An incident with its timeline, runs and stragglers (also ``fleetward
    incident show --json``)."""
    out = IncidentOut.of(service.get_incident(s, who, incident_id))
    out.timeline = [TimelineEventOut.of(e) for e in service.timeline(s, who, incident_id)]
    out.runs = [RunOut.of(r) for r in runs.list_runs(s, who, incident_id)]
    out.stragglers = compliance.stragglers(s, who, incident_id)
    return out


@router.post("/incidents/{incident_id}/notes", response_model=TimelineEventOut, status_code=201)
def note(
    incident_id: DbId,
    body: NoteIn,
    ctx: Ctx,
    who: Annotated[Principal, Allow(scope.INCIDENT_MANAGE)],
) -> TimelineEventOut:
    """Add a note to the timeline."""
    with ctx.operator_work(who, action="incident.note", subject=f"incident:{incident_id}") as s:
        return TimelineEventOut.of(service.note(s, who, incident_id, body.text))


@router.post("/incidents/{incident_id}/state", response_model=IncidentOut)
def close(
    incident_id: DbId,
    body: IncidentStateIn,
    ctx: Ctx,
    who: Annotated[Principal, Allow(scope.INCIDENT_MANAGE)],
) -> IncidentOut:
    """Close an incident (``force`` leaves pending devices behind)."""
    with ctx.operator_work(who, action="incident.close", subject=f"incident:{incident_id}") as s:
        return IncidentOut.of(service.close_incident(s, who, incident_id, force=body.force))


# --------------------------------------------------------------------------- runs


@router.post("/incidents/{incident_id}/blast-radius", response_model=BlastRadiusOut)
def dry_run(
    incident_id: DbId, body: RunIn, ctx: Ctx, who: Annotated[Principal, Allow(scope.RUN_MANAGE)]
) -> BlastRadiusOut:
    """Dry run: the blast radius of a run; nothing happens."""
    with ctx.db.read() as s:
        radius = runs.dry_run(
            s, who, incident_id=incident_id, playbook=body.playbook, version=body.version,
            params=body.params, environment=body.environment, confirm=body.confirm,
        )  # fmt: skip
    return BlastRadiusOut.model_validate(radius.as_dict())


@router.post("/incidents/{incident_id}/runs", response_model=RunOut, status_code=201)
def start_run(
    incident_id: DbId, body: RunIn, ctx: Ctx, who: Annotated[Principal, Allow(scope.RUN_MANAGE)]
) -> RunOut:
    """Plan a run (it waits for approvals when a step is destructive)."""
    with ctx.operator_work(who, action="playbook.run.plan", subject=f"incident:{incident_id}") as s:
        return RunOut.of(
            runs.start_run(
                s, who, incident_id=incident_id, playbook=body.playbook, version=body.version,
                params=body.params, environment=body.environment, confirm=body.confirm,
            )
        )  # fmt: skip


@router.get("/runs/{run_id}", response_model=RunOut)
def get_run(
    run_id: DbId, ctx: Ctx, who: Annotated[Principal, Allow(scope.INCIDENT_READ)]
) -> RunOut:
    """A run."""
    with ctx.db.read() as s:
        return RunOut.of(runs.get_run(s, who, run_id))


@router.post("/runs/{run_id}/approvals", response_model=RunOut)
def approve(run_id: DbId, ctx: Ctx, who: Annotated[Principal, Allow(scope.RUN_MANAGE)]) -> RunOut:
    """A security operator's approval."""
    with ctx.operator_work(who, action="playbook.run.approve", subject=f"run:{run_id}") as s:
        return RunOut.of(runs.approve_run(s, who, run_id))


@router.post("/runs/{run_id}/executions", response_model=RunOut)
def execute(run_id: DbId, ctx: Ctx, who: Annotated[Principal, Allow(scope.RUN_MANAGE)]) -> RunOut:
    """Run a ready run's steps now."""
    effects = LiveEffects(ctx.settings.home)
    try:
        with ctx.refusals_recorded(
            actor=who.actor, action="playbook.run.execute", subject=f"run:{run_id}",
            tenant_id=who.tenant_id,
        ):  # fmt: skip
            run = runs.execute_run(ctx, who, run_id, effects=effects)
    finally:
        effects.close()
    with ctx.db.read() as s:
        return RunOut.of(runs.get_run(s, who, run.id))


# --------------------------------------------------------------------------- drills


@router.get("/drills", response_model=Page[DrillOut])
def list_drills(
    ctx: Ctx,
    who: Annotated[Principal, Allow(scope.INCIDENT_READ)],
    cursor: Cursor = None,
    limit: Limit = 100,
) -> Page[DrillOut]:
    """Drill reports, newest first (the trend)."""
    before = decode(cursor, int)
    with ctx.db.read() as s:
        rows = drills.list_drills(
            s, who, before=int(before[0]) if before else None, limit=limit + 1
        )
        return page(rows, limit=limit, key=lambda d: (d.id,), shape=DrillOut.of)


@router.get("/drills/{drill_id}", response_model=DrillOut)
def get_drill(
    drill_id: DbId, ctx: Ctx, who: Annotated[Principal, Allow(scope.INCIDENT_READ)]
) -> DrillOut:
    """One drill's report."""
    with ctx.db.read() as s:
        return DrillOut.of(drills.get_drill(s, who, drill_id))
