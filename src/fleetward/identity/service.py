"""Device identity use cases: registry, enrollment, renewal, revocation.

Every function takes the caller's session and changes state together with
its audit entry; the unit of work commits. Operator calls take a
:class:`~fleetward.tenancy.roles.Principal` and only ever see its tenant:
another tenant's device or certificate is "not found".
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
from dataclasses import dataclass
from typing import Any

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa
from cryptography.hazmat.primitives.serialization import Encoding
from sqlalchemy import select, update
from sqlalchemy.orm import Session

from fleetward.audit import service as audit
from fleetward.errors import (
    CertificateError,
    ConflictError,
    FleetwardError,
    InvalidInputError,
    NotFoundError,
    PayloadTooLargeError,
    PermissionDeniedError,
    SignatureError,
)
from fleetward.identity import profile
from fleetward.identity.ca_service import Pki, active_issuing_ca
from fleetward.identity.lifecycle import check_transition
from fleetward.identity.models import CertificateAuthority, CertificateRecord, Device
from fleetward.identity.revocation import parse_reason
from fleetward.keys import sign_certificate, verify_signature
from fleetward.store import utcnow
from fleetward.tenancy.models import Tenant
from fleetward.tenancy.roles import ENVIRONMENTS, Permission, Principal, require

__all__ = [
    "MAX_BATCH",
    "MAX_CERT_BYTES",
    "BatchItem",
    "BatchResult",
    "enroll",
    "enroll_batch",
    "get_certificate",
    "get_device",
    "list_certificates",
    "list_devices",
    "register_device",
    "renew",
    "renewal_proof_message",
    "revoke_certificate",
    "revoke_device",
    "set_device_state",
]

MAX_BATCH = 1000  # items per batch enrollment request
MAX_CERT_BYTES = 16 * 1024  # a presented device certificate
MAX_LABELS = 32  # labels per device; keys and values are short strings
DEFAULT_PRODUCT = "default"


def _labels(labels: dict[str, str] | None) -> str:
    labels = labels or {}
    if len(labels) > MAX_LABELS:
        raise InvalidInputError(f"at most {MAX_LABELS} labels per device")
    for k, v in labels.items():
        if not isinstance(k, str) or not isinstance(v, str) or len(k) > 64 or len(v) > 128:
            raise InvalidInputError("labels are string keys (<= 64) to string values (<= 128)")
    return json.dumps(labels, sort_keys=True)


def _product(product: str | None) -> str:
    product = product or DEFAULT_PRODUCT
    if not profile.DEVICE_ID.match(product):
        raise InvalidInputError("product must be 1-64 characters of letters, digits, '.', '_', '-'")
    return product


def get_device(session: Session, principal: Principal, device_id: str) -> Device:
    """A device of the principal's tenant."""
    require(principal, Permission.DEVICE_READ)
    device = session.execute(
        select(Device).where(Device.tenant_id == principal.tenant_id, Device.device_id == device_id)
    ).scalar()
    if device is None:
        raise NotFoundError(f"device {device_id!r} not found")
    return device


def list_devices(
    session: Session,
    principal: Principal,
    *,
    state: str | None = None,
    product: str | None = None,
    after: str = "",
    limit: int = 100,
) -> list[Device]:
    """Devices of the tenant, ordered by id, paged with ``after``."""
    require(principal, Permission.DEVICE_READ)
    stmt = select(Device).where(Device.tenant_id == principal.tenant_id, Device.device_id > after)
    if state:
        stmt = stmt.where(Device.state == state)
    if product:
        stmt = stmt.where(Device.product == product)
    stmt = stmt.order_by(Device.device_id).limit(max(1, min(limit, 1000)))
    return list(session.execute(stmt).scalars())


def register_device(
    session: Session,
    principal: Principal,
    *,
    device_id: str,
    product: str | None = None,
    labels: dict[str, str] | None = None,
    now: dt.datetime | None = None,
) -> Device:
    """Register a device in ``pending`` state (before it enrolls)."""
    require(principal, Permission.DEVICE_MANAGE)
    profile.check_device_id(device_id)
    now = now or utcnow()
    exists = session.execute(
        select(Device.id).where(
            Device.tenant_id == principal.tenant_id, Device.device_id == device_id
        )
    ).first()
    if exists:
        raise ConflictError(f"device {device_id!r} already exists")
    device = Device(
        tenant_id=principal.tenant_id,
        device_id=device_id,
        product=_product(product),
        labels=_labels(labels),
        state="pending",
        created_at=now,
        updated_at=now,
    )
    session.add(device)
    audit.append(
        session,
        actor=principal.actor,
        action="device.register",
        subject=f"device:{device_id}",
        tenant_id=principal.tenant_id,
        details={"product": device.product},
        now=now,
    )
    return device


def _environment(principal: Principal, requested: str | None) -> str:
    env = requested or principal.environment or "production"
    if env not in ENVIRONMENTS:
        raise InvalidInputError(f"unknown environment {env!r}; one of {', '.join(ENVIRONMENTS)}")
    if principal.environment is not None and env != principal.environment:
        raise PermissionDeniedError(
            f"this token is scoped to the {principal.environment} environment, not {env}"
        )
    return env


def _has_good_certificate(session: Session, device: Device, now: dt.datetime) -> bool:
    return (
        session.execute(
            select(CertificateRecord.serial).where(
                CertificateRecord.device_pk == device.id,
                CertificateRecord.status == "good",
                CertificateRecord.not_after > now,
            )
        ).first()
        is not None
    )


def _issue(
    session: Session,
    pki: Pki,
    *,
    tenant_id: int,
    tenant_name: str,
    lifetime_days: int,
    device: Device,
    accepted: profile.AcceptedCsr,
    environment: str,
    actor: str,
    action: str,
    now: dt.datetime,
) -> CertificateRecord:
    ca = active_issuing_ca(session, tenant_id=tenant_id, environment=environment)
    issuer = pki.certificate(ca)
    builder = profile.device_certificate(
        public_key=accepted.public_key,
        device_id=device.device_id,
        tenant=tenant_name,
        environment=environment,
        issuer=issuer,
        serial=x509.random_serial_number(),
        lifetime=dt.timedelta(days=lifetime_days),
        now=now,
        crl_url=pki.crl_url(ca.id),
        ocsp_url=pki.ocsp_url,
    )
    cert = sign_certificate(builder, pki.keyring.open(ca.key_uri))
    der = cert.public_bytes(Encoding.DER)
    record = CertificateRecord(
        serial=format(cert.serial_number, "x"),
        tenant_id=tenant_id,
        device_pk=device.id,
        ca_id=ca.id,
        environment=environment,
        fingerprint=hashlib.sha256(der).hexdigest(),
        not_before=cert.not_valid_before_utc,
        not_after=cert.not_valid_after_utc,
        status="good",
        der=der,
    )
    session.add(record)
    if device.state == "pending":
        device.state = "active"
    device.updated_at = now
    audit.append(
        session,
        actor=actor,
        action=action,
        subject=f"device:{device.device_id}",
        tenant_id=tenant_id,
        details={
            "serial": record.serial,
            "ca": ca.id,
            "environment": environment,
            "key": accepted.key_type,
            "fingerprint": record.fingerprint,
            "not_after": record.not_after.isoformat(),
        },
        now=now,
    )
    return record


def _enrollable_device(
    session: Session,
    principal: Principal,
    *,
    device_id: str,
    existing: Device | None,
    product: str | None,
    labels: dict[str, str] | None,
    now: dt.datetime,
) -> Device:
    if existing is None:
        device = Device(
            tenant_id=principal.tenant_id,
            device_id=device_id,
            product=_product(product),
            labels=_labels(labels),
            state="pending",
            created_at=now,
            updated_at=now,
        )
        session.add(device)
        session.flush()
        return device
    if existing.state in ("quarantined", "revoked", "retired"):
        raise ConflictError(f"device {device_id!r} is {existing.state} and cannot enroll")
    if existing.state == "active" and _has_good_certificate(session, existing, now):
        raise ConflictError(f"device {device_id!r} is already enrolled; renew its certificate")
    return existing


def _tenant(session: Session, principal: Principal) -> Tenant:
    tenant = session.get(Tenant, principal.tenant_id)
    if tenant is None:
        raise NotFoundError("tenant not found")
    return tenant


def enroll(
    session: Session,
    pki: Pki,
    principal: Principal,
    *,
    device_id: str,
    csr: bytes,
    environment: str | None = None,
    product: str | None = None,
    labels: dict[str, str] | None = None,
    now: dt.datetime | None = None,
) -> CertificateRecord:
    """Issue a device's first certificate from its CSR.

    The device is created if the registry does not know it yet.

    Raises:
        PermissionDeniedError: the role may not enroll devices.
        InvalidInputError / PayloadTooLargeError: malformed id or CSR.
        CertificateError / SignatureError: the CSR breaks the profile.
        ConflictError: the device is already enrolled, or not enrollable.
    """
    require(principal, Permission.DEVICE_ENROLL)
    now = now or utcnow()
    profile.check_device_id(device_id)
    env = _environment(principal, environment)
    accepted = profile.check_csr(
        profile.load_csr(csr), device_id=device_id, tenant=principal.tenant_name
    )
    existing = session.execute(
        select(Device).where(Device.tenant_id == principal.tenant_id, Device.device_id == device_id)
    ).scalar()
    device = _enrollable_device(
        session,
        principal,
        device_id=device_id,
        existing=existing,
        product=product,
        labels=labels,
        now=now,
    )
    tenant = _tenant(session, principal)
    return _issue(
        session,
        pki,
        tenant_id=tenant.id,
        tenant_name=tenant.name,
        lifetime_days=tenant.cert_lifetime_days,
        device=device,
        accepted=accepted,
        environment=env,
        actor=principal.actor,
        action="certificate.issue",
        now=now,
    )


@dataclass(frozen=True)
class BatchItem:
    """One device of a batch enrollment."""

    device_id: str
    csr: bytes
    product: str | None = None
    labels: dict[str, str] | None = None


@dataclass(frozen=True)
class BatchResult:
    """Outcome of one batch item: a certificate, or the error that refused it."""

    device_id: str
    record: CertificateRecord | None = None
    error: FleetwardError | None = None


def enroll_batch(
    session: Session,
    pki: Pki,
    principal: Principal,
    *,
    items: list[BatchItem],
    environment: str | None = None,
    now: dt.datetime | None = None,
) -> list[BatchResult]:
    """Enroll many devices in one transaction (factory stations).

    Each item succeeds or is refused on its own; refusals are audited in the
    same transaction, and a refused item leaves no state behind.

    Raises:
        PayloadTooLargeError: more than ``MAX_BATCH`` items.
    """
    require(principal, Permission.DEVICE_ENROLL)
    if len(items) > MAX_BATCH:
        raise PayloadTooLargeError(f"batch of {len(items)} items; the limit is {MAX_BATCH}")
    now = now or utcnow()
    env = _environment(principal, environment)
    tenant = _tenant(session, principal)
    ids = [i.device_id for i in items]
    existing = {
        d.device_id: d
        for d in session.execute(
            select(Device).where(Device.tenant_id == tenant.id, Device.device_id.in_(ids))
        ).scalars()
    }
    seen: set[str] = set()
    results: list[BatchResult] = []
    for item in items:
        try:
            if item.device_id in seen:
                raise ConflictError(f"device {item.device_id!r} appears twice in the batch")
            seen.add(item.device_id)
            profile.check_device_id(item.device_id)
            accepted = profile.check_csr(
                profile.load_csr(item.csr), device_id=item.device_id, tenant=tenant.name
            )
            device = _enrollable_device(
                session,
                principal,
                device_id=item.device_id,
                existing=existing.get(item.device_id),
                product=item.product,
                labels=item.labels,
                now=now,
            )
            record = _issue(
                session,
                pki,
                tenant_id=tenant.id,
                tenant_name=tenant.name,
                lifetime_days=tenant.cert_lifetime_days,
                device=device,
                accepted=accepted,
                environment=env,
                actor=principal.actor,
                action="certificate.issue",
                now=now,
            )
            results.append(BatchResult(device_id=item.device_id, record=record))
        except FleetwardError as exc:
            audit.append(
                session,
                actor=principal.actor,
                action="certificate.issue",
                subject=f"device:{item.device_id[:64]}",
                tenant_id=tenant.id,
                outcome="refused",
                details={"reason": exc.detail, "batch": True},
                now=now,
            )
            results.append(BatchResult(device_id=item.device_id, error=exc))
    return results


def renewal_proof_message(csr_der: bytes) -> bytes:
    """What the current key signs to authorise a renewal with a new key."""
    return b"fleetward-renew/v1\n" + hashlib.sha256(csr_der).digest()


def _verify_with(key: Any, signature: bytes, message: bytes) -> None:
    if isinstance(key, rsa.RSAPublicKey):
        try:
            key.verify(signature, message, padding.PKCS1v15(), hashes.SHA256())
        except InvalidSignature as exc:
            raise SignatureError("renewal proof does not verify with the current key") from exc
    elif isinstance(key, ec.EllipticCurvePublicKey | ed25519.Ed25519PublicKey):
        verify_signature(key, signature=signature, data=message)
    else:
        raise SignatureError("unsupported key type for the renewal proof")


def load_presented_certificate(data: bytes) -> x509.Certificate:
    """Parse a certificate a device presents (PEM or DER), within the limit."""
    if len(data) > MAX_CERT_BYTES:
        raise PayloadTooLargeError(f"certificate over {MAX_CERT_BYTES} bytes")
    try:
        if data.lstrip().startswith(b"-----BEGIN"):
            return x509.load_pem_x509_certificate(data)
        return x509.load_der_x509_certificate(data)
    except ValueError as exc:
        raise InvalidInputError(f"malformed certificate: {exc}") from exc


def renew(
    session: Session,
    pki: Pki,
    *,
    current: bytes,
    csr: bytes,
    proof: bytes | None = None,
    now: dt.datetime | None = None,
) -> CertificateRecord:
    """Issue a new certificate to a device that proves it holds its current one.

    Possession is proven by the CSR signature when the key is unchanged, and
    by ``proof`` (the current key's signature over
    :func:`renewal_proof_message`) when the device moves to a new key.

    Raises:
        CertificateError: the presented certificate is not ours, is revoked or
            expired, or the device may not renew.
        SignatureError: the proof of possession fails.
    """
    now = now or utcnow()
    cert = load_presented_certificate(current)
    der = cert.public_bytes(Encoding.DER)
    record = session.get(CertificateRecord, format(cert.serial_number, "x"))
    if record is None or record.der != der:
        raise CertificateError("the presented certificate was not issued by fleetward")
    if record.status == "revoked":
        raise CertificateError("the presented certificate is revoked")
    if record.not_after <= now:
        raise CertificateError("the presented certificate has expired; enroll again")
    device = session.get(Device, record.device_pk)
    assert device is not None
    if device.state not in ("active", "quarantined"):
        raise CertificateError(f"device {device.device_id!r} is {device.state} and cannot renew")
    tenant = session.get(Tenant, record.tenant_id)
    assert tenant is not None
    accepted = profile.check_csr(
        profile.load_csr(csr), device_id=device.device_id, tenant=tenant.name
    )
    if accepted.public_key != cert.public_key():
        if proof is None:
            raise SignatureError("a new key needs a proof signed by the current certificate's key")
        _verify_with(cert.public_key(), proof, renewal_proof_message(accepted.der))
    return _issue(
        session,
        pki,
        tenant_id=tenant.id,
        tenant_name=tenant.name,
        lifetime_days=tenant.cert_lifetime_days,
        device=device,
        accepted=accepted,
        environment=record.environment,
        actor=f"device:{device.device_id}",
        action="certificate.renew",
        now=now,
    )


def get_certificate(session: Session, principal: Principal, serial: str) -> CertificateRecord:
    """A certificate of the tenant by serial (hex)."""
    require(principal, Permission.DEVICE_READ)
    record = session.get(CertificateRecord, serial.lower().lstrip("0") or "0")
    if record is None or record.tenant_id != principal.tenant_id:
        raise NotFoundError(f"certificate {serial!r} not found")
    return record


def list_certificates(
    session: Session, principal: Principal, device_id: str
) -> list[CertificateRecord]:
    """A device's certificate history, oldest first."""
    device = get_device(session, principal, device_id)
    stmt = (
        select(CertificateRecord)
        .where(CertificateRecord.device_pk == device.id)
        .order_by(CertificateRecord.not_before)
    )
    return list(session.execute(stmt).scalars())


def _revoke(
    session: Session,
    record: CertificateRecord,
    *,
    reason: str,
    actor: str,
    device_id: str,
    now: dt.datetime,
) -> None:
    record.status = "revoked"
    record.revoked_at = now
    record.revocation_reason = reason
    session.execute(
        update(CertificateAuthority)
        .where(CertificateAuthority.id == record.ca_id)
        .values(revocations=CertificateAuthority.revocations + 1)
    )
    audit.append(
        session,
        actor=actor,
        action="certificate.revoke",
        subject=f"device:{device_id}",
        tenant_id=record.tenant_id,
        details={"serial": record.serial, "reason": reason, "ca": record.ca_id},
        now=now,
    )


def revoke_certificate(
    session: Session,
    principal: Principal,
    serial: str,
    *,
    reason: str = "unspecified",
    now: dt.datetime | None = None,
) -> CertificateRecord:
    """Revoke one certificate with an RFC 5280 reason.

    Only the row changes here: the CRL is rebuilt by the publisher, OCSP
    reads the row, so this returns in constant time at any CRL size.
    """
    require(principal, Permission.CERT_REVOKE)
    parse_reason(reason)
    now = now or utcnow()
    record = get_certificate(session, principal, serial)
    if record.status == "revoked":
        raise ConflictError(f"certificate {record.serial} is already revoked")
    device = session.get(Device, record.device_pk)
    assert device is not None
    _revoke(
        session, record, reason=reason, actor=principal.actor, device_id=device.device_id, now=now
    )
    return record


def set_device_state(
    session: Session,
    principal: Principal,
    device_id: str,
    *,
    state: str,
    reason: str | None = None,
    now: dt.datetime | None = None,
) -> Device:
    """Move a device through its lifecycle (revocation revokes its certificates)."""
    require(principal, Permission.DEVICE_MANAGE)
    now = now or utcnow()
    device = get_device(session, principal, device_id)
    check_transition(device.state, state)
    if state in ("revoked", "retired"):
        rfc_reason = "cessationOfOperation" if state == "retired" else (reason or "unspecified")
        parse_reason(rfc_reason)
        goods = session.execute(
            select(CertificateRecord).where(
                CertificateRecord.device_pk == device.id, CertificateRecord.status == "good"
            )
        ).scalars()
        for record in goods:
            _revoke(
                session,
                record,
                reason=rfc_reason,
                actor=principal.actor,
                device_id=device_id,
                now=now,
            )
    old = device.state
    device.state = state
    device.updated_at = now
    audit.append(
        session,
        actor=principal.actor,
        action="device.state",
        subject=f"device:{device_id}",
        tenant_id=principal.tenant_id,
        details={"from": old, "to": state, "reason": reason},
        now=now,
    )
    return device


def revoke_device(
    session: Session,
    principal: Principal,
    device_id: str,
    *,
    reason: str = "unspecified",
    now: dt.datetime | None = None,
) -> Device:
    """Revoke a device and every certificate it holds."""
    require(principal, Permission.CERT_REVOKE)
    return set_device_state(session, principal, device_id, state="revoked", reason=reason, now=now)
