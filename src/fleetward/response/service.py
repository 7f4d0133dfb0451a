"""Playbooks (versioned per tenant) and incidents with their timelines.

Every change an operator or a playbook run makes is audited; the incident
timeline keeps one line per action with the sequence number of the audit
entry that records it, so the timeline can be checked against the chain.
Runs live in :mod:`fleetward.response.runs`, drills in
:mod:`fleetward.response.drills`.
"""

from __future__ import annotations

import datetime as dt
import json
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from fleetward import audit, detection, identity
from fleetward.errors import (
    ConflictError,
    InvalidInputError,
    NotFoundError,
    PermissionDeniedError,
)
from fleetward.response import playbook as pb
from fleetward.response.models import (
    Incident,
    IncidentDevice,
    IncidentEvent,
    Playbook,
    PlaybookRun,
)
from fleetward.response.standard import STANDARD
from fleetward.store.db import utcnow
from fleetward.tenancy import scope
from fleetward.tenancy.roles import Permission, Principal, require

__all__ = [
    "SEVERITIES",
    "alert_cohort",
    "close_incident",
    "get_incident",
    "get_playbook",
    "install_standard",
    "list_incidents",
    "list_playbooks",
    "log_event",
    "note",
    "open_incident",
    "put_playbook",
    "timeline",
]

SEVERITIES = ("low", "medium", "high", "critical")
MAX_TITLE = 200
MAX_NOTE = 4000


# --------------------------------------------------------------------------- playbooks


def put_playbook(
    session: Session, principal: Principal, source: str, *, now: dt.datetime | None = None
) -> Playbook:
    """Store a new version of a playbook (version 1 if the name is new).

    Raises:
        InvalidInputError: not a valid playbook (see :func:`playbook.parse`).
        PermissionDeniedError: the role may not manage incidents, or the
            playbook names another tenant.
        OutOfScopeError: a token scoped to one environment (playbooks apply
            in every environment).
    """
    scope.authorize(principal, scope.PLAYBOOK_MANAGE)
    spec = pb.parse(source)
    tenant = spec.tenant
    if tenant is not None and tenant != principal.tenant_name:
        raise PermissionDeniedError(
            f"playbook names tenant {tenant!r}; it can only be stored by, and act on, "
            f"tenant {principal.tenant_name!r}"
        )
    now = now or utcnow()
    latest = session.execute(
        select(func.max(Playbook.version)).where(
            Playbook.tenant_id == principal.tenant_id, Playbook.name == spec.name
        )
    ).scalar()
    row = Playbook(
        tenant_id=principal.tenant_id,
        name=spec.name,
        version=(latest or 0) + 1,
        source=source,
        created_by=principal.actor,
        created_at=now,
    )
    session.add(row)
    session.flush()
    audit.append(
        session,
        actor=principal.actor,
        action="playbook.put",
        subject=f"playbook:{spec.name}",
        tenant_id=principal.tenant_id,
        details={"version": row.version, "steps": [s["action"] for s in spec.steps]},
        now=now,
    )
    return row


def get_playbook(
    session: Session, principal: Principal, name: str, version: int | None = None
) -> Playbook:
    """A playbook's newest version, or a given one.

    Raises:
        NotFoundError: no such playbook (or version) in this tenant.
    """
    stmt = select(Playbook).where(Playbook.tenant_id == principal.tenant_id, Playbook.name == name)
    if version is not None:
        stmt = stmt.where(Playbook.version == version)
    row = session.execute(stmt.order_by(Playbook.version.desc()).limit(1)).scalar()
    if row is None:
        which = f"{name} version {version}" if version is not None else name
        raise NotFoundError(f"no playbook {which} in tenant {principal.tenant_name}")
    return row


def list_playbooks(session: Session, principal: Principal) -> list[Playbook]:
    """The newest version of each of the tenant's playbooks."""
    newest = (
        select(Playbook.name, func.max(Playbook.version).label("v"))
        .where(Playbook.tenant_id == principal.tenant_id)
        .group_by(Playbook.name)
        .subquery()
    )
    stmt = (
        select(Playbook)
        .join(newest, (Playbook.name == newest.c.name) & (Playbook.version == newest.c.v))
        .where(Playbook.tenant_id == principal.tenant_id)
        .order_by(Playbook.name)
    )
    return list(session.execute(stmt).scalars())


def install_standard(
    session: Session, principal: Principal, *, now: dt.datetime | None = None
) -> list[Playbook]:
    """Store the shipped playbooks the tenant does not have yet; returns those added."""
    require(principal, Permission.INCIDENT_MANAGE)
    have = {p.name for p in list_playbooks(session, principal)}
    return [
        put_playbook(session, principal, source, now=now)
        for name, source in STANDARD.items()
        if name not in have
    ]


# --------------------------------------------------------------------------- incidents


def log_event(
    session: Session,
    incident: Incident,
    *,
    actor: str,
    kind: str,
    summary: str,
    details: dict[str, Any] | None = None,
    audit_action: str | None = None,
    now: dt.datetime | None = None,
) -> IncidentEvent:
    """Add a line to an incident's timeline (and, with ``audit_action``, an
    audit entry it links to)."""
    now = now or utcnow()
    seq = None
    if audit_action is not None:
        seq = audit.append(
            session,
            actor=actor,
            action=audit_action,
            subject=f"incident:{incident.id}",
            tenant_id=incident.tenant_id,
            details={"summary": summary[:500], **(details or {})},
            now=now,
        )
    event = IncidentEvent(
        incident_id=incident.id,
        at=now,
        actor=actor,
        kind=kind,
        summary=summary,
        details=json.dumps(details or {}, default=str),
        audit_seq=seq,
    )
    session.add(event)
    session.flush()
    return event


def open_incident(
    session: Session,
    principal: Principal,
    *,
    title: str | None = None,
    severity: str | None = None,
    alert_id: int | None = None,
    drill: bool = False,
    now: dt.datetime | None = None,
) -> Incident:
    """Open an incident by hand or from an alert (its detection time is the
    alert's first sighting).

    Raises:
        InvalidInputError: no title (and no alert), a bad severity.
        NotFoundError: the alert is not one of this tenant's.
        ConflictError: the alert already has an open incident.
    """
    require(principal, Permission.INCIDENT_MANAGE)
    now = now or utcnow()
    detected = now
    alert = None
    if alert_id is not None:
        alert = detection.get_alert(session, tenant_id=principal.tenant_id, alert_id=alert_id)
        existing = session.execute(
            select(Incident.id).where(Incident.alert_id == alert_id, Incident.state != "closed")
        ).scalar()
        if existing is not None:
            raise ConflictError(f"alert {alert_id} is already handled by incident {existing}")
        if drill:
            _alert_is_about_drill_devices(session, alert)
        detected = alert.first_seen
        title = title or f"{alert.kind}: {alert.subject}"
        severity = severity or alert.severity
    if not title or len(title) > MAX_TITLE:
        raise InvalidInputError(f"an incident needs a title of 1-{MAX_TITLE} characters")
    severity = severity or "high"
    if severity not in SEVERITIES:
        raise InvalidInputError(f"severity must be one of {', '.join(SEVERITIES)}")
    incident = Incident(
        tenant_id=principal.tenant_id,
        title=title,
        severity=severity,
        state="open",
        alert_id=alert_id,
        drill=drill,
        opened_by=principal.actor,
        detected_at=detected,
        opened_at=now,
    )
    session.add(incident)
    session.flush()
    log_event(
        session,
        incident,
        actor=principal.actor,
        kind="opened",
        summary=f"opened{' from alert ' + str(alert_id) if alert else ' by hand'}: {title}",
        details={"alert": alert_id, "severity": severity, "drill": drill},
        audit_action="incident.open",
        now=now,
    )
    if alert is not None:
        detection.mark_acknowledged(alert)
    return incident


def alert_cohort(alert: detection.Alert) -> tuple[str | None, int | None]:
    """The devices an alert names (its key ``device:<id>`` or ``batch:<id>``),
    as ``(device id, None)`` or ``(None, batch)``.

    Raises:
        InvalidInputError: the alert names no cohort of devices.
    """
    kind, _, value = alert.key.partition(":")
    if kind == "device":
        return value, None
    if kind == "batch" and (value.isascii() and value.isdigit()):
        return None, int(value)
    raise InvalidInputError(f"alert {alert.id} ({alert.key}) does not name a device cohort")


def _alert_is_about_drill_devices(session: Session, alert: detection.Alert) -> None:
    """A drill may take only an alert about drill devices (a real alert
    must stay free for a real incident)."""
    try:
        device_id, batch = alert_cohort(alert)
    except InvalidInputError as exc:
        raise PermissionDeniedError(
            f"alert {alert.id} ({alert.key}) is not about drill devices"
        ) from exc
    named = identity.devices_named_by(
        session, tenant_id=alert.tenant_id, device_id=device_id, batch=batch
    )
    outside = identity.devices_outside(session, named, environment="drill")
    if outside:
        raise PermissionDeniedError(
            f"alert {alert.id} ({alert.key}) is about devices outside the drill environment: "
            "a drill cannot take it"
        )


def get_incident(session: Session, principal: Principal, incident_id: int) -> Incident:
    """An incident of the caller's tenant.

    Raises:
        NotFoundError: no such incident here (another tenant's included).
    """
    incident = session.get(Incident, incident_id)
    if incident is None or incident.tenant_id != principal.tenant_id:
        raise NotFoundError(f"incident {incident_id} not found")
    return incident


def list_incidents(
    session: Session,
    principal: Principal,
    *,
    state: str | None = None,
    before: int | None = None,
    limit: int = 100,
) -> list[Incident]:
    """The tenant's incidents, newest first."""
    stmt = select(Incident).where(Incident.tenant_id == principal.tenant_id)
    if state is not None:
        stmt = stmt.where(Incident.state == state)
    if before is not None:  # the page after the one that ended at incident ``before``
        stmt = stmt.where(Incident.id < before)
    return list(session.execute(stmt.order_by(Incident.id.desc()).limit(limit)).scalars())


def timeline(session: Session, principal: Principal, incident_id: int) -> list[IncidentEvent]:
    """Every action on an incident, in order."""
    get_incident(session, principal, incident_id)
    return list(
        session.execute(
            select(IncidentEvent)
            .where(IncidentEvent.incident_id == incident_id)
            .order_by(IncidentEvent.id)
        ).scalars()
    )


def _authorize_on_incident(session: Session, principal: Principal, incident_id: int) -> None:
    """An incident lives in the environments of its runs: a token scoped to
    one environment may not close (or annotate) an incident whose response
    acts on another, and so stop it."""
    environments = session.execute(
        select(PlaybookRun.environment).where(PlaybookRun.incident_id == incident_id).distinct()
    ).scalars()
    scope.authorize(principal, scope.INCIDENT_MANAGE, environments=list(environments))


def note(
    session: Session,
    principal: Principal,
    incident_id: int,
    text: str,
    *,
    now: dt.datetime | None = None,
) -> IncidentEvent:
    """An operator's note on the timeline."""
    require(principal, Permission.INCIDENT_MANAGE)
    if not text.strip() or len(text) > MAX_NOTE:
        raise InvalidInputError(f"a note is 1-{MAX_NOTE} characters")
    incident = get_incident(session, principal, incident_id)
    _authorize_on_incident(session, principal, incident_id)
    return log_event(
        session, incident, actor=principal.actor, kind="note", summary=text,
        audit_action="incident.note", now=now,
    )  # fmt: skip


def close_incident(
    session: Session,
    principal: Principal,
    incident_id: int,
    *,
    force: bool = False,
    now: dt.datetime | None = None,
) -> Incident:
    """Close an incident. Devices still pending keep it open unless ``force``.

    Raises:
        ConflictError: devices have not complied yet (the message counts them).
    """  # fmt: skip
    require(principal, Permission.INCIDENT_MANAGE)
    now = now or utcnow()
    incident = get_incident(session, principal, incident_id)
    _authorize_on_incident(session, principal, incident_id)
    if incident.state == "closed":
        raise ConflictError(f"incident {incident_id} is already closed")
    under_way = session.execute(
        select(func.count()).where(
            PlaybookRun.incident_id == incident_id,
            PlaybookRun.state.in_(("awaiting-approval", "ready", "running")),
        )
    ).scalar_one()
    if under_way and not force:
        raise ConflictError(
            f"{under_way} run(s) of incident {incident_id} are not finished; "
            "close with force to abandon them (they can no longer be executed)"
        )
    pending = session.execute(
        select(func.count()).where(
            IncidentDevice.incident_id == incident_id, IncidentDevice.state == "pending"
        )
    ).scalar_one()
    if pending and not force:
        raise ConflictError(
            f"{pending} device(s) have not complied yet; close with force to leave them"
        )
    incident.state = "closed"
    incident.closed_at = now
    log_event(
        session, incident, actor=principal.actor, kind="closed",
        summary=f"closed ({pending} device(s) left pending)" if pending else "closed",
        details={"pending": pending}, audit_action="incident.close", now=now,
    )  # fmt: skip
    return incident
