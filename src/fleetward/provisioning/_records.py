"""Enrollment records: every attempt on every enrollment path, accepted or
refused, with who, what key, when, the route and the reason; and the
category of a refusal that the abnormal-enrollment counters count."""

from __future__ import annotations

import datetime as dt
import hashlib
from dataclasses import dataclass
from typing import Any

from cryptography.hazmat.primitives.serialization import Encoding
from sqlalchemy import insert
from sqlalchemy.orm import Session

from fleetward import identity, observe
from fleetward.errors import (
    AttestationError,
    BatchUnusableError,
    DuplicateEnrollmentError,
    FleetwardError,
    PermissionDeniedError,
    UnattestedKeyError,
)
from fleetward.identity import profile
from fleetward.provisioning import attestation
from fleetward.provisioning.batch import OutsideBatchError
from fleetward.provisioning.models import EnrollmentAttempt, EnrollmentBatch
from fleetward.store import Database, utcnow
from fleetward.tenancy import scope
from fleetward.tenancy.roles import Principal

__all__ = [
    "ProvisionItem",
    "ProvisionResult",
    "category_of",
    "fingerprint",
    "record_attempts",
    "record_whole_refusal",
]


@dataclass(frozen=True)
class ProvisionItem:
    """One device at the station: its CSR and, from a secure element, a statement."""

    device_id: str
    csr: bytes
    attestation: str | dict[str, Any] | None = None


@dataclass(frozen=True)
class ProvisionResult:
    """Outcome of one item."""

    device_id: str
    issued: identity.Issued | None
    error: FleetwardError | None
    category: str | None
    key_origin: str | None


def category_of(exc: FleetwardError) -> str:
    """The counter a refusal feeds (abnormal-enrollment signals)."""
    if isinstance(exc, OutsideBatchError):
        return "outside-batch"
    if isinstance(exc, DuplicateEnrollmentError):
        return "duplicate"
    if isinstance(exc, attestation.NonceError):
        return "replayed-nonce"
    if isinstance(exc, UnattestedKeyError):
        return "software-key"
    if isinstance(exc, AttestationError):
        return "attestation"
    if isinstance(exc, PermissionDeniedError):
        return "scope"
    if isinstance(exc, BatchUnusableError):
        return "batch-unusable"
    return "invalid"


def record_attempts(
    session: Session,
    who: Principal,
    *,
    batch: EnrollmentBatch | None,
    results: list[ProvisionResult],
    fingerprints: list[str | None],
    source: str | None,
    route: str,
    environment: str | None,
    now: dt.datetime,
) -> None:
    rows = [
        {
            "tenant_id": who.tenant_id,
            "factory_id": batch.factory_id if batch else who.factory_id,
            "batch_id": batch.id if batch else None,
            "token_id": who.actor,
            "device_id": r.device_id[:64],
            "csr_fingerprint": fp,
            "key_origin": r.key_origin,
            "result": "accepted" if r.issued is not None else "refused",
            "category": r.category,
            "reason": None if r.error is None else r.error.detail[:300],
            "source": (source or "")[:64] or None,
            "serial": r.issued.serial if r.issued is not None else None,
            "ts": now,
            "route": route,
            "environment": environment or (batch.environment if batch else None),
        }
        for r, fp in zip(results, fingerprints, strict=True)
    ]
    if rows:
        session.execute(insert(EnrollmentAttempt), rows)
        observe.enrollment_attempts(
            session,
            [("accepted" if r.issued is not None else "refused", r.category) for r in results],
            route=route,
        )


def record_whole_refusal(
    db: Database,
    who: Principal,
    *,
    batch_id: int | None,
    items: list[ProvisionItem],
    exc: FleetwardError,
    source: str | None,
    route: str,
    environment: str | None = None,
) -> None:
    """Record every item of a request refused as a whole (scope, batch unusable)."""
    now = utcnow()
    with db.session() as session:
        batch = session.get(EnrollmentBatch, batch_id) if batch_id is not None else None
        if batch is not None and (
            batch.tenant_id != who.tenant_id
            or not scope.decide(
                who,
                scope.DEVICE_ENROLL,
                scope.Target.of([batch.environment], batch.factory_id),
            ).allowed
        ):
            # Never attach another tenant's batch, nor one outside the token's
            # scope: a factory token must not feed another factory's counters.
            batch = None
        results = [
            ProvisionResult(
                device_id=i.device_id,
                issued=None,
                error=exc,
                category=category_of(exc),
                key_origin=None,
            )
            for i in items
        ]
        record_attempts(
            session,
            who,
            batch=batch,
            results=results,
            fingerprints=[fingerprint(i.csr) for i in items],
            source=source,
            route=route,
            environment=environment,
            now=now,
        )


def fingerprint(csr: bytes) -> str | None:
    """SHA-256 of the CSR's DER, or ``None`` if it does not parse."""
    try:
        return hashlib.sha256(profile.load_csr(csr).public_bytes(Encoding.DER)).hexdigest()
    except FleetwardError:
        return None
