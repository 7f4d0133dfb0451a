"""Tables of the comms domain."""

from __future__ import annotations

import datetime as dt

from sqlalchemy import BigInteger, ForeignKey, Integer, String, Text, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from fleetward.store.db import Base
from fleetward.store.types import UTCDateTime

__all__ = ["BrokerGeneration", "CommsPolicy"]


class CommsPolicy(Base):
    """One version of a tenant's communication policy (never updated in place)."""

    __tablename__ = "comms_policies"
    __table_args__ = (UniqueConstraint("tenant_id", "version"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    tenant_id: Mapped[int] = mapped_column(ForeignKey("tenants.id"))
    version: Mapped[int] = mapped_column(Integer)
    document: Mapped[str] = mapped_column(Text)  # canonical JSON
    sha256: Mapped[str] = mapped_column(String(64))
    created_by: Mapped[str] = mapped_column(String(128))
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime())


class BrokerGeneration(Base):
    """One row (id 1): bumped by database triggers (migration 0010) in the
    same transaction as any write to the broker table's inputs (tenants,
    policies, devices, certificates). The broker sync polls it instead of
    the audit head, so an audit append alone never rebuilds the table."""

    __tablename__ = "broker_generation"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    value: Mapped[int] = mapped_column(BigInteger)
