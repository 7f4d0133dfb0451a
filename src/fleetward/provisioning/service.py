"""Provisioning use cases: factories, batches, vendor roots, nonces, grants, records.

Factory enrollment (:func:`fleetward.provisioning.enroll.provision`) is the controlled path into the
registry: a ``factory-operator`` token bound to one factory and environment
enrolls devices of an open batch of that factory, each device once, with a
key-origin attestation statement where the chip can make one. Every attempt,
accepted or refused, becomes an :class:`EnrollmentAttempt` row (who, which
batch, which device, CSR fingerprint, key origin, result, reason, source).

Like :func:`fleetward.identity.issuance.enroll_many`, it checks and signs
outside any transaction and records in one short write transaction: device
rows, certificates, audit entries, attempt rows, the batch counter, spent
nonces and used grants commit together or not at all.
"""

from __future__ import annotations

import csv
import datetime as dt
import io
import json
from collections.abc import Sequence
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.serialization import Encoding
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from fleetward import audit, identity, tenancy
from fleetward.errors import (
    ConflictError,
    InvalidInputError,
    NotFoundError,
    PayloadTooLargeError,
)
from fleetward.identity import profile
from fleetward.provisioning._nonces import (
    MAX_OPEN_NONCES_PER_TOKEN,
    NONCE_TTL,
    issue_nonce,
    prune_nonces,
)
from fleetward.provisioning.batch import (
    MAX_EXPLICIT_IDS,
    validate_range,
)
from fleetward.provisioning.models import (
    AttestationRoot,
    EnrollmentAttempt,
    EnrollmentBatch,
    Factory,
    ReprovisionGrant,
)
from fleetward.store import utcnow
from fleetward.tenancy import ApiToken, scope
from fleetward.tenancy.roles import ENVIRONMENTS, Permission, Principal, require

__all__ = [
    "MAX_OPEN_NONCES_PER_TOKEN",
    "NONCE_TTL",
    "attempt_record",
    "attempts_csv",
    "close_batch",
    "counters",
    "create_batch",
    "create_factory",
    "create_factory_token",
    "device_attempts",
    "get_batch",
    "grant_reprovision",
    "issue_nonce",
    "list_attempts",
    "list_batches",
    "list_factories",
    "list_roots",
    "prune_nonces",
    "register_root",
]


def _audit(session: Session, who: Principal, action: str, subject: str, **details: Any) -> None:
    audit.append(
        session,
        actor=who.actor,
        action=action,
        subject=subject,
        tenant_id=who.tenant_id,
        details=details,
    )


# Factories --------------------------------------------------------------------


def create_factory(session: Session, who: Principal, *, name: str, environment: str) -> Factory:
    """Register a factory or partner line working in one environment."""
    require(who, Permission.TENANT_MANAGE)
    if environment not in ENVIRONMENTS:
        raise InvalidInputError(f"unknown environment {environment!r}; one of {ENVIRONMENTS}")
    scope.authorize(who, scope.FACTORY_CREATE, environments=[environment])
    if not profile.DEVICE_ID.fullmatch(name):
        raise InvalidInputError("factory name must be 1-64 of [A-Za-z0-9._-]")
    taken = session.execute(
        select(Factory.id).where(Factory.tenant_id == who.tenant_id, Factory.name == name)
    ).first()
    if taken:
        raise ConflictError(f"factory {name!r} already exists")
    factory = Factory(
        tenant_id=who.tenant_id, name=name, environment=environment, created_at=utcnow()
    )
    session.add(factory)
    session.flush()
    _audit(session, who, "factory.create", f"factory:{factory.id}", name=name, env=environment)
    return factory


def get_factory(session: Session, who: Principal, factory_id: int) -> Factory:
    """A factory of the caller's tenant."""
    factory = session.get(Factory, factory_id)
    if factory is None or factory.tenant_id != who.tenant_id:
        raise NotFoundError(f"factory {factory_id} not found")
    return factory


def list_factories(session: Session, who: Principal) -> list[Factory]:
    """The tenant's factories."""
    require(who, Permission.DEVICE_READ)
    stmt = select(Factory).where(Factory.tenant_id == who.tenant_id).order_by(Factory.id)
    if who.factory_id is not None:
        stmt = stmt.where(Factory.id == who.factory_id)
    return list(session.execute(stmt).scalars())


def create_factory_token(
    session: Session,
    who: Principal,
    *,
    factory_id: int,
    name: str,
    expires_at: dt.datetime | None = None,
) -> tuple[ApiToken, str]:
    """A ``factory-operator`` token bound to the factory and its environment."""
    require(who, Permission.TOKEN_MANAGE)
    factory = get_factory(session, who, factory_id)
    return tenancy.create_token(
        session,
        tenant=tenancy.get_tenant(session, who.tenant_id),
        name=name,
        role="factory-operator",
        environment=factory.environment,
        factory_id=factory.id,
        expires_at=expires_at,
        actor=who.actor,
        grantor=who,
    )


# Batches ----------------------------------------------------------------------


def create_batch(
    session: Session,
    who: Principal,
    *,
    factory_id: int,
    product: str,
    expires_at: dt.datetime,
    device_ids: Sequence[str] | None = None,
    range_prefix: str | None = None,
    range_start: int | None = None,
    range_end: int | None = None,
    range_width: int | None = None,
    max_count: int | None = None,
) -> EnrollmentBatch:
    """Authorise a bounded set of devices (explicit ids or a serial range).

    Raises:
        InvalidInputError: neither or both of ids and range, bad ids or range,
            a past expiry, or a count limit larger than the set.
    """
    require(who, Permission.TENANT_MANAGE)
    factory = get_factory(session, who, factory_id)
    scope.authorize(
        who, scope.BATCH_MANAGE, environments=[factory.environment], factory_id=factory.id
    )
    now = utcnow()
    if expires_at <= now:
        raise InvalidInputError("batch expiry must be in the future")
    identity.product_name(product)
    ids_json: str | None = None
    if device_ids is not None and range_prefix is None:
        if not device_ids or len(device_ids) > MAX_EXPLICIT_IDS:
            raise InvalidInputError(f"an explicit batch lists 1 to {MAX_EXPLICIT_IDS:,} ids")
        for d in device_ids:
            profile.check_device_id(d)
        if len(set(device_ids)) != len(device_ids):
            raise InvalidInputError("the batch lists a device id twice")
        size = len(device_ids)
        ids_json = json.dumps(sorted(device_ids))
    elif device_ids is None and range_prefix is not None:
        if range_start is None or range_end is None or range_width is None:
            raise InvalidInputError("a range batch needs prefix, start, end and width")
        size = validate_range(
            prefix=range_prefix, start=range_start, end=range_end, width=range_width
        )
    else:
        raise InvalidInputError("a batch names either explicit device ids or a serial range")
    limit = size if max_count is None else max_count
    if not 1 <= limit <= size:
        raise InvalidInputError(f"max_count must be 1..{size} for this batch")
    batch = EnrollmentBatch(
        tenant_id=who.tenant_id,
        factory_id=factory.id,
        product=product,
        environment=factory.environment,
        device_ids=ids_json,
        range_prefix=range_prefix,
        range_start=range_start,
        range_end=range_end,
        range_width=range_width,
        max_count=limit,
        used_count=0,
        expires_at=expires_at,
        status="open",
        created_by=who.actor,
        created_at=now,
    )
    session.add(batch)
    session.flush()
    _audit(
        session,
        who,
        "batch.create",
        f"batch:{batch.id}",
        factory=factory.id,
        product=product,
        environment=factory.environment,
        size=size,
        max_count=limit,
        expires_at=expires_at.isoformat(),
    )
    return batch


def get_batch(session: Session, who: Principal, batch_id: int) -> EnrollmentBatch:
    """A batch of the caller's tenant."""
    batch = session.get(EnrollmentBatch, batch_id)
    if batch is None or batch.tenant_id != who.tenant_id:
        raise NotFoundError(f"batch {batch_id} not found")
    return batch


def list_batches(session: Session, who: Principal) -> list[EnrollmentBatch]:
    """The tenant's batches, newest first (a factory token sees its factory's)."""
    require(who, Permission.DEVICE_READ)
    stmt = select(EnrollmentBatch).where(EnrollmentBatch.tenant_id == who.tenant_id)
    if who.factory_id is not None:
        stmt = stmt.where(EnrollmentBatch.factory_id == who.factory_id)
    return list(session.execute(stmt.order_by(EnrollmentBatch.id.desc())).scalars())


def close_batch(session: Session, who: Principal, batch_id: int) -> EnrollmentBatch:
    """Close a batch: it enrolls nothing more."""
    require(who, Permission.TENANT_MANAGE)
    batch = get_batch(session, who, batch_id)
    scope.authorize(
        who, scope.BATCH_MANAGE, environments=[batch.environment], factory_id=batch.factory_id
    )
    if batch.status == "closed":
        raise ConflictError(f"batch {batch_id} is already closed")
    batch.status = "closed"
    _audit(session, who, "batch.close", f"batch:{batch.id}", used=batch.used_count)
    return batch


# Attestation roots, nonces, grants --------------------------------------------------


def register_root(
    session: Session, who: Principal, *, name: str, certificate_pem: bytes
) -> AttestationRoot:
    """Trust a chip vendor's attestation root for this tenant (every environment)."""
    scope.authorize(who, scope.ATTESTATION_ROOT_MANAGE)
    if len(certificate_pem) > 16 * 1024:
        raise PayloadTooLargeError("attestation root certificate over 16 KiB")
    try:
        cert = x509.load_pem_x509_certificate(certificate_pem)
        ca = cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    except (ValueError, x509.ExtensionNotFound) as exc:
        raise InvalidInputError(f"not a CA certificate: {exc}") from exc
    if not ca:
        raise InvalidInputError("an attestation root must be a CA certificate")
    fingerprint = cert.fingerprint(hashes.SHA256()).hex()
    exists = session.execute(
        select(AttestationRoot.id).where(
            AttestationRoot.tenant_id == who.tenant_id, AttestationRoot.fingerprint == fingerprint
        )
    ).first()
    if exists:
        raise ConflictError("this attestation root is already registered")
    root = AttestationRoot(
        tenant_id=who.tenant_id,
        name=name[:100],
        fingerprint=fingerprint,
        certificate_pem=cert.public_bytes(Encoding.PEM).decode(),
        created_at=utcnow(),
    )
    session.add(root)
    session.flush()
    _audit(
        session, who, "attestation-root.register", f"root:{root.id}", name=name, sha256=fingerprint
    )
    return root


def list_roots(session: Session, who: Principal) -> list[AttestationRoot]:
    """The tenant's trusted vendor roots."""
    require(who, Permission.DEVICE_READ)
    stmt = select(AttestationRoot).where(AttestationRoot.tenant_id == who.tenant_id)
    return list(session.execute(stmt.order_by(AttestationRoot.id)).scalars())


def grant_reprovision(
    session: Session,
    who: Principal,
    *,
    device_id: str,
    reason: str,
    ttl: dt.timedelta = dt.timedelta(days=1),
) -> ReprovisionGrant:
    """Allow an already-provisioned device to be provisioned once more (audited)."""
    require(who, Permission.DEVICE_MANAGE)
    profile.check_device_id(device_id)
    known = identity.find_device_pk(session, tenant_id=who.tenant_id, device_id=device_id)
    identity.authorize_on_devices(
        session, who, scope.DEVICE_REPROVISION, [known] if known is not None else []
    )
    if not reason.strip():
        raise InvalidInputError("a re-provisioning grant needs a reason")
    grant = ReprovisionGrant(
        tenant_id=who.tenant_id,
        device_id=device_id,
        reason=reason[:200],
        granted_by=who.actor,
        expires_at=utcnow() + ttl,
    )
    session.add(grant)
    session.flush()
    _audit(session, who, "device.reprovision-grant", f"device:{device_id}", reason=reason[:200])
    return grant


# Records and signals ------------------------------------------------------------

MAX_ATTEMPTS_PAGE = 10_000
BURST_FACTOR = 3.0  # attempts in the last window over the batch's average window


def list_attempts(
    session: Session,
    who: Principal,
    *,
    factory_id: int | None = None,
    batch_id: int | None = None,
    since: dt.datetime | None = None,
    after_id: int = 0,
    limit: int = 1000,
) -> list[EnrollmentAttempt]:
    """Enrollment attempts of the tenant, oldest first, paged by ``after_id``."""
    require(who, Permission.AUDIT_READ)
    stmt = select(EnrollmentAttempt).where(
        EnrollmentAttempt.tenant_id == who.tenant_id, EnrollmentAttempt.id > after_id
    )
    if factory_id is not None:
        stmt = stmt.where(EnrollmentAttempt.factory_id == factory_id)
    if batch_id is not None:
        stmt = stmt.where(EnrollmentAttempt.batch_id == batch_id)
    if since is not None:
        stmt = stmt.where(EnrollmentAttempt.ts >= since)
    # One row past the largest page: the API asks for one more to know
    # whether another page follows.
    stmt = stmt.order_by(EnrollmentAttempt.id).limit(max(1, min(limit, MAX_ATTEMPTS_PAGE + 1)))
    return list(session.execute(stmt).scalars())


def device_attempts(
    session: Session, who: Principal, device_id: str, *, limit: int = 200
) -> list[EnrollmentAttempt]:
    """The tenant's enrollment attempts for one device id, accepted or
    refused, newest first, at most ``limit`` (1-1,000): the device's
    enrollment record (who provisioned it, where, with what key)."""
    require(who, Permission.AUDIT_READ)
    stmt = (
        select(EnrollmentAttempt)
        .where(
            EnrollmentAttempt.tenant_id == who.tenant_id, EnrollmentAttempt.device_id == device_id
        )
        .order_by(EnrollmentAttempt.id.desc())
        .limit(max(1, min(limit, 1000)))
    )
    return list(session.execute(stmt).scalars())


def counters(
    session: Session,
    who: Principal,
    *,
    now: dt.datetime | None = None,
    window: dt.timedelta = dt.timedelta(minutes=5),
) -> list[dict[str, Any]]:
    """Abnormal-enrollment signals per factory and batch.

    For each (factory, batch): accepted and refused attempts, refusals by
    category (outside-batch, duplicate, replayed-nonce, attestation, ...),
    attempts in the last ``window`` and the batch's average per window since
    its first attempt; ``burst`` is set when the last window exceeds
    ``BURST_FACTOR`` times that average.
    """
    require(who, Permission.AUDIT_READ)
    now = now or utcnow()
    rows = session.execute(
        select(
            EnrollmentAttempt.factory_id,
            EnrollmentAttempt.batch_id,
            EnrollmentAttempt.result,
            EnrollmentAttempt.category,
            func.count(),
            func.min(EnrollmentAttempt.ts),
        )
        .where(EnrollmentAttempt.tenant_id == who.tenant_id)
        .group_by(
            EnrollmentAttempt.factory_id,
            EnrollmentAttempt.batch_id,
            EnrollmentAttempt.result,
            EnrollmentAttempt.category,
        )
    ).all()
    recent: dict[int | None, int] = dict(
        session.execute(
            select(
                EnrollmentAttempt.batch_id,
                func.count(),
            )
            .where(
                EnrollmentAttempt.tenant_id == who.tenant_id, EnrollmentAttempt.ts >= now - window
            )
            .group_by(EnrollmentAttempt.batch_id)
        ).all()
    )
    out: dict[tuple[int | None, int | None], dict[str, Any]] = {}
    for factory_id, batch_id, result, category, count, first in rows:
        entry = out.setdefault(
            (factory_id, batch_id),
            {
                "factory_id": factory_id,
                "batch_id": batch_id,
                "accepted": 0,
                "refused": 0,
                "refused_by_category": {},
                "first_attempt": first,
            },
        )
        entry[result] += count
        if result == "refused":
            key = category or "invalid"
            entry["refused_by_category"][key] = entry["refused_by_category"].get(key, 0) + count
        if first is not None and first < entry["first_attempt"]:
            entry["first_attempt"] = first
    for (_, batch_id), entry in out.items():
        total = entry["accepted"] + entry["refused"]
        windows = max(1.0, (now - entry["first_attempt"]) / window)
        last = int(recent.get(batch_id, 0))
        entry["last_window"] = last
        entry["average_per_window"] = round(total / windows, 2)
        entry["burst"] = windows > 1.0 and last > BURST_FACTOR * (total / windows)
        entry["first_attempt"] = entry["first_attempt"].isoformat()
    return list(out.values())


def attempt_record(a: EnrollmentAttempt) -> dict[str, Any]:
    """One enrollment record as a plain dict (JSON and CSV export)."""
    return {
        "id": a.id,
        "ts": a.ts.isoformat(),
        "factory_id": a.factory_id,
        "batch_id": a.batch_id,
        "token": a.token_id,
        "device_id": a.device_id,
        "csr_fingerprint": a.csr_fingerprint,
        "key_origin": a.key_origin,
        "result": a.result,
        "category": a.category,
        "reason": a.reason,
        "source": a.source,
        "serial": a.serial,
        "route": a.route,
        "environment": a.environment,
    }


CSV_FIELDS = [
    "id",
    "ts",
    "factory_id",
    "batch_id",
    "token",
    "device_id",
    "csr_fingerprint",
    "key_origin",
    "result",
    "category",
    "reason",
    "source",
    "serial",
    "route",
    "environment",
]


def attempts_csv(rows: list[dict[str, Any]]) -> str:
    """Attempts as CSV (header first)."""
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=CSV_FIELDS)
    writer.writeheader()
    writer.writerows({k: _cell(v) for k, v in row.items()} for row in rows)
    return buf.getvalue()


_FORMULA = ("=", "+", "-", "@", "\t", "\r")


def _cell(value: Any) -> Any:
    """A cell a spreadsheet will not run: device ids and reasons come from
    untrusted CSRs, so text that starts like a formula gets a leading quote
    (OWASP's advice for CSV injection)."""
    if isinstance(value, str) and value.startswith(_FORMULA):
        return "'" + value
    return value
