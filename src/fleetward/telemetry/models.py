"""Tables of the telemetry domain."""

from __future__ import annotations

import datetime as dt

from sqlalchemy import ForeignKey, Index, Integer, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from fleetward.store.db import Base
from fleetward.store.types import UTCDateTime

__all__ = ["Event"]


class Event(Base):
    """Something observed about a device (or a peer not yet known as one)."""

    __tablename__ = "events"
    __table_args__ = (
        Index("ix_events_tenant_type_at", "tenant_id", "type", "at"),
        Index("ix_events_device_at", "device_pk", "at"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    # None: nobody could attribute it to a tenant (e.g. a refused handshake).
    tenant_id: Mapped[int | None] = mapped_column(ForeignKey("tenants.id"), nullable=True)
    device_pk: Mapped[int | None] = mapped_column(ForeignKey("devices.id"), nullable=True)
    type: Mapped[str] = mapped_column(String(48))
    at: Mapped[dt.datetime] = mapped_column(UTCDateTime())
    count: Mapped[int] = mapped_column(Integer, default=1)
    fields: Mapped[str] = mapped_column(Text, default="{}")  # JSON
