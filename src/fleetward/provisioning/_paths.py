"""Enrollment from every path that is not a factory batch's own route: REST
single and batch, EST ``simpleenroll`` and the CLI. Factory tokens go
through their batches here too, scoped tokens keep out of other
environments' devices, and every attempt is an enrollment record."""

from __future__ import annotations

import datetime as dt

from sqlalchemy import select
from sqlalchemy.orm import Session

from fleetward import identity
from fleetward.errors import FleetwardError, OutOfScopeError, PayloadTooLargeError
from fleetward.identity import Pki
from fleetward.provisioning._records import (
    ProvisionItem,
    ProvisionResult,
    category_of,
    fingerprint,
    record_attempts,
    record_whole_refusal,
)
from fleetward.provisioning.batch import (
    BatchRules,
    OutsideBatchError,
    check_member,
    check_usable,
    device_in_batch,
)
from fleetward.provisioning.enroll import provision
from fleetward.provisioning.models import EnrollmentBatch
from fleetward.store import Database, utcnow
from fleetward.tenancy.roles import Permission, Principal, require

__all__ = ["enroll_devices"]


def enroll_devices(
    db: Database,
    pki: Pki,
    who: Principal,
    *,
    items: list[identity.BatchItem],
    environment: str | None,
    route: str,
    source: str | None = None,
    now: dt.datetime | None = None,
) -> list[identity.BatchResult]:
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
        PayloadTooLargeError: more than ``identity.MAX_BATCH`` items.
    """
    if len(items) > identity.MAX_BATCH:
        raise PayloadTooLargeError(
            f"batch of {len(items)} items; the limit is {identity.MAX_BATCH}"
        )
    provision_items = [ProvisionItem(device_id=i.device_id[:200], csr=i.csr) for i in items]
    try:
        require(who, Permission.DEVICE_ENROLL)
        env = identity.environment_for(who, environment)
    except FleetwardError as exc:
        record_whole_refusal(
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
        results: list[identity.BatchResult],
        of: list[identity.BatchItem] | None = None,
    ) -> None:
        of = of if of is not None else free
        record_attempts(
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
            fingerprints=[fingerprint(i.csr) for i in of],
            source=source,
            route=route,
            environment=env,
            now=now or utcnow(),
        )

    reserved = _reserved_elsewhere(db, who, items, environment=env)
    free = [i for n, i in enumerate(items) if n not in reserved]
    try:
        done = (
            identity.enroll_many(
                db, pki, who, items=free, environment=env, now=now, on_record=record
            )
            if free
            else []
        )
        if not reserved:
            return done
        refused = [
            identity.BatchResult(device_id=items[n].device_id, error=error)
            for n, error in reserved.items()
        ]
        with db.session() as session:
            record(session, env, refused, [items[n] for n in reserved])
        merged = iter(done)
        return [
            identity.BatchResult(device_id=i.device_id, error=reserved[n])
            if n in reserved
            else next(merged)
            for n, i in enumerate(items)
        ]
    except FleetwardError as exc:  # refused as a whole before the write (no issuing CA)
        record_whole_refusal(
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
    db: Database, who: Principal, items: list[identity.BatchItem], *, environment: str
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
) -> list[identity.BatchResult]:
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
    results: list[identity.BatchResult | None] = [None] * len(items)
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
                results[n] = identity.BatchResult(device_id=items[n].device_id, error=exc)
            continue
        for n, r in zip(numbers, done, strict=True):
            results[n] = identity.BatchResult(device_id=r.device_id, issued=r.issued, error=r.error)
    if outside:
        refused = OutsideBatchError(
            f"this token is bound to factory {who.factory_id}: it enrolls only devices "
            f"that one of its open {environment} batches names"
        )
        for n in outside:
            results[n] = identity.BatchResult(device_id=items[n].device_id, error=refused)
        with db.session() as session:
            record_attempts(
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
                fingerprints=[fingerprint(items[n].csr) for n in outside],
                source=source,
                route=route,
                environment=environment,
                now=now,
            )
    if not all(r is not None for r in results):
        raise RuntimeError("broken invariant, expected: all(r is not None for r in results)")
    return [r for r in results if r is not None]
