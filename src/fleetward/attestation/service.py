"""The verifier: nonces, evidence checks, appraisal, verdicts as telemetry events.

A device asks for a nonce, boots, measures its stages, and returns signed
evidence over the nonce. The verifier refuses (raises, and the refusal is
recorded as an ``attestation.refused`` event by the caller):

- a nonce that was not issued to this device, was used, or expired (replay);
- a bad signature (wrong key) or stale evidence;
- a device that is not active or quarantined (revoked devices are refused);
- claims that do not parse.

Otherwise the verdict (``pass``, ``fail`` naming each failed claim, or
``unknown-firmware``) is stored as an ``attestation.verdict`` event, which
the detectors read.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import json
import secrets

from cryptography import x509
from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from fleetward import identity, ota, telemetry
from fleetward.attestation import evidence as ev
from fleetward.attestation.models import AttestationNonce
from fleetward.errors import AttestationError, ConflictError, NotFoundError
from fleetward.store.db import utcnow

__all__ = ["NONCE_TTL", "issue_nonce", "prune_nonces", "record_refusal", "submit"]

NONCE_TTL = dt.timedelta(seconds=120)
MAX_OUTSTANDING = 8  # unexpired, unused nonces per device


def _device(session: Session, tenant: str, device_id: str) -> tuple[int, identity.Device]:
    """The device named in a public attestation URL.

    One query for the tenant and the device together, so an unknown tenant
    and a known tenant without the device cost the same and answer the
    same 404: these public routes do not tell which tenant names exist.
    """
    device = identity.device_named(session, tenant=tenant, device_id=device_id)
    if device is None:
        raise NotFoundError("no such device")
    return device.tenant_id, device


def issue_nonce(
    session: Session, tenant: str, device_id: str, *, now: dt.datetime | None = None
) -> bytes:
    """A fresh single-use nonce for one device.

    Raises:
        NotFoundError: no such device.
        ConflictError: the device holds too many unused nonces already.
    """
    now = now or utcnow()
    _, device = _device(session, tenant, device_id)
    outstanding = session.execute(
        select(func.count())
        .select_from(AttestationNonce)
        .where(
            AttestationNonce.device_pk == device.id,
            AttestationNonce.used_at.is_(None),
            AttestationNonce.expires_at > now,
        )
    ).scalar_one()
    if outstanding >= MAX_OUTSTANDING:
        raise ConflictError("too many unused attestation nonces for this device; use one first")
    nonce = secrets.token_bytes(32)
    session.add(
        AttestationNonce(
            device_pk=device.id,
            digest=hashlib.sha256(nonce).hexdigest(),
            expires_at=now + NONCE_TTL,
        )
    )
    return nonce


def _consume(session: Session, device_pk: int, nonce_b64: str, now: dt.datetime) -> None:
    try:
        nonce = base64.urlsafe_b64decode(nonce_b64 + "=" * (-len(nonce_b64) % 4))
    except ValueError as exc:
        raise AttestationError("claim eat_nonce is not base64url") from exc
    used = session.execute(
        update(AttestationNonce)
        .where(
            AttestationNonce.digest == hashlib.sha256(nonce).hexdigest(),
            AttestationNonce.device_pk == device_pk,
            AttestationNonce.used_at.is_(None),
            AttestationNonce.expires_at > now,
        )
        .values(used_at=now)
    )
    if not used.rowcount:  # type: ignore[attr-defined]
        raise AttestationError("nonce unknown, expired, already used, or not this device's")


def _reference(
    session: Session, device: identity.Device, version: str
) -> tuple[dict[str, str] | None, str | None]:
    """Reference measurements of a release that was signed (deployable or
    withdrawn since), and its state; a pending release vouches for nothing."""
    found = ota.signed_release(
        session, tenant_id=device.tenant_id, product=device.product, version=version
    )
    return found if found is not None else (None, None)


def submit(
    session: Session, tenant: str, device_id: str, token: str, *, now: dt.datetime | None = None
) -> ev.Verdict:
    """Verify and appraise evidence; store and return the verdict.

    Raises:
        NotFoundError: no such device.
        AttestationError: refused (see the module docstring).
        PayloadTooLargeError: evidence over the limit.
    """
    now = now or utcnow()
    tenant_id, device = _device(session, tenant, device_id)
    if device.state not in ("active", "quarantined"):
        raise AttestationError(f"device is {device.state}: its evidence is refused")
    ders = identity.good_certificates(session, device.id, now=now)
    data = None
    error: AttestationError | None = None
    for der in ders:  # a device renewing holds two good certificates for a while
        try:
            key = x509.load_der_x509_certificate(der).public_key()
            data = ev.verify_evidence(token, key, now=now)
            break
        except AttestationError as exc:
            error = exc
    if data is None:
        raise error or AttestationError("the device holds no valid certificate")
    if data["ueid"] != device_id:
        raise AttestationError("claim ueid names another device")
    _consume(session, device.id, data["eat_nonce"], now)
    reference, state = _reference(session, device, data["swversion"])
    verdict = ev.appraise(data, reference=reference, withdrawn=state == "withdrawn")
    ota.on_verdict(
        session, device_pk=device.id, version=str(data["swversion"]), result=verdict.result, now=now
    )
    ota.note_running(
        session, tenant_id=tenant_id, device_pk=device.id, product=device.product,
        version=str(data["swversion"]), now=now,
    )  # fmt: skip
    telemetry.record_events(
        session,
        [
            {
                "tenant_id": tenant_id,
                "device_pk": device.id,
                "type": "attestation.verdict",
                "at": now,
                "count": 1,
                "fields": json.dumps({**verdict.as_dict(), "bootcount": data["bootcount"]}),
            }
        ],
    )
    return verdict


def record_refusal(
    session: Session,
    *,
    tenant_id: int,
    device_pk: int,
    reason: str,
    count: int = 1,
    details: dict[str, object] | None = None,
    now: dt.datetime | None = None,
) -> None:
    """Record ``count`` refused attestations of one (authenticated) device as
    one ``attestation.refused`` event, in the caller's transaction (its own:
    the refused one rolled back). The API counts a device's refusals per
    window and records them here once per window
    (:mod:`fleetward.runtime.refusals`), not one row per refused request."""
    telemetry.record_events(
        session,
        [
            {
                "tenant_id": tenant_id,
                "device_pk": device_pk,
                "type": "attestation.refused",
                "at": now or utcnow(),
                "count": max(1, count),
                "fields": json.dumps({**(details or {}), "reason": reason[:300]}),
            }
        ],
    )


def prune_nonces(session: Session, *, now: dt.datetime | None = None) -> int:
    """Delete nonces that were used or expired (they can never be used again)."""
    from sqlalchemy import delete, or_

    now = now or utcnow()
    result = session.execute(
        delete(AttestationNonce).where(
            or_(AttestationNonce.used_at.is_not(None), AttestationNonce.expires_at <= now)
        )
    )
    return int(result.rowcount)  # type: ignore[attr-defined]
