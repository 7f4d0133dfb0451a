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

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from sqlalchemy import select, update
from sqlalchemy.orm import Session

from fleetward import identity
from fleetward.errors import (
    BatchUnusableError,
    FleetwardError,
    NotFoundError,
    PayloadTooLargeError,
)
from fleetward.identity import Pki, profile
from fleetward.provisioning import attestation
from fleetward.provisioning._records import (
    ProvisionItem,
    ProvisionResult,
    category_of,
    record_attempts,
    record_whole_refusal,
)
from fleetward.provisioning.batch import (
    BatchRules,
    check_member,
    check_usable,
)
from fleetward.provisioning.models import (
    AttestationRoot,
    EnrollmentBatch,
    EnrollmentNonce,
    ReprovisionGrant,
)
from fleetward.store import Database, utcnow
from fleetward.tenancy import scope
from fleetward.tenancy.roles import Permission, Principal, require

__all__ = ["ProvisionItem", "ProvisionResult", "category_of", "provision"]

HARDWARE = identity.HARDWARE
SOFTWARE = identity.SOFTWARE


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
        PayloadTooLargeError: more than ``identity.MAX_BATCH`` items.
    """
    require(who, Permission.DEVICE_ENROLL)
    if len(items) > identity.MAX_BATCH:
        raise PayloadTooLargeError(
            f"batch of {len(items)} items; the limit is {identity.MAX_BATCH}"
        )
    now = now or utcnow()
    try:
        with db.read() as s:
            ctx = _load(s, who, batch_id, items)
            check_usable(ctx.rules, now=now)
            issuer = identity.issuer_for(
                s.connection(), pki, tenant_id=who.tenant_id, environment=ctx.batch.environment
            )
    except FleetwardError as exc:
        record_whole_refusal(
            db, who, batch_id=batch_id, items=items, exc=exc, source=source, route=route
        )
        raise
    signed: list[identity.Issued | FleetwardError] = []
    origins: list[str | None] = []
    spent: list[bytes | None] = []
    fingerprints: list[str | None] = []
    batch_items: list[identity.BatchItem] = []
    for item in items:
        origin: str | None = None
        nonce: bytes | None = None
        fingerprint: str | None = None
        batch_item = identity.BatchItem(device_id=item.device_id[:64], csr=item.csr)
        try:
            check_member(ctx.rules, item.device_id)
            csr = profile.load_csr(item.csr)
            fingerprint = hashlib.sha256(csr.public_bytes(Encoding.DER)).hexdigest()
            origin, nonce = _attest(item, csr, ctx, now)
            batch_item = identity.BatchItem(
                device_id=item.device_id,
                csr=item.csr,
                product=ctx.batch.product,
                key_origin=origin,
                batch_id=ctx.batch.id,
                factory_id=ctx.batch.factory_id,
            )
            signed.append(
                identity.check_and_sign(
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
        record_whole_refusal(
            db, who, batch_id=batch_id, items=items, exc=exc, source=source, route=route
        )
        raise


def _commit(
    db: Database,
    who: Principal,
    *,
    ctx: _Context,
    items: list[identity.BatchItem],
    signed: list[identity.Issued | FleetwardError],
    origins: list[str | None],
    spent: list[bytes | None],
    fingerprints: list[str | None],
    source: str | None,
    route: str,
    now: dt.datetime,
) -> list[ProvisionResult]:
    with db.session() as session:
        results = identity.record_issued(
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
                identity.revoke_superseded(
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
        record_attempts(
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
