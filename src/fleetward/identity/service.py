"""Device identity use cases: registry, lifecycle, revocation.

Issuance (enrollment and renewal) lives in :mod:`fleetward.identity.issuance`.

Every function takes the caller's session and changes state together with
its audit entry; the unit of work commits. Operator calls take a
:class:`~fleetward.tenancy.roles.Principal` and only ever see its tenant:
another tenant's device or certificate is "not found".
"""

from __future__ import annotations

import datetime as dt

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from fleetward.audit import service as audit
from fleetward.errors import (
    ConflictError,
    NotFoundError,
)
from fleetward.identity import profile
from fleetward.identity.issuance import labels_json, product_name
from fleetward.identity.lifecycle import check_transition
from fleetward.identity.models import CertificateAuthority, CertificateRecord, Device
from fleetward.identity.revocation import parse_reason
from fleetward.store import utcnow
from fleetward.tenancy.roles import Permission, Principal, require

__all__ = [
    "get_certificate",
    "get_device",
    "list_certificates",
    "list_devices",
    "register_device",
    "revoke_certificate",
    "revoke_device",
    "revoke_superseded",
    "set_device_state",
]


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
        product=product_name(product),
        labels=labels_json(labels),
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
    record.revocation_seq = session.execute(
        update(CertificateAuthority)
        .where(CertificateAuthority.id == record.ca_id)
        .values(revocations=CertificateAuthority.revocations + 1)
        .returning(CertificateAuthority.revocations)
    ).scalar_one()
    audit.append(
        session,
        actor=actor,
        action="certificate.revoke",
        subject=f"device:{device_id}",
        tenant_id=record.tenant_id,
        details={"serial": record.serial, "reason": reason, "ca": record.ca_id},
        now=now,
    )


def revoke_superseded(
    session: Session,
    principal: Principal,
    *,
    device_id: str,
    keep_serial: str,
    now: dt.datetime | None = None,
) -> int:
    """Revoke (``superseded``) every good certificate of a re-provisioned device
    but the new one; returns how many."""
    now = now or utcnow()
    device = get_device(session, principal, device_id)
    olds = session.execute(
        select(CertificateRecord).where(
            CertificateRecord.device_pk == device.id,
            CertificateRecord.status == "good",
            CertificateRecord.serial != keep_serial,
        )
    ).scalars()
    count = 0
    for record in olds:
        _revoke(
            session,
            record,
            reason="superseded",
            actor=principal.actor,
            device_id=device_id,
            now=now,
        )
        count += 1
    return count


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
