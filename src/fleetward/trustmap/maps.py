"""Registered trust maps, their checks against the live system, and drift alerts.

A tenant registers one trust map per product (:func:`register_map`; every
version is kept, the newest is current, each registration audited). The
trust map worker (:func:`check_round`) checks every current map against the
live installation, keeps the latest result per product (:func:`last_check`),
and raises a ``trust-drift`` alert per drift through detection (deduplicated
per product, drift kind and subject, refreshed while the drift lasts; the
tenant's automatic response for the kind applies as for any alert). The
controls review (:mod:`.review`) reads the same current map.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import json
import re
from dataclasses import dataclass

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from fleetward import audit, detection
from fleetward.errors import InvalidInputError, NotFoundError
from fleetward.store.db import utcnow
from fleetward.tenancy import scope
from fleetward.tenancy.roles import Principal
from fleetward.trustmap.checks import CheckResult
from fleetward.trustmap.models import MapCheck, TrustMapVersion
from fleetward.trustmap.schema import TrustMap, load
from fleetward.trustmap.service import check_map

__all__ = [
    "MAX_PRODUCTS",
    "MapOverview",
    "StoredCheck",
    "check_product",
    "check_round",
    "current_map",
    "last_check",
    "list_maps",
    "maps_overview",
    "register_map",
]

MAX_PRODUCTS = 200  # registered products per tenant (a map is a product's)
ROUND_LIMIT = 500  # maps checked per worker round (all tenants)
PRODUCT = re.compile(r"^[a-z0-9][a-z0-9._-]{0,63}$")


@dataclass(frozen=True)
class StoredCheck:
    """A check as kept: when, against which map version, and what it found."""

    product: str
    map_digest: str
    drifts: list[dict[str, object]]
    confirmed: list[str]
    checked: list[str]
    checked_at: dt.datetime


def _product(product: str) -> str:
    if not PRODUCT.match(product):
        raise InvalidInputError(f"bad product name {product[:70]!r}")
    return product


def register_map(
    session: Session,
    principal: Principal,
    *,
    product: str,
    document: str,
    now: dt.datetime | None = None,
) -> TrustMapVersion:
    """Register a new version of the product's trust map (validated first).

    Raises:
        InvalidInputError: the map is malformed, or names another product.
        PayloadTooLargeError: the map is too large.
        ConflictError: too many products.
    """
    scope.authorize(principal, scope.TRUSTMAP_MANAGE)
    now = now or utcnow()
    m = load(document)
    if m.product != _product(product):
        raise InvalidInputError(f"product: the map describes {m.product!r}, not {product!r}")
    digest = hashlib.sha256(document.encode()).hexdigest()
    if current_map(session, principal.tenant_id, product) is None:
        known = session.scalar(
            select(func.count(func.distinct(TrustMapVersion.product))).where(
                TrustMapVersion.tenant_id == principal.tenant_id
            )
        )
        if int(known or 0) >= MAX_PRODUCTS:
            raise InvalidInputError(f"a tenant registers maps for at most {MAX_PRODUCTS} products")
    row = TrustMapVersion(
        tenant_id=principal.tenant_id,
        product=product,
        document=document,
        digest=digest,
        created_by=principal.actor,
        created_at=now,
    )
    session.add(row)
    session.flush()
    audit.append(
        session,
        actor=principal.actor,
        action="trustmap.register",
        subject=f"trustmap:{product}",
        tenant_id=principal.tenant_id,
        details={"version": row.id, "digest": digest},
        now=now,
    )
    return row


def current_map(session: Session, tenant_id: int, product: str) -> TrustMapVersion | None:
    """The product's newest registered map (None: none registered)."""
    return session.scalars(
        select(TrustMapVersion)
        .where(TrustMapVersion.tenant_id == tenant_id, TrustMapVersion.product == product)
        .order_by(TrustMapVersion.id.desc())
        .limit(1)
    ).first()


def get_map(session: Session, principal: Principal, product: str) -> TrustMapVersion:
    """The product's current map, for a reader of the tenant.

    Raises:
        NotFoundError: no map registered for the product.
    """
    scope.authorize(principal, scope.TRUSTMAP_READ)
    row = current_map(session, principal.tenant_id, _product(product))
    if row is None:
        raise NotFoundError(f"no trust map registered for product {product!r}")
    return row


def list_maps(session: Session, principal: Principal) -> list[TrustMapVersion]:
    """The tenant's current maps, one per product, by product."""
    scope.authorize(principal, scope.TRUSTMAP_READ)
    newest = (
        select(func.max(TrustMapVersion.id))
        .where(TrustMapVersion.tenant_id == principal.tenant_id)
        .group_by(TrustMapVersion.product)
    )
    return list(
        session.scalars(
            select(TrustMapVersion)
            .where(TrustMapVersion.id.in_(newest))
            .order_by(TrustMapVersion.product)
        )
    )


def _store(
    session: Session, row: TrustMapVersion, result: CheckResult, now: dt.datetime
) -> StoredCheck:
    drifts = [dataclasses.asdict(d) for d in result.drifts]
    kept = session.scalars(
        select(MapCheck).where(MapCheck.tenant_id == row.tenant_id, MapCheck.product == row.product)
    ).first()
    if kept is None:
        kept = MapCheck(tenant_id=row.tenant_id, product=row.product)
        session.add(kept)
    kept.map_digest = row.digest
    kept.drifts = json.dumps(drifts)
    kept.confirmed = json.dumps(sorted(result.confirmed))
    kept.checked = json.dumps(list(result.checked))
    kept.checked_at = now
    for d in result.drifts:
        detection.raise_alert(
            session,
            detection.Finding(
                tenant_id=row.tenant_id,
                kind="trust-drift",
                key=f"{row.product}:{d.kind}:{d.subject}",
                severity=d.severity,
                subject=f"trustmap:{row.product}",
                summary=f"{row.product}: {d.message}",
                evidence={
                    "kind": d.kind,
                    "subject": d.subject,
                    "objects": list(d.objects),
                    "map_digest": row.digest,
                },
            ),
            now=now,
        )
    return _stored(kept)


def _stored(kept: MapCheck) -> StoredCheck:
    return StoredCheck(
        product=kept.product,
        map_digest=kept.map_digest,
        drifts=json.loads(kept.drifts),
        confirmed=json.loads(kept.confirmed),
        checked=json.loads(kept.checked),
        checked_at=kept.checked_at,
    )


def check_product(
    session: Session, principal: Principal, product: str, *, now: dt.datetime | None = None
) -> StoredCheck:
    """Check the product's current map now (stored, drifts alerted).

    Raises:
        NotFoundError: no map registered for the product.
    """
    scope.authorize(principal, scope.TRUSTMAP_MANAGE)
    row = get_map(session, principal, product)
    now = now or utcnow()
    result = check_map(session, tenant_id=row.tenant_id, map_text=row.document, now=now)
    return _store(session, row, result, now)


def last_check(session: Session, principal: Principal, product: str) -> StoredCheck:
    """The product's latest stored check.

    Raises:
        NotFoundError: no map registered, or not checked yet.
    """
    get_map(session, principal, product)
    kept = session.scalars(
        select(MapCheck).where(
            MapCheck.tenant_id == principal.tenant_id, MapCheck.product == product
        )
    ).first()
    if kept is None:
        raise NotFoundError(f"the trust map of {product!r} was not checked yet")
    return _stored(kept)


@dataclass(frozen=True)
class MapOverview:
    """A product's current map and its latest check (None: not checked yet)."""

    product: str
    version: int
    digest: str
    created_by: str
    created_at: dt.datetime
    check: StoredCheck | None


def maps_overview(session: Session, principal: Principal) -> list[MapOverview]:
    """The tenant's current maps, by product, each with its latest check
    (at most :data:`MAX_PRODUCTS`: a tenant registers no more).

    Raises:
        PermissionDeniedError: the principal may not read trust maps.
    """
    rows = list_maps(session, principal)[:MAX_PRODUCTS]
    kept = {
        k.product: _stored(k)
        for k in session.scalars(
            select(MapCheck).where(
                MapCheck.tenant_id == principal.tenant_id,
                MapCheck.product.in_([r.product for r in rows]),
            )
        )
    }
    return [
        MapOverview(
            product=r.product,
            version=r.id,
            digest=r.digest,
            created_by=r.created_by,
            created_at=r.created_at,
            check=kept.get(r.product),
        )
        for r in rows
    ]


def parsed(row: TrustMapVersion) -> TrustMap:
    """A registered map, parsed (it was valid when registered; the schema may have moved)."""
    return load(row.document)


def check_round(session: Session, *, now: dt.datetime | None = None) -> int:
    """Check every current map of every tenant; returns how many were checked.

    At most ``ROUND_LIMIT`` maps a round, least recently checked first. A map
    that no longer loads (a schema change since it was registered) is skipped
    and stays as it was checked last.
    """
    now = now or utcnow()
    newest = select(func.max(TrustMapVersion.id)).group_by(
        TrustMapVersion.tenant_id, TrustMapVersion.product
    )
    # Least recently checked first (never checked before all), so past
    # ROUND_LIMIT maps every map still gets its turn.
    rows = session.scalars(
        select(TrustMapVersion)
        .outerjoin(
            MapCheck,
            (MapCheck.tenant_id == TrustMapVersion.tenant_id)
            & (MapCheck.product == TrustMapVersion.product),
        )
        .where(TrustMapVersion.id.in_(newest))
        .order_by(MapCheck.checked_at.is_not(None), MapCheck.checked_at, TrustMapVersion.id)
        .limit(ROUND_LIMIT)
    ).all()
    done = 0
    for row in rows:
        try:
            result = check_map(session, tenant_id=row.tenant_id, map_text=row.document, now=now)
        except (InvalidInputError, NotFoundError):
            continue
        _store(session, row, result, now)
        done += 1
    return done
