"""Tables of the ota domain."""

from __future__ import annotations

import datetime as dt

from sqlalchemy import (
    Boolean,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    String,
    Text,
    UniqueConstraint,
    false,
)
from sqlalchemy.orm import Mapped, mapped_column

from fleetward.store.db import Base
from fleetward.store.types import UTCDateTime

__all__ = [
    "Campaign",
    "CampaignDevice",
    "DeviceFirmware",
    "Release",
    "ReleaseReview",
    "TufKey",
    "TufMetadata",
    "TufRole",
]


class TufRole(Base):
    """A role of a tenant's TUF repository and its signature threshold."""

    __tablename__ = "tuf_roles"
    __table_args__ = (UniqueConstraint("tenant_id", "name"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    tenant_id: Mapped[int] = mapped_column(ForeignKey("tenants.id"))
    name: Mapped[str] = mapped_column(String(80))  # root|targets|snapshot|timestamp|product-<p>
    threshold: Mapped[int] = mapped_column(Integer)


class TufKey(Base):
    """A key of a role (the private half behind ``key_uri``: file or PKCS#11)."""

    __tablename__ = "tuf_keys"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    tenant_id: Mapped[int] = mapped_column(ForeignKey("tenants.id"), index=True)
    role: Mapped[str] = mapped_column(String(80))
    keyid: Mapped[str] = mapped_column(String(64))
    key_uri: Mapped[str] = mapped_column(String(300))
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime())


class TufMetadata(Base):
    """One signed version of one role's metadata, exactly as served."""

    __tablename__ = "tuf_metadata"
    __table_args__ = (UniqueConstraint("tenant_id", "role", "version"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    tenant_id: Mapped[int] = mapped_column(ForeignKey("tenants.id"))
    role: Mapped[str] = mapped_column(String(80))
    version: Mapped[int] = mapped_column(Integer)
    expires: Mapped[dt.datetime] = mapped_column(UTCDateTime())
    body: Mapped[bytes] = mapped_column(LargeBinary)
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime())


class Release(Base):
    """A firmware release of a product: artifact, SBOM, reference measurements."""

    __tablename__ = "releases"
    __table_args__ = (
        UniqueConstraint("tenant_id", "product", "version"),
        Index("ix_releases_tenant_product", "tenant_id", "product"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    tenant_id: Mapped[int] = mapped_column(ForeignKey("tenants.id"))
    product: Mapped[str] = mapped_column(String(64))
    version: Mapped[str] = mapped_column(String(32))
    filename: Mapped[str] = mapped_column(String(128))
    sha256: Mapped[str] = mapped_column(String(64))
    length: Mapped[int] = mapped_column(Integer)
    hardware: Mapped[str] = mapped_column(Text)  # JSON list of compatible hardware ids
    sbom: Mapped[str | None] = mapped_column(Text, nullable=True)  # CycloneDX JSON
    measurements: Mapped[str] = mapped_column(Text, default="{}")  # JSON stage -> sha256
    state: Mapped[str] = mapped_column(String(16))  # pending | deployable | withdrawn
    approvals: Mapped[str] = mapped_column(Text, default="[]")  # JSON list of actors
    created_by: Mapped[str] = mapped_column(String(128))
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime())
    updated_at: Mapped[dt.datetime] = mapped_column(UTCDateTime())


class Campaign(Base):
    """Rolling one release out to a cohort, wave by wave, behind health gates."""

    __tablename__ = "campaigns"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    tenant_id: Mapped[int] = mapped_column(ForeignKey("tenants.id"), index=True)
    release_id: Mapped[int] = mapped_column(ForeignKey("releases.id"))
    labels: Mapped[str] = mapped_column(Text, default="{}")  # cohort selector (JSON)
    waves: Mapped[str] = mapped_column(Text)  # JSON cumulative percentages
    gate: Mapped[str] = mapped_column(Text)  # JSON GatePolicy
    seed: Mapped[str] = mapped_column(String(64))
    # awaiting-approval | running | halted | completed | aborted
    state: Mapped[str] = mapped_column(String(24))
    current_wave: Mapped[int] = mapped_column(Integer, default=-1)
    wave_started_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    accepted_wave: Mapped[int] = mapped_column(Integer, default=-1)  # operator resumed past it
    emergency: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())
    approvals: Mapped[str] = mapped_column(Text, default="[]")
    reason: Mapped[str] = mapped_column(Text, default="")
    devices: Mapped[int] = mapped_column(Integer, default=0)
    created_by: Mapped[str] = mapped_column(String(128))
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime())
    updated_at: Mapped[dt.datetime] = mapped_column(UTCDateTime())


class CampaignDevice(Base):
    """One device of a campaign: its wave and how its update went."""

    __tablename__ = "campaign_devices"
    __table_args__ = (
        UniqueConstraint("campaign_id", "device_pk"),
        Index("ix_campaign_devices_wave", "campaign_id", "wave", "status"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    campaign_id: Mapped[int] = mapped_column(ForeignKey("campaigns.id"))
    device_pk: Mapped[int] = mapped_column(ForeignKey("devices.id"))
    wave: Mapped[int] = mapped_column(Integer)
    # planned | offered | installed (awaiting attestation) | succeeded | failed | aborted
    status: Mapped[str] = mapped_column(String(16))
    version: Mapped[str | None] = mapped_column(String(32), nullable=True)
    updated_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime(), nullable=True)


class DeviceFirmware(Base):
    """The firmware a device last said it runs (its latest attested ``swversion``).

    One row per device, replaced on every verdict: what vulnerability exposure
    counts ("how many devices run an affected release now").
    """

    __tablename__ = "device_firmware"
    __table_args__ = (Index("ix_device_firmware_release", "tenant_id", "product", "version"),)

    device_pk: Mapped[int] = mapped_column(ForeignKey("devices.id"), primary_key=True)
    tenant_id: Mapped[int] = mapped_column(ForeignKey("tenants.id"))
    product: Mapped[str] = mapped_column(String(64))
    version: Mapped[str] = mapped_column(String(64))
    reported_at: Mapped[dt.datetime] = mapped_column(UTCDateTime())


class ReleaseReview(Base):
    """A controls review of a release, run when a campaign of it reached the end
    of its first wave: the checklist, its outcome, and a waiver's reason."""

    __tablename__ = "release_reviews"
    __table_args__ = (Index("ix_release_reviews_campaign", "campaign_id", "id"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    tenant_id: Mapped[int] = mapped_column(ForeignKey("tenants.id"))
    release_id: Mapped[int] = mapped_column(ForeignKey("releases.id"), index=True)
    campaign_id: Mapped[int] = mapped_column(ForeignKey("campaigns.id"))
    outcome: Mapped[str] = mapped_column(String(8))  # passed | failed | waived
    items: Mapped[str] = mapped_column(Text)  # JSON [{"name", "ok", "detail"}]
    map_digest: Mapped[str | None] = mapped_column(String(64), nullable=True)
    actor: Mapped[str] = mapped_column(String(200))  # "system" or the waiving operator
    reason: Mapped[str] = mapped_column(Text, default="")  # a waiver's reason
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime())
