"""Tables of the detection domain."""

from __future__ import annotations

import datetime as dt

from sqlalchemy import ForeignKey, Index, Integer, String, Text, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from fleetward.store.db import Base
from fleetward.store.types import UTCDateTime

__all__ = ["Alert", "AlertResponse", "DetectorCursor"]


class Alert(Base):
    """Something a detector raised; deduplicated by (tenant, kind, key) while open."""

    __tablename__ = "alerts"
    __table_args__ = (
        Index("ix_alerts_dedup", "tenant_id", "kind", "key", "state"),
        Index("ix_alerts_subject", "tenant_id", "subject", "id"),  # a device's alerts
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    tenant_id: Mapped[int] = mapped_column(ForeignKey("tenants.id"))
    kind: Mapped[str] = mapped_column(String(48))
    key: Mapped[str] = mapped_column(String(200))
    severity: Mapped[str] = mapped_column(String(16))  # low | medium | high | critical
    state: Mapped[str] = mapped_column(String(16))  # open | acknowledged | resolved
    subject: Mapped[str] = mapped_column(String(200))
    summary: Mapped[str] = mapped_column(Text)
    evidence: Mapped[str] = mapped_column(Text)  # JSON
    count: Mapped[int] = mapped_column(Integer, default=1)
    response: Mapped[str] = mapped_column(Text, default="")  # what the automatic response did
    first_seen: Mapped[dt.datetime] = mapped_column(UTCDateTime())
    last_seen: Mapped[dt.datetime] = mapped_column(UTCDateTime())


class AlertResponse(Base):
    """A tenant's automatic response to one kind of alert."""

    __tablename__ = "alert_responses"
    __table_args__ = (UniqueConstraint("tenant_id", "kind"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    tenant_id: Mapped[int] = mapped_column(ForeignKey("tenants.id"))
    kind: Mapped[str] = mapped_column(String(48))
    action: Mapped[str] = mapped_column(String(32))  # quarantine-device | quarantine-cohort


class DetectorCursor(Base):
    """How far the detection loop has read the event table."""

    __tablename__ = "detector_cursors"

    name: Mapped[str] = mapped_column(String(48), primary_key=True)
    last_event_id: Mapped[int] = mapped_column(Integer, default=0)
