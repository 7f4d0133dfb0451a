"""CA rotation: the dual-trust window of a retired issuing CA, and its close.

When an environment's issuing CA is replaced
(:func:`~fleetward.identity.ca_service.import_issuing_certificate`), the
previous one is *retired*: it signs nothing new, and the device-facing TLS
endpoints (the environment's broker listener, the HTTPS device plane) keep
it as a trust anchor only while devices migrate, until ``trusted_until``.
Its row also says what its certificates are revoked for
(``retirement_reason``: ``superseded`` for a planned rotation,
``cACompromise`` when the CA was compromised), who retired it, and whether
it is distrusted as soon as no device depends on it
(``distrust_when_migrated``, the playbook's ``distrust-ca`` step).

:func:`rotation_round` (the compliance tracker, every round, under its
lease) applies these rules to every retired CA:

1. **Superseded.** A good certificate of the retired CA whose device holds a
   good, unexpired certificate of a newer issuing CA of the same tenant and
   environment (not distrusted) is revoked, with the retirement reason, at
   most :data:`MAX_REVOKED_PER_ROUND` per CA per round.
2. **Migrated.** A CA marked ``distrust_when_migrated`` on which no device
   depends (no good, unexpired certificate of it left) is distrusted.
3. **Deadline.** A CA whose ``trusted_until`` has passed is distrusted.

Distrusting (rules 2 and 3, or an operator: :func:`distrust_ca`) is one
transaction: ``status = "distrusted"``, ``distrusted_at`` stamped, every
remaining good certificate of the CA revoked (those devices must be
re-provisioned; each revocation has its audit entry), and one ``ca.distrust``
entry with the count and a sample. :func:`~.publication.trust_state`
changes with the status, so every TLS endpoint reloads its trust files
without the CA; its CRL stays published and OCSP still answers for it.

Everything is set-based: a round costs a few queries per retired CA, with
the certificates read and revoked in chunks, whatever the fleet's size.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from sqlalchemy import Select, bindparam, exists, func, select, update
from sqlalchemy.orm import Session, aliased

from fleetward import audit, observe
from fleetward.errors import ConflictError, InvalidInputError, NotFoundError
from fleetward.identity._registry import device_ids
from fleetward.identity.models import CertificateAuthority, CertificateRecord
from fleetward.store import Database, utcnow
from fleetward.tenancy import scope
from fleetward.tenancy.roles import Permission, Principal, require

__all__ = [
    "DEFAULT_TRUST_WINDOW",
    "MAX_REVOKED_PER_ROUND",
    "MAX_TRUST_WINDOW",
    "ROTATION_REASONS",
    "SAMPLE",
    "Transition",
    "check_rotation",
    "dependent_devices",
    "dependents",
    "distrust_ca",
    "distrust_due",
    "distrust_when_migrated",
    "retired_by",
    "rotation_round",
]

DEFAULT_TRUST_WINDOW = dt.timedelta(days=7)
# The longest window an operator or a playbook may ask for: a retired CA
# trusted for years is a CA that was never retired.
MAX_TRUST_WINDOW = dt.timedelta(days=366)
# What a retired CA's certificates are revoked for (RFC 5280 reasons).
ROTATION_REASONS = ("superseded", "cACompromise")
MAX_REVOKED_PER_ROUND = 5000  # superseded certificates per CA per round
_CHUNK = 5000  # keys per IN (...) query
SAMPLE = 20  # device ids named in a ca.distrust audit entry
_MAX_ID = 2**31 - 1  # the largest id an INTEGER key holds


def check_rotation(*, window: dt.timedelta, reason: str) -> None:
    """Refuse a trust window or a revocation reason a rotation may not use.

    Raises:
        InvalidInputError: a negative window, one over :data:`MAX_TRUST_WINDOW`,
            or a reason not in :data:`ROTATION_REASONS`.
    """
    if not isinstance(window, dt.timedelta):
        raise TypeError("the trust window is a timedelta")
    if window < dt.timedelta(0) or window > MAX_TRUST_WINDOW:
        raise InvalidInputError(
            f"the trust window must be between 0 and {MAX_TRUST_WINDOW.days} days"
        )
    if reason not in ROTATION_REASONS:
        raise InvalidInputError(
            f"a rotation revokes for one of {', '.join(ROTATION_REASONS)}, not {reason!r}"
        )


def distrust_due(
    *,
    trusted_until: dt.datetime | None,
    when_migrated: bool,
    dependents: int,
    now: dt.datetime,
) -> str | None:
    """Why a retired CA is distrusted now (rules 2 and 3), or None. Pure.

    A CA retired before windows existed (``trusted_until`` None) is closed
    only by an operator or when migrated.
    """
    if when_migrated and dependents == 0:
        return "no device depends on it"
    if trusted_until is not None and now >= trusted_until:
        return "its trust window closed"
    return None


@dataclass(frozen=True)
class Transition:
    """What a round or an operator did to one retired CA."""

    ca_id: int
    tenant_id: int
    environment: str
    kind: Literal["superseded", "distrusted"]
    revoked: int  # certificates revoked by this transition
    why: str
    retired_by: str | None  # ``playbook-run:N`` when a run retired the CA
    stranded: tuple[str, ...] = ()  # a sample of the devices cut off by a distrust


def _dependents_query(ca_id: int, now: dt.datetime) -> Select[int]:
    return select(CertificateRecord.device_pk).where(
        CertificateRecord.ca_id == ca_id,
        CertificateRecord.status == "good",
        CertificateRecord.not_after > now,
    )


def dependents(session: Session, *, ca_id: int, now: dt.datetime | None = None) -> int:
    """How many devices depend on CA ``ca_id``: hold a good, unexpired
    certificate of it (one indexed count)."""
    now = now or utcnow()
    sub = _dependents_query(ca_id, now).distinct().subquery()
    return int(session.execute(select(func.count()).select_from(sub)).scalar_one())


def dependent_devices(
    session: Session, *, ca_id: int, now: dt.datetime | None = None, limit: int = 50
) -> list[str]:
    """The device ids of up to ``limit`` devices that depend on CA ``ca_id``."""
    now = now or utcnow()
    pks = list(session.execute(_dependents_query(ca_id, now).distinct().limit(limit)).scalars())
    return sorted(device_ids(session, pks).values())


def _newer_cas(session: Session, ca: CertificateAuthority) -> list[int]:
    """Issuing CAs of the same tenant and environment made after ``ca`` that
    are still trusted: a certificate of one of them replaces one of ``ca``."""
    return list(
        session.execute(
            select(CertificateAuthority.id).where(
                CertificateAuthority.tenant_id == ca.tenant_id,
                CertificateAuthority.kind == "issuing",
                CertificateAuthority.environment == ca.environment,
                CertificateAuthority.id > ca.id,
                CertificateAuthority.status.in_(("active", "retired")),
            )
        ).scalars()
    )


def _superseded(
    session: Session, ca: CertificateAuthority, newer: Sequence[int], now: dt.datetime
) -> list[tuple[str, int]]:
    """Up to :data:`MAX_REVOKED_PER_ROUND` good certificates of ``ca`` whose
    device holds a good, unexpired certificate of a CA in ``newer``."""
    if not newer:
        return []
    old, new = aliased(CertificateRecord), aliased(CertificateRecord)
    replaced = exists().where(
        new.device_pk == old.device_pk,
        new.ca_id.in_(list(newer)),
        new.status == "good",
        new.not_after > now,
    )
    rows = session.execute(
        select(old.serial, old.device_pk)
        .where(old.ca_id == ca.id, old.status == "good", replaced)
        .limit(MAX_REVOKED_PER_ROUND)
    )
    return [(str(serial), int(pk)) for serial, pk in rows]


def _revoke(
    session: Session,
    ca: CertificateAuthority,
    serials: Sequence[str],
    *,
    reason: str,
    actor: str,
    now: dt.datetime,
    context: str,
) -> list[tuple[str, int]]:
    """Revoke those of ``serials`` (all of CA ``ca``) still good, set-based:
    one counter update, one multi-row update and one audit append per
    chunk. Returns the ``(serial, device key)`` revoked."""
    revoked: list[tuple[str, int]] = []
    for start in range(0, len(serials), _CHUNK):
        rows = [
            (str(serial), int(pk))
            for serial, pk in session.execute(
                select(CertificateRecord.serial, CertificateRecord.device_pk).where(
                    CertificateRecord.serial.in_(serials[start : start + _CHUNK]),
                    CertificateRecord.ca_id == ca.id,
                    CertificateRecord.status == "good",
                )
            )
        ]
        if not rows:
            continue
        # Revocation sequence numbers follow commit order per CA (the CRL
        # publisher reads newer ones only): reserve a block for this chunk.
        last = session.execute(
            update(CertificateAuthority)
            .where(CertificateAuthority.id == ca.id)
            .values(revocations=CertificateAuthority.revocations + len(rows))
            .returning(CertificateAuthority.revocations)
        ).scalar_one()
        first = last - len(rows) + 1
        session.connection().execute(
            update(CertificateRecord.__table__)  # type: ignore[arg-type]
            .where(CertificateRecord.__table__.c.serial == bindparam("s"))
            .values(
                status="revoked",
                revoked_at=now,
                revocation_reason=reason,
                revocation_seq=bindparam("seq"),
            ),
            [{"s": serial, "seq": first + i} for i, (serial, _) in enumerate(rows)],
        )
        observe.revocation(session, reason=reason, count=len(rows))
        names = device_ids(session, [pk for _, pk in rows])
        audit.append_many(
            session,
            [
                audit.Event(
                    actor=actor,
                    action="certificate.revoke",
                    subject=f"device:{names.get(pk, pk)}",
                    tenant_id=ca.tenant_id,
                    details={"serial": serial, "reason": reason, "ca": ca.id, "rotation": context},
                )
                for serial, pk in rows
            ],
            now=now,
        )
        revoked.extend(rows)
    # The caller's session may hold the CA row: its counter moved in SQL.
    session.expire(ca, ["revocations"])
    return revoked


def _distrust(
    session: Session, ca: CertificateAuthority, *, actor: str, why: str, now: dt.datetime
) -> Transition:
    """Distrust ``ca`` and revoke every certificate of it still good."""
    reason = ca.retirement_reason or "superseded"
    remaining = list(
        session.execute(
            select(CertificateRecord.serial).where(
                CertificateRecord.ca_id == ca.id, CertificateRecord.status == "good"
            )
        ).scalars()
    )
    revoked = _revoke(
        session, ca, remaining, reason=reason, actor=actor, now=now, context="distrusted"
    )
    stranded = tuple(sorted(device_ids(session, [pk for _, pk in revoked[:SAMPLE]]).values()))
    ca.status = "distrusted"
    ca.distrusted_at = now
    audit.append(
        session,
        actor=actor,
        action="ca.distrust",
        subject=f"ca:{ca.id}",
        tenant_id=ca.tenant_id,
        details={
            "environment": ca.environment,
            "why": why,
            "reason": reason,
            "revoked": len(revoked),
            "stranded_devices": len({pk for _, pk in revoked}),
            "sample": list(stranded),
        },
        now=now,
    )
    return Transition(
        ca_id=ca.id, tenant_id=ca.tenant_id, environment=ca.environment or "",
        kind="distrusted", revoked=len(revoked), why=why, retired_by=ca.retired_by,
        stranded=stranded,
    )  # fmt: skip


def distrust_ca(
    session: Session,
    principal: Principal,
    ca_id: int,
    *,
    force: bool = False,
    now: dt.datetime | None = None,
) -> Transition:
    """Close a retired issuing CA's trust window now (an operator's call).

    Args:
        force: distrust it even though devices still depend on it; their
            certificates are revoked and they must be re-provisioned.

    Raises:
        PermissionDeniedError / OutOfScopeError: the role may not manage
            CAs, or the token's scope does not reach the CA's environment.
        NotFoundError: not a CA of the caller's tenant.
        ConflictError: a root, the active, a pending or an already
            distrusted CA; or devices depend on it and ``force`` is not set.
    """
    require(principal, Permission.CA_MANAGE)
    now = now or utcnow()
    # An id outside the column's range is no CA (and must not reach the
    # driver, which refuses integers it cannot bind).
    ca = session.get(CertificateAuthority, ca_id) if 0 < ca_id <= _MAX_ID else None
    if ca is None or ca.tenant_id != principal.tenant_id:
        raise NotFoundError(f"CA {ca_id} not found")
    scope.authorize(principal, scope.CA_DISTRUST, environments=[ca.environment])
    if ca.kind != "issuing":
        raise ConflictError(f"CA {ca_id} is a root: only a retired issuing CA can be distrusted")
    if ca.status != "retired":
        hint = {
            "active": f"it is the active {ca.environment} issuing CA: rotate it first",
            "pending": "it is waiting for its certificate",
            "distrusted": "it is already distrusted",
        }.get(ca.status, ca.status)
        raise ConflictError(f"CA {ca_id} cannot be distrusted: {hint}")
    waiting = dependents(session, ca_id=ca.id, now=now)
    if waiting and not force:
        sample = dependent_devices(session, ca_id=ca.id, now=now, limit=3)
        raise ConflictError(
            f"{waiting} device(s) still depend on CA {ca_id} (e.g. {', '.join(sample)}): "
            "wait for them to renew, or force it and re-provision them"
        )
    return _distrust(
        session, ca, actor=principal.actor, now=now,
        why="an operator closed its window" + (" (forced)" if waiting else ""),
    )  # fmt: skip


def retired_by(session: Session, *, tenant_id: int, actor: str) -> int | None:
    """The newest issuing CA of the tenant that ``actor`` retired (e.g.
    ``playbook-run:7``) and that is still retired, if any."""
    return session.execute(
        select(func.max(CertificateAuthority.id)).where(
            CertificateAuthority.tenant_id == tenant_id,
            CertificateAuthority.retired_by == actor,
            CertificateAuthority.status == "retired",
        )
    ).scalar()


def distrust_when_migrated(session: Session, *, ca_id: int, now: dt.datetime | None = None) -> int:
    """Mark retired CA ``ca_id`` to be distrusted as soon as no device
    depends on it (rule 2); returns how many devices depend on it now.

    Raises:
        ConflictError: the CA is not retired.
    """
    now = now or utcnow()
    ca = session.get_one(CertificateAuthority, ca_id)
    if ca.status != "retired":
        raise ConflictError(f"CA {ca_id} is {ca.status}, not retired")
    ca.distrust_when_migrated = True
    waiting = dependents(session, ca_id=ca_id, now=now)
    audit.append(
        session,
        actor=ca.retired_by or "system",
        action="ca.distrust-when-migrated",
        subject=f"ca:{ca.id}",
        tenant_id=ca.tenant_id,
        details={"dependents": waiting},
        now=now,
    )
    return waiting


def rotation_round(db: Database, *, now: dt.datetime | None = None) -> list[Transition]:
    """Apply the module's rules to every retired issuing CA; returns what changed.

    The plan is read in a read transaction; the writer is taken only when a
    certificate is to be revoked or a CA distrusted, and everything is
    checked again under it.
    """
    now = now or utcnow()
    todo: list[tuple[int, list[str]]] = []
    with db.read() as s:
        retired = list(
            s.execute(
                select(CertificateAuthority).where(
                    CertificateAuthority.kind == "issuing",
                    CertificateAuthority.status == "retired",
                )
            ).scalars()
        )
        for ca in retired:
            rows = _superseded(s, ca, _newer_cas(s, ca), now)
            left = dependents(s, ca_id=ca.id, now=now) if ca.distrust_when_migrated else 1
            due = distrust_due(
                trusted_until=ca.trusted_until,
                when_migrated=ca.distrust_when_migrated,
                dependents=max(0, left - len({pk for _, pk in rows})),
                now=now,
            )
            if rows or due:
                todo.append((ca.id, [serial for serial, _ in rows]))
    done: list[Transition] = []
    for ca_id, serials in todo:
        with db.session() as s:
            ca = s.get_one(CertificateAuthority, ca_id)
            if ca.status != "retired":
                continue  # another host or an operator got there first
            revoked = _revoke(
                s, ca, serials, reason=ca.retirement_reason or "superseded", actor="system",
                now=now, context="superseded",
            )  # fmt: skip
            if revoked:
                done.append(
                    Transition(
                        ca_id=ca.id, tenant_id=ca.tenant_id, environment=ca.environment or "",
                        kind="superseded", revoked=len(revoked),
                        why="their devices hold a certificate of a newer CA",
                        retired_by=ca.retired_by,
                    )
                )  # fmt: skip
            left = dependents(s, ca_id=ca.id, now=now) if ca.distrust_when_migrated else 1
            why = distrust_due(
                trusted_until=ca.trusted_until, when_migrated=ca.distrust_when_migrated,
                dependents=left, now=now,
            )  # fmt: skip
            if why is not None:
                done.append(_distrust(s, ca, actor="system", why=why, now=now))
    return done
