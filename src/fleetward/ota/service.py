"""The ota domain's releases: upload, review gate, approval, withdrawal.

A release is registered ``pending`` with its artifact (kept in a
:class:`~fleetward.ota.blobs.BlobStore`), its SBOM and its reference boot
measurements; each release signer's approval is counted, and at the
product's threshold, with the rest of the review gate passed
(:mod:`fleetward.ota.release`), it is signed into the product's TUF role
(:mod:`fleetward.ota.repository`) and ``deployable``. A withdrawn release
leaves the role, so devices can no longer get it.
"""

from __future__ import annotations

import datetime as dt
import json
from typing import IO, Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from fleetward import audit
from fleetward.errors import ConflictError, NotFoundError, PayloadTooLargeError
from fleetward.keys.ring import KeyRing
from fleetward.ota import _tuf_repo as tuf_repo
from fleetward.ota import release as checks
from fleetward.ota.blobs import BlobStore
from fleetward.ota.models import Release
from fleetward.ota.repository import publish_product, role_threshold
from fleetward.store.db import utcnow
from fleetward.tenancy import scope
from fleetward.tenancy.roles import Principal

__all__ = [
    "approve_release",
    "create_release",
    "gate",
    "get_release",
    "list_releases",
    "signed_release",
    "withdraw_release",
]


def create_release(
    session: Session,
    keyring: KeyRing,
    blobs: BlobStore,
    principal: Principal,
    *,
    product: str,
    version: str,
    filename: str,
    artifact: IO[bytes],
    hardware: list[str],
    sbom: bytes | None,
    measurements: dict[str, Any],
    now: dt.datetime | None = None,
) -> Release:
    """Register a release (state ``pending`` until its review gate passes).

    The SBOM and measurements may be missing or wrong here: the gate lists
    what is missing, and the release cannot become deployable until a new
    upload fixes it. Version order, hardware and the file name are checked
    at once.

    Raises:
        InvalidInputError / PayloadTooLargeError: malformed fields or artifact.
        ConflictError: the version is not higher than the product's newest.
        NotFoundError: the product has no role yet (``ensure_product``).
    """
    scope.authorize(principal, scope.RELEASE_MANAGE)
    now = now or utcnow()
    role_threshold(session, principal.tenant_id, tuf_repo.product_role(product))
    existing = session.execute(
        select(Release.version).where(
            Release.tenant_id == principal.tenant_id, Release.product == product
        )
    ).scalars()
    checks.check_new_version(version, existing)
    checks.check_filename(filename)
    hw = checks.check_hardware(hardware)
    if sbom is not None and len(sbom) > checks.MAX_SBOM_BYTES:
        raise PayloadTooLargeError(f"an SBOM is limited to {checks.MAX_SBOM_BYTES} bytes")
    sha, length = blobs.put(artifact, limit=checks.MAX_ARTIFACT_BYTES)
    row = Release(
        tenant_id=principal.tenant_id,
        product=product,
        version=version,
        filename=filename,
        sha256=sha,
        length=length,
        hardware=json.dumps(hw),
        sbom=sbom.decode("utf-8", errors="replace") if sbom is not None else None,
        measurements=json.dumps(measurements),
        state="pending",
        approvals="[]",
        created_by=principal.actor,
        created_at=now,
        updated_at=now,
    )
    session.add(row)
    session.flush()
    audit.append(
        session,
        actor=principal.actor,
        action="ota.release.create",
        subject=f"release:{row.id}",
        tenant_id=principal.tenant_id,
        details={"product": product, "version": version, "sha256": sha, "length": length},
        now=now,
    )
    return row


def gate(session: Session, r: Release) -> checks.GateResult:
    """The release's review gate as it stands."""
    return checks.review_gate(
        approvals=len(json.loads(r.approvals)),
        threshold=role_threshold(session, r.tenant_id, tuf_repo.product_role(r.product)),
        sbom=r.sbom.encode() if r.sbom is not None else None,
        measurements=json.loads(r.measurements),
    )


def get_release(session: Session, principal: Principal, release_id: int) -> Release:
    """One release of the tenant."""
    r = session.get(Release, release_id)
    if r is None or r.tenant_id != principal.tenant_id:
        raise NotFoundError(f"release {release_id} not found")
    return r


def signed_release(
    session: Session, *, tenant_id: int, product: str, version: str
) -> tuple[dict[str, str], str] | None:
    """The reference boot measurements and the state of a release that was
    signed (``deployable``, or ``withdrawn`` since) as ``version`` of the
    tenant's ``product``; None for none (a pending release vouches for nothing)."""
    row = session.execute(
        select(Release.measurements, Release.state).where(
            Release.tenant_id == tenant_id,
            Release.product == product,
            Release.version == version,
            Release.state.in_(("deployable", "withdrawn")),
        )
    ).first()
    return (json.loads(row[0]), str(row[1])) if row is not None else None


def list_releases(
    session: Session, principal: Principal, *, product: str | None = None
) -> list[Release]:
    """The tenant's releases, newest first."""
    query = select(Release).where(Release.tenant_id == principal.tenant_id)
    if product is not None:
        query = query.where(Release.product == product)
    return list(session.execute(query.order_by(Release.id.desc())).scalars())


def approve_release(
    session: Session,
    keyring: KeyRing,
    principal: Principal,
    release_id: int,
    *,
    now: dt.datetime | None = None,
) -> Release:
    """One release signer's approval; at the threshold, with the rest of the
    gate passed, the release is signed into the product role and deployable.

    Raises:
        ConflictError: already approved by this actor, withdrawn, or deployable.
    """
    scope.authorize(principal, scope.RELEASE_APPROVE)
    now = now or utcnow()
    r = get_release(session, principal, release_id)
    if r.state != "pending":
        raise ConflictError(f"release {release_id} is {r.state}")
    approvals: list[str] = json.loads(r.approvals)
    if principal.actor in approvals:
        raise ConflictError(f"{principal.actor} already approved release {release_id}")
    approvals.append(principal.actor)
    r.approvals = json.dumps(approvals)
    r.updated_at = now
    result = gate(session, r)
    if result.passed:
        r.state = "deployable"
        publish_product(session, keyring, r.tenant_id, r.product, now)
    audit.append(
        session,
        actor=principal.actor,
        action="ota.release.approve",
        subject=f"release:{r.id}",
        tenant_id=r.tenant_id,
        details={"approvals": len(approvals), "state": r.state, "gate": list(result.findings)},
        now=now,
    )
    return r


def withdraw_release(
    session: Session,
    keyring: KeyRing,
    principal: Principal,
    release_id: int,
    *,
    reason: str = "",
    now: dt.datetime | None = None,
) -> Release:
    """Remove a release from its product's targets (devices can no longer get it)."""
    scope.authorize(principal, scope.RELEASE_MANAGE)
    now = now or utcnow()
    r = get_release(session, principal, release_id)
    if r.state == "withdrawn":
        return r
    was_deployable = r.state == "deployable"
    r.state = "withdrawn"
    r.updated_at = now
    if was_deployable:
        publish_product(session, keyring, r.tenant_id, r.product, now)
    audit.append(
        session,
        actor=principal.actor,
        action="ota.release.withdraw",
        subject=f"release:{r.id}",
        tenant_id=r.tenant_id,
        details={"reason": reason},
        now=now,
    )
    return r
