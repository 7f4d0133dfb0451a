"""Pydantic request and response bodies of the identity API."""

from __future__ import annotations

import datetime as dt
import json

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding
from pydantic import BaseModel, Field

from fleetward.identity.issuance import MAX_BATCH, Issued
from fleetward.identity.models import CertificateAuthority, CertificateRecord, Device
from fleetward.identity.profile import MAX_CSR_BYTES

__all__ = [
    "BatchEnrollIn",
    "BatchEnrollOut",
    "CaOut",
    "CertificateOut",
    "DeviceIn",
    "DeviceOut",
    "DistrustIn",
    "DistrustOut",
    "EnrollIn",
    "RevokeIn",
    "StateIn",
    "certificate_out",
]


class DeviceIn(BaseModel):
    """Register a device."""

    device_id: str = Field(max_length=64)
    product: str | None = Field(default=None, max_length=64)
    labels: dict[str, str] | None = None


class DeviceOut(BaseModel):
    """A device in the registry."""

    device_id: str
    product: str
    labels: dict[str, str]
    state: str
    created_at: dt.datetime
    updated_at: dt.datetime

    @classmethod
    def of(cls, d: Device) -> DeviceOut:
        """From the ORM row."""
        return cls(
            device_id=d.device_id,
            product=d.product,
            labels=json.loads(d.labels),
            state=d.state,
            created_at=d.created_at,
            updated_at=d.updated_at,
        )


class EnrollIn(BaseModel):
    """First enrollment of one device."""

    csr: str = Field(max_length=MAX_CSR_BYTES * 2, description="PKCS#10, PEM")
    environment: str | None = Field(default=None, description="test or production")
    product: str | None = Field(default=None, max_length=64)
    labels: dict[str, str] | None = None


class BatchItemIn(BaseModel):
    """One device of a batch."""

    device_id: str = Field(max_length=200)
    csr: str = Field(max_length=MAX_CSR_BYTES * 2)
    product: str | None = Field(default=None, max_length=64)
    labels: dict[str, str] | None = None


class BatchEnrollIn(BaseModel):
    """Batch enrollment (factory stations)."""

    environment: str | None = None
    items: list[BatchItemIn] = Field(max_length=MAX_BATCH)


class CertificateOut(BaseModel):
    """An issued certificate."""

    serial: str
    device_id: str | None = None
    ca_id: int
    environment: str
    key_origin: str | None = None
    fingerprint: str
    not_before: dt.datetime
    not_after: dt.datetime
    status: str
    revoked_at: dt.datetime | None
    revocation_reason: str | None
    certificate: str = Field(description="PEM")

    @classmethod
    def of(cls, r: CertificateRecord, device_id: str | None = None) -> CertificateOut:
        """From the ORM row."""
        pem = x509.load_der_x509_certificate(r.der).public_bytes(Encoding.PEM).decode()
        return cls(
            serial=r.serial,
            device_id=device_id,
            ca_id=r.ca_id,
            environment=r.environment,
            key_origin=r.key_origin,
            fingerprint=r.fingerprint,
            not_before=r.not_before,
            not_after=r.not_after,
            status=r.status,
            revoked_at=r.revoked_at,
            revocation_reason=r.revocation_reason,
            certificate=pem,
        )


def certificate_out(issued: Issued) -> CertificateOut:
    """A just-issued certificate."""
    return CertificateOut(
        serial=issued.serial,
        device_id=issued.device_id or None,
        ca_id=issued.ca_id,
        environment=issued.environment,
        key_origin=issued.key_origin,
        fingerprint=issued.fingerprint,
        not_before=issued.not_before,
        not_after=issued.not_after,
        status="good",
        revoked_at=None,
        revocation_reason=None,
        certificate=issued.certificate.public_bytes(Encoding.PEM).decode(),
    )


class BatchItemOut(BaseModel):
    """Outcome of one batch item."""

    device_id: str
    certificate: CertificateOut | None = None
    problem: dict[str, object] | None = None


class BatchEnrollOut(BaseModel):
    """Outcome of a batch."""

    issued: int
    refused: int
    items: list[BatchItemOut]


class RevokeIn(BaseModel):
    """Revocation with an RFC 5280 reason."""

    reason: str = "unspecified"


class CohortRevokeIn(BaseModel):
    """Revoke a cohort of devices at once."""

    device_ids: list[str] = Field(min_length=1, max_length=100_000)
    reason: str = "unspecified"


class StateIn(BaseModel):
    """A lifecycle change."""

    state: str
    reason: str | None = None


class DistrustIn(BaseModel):
    """Close a retired CA's trust window now."""

    force: bool = Field(
        default=False,
        description="distrust it although devices still depend on it: their certificates "
        "are revoked and they must be re-provisioned",
    )


class DistrustOut(BaseModel):
    """What closing a window did."""

    ca_id: int
    revoked: int = Field(description="certificates of the CA revoked with it")
    stranded_sample: list[str] = Field(description="some of the devices cut off")
    why: str


class CaOut(BaseModel):
    """A CA."""

    id: int
    kind: str
    environment: str | None
    status: str
    subject: str
    key_uri: str | None = Field(
        default=None,
        description="where the CA key is kept (file path or PKCS#11 URI); shown only to "
        "callers who may manage CAs (role admin), null for everyone else",
    )
    parent_id: int | None
    certificate: str | None
    csr: str | None
    trusted_until: dt.datetime | None = Field(
        default=None,
        description="a retired CA: the end of its dual-trust window (device listeners "
        "trust it until then, or until no device depends on it)",
    )
    distrusted_at: dt.datetime | None = Field(
        default=None, description="when the CA left every trust file (status distrusted)"
    )
    retirement_reason: str | None = Field(
        default=None, description="what its certificates are revoked for once replaced"
    )

    @classmethod
    def of(cls, ca: CertificateAuthority, *, key_location: bool) -> CaOut:
        """From the ORM row; ``key_location`` says whether ``key_uri`` is shown."""
        return cls(
            id=ca.id,
            kind=ca.kind,
            environment=ca.environment,
            status=ca.status,
            subject=ca.subject,
            key_uri=ca.key_uri if key_location else None,
            parent_id=ca.parent_id,
            certificate=ca.certificate_pem,
            csr=ca.csr_pem,
            trusted_until=ca.trusted_until,
            distrusted_at=ca.distrusted_at,
            retirement_reason=ca.retirement_reason,
        )
