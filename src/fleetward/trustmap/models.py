"""Tables of the trustmap domain: registered maps and their latest check."""

from __future__ import annotations

import datetime as dt

from sqlalchemy import ForeignKey, Index, Integer, String, Text, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from fleetward.store.db import Base
from fleetward.store.types import UTCDateTime

__all__ = ["MapCheck", "TrustMapVersion"]


class TrustMapVersion(Base):
    """One registered version of a product's trust map; the newest is current."""

    __tablename__ = "trustmap_maps"
    __table_args__ = (Index("ix_trustmap_maps_product", "tenant_id", "product", "id"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    tenant_id: Mapped[int] = mapped_column(ForeignKey("tenants.id"))
    product: Mapped[str] = mapped_column(String(64))
    document: Mapped[str] = mapped_column(Text)  # the map as registered (YAML or JSON)
    digest: Mapped[str] = mapped_column(String(64))  # sha256 of the document
    created_by: Mapped[str] = mapped_column(String(200))
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime())


class MapCheck(Base):
    """The latest check of a product's current map against the live system."""

    __tablename__ = "trustmap_checks"
    __table_args__ = (UniqueConstraint("tenant_id", "product"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    tenant_id: Mapped[int] = mapped_column(ForeignKey("tenants.id"))
    product: Mapped[str] = mapped_column(String(64))
    map_digest: Mapped[str] = mapped_column(String(64))
    drifts: Mapped[str] = mapped_column(Text)  # JSON list of drifts
    confirmed: Mapped[str] = mapped_column(Text)  # JSON list of confirmed controls
    checked: Mapped[str] = mapped_column(Text)  # JSON list of checks run
    checked_at: Mapped[dt.datetime] = mapped_column(UTCDateTime())
