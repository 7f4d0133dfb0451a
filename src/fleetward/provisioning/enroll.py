"""Factory enrollment: batch, factory scope, key attestation, once per device, records.

:func:`provision` is what a factory station calls (one device or a batch of
them). Refusals are classified (``category``) so the abnormal-enrollment
counters can tell outside-batch ids from replayed nonces from duplicates.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import json
from dataclasses import dataclass
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from sqlalchemy import insert, select, update
from sqlalchemy.orm import Session

from fleetward import observe
from fleetward.errors import (
    AttestationError,
    BatchUnusableError,
    FleetwardError,
    NotFoundError,
    OutOfScopeError,
    PayloadTooLargeError,
    PermissionDeniedError,
)
from fleetward.identity import issuance, profile
from fleetward.identity import service as identity_service
from fleetward.identity.pki import Pki
from fleetward.provisioning import attestation
from fleetward.provisioning.batch import (
    BatchRules,
    OutsideBatchError,
    check_member,
    check_usable,
    device_in_batch,
)
from fleetward.provisioning.models import (
    AttestationRoot,
    EnrollmentAttempt,
    EnrollmentBatch,
    EnrollmentNonce,
    ReprovisionGrant,
)
from fleetward.store import Database, utcnow
from fleetward.tenancy import scope
from fleetward.tenancy.roles import Permission, Principal, require

__all__ = ["ProvisionItem", "ProvisionResult", "category_of", "enroll_devices", "provision"]

HARDWARE = "hardware-attested"
SOFTWARE = "software"


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
    issued: issuance.Issued | None
    error: FleetwardError | None
    category: str | None
    key_origin: str | None


def category_of(exc: FleetwardError) -> str:
    """The counter a refusal feeds (abnormal-enrollment signals)."""
    if isinstance(exc, OutsideBatchError):
        return "outside-batch"
    if isinstance(exc, issuance.DuplicateEnrollmentError):
        return "duplicate"
    if isinstance(exc, attestation.NonceError):
        return "replayed-nonce"
    if isinstance(exc, issuance.UnattestedKeyError):
        return "software-key"
    if isinstance(exc, AttestationError):
        return "attestation"
    if isinstance(exc, PermissionDeniedError):
        return "scope"
    if isinstance(exc, BatchUnusableError):
        return "batch-unusable"
    return "invalid"


@dataclass
class _Context:
    batch: EnrollmentBatch
    rules: BatchRules
    roots: list[x509.Certificate]
    nonces: set[bytes]
    grants: dict[str, int]


def _load(session: Session, who: Principal, batch_id: int, items: list[ProvisionItem]) -> _Context:
    batch = session.get(EnrollmentBatch, batch_id)
    if batch is None or batch.tenant_id != who.tenant_id:
        raise NotFoundError(f"batch {batch_id} not found")
    scope.authorize(
        who, scope.DEVICE_ENROLL, environments=[batch.environment], factory_id=batch.factory_id
    )
    now = utcnow()
    roots = [
        x509.load_pem_x509_certificate(pem.encode())
        for pem in session.execute(
            select(AttestationRoot.certificate_pem).where(
                AttestationRoot.tenant_id == who.tenant_id
            )
        ).scalars()
    ]
    presented = []
    for item in items:
        st = item.attestation
        if isinstance(st, dict) and isinstance(st.get("nonce"), str):
            presented.append(st["nonce"])
        elif isinstance(st, str) and len(st) <= attestation.MAX_STATEMENT_BYTES:
            try:
                nonce = json.loads(st).get("nonce")
                if isinstance(nonce, str):
                    presented.append(nonce)
            except (ValueError, AttributeError):
                pass
    nonces: set[bytes] = set()
    if presented:
        for value in session.execute(
            select(EnrollmentNonce.nonce).where(
                EnrollmentNonce.nonce.in_(presented),
                EnrollmentNonce.tenant_id == who.tenant_id,
                EnrollmentNonce.used_at.is_(None),
                EnrollmentNonce.expires_at > now,
            )
        ).scalars():
            nonces.add(base64.urlsafe_b64decode(value))
    grants = {
        d: gid
        for gid, d in session.execute(
            select(ReprovisionGrant.id, ReprovisionGrant.device_id).where(
                ReprovisionGrant.tenant_id == who.tenant_id,
                ReprovisionGrant.device_id.in_([i.device_id for i in items]),
                ReprovisionGrant.used_at.is_(None),
                ReprovisionGrant.expires_at > now,
            )
        )
    }
    return _Context(
        batch=batch, rules=BatchRules.of(batch), roots=roots, nonces=nonces, grants=grants
    )


def _attest(
    item: ProvisionItem, csr: x509.CertificateSigningRequest, ctx: _Context, now: dt.datetime
) -> tuple[str, bytes | None]:
    """Key origin of the item's key, and the nonce it spent (if any)."""
    if item.attestation is None:
        return SOFTWARE, None
    statement = attestation.parse_statement(item.attestation)
    if statement.nonce not in ctx.nonces:
        raise attestation.NonceError("attestation nonce is unknown, expired or already used")
    spki = csr.public_key().public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)
    attestation.verify_statement(
        statement,
        identity_spki_der=spki,
        expected_nonce=statement.nonce,
        roots=ctx.roots,
        now=now,
    )
    return HARDWARE, statement.nonce


def provision(
    db: Database,
    pki: Pki,
    who: Principal,
    *,
    batch_id: int,
    items: list[ProvisionItem],
    source: str | None = None,
    route: str = "batch",
    now: dt.datetime | None = None,
) -> list[ProvisionResult]:
    """Enroll devices of one batch; every attempt is recorded, accepted or not.

    Raises:
        NotFoundError: no such batch in the tenant.
        PermissionDeniedError: the token's factory or environment is not the
            batch's (recorded as refused attempts for every item).
        PayloadTooLargeError: more than ``issuance.MAX_BATCH`` items.
    """
    require(who, Permission.DEVICE_ENROLL)
    if len(items) > issuance.MAX_BATCH:
        raise PayloadTooLargeError(
            f"batch of {len(items)} items; the limit is {issuance.MAX_BATCH}"
        )
    now = now or utcnow()
    try:
        with db.read() as s:
            ctx = _load(s, who, batch_id, items)
            check_usable(ctx.rules, now=now)
            issuer = issuance.issuer_for(
                s.connection(), pki, tenant_id=who.tenant_id, environment=ctx.batch.environment
            )
    except FleetwardError as exc:
        _record_whole_refusal(
            db, who, batch_id=batch_id, items=items, exc=exc, source=source, route=route
        )
        raise
    signed: list[issuance.Issued | FleetwardError] = []
    origins: list[str | None] = []
    spent: list[bytes | None] = []
    fingerprints: list[str | None] = []
    batch_items: list[issuance.BatchItem] = []
    for item in items:
        origin: str | None = None
        nonce: bytes | None = None
        fingerprint: str | None = None
        batch_item = issuance.BatchItem(device_id=item.device_id[:64], csr=item.csr)
        try:
            check_member(ctx.rules, item.device_id)
            csr = profile.load_csr(item.csr)
            fingerprint = hashlib.sha256(csr.public_bytes(Encoding.DER)).hexdigest()
            origin, nonce = _attest(item, csr, ctx, now)
            batch_item = issuance.BatchItem(
                device_id=item.device_id,
                csr=item.csr,
                product=ctx.batch.product,
                key_origin=origin,
                batch_id=ctx.batch.id,
                factory_id=ctx.batch.factory_id,
            )
            signed.append(
                issuance.check_and_sign(
                    pki, issuer, batch_item, environment=ctx.batch.environment, now=now
                )
            )
        except FleetwardError as exc:
            signed.append(exc)
        batch_items.append(batch_item)
        origins.append(origin)
        spent.append(nonce)
        fingerprints.append(fingerprint)
    try:
        return _commit(
            db,
            who,
            ctx=ctx,
            items=batch_items,
            signed=signed,
            origins=origins,
            spent=spent,
            fingerprints=fingerprints,
            source=source,
            route=route,
            now=now,
        )
    except FleetwardError as exc:  # lost a race (batch exhausted, nonce replayed)
        _record_whole_refusal(
            db, who, batch_id=batch_id, items=items, exc=exc, source=source, route=route
        )
        raise


def _commit(
    db: Database,
    who: Principal,
    *,
    ctx: _Context,
    items: list[issuance.BatchItem],
    signed: list[issuance.Issued | FleetwardError],
    origins: list[str | None],
    spent: list[bytes | None],
    fingerprints: list[str | None],
    source: str | None,
    route: str,
    now: dt.datetime,
) -> list[ProvisionResult]:
    with db.session() as session:
        results = issuance.record(
            session,
            who,
            items=items,
            signed=signed,
            now=now,
            once=True,
            reprovision=frozenset(ctx.grants),
        )
        accepted = [r for r in results if r.issued is not None]
        if accepted:
            moved = session.execute(
                update(EnrollmentBatch)
                .where(
                    EnrollmentBatch.id == ctx.batch.id,
                    EnrollmentBatch.status == "open",
                    EnrollmentBatch.used_count + len(accepted) <= EnrollmentBatch.max_count,
                )
                .values(used_count=EnrollmentBatch.used_count + len(accepted))
            )
            if moved.rowcount != 1:  # type: ignore[attr-defined]
                raise BatchUnusableError(f"batch {ctx.batch.id} is exhausted or closed")
        _spend(session, [n for n in spent if n is not None], now)
        used_grants = [ctx.grants[r.device_id] for r in accepted if r.device_id in ctx.grants]
        for r in accepted:
            if r.device_id in ctx.grants and r.issued is not None:
                # Re-provisioned: the identity it had before is superseded.
                identity_service.revoke_superseded(
                    session, who, device_id=r.device_id, keep_serial=r.issued.serial, now=now
                )
        if used_grants:
            session.execute(
                update(ReprovisionGrant)
                .where(ReprovisionGrant.id.in_(used_grants))
                .values(used_at=now)
            )
        out = [
            ProvisionResult(
                device_id=r.device_id,
                issued=r.issued,
                error=r.error,
                category=None if r.error is None else category_of(r.error),
                key_origin=origin,
            )
            for r, origin in zip(results, origins, strict=True)
        ]
        _record_attempts(
            session,
            who,
            batch=ctx.batch,
            results=out,
            fingerprints=fingerprints,
            source=source,
            route=route,
            environment=ctx.batch.environment,
            now=now,
        )
    return out


def _spend(session: Session, nonces: list[bytes], now: dt.datetime) -> None:
    for nonce in nonces:
        done = session.execute(
            update(EnrollmentNonce)
            .where(
                EnrollmentNonce.nonce == base64.urlsafe_b64encode(nonce).decode(),
                EnrollmentNonce.used_at.is_(None),
            )
            .values(used_at=now)
        )
        if done.rowcount != 1:  # type: ignore[attr-defined]
            # Another request spent it between our read and this write: a replay.
            raise attestation.NonceError("attestation nonce was used concurrently (replay)")


def _record_attempts(
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


def _record_whole_refusal(
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
        if batch is not None and batch.tenant_id != who.tenant_id:
            batch = None  # never attach another tenant's batch to this record
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
        _record_attempts(
            session,
            who,
            batch=batch,
            results=results,
            fingerprints=[_fingerprint(i.csr) for i in items],
            source=source,
            route=route,
            environment=environment,
            now=now,
        )


def _fingerprint(csr: bytes) -> str | None:
    """SHA-256 of the CSR's DER, or ``None`` if it does not parse."""
    try:
        return hashlib.sha256(profile.load_csr(csr).public_bytes(Encoding.DER)).hexdigest()
    except FleetwardError:
        return None


def enroll_devices(
    db: Database,
    pki: Pki,
    who: Principal,
    *,
    items: list[issuance.BatchItem],
    environment: str | None,
    route: str,
    source: str | None = None,
    now: dt.datetime | None = None,
) -> list[issuance.BatchResult]:
    """Enroll devices from any enrollment path that is not a factory batch's
    own (REST single and batch, EST, the CLI), with an enrollment record for
    every attempt, accepted or refused.

    A token bound to a factory enrolls only through that factory's open
    batches: each device goes through the batch that names it (membership,
    count limit, expiry, once per device, as at ``/batches/{id}/enroll``),
    and a device no open batch names is refused (``outside-batch``).

    Raises:
        PermissionDeniedError / OutOfScopeError: the role may not enroll, or
            the environment is outside the token's scope (recorded per item).
        PayloadTooLargeError: more than ``issuance.MAX_BATCH`` items.
    """
    if len(items) > issuance.MAX_BATCH:
        raise PayloadTooLargeError(
            f"batch of {len(items)} items; the limit is {issuance.MAX_BATCH}"
        )
    provision_items = [ProvisionItem(device_id=i.device_id[:200], csr=i.csr) for i in items]
    try:
        require(who, Permission.DEVICE_ENROLL)
        env = issuance.environment_for(who, environment)
    except FleetwardError as exc:
        _record_whole_refusal(
            db,
            who,
            batch_id=None,
            items=provision_items,
            exc=exc,
            source=source,
            route=route,
            environment=environment or who.environment or "production",
        )
        raise
    if who.factory_id is not None:
        return _through_batches(
            db, pki, who, items=provision_items, environment=env, route=route, source=source
        )

    def record(
        session: Session,
        env: str,
        results: list[issuance.BatchResult],
        of: list[issuance.BatchItem] | None = None,
    ) -> None:
        of = of if of is not None else free
        _record_attempts(
            session,
            who,
            batch=None,
            results=[
                ProvisionResult(
                    device_id=r.device_id,
                    issued=r.issued,
                    error=r.error,
                    category=None if r.error is None else category_of(r.error),
                    key_origin=i.key_origin,
                )
                for i, r in zip(of, results, strict=True)
            ],
            fingerprints=[_fingerprint(i.csr) for i in of],
            source=source,
            route=route,
            environment=env,
            now=now or utcnow(),
        )

    reserved = _reserved_elsewhere(db, who, items, environment=env)
    free = [i for n, i in enumerate(items) if n not in reserved]
    try:
        done = (
            issuance.enroll_many(
                db, pki, who, items=free, environment=env, now=now, on_record=record
            )
            if free
            else []
        )
        if not reserved:
            return done
        refused = [
            issuance.BatchResult(device_id=items[n].device_id, error=error)
            for n, error in reserved.items()
        ]
        with db.session() as session:
            record(session, env, refused, [items[n] for n in reserved])
        merged = iter(done)
        return [
            issuance.BatchResult(device_id=i.device_id, error=reserved[n])
            if n in reserved
            else next(merged)
            for n, i in enumerate(items)
        ]
    except FleetwardError as exc:  # refused as a whole before the write (no issuing CA)
        _record_whole_refusal(
            db,
            who,
            batch_id=None,
            items=provision_items,
            exc=exc,
            source=source,
            route=route,
            environment=env,
        )
        raise


def _reserved_elsewhere(
    db: Database, who: Principal, items: list[issuance.BatchItem], *, environment: str
) -> dict[int, OutOfScopeError]:
    """Items a scoped token may not enroll because an open factory batch of
    another environment names the device: the production line's ids are not
    the test environment's to take (and to turn into duplicates there)."""
    if who.environment is None or not items:
        return {}
    now = utcnow()
    with db.read() as s:
        others = [
            BatchRules.of(b)
            for b in s.execute(
                select(EnrollmentBatch).where(
                    EnrollmentBatch.tenant_id == who.tenant_id,
                    EnrollmentBatch.environment != environment,
                    EnrollmentBatch.status == "open",
                    EnrollmentBatch.expires_at > now,
                )
            ).scalars()
        ]
    refused: dict[int, OutOfScopeError] = {}
    for n, item in enumerate(items):
        for rules in others:
            if device_in_batch(rules, item.device_id):
                refused[n] = OutOfScopeError(
                    f"device {item.device_id[:64]!r} is reserved by {rules.environment} "
                    f"batch {rules.id}; this token is scoped to {environment}"
                )
                break
    return refused


def _usable(rules: BatchRules, now: dt.datetime) -> bool:
    try:
        check_usable(rules, now=now)
    except FleetwardError:
        return False
    return True


def _through_batches(
    db: Database,
    pki: Pki,
    who: Principal,
    *,
    items: list[ProvisionItem],
    environment: str,
    route: str,
    source: str | None,
) -> list[issuance.BatchResult]:
    """A factory token's enrollment: each device through its factory's open
    batch that names it; the rest refused as outside every batch."""
    now = utcnow()
    with db.read() as s:
        open_batches = [
            BatchRules.of(b)
            for b in s.execute(
                select(EnrollmentBatch)
                .where(
                    EnrollmentBatch.tenant_id == who.tenant_id,
                    EnrollmentBatch.factory_id == who.factory_id,
                    EnrollmentBatch.environment == environment,
                )
                .order_by(EnrollmentBatch.id)
            ).scalars()
        ]
    # A batch that can still enroll comes first; a device only closed,
    # expired or exhausted batches name goes through one of those, so the
    # refusal says why (and is counted as such).
    open_batches.sort(key=lambda r: (not _usable(r, now), r.id))
    groups: dict[int, list[int]] = {}
    outside: list[int] = []
    for n, item in enumerate(items):
        for rules in open_batches:
            try:
                check_member(rules, item.device_id)
            except FleetwardError:
                continue
            groups.setdefault(rules.id, []).append(n)
            break
        else:
            outside.append(n)
    results: list[issuance.BatchResult | None] = [None] * len(items)
    for batch_id, numbers in groups.items():
        try:
            done = provision(
                db,
                pki,
                who,
                batch_id=batch_id,
                items=[items[n] for n in numbers],
                source=source,
                route=route,
            )
        except FleetwardError as exc:  # already recorded
            for n in numbers:
                results[n] = issuance.BatchResult(device_id=items[n].device_id, error=exc)
            continue
        for n, r in zip(numbers, done, strict=True):
            results[n] = issuance.BatchResult(device_id=r.device_id, issued=r.issued, error=r.error)
    if outside:
        refused = OutsideBatchError(
            f"this token is bound to factory {who.factory_id}: it enrolls only devices "
            f"that one of its open {environment} batches names"
        )
        for n in outside:
            results[n] = issuance.BatchResult(device_id=items[n].device_id, error=refused)
        with db.session() as session:
            _record_attempts(
                session,
                who,
                batch=None,
                results=[
                    ProvisionResult(
                        device_id=items[n].device_id,
                        issued=None,
                        error=refused,
                        category=category_of(refused),
                        key_origin=None,
                    )
                    for n in outside
                ],
                fingerprints=[_fingerprint(items[n].csr) for n in outside],
                source=source,
                route=route,
                environment=environment,
                now=now,
            )
    if not all(r is not None for r in results):
        raise RuntimeError("broken invariant, expected: all(r is not None for r in results)")
    return [r for r in results if r is not None]
