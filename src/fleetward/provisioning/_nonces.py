"""Enrollment nonces: single-use challenges a chip signs in its key attestation.

A station (factory-operator token) asks for nonces, hands one to each chip,
and the enrollment spends it (``fleetward.provisioning.enroll``). A nonce
expires after :data:`NONCE_TTL`.

Two limits keep a stolen or runaway station token from filling the table
(it once created 20,000 nonces in 2.3 s, and none was ever deleted):

- one token holds at most :data:`MAX_OPEN_NONCES_PER_TOKEN` unused,
  unexpired nonces; past it :func:`issue_nonce` refuses (409) until some are
  spent or expire. A nonce starts with a tag of its holder (the first bytes
  of a hash of the tenant, the token's actor and its factory), followed by
  24 random bytes, so a token's open nonces are counted by prefix, with no
  column to add and nothing about the token revealed;
- issuing deletes the tenant's expired nonces first (:func:`prune_nonces`),
  so the table holds only what can still be used. Spent nonces stay until
  they expire, so a replay within the TTL is still told apart from a nonce
  that was never issued.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import secrets

from sqlalchemy import delete, func, select
from sqlalchemy.orm import Session

from fleetward.errors import ConflictError, InvalidInputError
from fleetward.provisioning.models import EnrollmentNonce
from fleetward.store import utcnow
from fleetward.tenancy.roles import Permission, Principal, require

__all__ = [
    "MAX_NONCES_PER_REQUEST",
    "MAX_OPEN_NONCES_PER_TOKEN",
    "NONCE_TTL",
    "issue_nonce",
    "prune_nonces",
]

NONCE_TTL = dt.timedelta(minutes=5)  # a chip answers its challenge within seconds
MAX_NONCES_PER_REQUEST = 1000
# Unused, unexpired nonces one token (or local operator) may hold: two full
# requests, so a station can fetch the next tray's challenges while the
# current tray is in flight.
MAX_OPEN_NONCES_PER_TOKEN = 2 * MAX_NONCES_PER_REQUEST
_NONCE_TAG_BYTES = 6  # 8 base64url characters: whose nonce it is
_NONCE_RANDOM_BYTES = 24


def _nonce_tag(who: Principal) -> bytes:
    return hashlib.sha256(f"{who.tenant_id}\0{who.actor}\0{who.factory_id}".encode()).digest()[
        :_NONCE_TAG_BYTES
    ]


def issue_nonce(
    session: Session, who: Principal, *, count: int = 1, now: dt.datetime | None = None
) -> list[EnrollmentNonce]:
    """Fresh single-use challenges for attestation statements (tagged with
    their holder, see the module docstring), after deleting the tenant's
    expired ones.

    Raises:
        InvalidInputError: ``count`` outside 1..MAX_NONCES_PER_REQUEST.
        ConflictError: the token would hold more than
            MAX_OPEN_NONCES_PER_TOKEN unused, unexpired nonces.
    """
    require(who, Permission.DEVICE_ENROLL)
    if not 1 <= count <= MAX_NONCES_PER_REQUEST:
        raise InvalidInputError(f"ask for 1 to {MAX_NONCES_PER_REQUEST} nonces at a time")
    now = now or utcnow()
    prune_nonces(session, tenant_id=who.tenant_id, now=now)
    tag = _nonce_tag(who)
    prefix = base64.urlsafe_b64encode(tag).decode()
    open_now = session.execute(
        select(func.count())
        .select_from(EnrollmentNonce)
        .where(
            EnrollmentNonce.tenant_id == who.tenant_id,
            EnrollmentNonce.nonce.startswith(prefix, autoescape=True),
            EnrollmentNonce.used_at.is_(None),
        )
    ).scalar_one()
    if open_now + count > MAX_OPEN_NONCES_PER_TOKEN:
        raise ConflictError(
            f"this token holds {open_now} unused nonces; at most {MAX_OPEN_NONCES_PER_TOKEN} "
            f"may be open at once (spend them, or wait {int(NONCE_TTL.total_seconds())} s "
            "for them to expire)"
        )
    expires = now + NONCE_TTL
    rows = [
        EnrollmentNonce(
            nonce=base64.urlsafe_b64encode(tag + secrets.token_bytes(_NONCE_RANDOM_BYTES)).decode(),
            tenant_id=who.tenant_id,
            expires_at=expires,
        )
        for _ in range(count)
    ]
    session.add_all(rows)
    return rows


def prune_nonces(
    session: Session, *, tenant_id: int | None = None, now: dt.datetime | None = None
) -> int:
    """Delete expired enrollment nonces (of one tenant, or all); returns how many.

    Spent nonces stay until they expire, so a replay within the TTL is still
    told apart from a nonce that was never issued.
    """
    stmt = delete(EnrollmentNonce).where(EnrollmentNonce.expires_at <= (now or utcnow()))
    if tenant_id is not None:
        stmt = stmt.where(EnrollmentNonce.tenant_id == tenant_id)
    return int(session.execute(stmt).rowcount)  # type: ignore[attr-defined]
