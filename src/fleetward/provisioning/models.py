"""Tables of the provisioning domain."""

from __future__ import annotations

import datetime as dt

from sqlalchemy import ForeignKey, Index, Integer, String, Text, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from fleetward.store.db import Base
from fleetward.store.types import UTCDateTime

__all__ = [
    "AttestationRoot",
    "EnrollmentAttempt",
    "EnrollmentBatch",
    "EnrollmentNonce",
    "Factory",
    "ReprovisionGrant",
]


class Factory(Base):
    """A factory or partner line; it works in exactly one environment."""

    __tablename__ = "factories"
    __table_args__ = (UniqueConstraint("tenant_id", "name"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    tenant_id: Mapped[int] = mapped_column(ForeignKey("tenants.id"))
    name: Mapped[str] = mapped_column(String(64))
    environment: Mapped[str] = mapped_column(String(16))
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime())


class EnrollmentBatch(Base):
    """Authorisation for a bounded set of devices of one product at one factory."""

    __tablename__ = "enrollment_batches"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    tenant_id: Mapped[int] = mapped_column(ForeignKey("tenants.id"), index=True)
    factory_id: Mapped[int] = mapped_column(ForeignKey("factories.id"))
    product: Mapped[str] = mapped_column(String(64))
    environment: Mapped[str] = mapped_column(String(16))
    # Either an explicit JSON list of device ids, or a serial range
    # prefix + zero-padded number in [range_start, range_end].
    device_ids: Mapped[str | None] = mapped_column(Text, nullable=True)
    range_prefix: Mapped[str | None] = mapped_column(String(48), nullable=True)
    range_start: Mapped[int | None] = mapped_column(Integer, nullable=True)
    range_end: Mapped[int | None] = mapped_column(Integer, nullable=True)
    range_width: Mapped[int | None] = mapped_column(Integer, nullable=True)
    max_count: Mapped[int] = mapped_column(Integer)
    used_count: Mapped[int] = mapped_column(Integer, default=0)
    expires_at: Mapped[dt.datetime] = mapped_column(UTCDateTime())
    status: Mapped[str] = mapped_column(String(16))  # open | closed
    created_by: Mapped[str] = mapped_column(String(100))
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime())


class AttestationRoot(Base):
    """A chip vendor's attestation root CA, trusted by one tenant."""

    __tablename__ = "attestation_roots"
    __table_args__ = (UniqueConstraint("tenant_id", "fingerprint"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    tenant_id: Mapped[int] = mapped_column(ForeignKey("tenants.id"))
    name: Mapped[str] = mapped_column(String(100))
    fingerprint: Mapped[str] = mapped_column(String(64))
    certificate_pem: Mapped[str] = mapped_column(Text)
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime())


class EnrollmentNonce(Base):
    """A single-use challenge for one attestation statement."""

    __tablename__ = "enrollment_nonces"

    nonce: Mapped[str] = mapped_column(String(64), primary_key=True)  # base64url
    tenant_id: Mapped[int] = mapped_column(ForeignKey("tenants.id"))
    expires_at: Mapped[dt.datetime] = mapped_column(UTCDateTime())
    used_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime(), nullable=True)


class ReprovisionGrant(Base):
    """Explicit, audited permission to enroll an already-provisioned device again."""

    __tablename__ = "reprovision_grants"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    tenant_id: Mapped[int] = mapped_column(ForeignKey("tenants.id"))
    device_id: Mapped[str] = mapped_column(String(64))
    reason: Mapped[str] = mapped_column(String(200))
    granted_by: Mapped[str] = mapped_column(String(100))
    expires_at: Mapped[dt.datetime] = mapped_column(UTCDateTime())
    used_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime(), nullable=True)


class EnrollmentAttempt(Base):
    """Every enrollment attempt, accepted or refused: who provisioned what, when, how."""

    __tablename__ = "enrollment_attempts"
    __table_args__ = (
        Index("ix_attempts_tenant_ts", "tenant_id", "ts"),
        Index("ix_attempts_batch", "batch_id", "result"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    tenant_id: Mapped[int] = mapped_column(ForeignKey("tenants.id"))
    factory_id: Mapped[int | None] = mapped_column(Integer, nullable=True)
    batch_id: Mapped[int | None] = mapped_column(Integer, nullable=True)
    token_id: Mapped[str] = mapped_column(String(100))
    device_id: Mapped[str] = mapped_column(String(64))
    csr_fingerprint: Mapped[str | None] = mapped_column(String(64), nullable=True)
    key_origin: Mapped[str | None] = mapped_column(String(32), nullable=True)
    result: Mapped[str] = mapped_column(String(16))  # accepted | refused
    category: Mapped[str | None] = mapped_column(String(32), nullable=True)
    reason: Mapped[str | None] = mapped_column(String(300), nullable=True)
    source: Mapped[str | None] = mapped_column(String(64), nullable=True)
    serial: Mapped[str | None] = mapped_column(String(42), nullable=True)
    ts: Mapped[dt.datetime] = mapped_column(UTCDateTime())
    # How it came: "batch" (a factory station), "rest", "rest-batch", "est", "cli".
    route: Mapped[str | None] = mapped_column(String(32), nullable=True)
    environment: Mapped[str | None] = mapped_column(String(16), nullable=True)
