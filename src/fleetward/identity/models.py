"""Tables of the identity domain: CAs, devices, certificates, published CRLs."""

from __future__ import annotations

import datetime as dt

from sqlalchemy import (
    BigInteger,
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

__all__ = ["CertificateAuthority", "CertificateRecord", "Device", "PublishedCrl"]


class CertificateAuthority(Base):
    """A root or issuing CA of one tenant; the key lives behind a ``Signer`` URI."""

    __tablename__ = "certificate_authorities"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    tenant_id: Mapped[int] = mapped_column(ForeignKey("tenants.id"), index=True)
    kind: Mapped[str] = mapped_column(String(16))  # root | issuing
    environment: Mapped[str | None] = mapped_column(String(16), nullable=True)
    # active | pending | retired (issues nothing, still trusted until
    # ``trusted_until``) | distrusted (in no trust file; its CRL stays published)
    status: Mapped[str] = mapped_column(String(16))
    subject: Mapped[str] = mapped_column(String(300))
    key_uri: Mapped[str] = mapped_column(String(300))
    certificate_pem: Mapped[str | None] = mapped_column(Text, nullable=True)
    csr_pem: Mapped[str | None] = mapped_column(Text, nullable=True)
    parent_id: Mapped[int | None] = mapped_column(
        ForeignKey("certificate_authorities.id"), nullable=True
    )
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime())
    # Bumped in every revocation's transaction: the CRL publisher compares it
    # with what its last CRL saw, instead of counting revoked rows.
    revocations: Mapped[int] = mapped_column(BigInteger, default=0, server_default="0")
    # The dual-trust window of a retired issuing CA (see identity.rotation):
    # its deadline, the RFC 5280 reason its certificates are revoked for
    # (superseded, or cACompromise), who retired it, whether it is distrusted
    # as soon as no device depends on it, and when it was distrusted.
    trusted_until: Mapped[dt.datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    retirement_reason: Mapped[str | None] = mapped_column(String(32), nullable=True)
    retired_by: Mapped[str | None] = mapped_column(String(200), nullable=True)
    distrust_when_migrated: Mapped[bool] = mapped_column(
        Boolean, default=False, server_default=false()
    )
    distrusted_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime(), nullable=True)


class Device(Base):
    """A device in the registry. ``device_id`` is unique within its tenant."""

    __tablename__ = "devices"
    __table_args__ = (UniqueConstraint("tenant_id", "device_id"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    tenant_id: Mapped[int] = mapped_column(ForeignKey("tenants.id"))
    device_id: Mapped[str] = mapped_column(String(64))
    product: Mapped[str] = mapped_column(String(64))
    labels: Mapped[str] = mapped_column(Text, default="{}")
    state: Mapped[str] = mapped_column(String(16))
    # How the current identity key was made: hardware-attested | software.
    key_origin: Mapped[str | None] = mapped_column(String(32), nullable=True)
    factory_id: Mapped[int | None] = mapped_column(Integer, nullable=True)
    batch_id: Mapped[int | None] = mapped_column(Integer, nullable=True)
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime())
    updated_at: Mapped[dt.datetime] = mapped_column(UTCDateTime())


class CertificateRecord(Base):
    """One issued device certificate (the history of a device is its rows)."""

    __tablename__ = "certificates"
    __table_args__ = (
        Index("ix_certificates_ca_status", "ca_id", "status"),
        Index("ix_certificates_ca_revocation", "ca_id", "revocation_seq"),
        Index("ix_certificates_device", "device_pk"),
    )

    serial: Mapped[str] = mapped_column(String(42), primary_key=True)  # lowercase hex
    tenant_id: Mapped[int] = mapped_column(ForeignKey("tenants.id"))
    device_pk: Mapped[int] = mapped_column(ForeignKey("devices.id"))
    ca_id: Mapped[int] = mapped_column(ForeignKey("certificate_authorities.id"))
    environment: Mapped[str] = mapped_column(String(16))
    key_origin: Mapped[str | None] = mapped_column(String(32), nullable=True)
    fingerprint: Mapped[str] = mapped_column(String(64), unique=True)
    not_before: Mapped[dt.datetime] = mapped_column(UTCDateTime())
    not_after: Mapped[dt.datetime] = mapped_column(UTCDateTime())
    status: Mapped[str] = mapped_column(String(16))  # good | revoked
    revoked_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    revocation_reason: Mapped[str | None] = mapped_column(String(32), nullable=True)
    # The CA's revocation counter after this revocation: per CA, increasing in
    # commit order (the counter row is locked until commit), so the CRL
    # publisher can read only what it has not seen yet.
    revocation_seq: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    der: Mapped[bytes] = mapped_column(LargeBinary)


class PublishedCrl(Base):
    """The newest CRL of one issuing CA, built off the request path."""

    __tablename__ = "published_crls"

    ca_id: Mapped[int] = mapped_column(ForeignKey("certificate_authorities.id"), primary_key=True)
    number: Mapped[int] = mapped_column(BigInteger)
    this_update: Mapped[dt.datetime] = mapped_column(UTCDateTime())
    next_update: Mapped[dt.datetime] = mapped_column(UTCDateTime())
    entries: Mapped[int] = mapped_column(Integer)
    revocations_seen: Mapped[int] = mapped_column(BigInteger, default=0, server_default="0")
    # On SQLite the DER lives in a file (``der_file``, under the home's
    # ``crls/``): writing a 50 MiB blob would hold the database write lock
    # for ~0.1 s and stall revocations. On PostgreSQL it is stored here.
    der: Mapped[bytes] = mapped_column(LargeBinary)
    der_file: Mapped[str | None] = mapped_column(String(200), nullable=True)
