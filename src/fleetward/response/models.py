"""Tables of the response domain: playbooks, incidents, runs and drills."""

from __future__ import annotations

import datetime as dt

from sqlalchemy import ForeignKey, Index, Integer, String, Text, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from fleetward.store.db import Base
from fleetward.store.types import UTCDateTime

__all__ = ["Drill", "Incident", "IncidentDevice", "IncidentEvent", "Playbook", "PlaybookRun"]


class Playbook(Base):
    """One version of a tenant's playbook (the source is kept as written)."""

    __tablename__ = "playbooks"
    __table_args__ = (UniqueConstraint("tenant_id", "name", "version"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    tenant_id: Mapped[int] = mapped_column(ForeignKey("tenants.id"))
    name: Mapped[str] = mapped_column(String(64))
    version: Mapped[int] = mapped_column(Integer)
    source: Mapped[str] = mapped_column(Text)  # YAML or JSON, as submitted
    created_by: Mapped[str] = mapped_column(String(200))
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime())


class Incident(Base):
    """Something being handled: opened by hand or from an alert."""

    __tablename__ = "incidents"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    tenant_id: Mapped[int] = mapped_column(ForeignKey("tenants.id"))
    title: Mapped[str] = mapped_column(String(200))
    severity: Mapped[str] = mapped_column(String(16))
    state: Mapped[str] = mapped_column(String(16))  # open | contained | closed
    alert_id: Mapped[int | None] = mapped_column(ForeignKey("alerts.id"), nullable=True)
    drill: Mapped[bool] = mapped_column(default=False)
    opened_by: Mapped[str] = mapped_column(String(200))
    detected_at: Mapped[dt.datetime] = mapped_column(UTCDateTime())
    opened_at: Mapped[dt.datetime] = mapped_column(UTCDateTime())
    contained_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    closed_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime(), nullable=True)


class IncidentEvent(Base):
    """One line of an incident's timeline, linked to the audit entry it made."""

    __tablename__ = "incident_events"
    __table_args__ = (Index("ix_incident_events_incident", "incident_id", "id"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    incident_id: Mapped[int] = mapped_column(ForeignKey("incidents.id"))
    at: Mapped[dt.datetime] = mapped_column(UTCDateTime())
    actor: Mapped[str] = mapped_column(String(200))
    kind: Mapped[str] = mapped_column(String(48))
    summary: Mapped[str] = mapped_column(Text)
    details: Mapped[str] = mapped_column(Text, default="{}")  # JSON
    audit_seq: Mapped[int | None] = mapped_column(Integer, nullable=True)


class PlaybookRun(Base):
    """A playbook applied to a cohort within an incident."""

    __tablename__ = "playbook_runs"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    tenant_id: Mapped[int] = mapped_column(ForeignKey("tenants.id"))
    incident_id: Mapped[int] = mapped_column(ForeignKey("incidents.id"))
    playbook_id: Mapped[int] = mapped_column(ForeignKey("playbooks.id"))
    params: Mapped[str] = mapped_column(Text, default="{}")  # JSON
    environment: Mapped[str | None] = mapped_column(String(16), nullable=True)
    state: Mapped[str] = mapped_column(String(24))
    # awaiting-approval | ready | running | done | failed
    requested_by: Mapped[str] = mapped_column(String(200))
    requester_role: Mapped[str] = mapped_column(String(32))
    executed_by: Mapped[str | None] = mapped_column(String(200), nullable=True)
    approvals_needed: Mapped[int] = mapped_column(Integer, default=0)
    approvals: Mapped[str] = mapped_column(Text, default="[]")  # JSON list of actors
    cohort_size: Mapped[int] = mapped_column(Integer, default=0)
    blast_radius: Mapped[str] = mapped_column(Text, default="{}")  # JSON, the dry run
    step: Mapped[int] = mapped_column(Integer, default=0)  # next step to run
    outcome: Mapped[str] = mapped_column(Text, default="")
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime())
    started_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    finished_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime(), nullable=True)


class IncidentDevice(Base):
    """A device a step asked something of, until it complies."""

    __tablename__ = "incident_devices"
    __table_args__ = (
        UniqueConstraint("run_id", "step", "device_pk"),
        Index("ix_incident_devices_pending", "incident_id", "state"),
        Index("ix_incident_devices_state", "state", "requirement"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    incident_id: Mapped[int] = mapped_column(ForeignKey("incidents.id"))
    run_id: Mapped[int] = mapped_column(ForeignKey("playbook_runs.id"))
    step: Mapped[int] = mapped_column(Integer)
    device_pk: Mapped[int] = mapped_column(ForeignKey("devices.id"))
    requirement: Mapped[str] = mapped_column(String(64))  # cut-off | quarantined | version>=X ...
    online: Mapped[bool] = mapped_column(default=True)  # seen recently when the step ran
    # What the device held when the step ran (a renewal must replace this certificate).
    held: Mapped[str | None] = mapped_column(String(64), nullable=True)
    state: Mapped[str] = mapped_column(String(16))  # pending | complied
    since: Mapped[dt.datetime] = mapped_column(UTCDateTime())
    complied_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime(), nullable=True)


class Drill(Base):
    """One rehearsal of a playbook on a simulated fleet, and its report."""

    __tablename__ = "drills"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    tenant_id: Mapped[int] = mapped_column(ForeignKey("tenants.id"))
    playbook: Mapped[str] = mapped_column(String(64))
    playbook_version: Mapped[int] = mapped_column(Integer)
    scenario: Mapped[str] = mapped_column(String(48))
    incident_id: Mapped[int | None] = mapped_column(ForeignKey("incidents.id"), nullable=True)
    state: Mapped[str] = mapped_column(String(16))  # running | passed | failed
    devices: Mapped[int] = mapped_column(Integer, default=0)
    affected: Mapped[int] = mapped_column(Integer, default=0)
    detect_s: Mapped[float | None] = mapped_column(nullable=True)
    contain_s: Mapped[float | None] = mapped_column(nullable=True)
    stragglers: Mapped[int] = mapped_column(Integer, default=0)
    report: Mapped[str] = mapped_column(Text, default="{}")  # JSON
    started_by: Mapped[str] = mapped_column(String(200))
    started_at: Mapped[dt.datetime] = mapped_column(UTCDateTime())
    finished_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime(), nullable=True)
