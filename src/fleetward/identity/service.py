"""Device identity use cases: registry, lifecycle, revocation.

Issuance (enrollment and renewal) lives in :mod:`fleetward.identity.issuance`.

Every function takes the caller's session and changes state together with
its audit entry; the unit of work commits. Operator calls take a
:class:`~fleetward.tenancy.roles.Principal` and only ever see its tenant:
another tenant's device or certificate is "not found".
"""

from __future__ import annotations

import datetime as dt

from sqlalchemy import bindparam, select, update
from sqlalchemy.orm import Session

from fleetward import audit, observe
from fleetward.errors import (
    ConflictError,
    InvalidInputError,
    NotFoundError,
)
from fleetward.identity import _residence as residence
from fleetward.identity import profile
from fleetward.identity.issuance import labels_json, product_name
from fleetward.identity.lifecycle import check_transition
from fleetward.identity.models import CertificateAuthority, CertificateRecord, Device
from fleetward.identity.revocation import parse_reason
from fleetward.store import utcnow
from fleetward.tenancy import scope
from fleetward.tenancy.roles import Permission, Principal, require

__all__ = [
    "authorize_on_devices",
    "device_environments",
    "find_device_pk",
    "get_certificate",
    "get_device",
    "list_certificates",
    "list_devices",
    "quarantine_devices",
    "register_device",
    "revoke_certificate",
    "revoke_device",
    "revoke_devices",
    "revoke_superseded",
    "set_device_state",
]


def device_environments(session: Session, device_pks: list[int]) -> set[str]:
    """The environments these devices live in (:mod:`fleetward.identity._residence`)."""
    return residence.device_environments(session, device_pks, now=utcnow())


def authorize_on_devices(
    session: Session, principal: Principal, action: scope.Action, device_pks: list[int]
) -> None:
    """Raise unless the token's scope reaches every environment these devices
    live in (:mod:`fleetward.identity._residence`; a device with no
    certificate yet lives in none).

    Raises:
        PermissionDeniedError / OutOfScopeError: see :func:`fleetward.tenancy.scope.decide`.
    """
    if principal.environment is None:
        # Where the devices live only matters to an environment-scoped token
        # (rule 5); an unscoped one (playbook steps, cohort revocations by an
        # admin) must not pay two chunked queries per thousand devices for it.
        scope.authorize(principal, action)
        return
    scope.authorize(principal, action, environments=device_environments(session, device_pks))


def find_device_pk(session: Session, *, tenant_id: int, device_id: str) -> int | None:
    """The registry key of a device of the tenant, if the registry knows it."""
    return session.execute(
        select(Device.id).where(Device.tenant_id == tenant_id, Device.device_id == device_id)
    ).scalar()


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
    # At most one row past the API's largest page (it asks for one more to
    # know whether another page follows).
    stmt = stmt.order_by(Device.device_id).limit(max(1, min(limit, 1001)))
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
    observe.revocation(session, reason=reason)
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
    scope.authorize(principal, scope.CERT_REVOKE, environments=[record.environment])
    if record.status == "revoked":
        raise ConflictError(f"certificate {record.serial} is already revoked")
    device = session.get(Device, record.device_pk)
    if device is None:
        raise RuntimeError("broken invariant, expected: device is not None")
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
    authorize_on_devices(session, principal, scope.DEVICE_STATE, [device.id])
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


MAX_COHORT = 100_000  # devices one bulk revocation may name


def revoke_devices(
    session: Session,
    principal: Principal,
    device_ids: list[str],
    *,
    reason: str = "unspecified",
    now: dt.datetime | None = None,
) -> list[str]:
    """Revoke a cohort of devices and all their certificates in one transaction.

    The same meaning as :func:`revoke_device` per device, in set-based SQL:
    one CA counter update per CA, one multi-row certificate update, one
    device update and one audit append of all the entries, so 10,000 devices
    cost a fraction of a second. Devices already revoked are skipped; the ids
    revoked now are returned.

    Raises:
        PermissionDeniedError: the role may not revoke.
        InvalidInputError: too many ids, a malformed reason, or a device in a
            state that cannot be revoked.
        NotFoundError: an id is not a device of this tenant (nothing changes).
    """
    require(principal, Permission.CERT_REVOKE)
    require(principal, Permission.DEVICE_MANAGE)
    parse_reason(reason)
    if len(device_ids) > MAX_COHORT:
        raise InvalidInputError(f"at most {MAX_COHORT} devices per bulk revocation")
    now = now or utcnow()
    wanted = list(dict.fromkeys(device_ids))
    devices: list[tuple[int, str, str]] = []
    for start in range(0, len(wanted), 1000):
        chunk = wanted[start : start + 1000]
        devices.extend(
            (int(pk), str(d), str(state))
            for pk, d, state in session.execute(
                select(Device.id, Device.device_id, Device.state).where(
                    Device.tenant_id == principal.tenant_id, Device.device_id.in_(chunk)
                )
            )
        )
    if len(devices) != len(wanted):
        found = {d for _, d, _ in devices}
        missing = [d for d in wanted if d not in found]
        raise NotFoundError(f"{len(missing)} device(s) not found, e.g. {missing[0]!r}")
    authorize_on_devices(session, principal, scope.DEVICE_REVOKE, [pk for pk, _, _ in devices])
    order = {d: i for i, d in enumerate(wanted)}
    devices.sort(key=lambda row: order[row[1]])
    todo = [(pk, d, state) for pk, d, state in devices if state != "revoked"]
    for _, _, state in todo:
        check_transition(state, "revoked")
    pks = {pk: d for pk, d, _ in todo}
    certs: list[tuple[str, int, int]] = []
    keys = list(pks)
    for start in range(0, len(keys), 1000):
        certs.extend(
            (str(serial), int(ca_id), int(pk))
            for serial, ca_id, pk in session.execute(
                select(
                    CertificateRecord.serial, CertificateRecord.ca_id, CertificateRecord.device_pk
                ).where(
                    CertificateRecord.device_pk.in_(keys[start : start + 1000]),
                    CertificateRecord.status == "good",
                )
            )
        )
    per_ca: dict[int, list[tuple[str, int]]] = {}
    for serial, ca_id, pk in certs:
        per_ca.setdefault(ca_id, []).append((serial, pk))
    updates: list[dict[str, object]] = []
    for ca_id, items in per_ca.items():
        # Revocation sequence numbers follow commit order per CA (the CRL
        # publisher reads newer ones only): reserve a block for this cohort.
        last = session.execute(
            update(CertificateAuthority)
            .where(CertificateAuthority.id == ca_id)
            .values(revocations=CertificateAuthority.revocations + len(items))
            .returning(CertificateAuthority.revocations)
        ).scalar_one()
        first = last - len(items) + 1
        updates.extend({"s": serial, "seq": first + i} for i, (serial, _) in enumerate(items))
    if updates:
        session.connection().execute(
            update(CertificateRecord.__table__)  # type: ignore[arg-type]
            .where(CertificateRecord.__table__.c.serial == bindparam("s"))
            .values(
                status="revoked",
                revoked_at=now,
                revocation_reason=reason,
                revocation_seq=bindparam("seq"),
            ),
            updates,
        )
        observe.revocation(session, reason=reason, count=len(updates))
    for start in range(0, len(keys), 1000):
        session.execute(
            update(Device)
            .where(Device.id.in_(keys[start : start + 1000]))
            .values(state="revoked", updated_at=now)
            .execution_options(synchronize_session=False)
        )
    events = [
        audit.Event(
            actor=principal.actor,
            action="certificate.revoke",
            subject=f"device:{pks[pk]}",
            tenant_id=principal.tenant_id,
            details={"serial": serial, "reason": reason, "ca": ca_id},
        )
        for serial, ca_id, pk in certs
    ]
    events.extend(
        audit.Event(
            actor=principal.actor,
            action="device.state",
            subject=f"device:{d}",
            tenant_id=principal.tenant_id,
            details={"from": state, "to": "revoked", "reason": reason, "bulk": True},
        )
        for _, d, state in todo
    )
    if events:
        audit.append_many(session, events, now=now)
    return [d for _, d, _ in todo]


def quarantine_devices(
    session: Session,
    principal: Principal,
    device_pks: list[int],
    *,
    reason: str,
    now: dt.datetime | None = None,
) -> list[str]:
    """Quarantine the active devices among ``device_pks`` (the tenant's own)
    in one transaction: one update and one audit append of all the entries,
    the same entries :func:`set_device_state` writes per device. Devices in
    another state are left as they are; the ids quarantined are returned.

    Raises:
        PermissionDeniedError: the role may not manage devices.
        InvalidInputError: too many devices.
    """
    require(principal, Permission.DEVICE_MANAGE)
    if len(device_pks) > MAX_COHORT:
        raise InvalidInputError(f"at most {MAX_COHORT} devices per bulk quarantine")
    now = now or utcnow()
    todo: list[tuple[int, str]] = []
    for start in range(0, len(device_pks), 1000):
        todo.extend(
            (int(pk), str(d))
            for pk, d in session.execute(
                select(Device.id, Device.device_id).where(
                    Device.tenant_id == principal.tenant_id,
                    Device.id.in_(device_pks[start : start + 1000]),
                    Device.state == "active",
                )
            )
        )
    keys = [pk for pk, _ in todo]
    authorize_on_devices(session, principal, scope.DEVICE_STATE, keys)
    for start in range(0, len(keys), 1000):
        session.execute(
            update(Device)
            .where(Device.id.in_(keys[start : start + 1000]), Device.state == "active")
            .values(state="quarantined", updated_at=now)
            .execution_options(synchronize_session=False)
        )
    events = [
        audit.Event(
            actor=principal.actor,
            action="device.state",
            subject=f"device:{d}",
            tenant_id=principal.tenant_id,
            details={"from": "active", "to": "quarantined", "reason": reason, "bulk": True},
        )
        for _, d in todo
    ]
    if events:
        audit.append_many(session, events, now=now)
    return [d for _, d in todo]
