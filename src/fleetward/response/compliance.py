"""Compliance: what devices still owe after a run, and when an incident is contained.

Steps the server enforces by itself (quarantine, revocation, CA rotation)
are done when the step commits. Steps that need the device to act leave one
:class:`~fleetward.response.models.IncidentDevice` row per device, holding a
:class:`Requirement` and ``pending`` until :func:`track` sees the device
comply:

- ``campaign:<id>:<version>`` (an emergency release): the device's entry in
  the campaign succeeded;
- ``ca:<id>`` (a renewal under a new CA): the device holds a good
  certificate of that CA other than the one it held when the step ran.

Devices that were offline when the step ran are marked so, and listed as
stragglers. An open incident is contained when its newest run is done,
no run is under way, and no device is pending.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from sqlalchemy import func, insert, select, update
from sqlalchemy.orm import Session

from fleetward import identity, ota
from fleetward.response.models import Incident, IncidentDevice, PlaybookRun
from fleetward.response.service import get_incident, log_event
from fleetward.store.db import utcnow
from fleetward.tenancy.roles import Principal

__all__ = [
    "IN_FLIGHT",
    "Requirement",
    "needs_tracking",
    "record_pending",
    "stragglers",
    "track",
]

IN_FLIGHT = ("awaiting-approval", "ready", "running")  # run states not yet finished
_INSERT_CHUNK = 2000  # rows per bulk insert


@dataclass(frozen=True)
class Requirement:
    """What a device owes an incident, stored as text (``ca:7``,
    ``campaign:12:2.0.1``) in ``incident_devices.requirement``."""

    kind: Literal["campaign", "ca"]
    ref: int  # the campaign's or the CA's id
    version: str | None = None  # the version a campaign offers

    def __post_init__(self) -> None:
        if not isinstance(self.ref, int) or isinstance(self.ref, bool):
            raise TypeError("a requirement refers to an integer id")
        if self.version is not None and not isinstance(self.version, str):
            raise TypeError("a campaign's version is a string")
        if self.kind not in ("campaign", "ca"):
            raise ValueError(f"unknown requirement kind {self.kind!r}")
        if self.ref < 1:
            raise ValueError("a requirement refers to an id >= 1")
        if (self.kind == "campaign") != bool(self.version):
            raise ValueError("a campaign requirement, and only one, names a version")

    @classmethod
    def campaign(cls, campaign_id: int, version: str) -> Requirement:
        """Succeed in campaign ``campaign_id`` (which offers ``version``)."""
        return cls("campaign", campaign_id, version)

    @classmethod
    def ca(cls, ca_id: int) -> Requirement:
        """Renew under issuing CA ``ca_id``."""
        return cls("ca", ca_id)

    @classmethod
    def parse(cls, text: str) -> Requirement:
        """The requirement stored as ``text``.

        Raises:
            ValueError: not one this module writes.
        """
        kind, _, rest = text.partition(":")
        ref, _, version = rest.partition(":")
        if kind not in ("campaign", "ca") or not (ref.isascii() and ref.isdigit()):
            raise ValueError(f"not a requirement: {text!r}")
        if kind == "campaign":
            return cls.campaign(int(ref), version)
        if version:
            raise ValueError(f"not a requirement: {text!r}")
        return cls.ca(int(ref))

    def __str__(self) -> str:
        if self.kind == "campaign":
            return f"campaign:{self.ref}:{self.version}"
        return f"ca:{self.ref}"


def record_pending(
    session: Session,
    run: PlaybookRun,
    *,
    step: int,
    pks: Sequence[int],
    online: Collection[int],
    requirement: Requirement,
    now: dt.datetime,
    held: Mapping[int, str] | None = None,
) -> None:
    """One ``pending`` row per device of ``pks`` for step ``step`` (0-based)
    of ``run``; ``held`` is the certificate serial a device held then."""
    rows = [
        {
            "incident_id": run.incident_id,
            "run_id": run.id,
            "step": step,
            "device_pk": pk,
            "requirement": str(requirement),
            "online": pk in online,
            "held": (held or {}).get(pk),
            "state": "pending",
            "since": now,
        }
        for pk in pks
    ]
    for start in range(0, len(rows), _INSERT_CHUNK):
        session.execute(insert(IncidentDevice.__table__), rows[start : start + _INSERT_CHUNK])  # type: ignore[arg-type]


def track(
    session: Session, *, incident_id: int | None = None, now: dt.datetime | None = None
) -> int:
    """Mark devices that complied; contain incidents with nothing pending.

    Returns:
        How many devices complied in this call.
    """
    now = now or utcnow()
    stmt = select(IncidentDevice.requirement, IncidentDevice.incident_id).where(
        IncidentDevice.state == "pending"
    )
    if incident_id is not None:
        stmt = stmt.where(IncidentDevice.incident_id == incident_id)
    groups = set(
        session.execute(stmt.group_by(IncidentDevice.requirement, IncidentDevice.incident_id)).all()
    )
    complied = 0
    for text, inc in groups:
        try:
            requirement = Requirement.parse(text)
        except ValueError:  # pragma: no cover - written by this module only
            continue
        base = (IncidentDevice.incident_id == inc) & (IncidentDevice.requirement == text)
        # One set-based UPDATE per requirement: the owning domains hand over
        # the condition as SQL over their own tables (see their docstrings).
        if requirement.kind == "campaign":
            complies: Any = IncidentDevice.device_pk.in_(ota.succeeded_devices(requirement.ref))
        else:
            # A good certificate of the new CA other than the one held when
            # the step ran (a device already under that CA must still renew).
            complies = identity.holds_good_certificate(
                IncidentDevice.device_pk, ca_id=requirement.ref, other_than=IncidentDevice.held
            )
        result = session.execute(
            update(IncidentDevice)
            .where(base, IncidentDevice.state == "pending", complies)
            .values(state="complied", complied_at=now)
            .execution_options(synchronize_session=False)
        )
        complied += int(result.rowcount or 0)  # type: ignore[attr-defined]
    _contain(session, incident_id, now)
    return complied


def needs_tracking(session: Session) -> bool:
    """Whether :func:`track` has anything to do (read-only, so a tracker
    takes the writer only when it will write)."""
    pending = session.execute(
        select(IncidentDevice.id).where(IncidentDevice.state == "pending").limit(1)
    ).first()
    if pending is not None:
        return True
    open_with_done_run = session.execute(
        select(Incident.id)
        .join(PlaybookRun, PlaybookRun.incident_id == Incident.id)
        .where(Incident.state == "open", PlaybookRun.state == "done")
        .limit(1)
    ).first()
    return open_with_done_run is not None


def _runs_finished(states: Sequence[str]) -> bool:
    """The newest run is done and nothing else is under way (a failed run
    counts once a later run did the job)."""
    return bool(states) and states[-1] == "done" and not any(r in IN_FLIGHT for r in states)


def _contain(session: Session, incident_id: int | None, now: dt.datetime) -> None:
    stmt = select(Incident).where(Incident.state == "open")
    if incident_id is not None:
        stmt = stmt.where(Incident.id == incident_id)
    for incident in session.execute(stmt).scalars():
        states = (
            session.execute(
                select(PlaybookRun.state)
                .where(PlaybookRun.incident_id == incident.id)
                .order_by(PlaybookRun.id)
            )
            .scalars()
            .all()
        )
        if not _runs_finished(states):
            continue
        pending = session.execute(
            select(func.count()).where(
                IncidentDevice.incident_id == incident.id, IncidentDevice.state == "pending"
            )
        ).scalar_one()
        if pending:
            continue
        incident.state = "contained"
        incident.contained_at = now
        log_event(
            session, incident, actor="system", kind="contained",
            summary="contained: every run done and every device complied",
            audit_action="incident.contained", now=now,
        )  # fmt: skip


def stragglers(session: Session, principal: Principal, incident_id: int) -> list[dict[str, Any]]:
    """Devices that have not complied yet, with what they owe and since when.

    Raises:
        NotFoundError: the incident is not the caller's tenant's.
    """
    get_incident(session, principal, incident_id)
    rows = session.execute(
        select(
            IncidentDevice.device_pk,
            IncidentDevice.requirement,
            IncidentDevice.online,
            IncidentDevice.since,
        ).where(IncidentDevice.incident_id == incident_id, IncidentDevice.state == "pending")
    ).all()
    names = identity.device_ids(session, [int(pk) for pk, *_ in rows])
    named = sorted(
        ((names[pk], r, o, since) for pk, r, o, since in rows if pk in names),
        key=lambda row: row[0],
    )
    return [
        {"device_id": d, "requirement": r, "online_when_run": bool(o), "since": since.isoformat()}
        for d, r, o, since in named
    ]
