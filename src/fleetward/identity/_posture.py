"""Aggregate reads of the registry for the fleet's posture (the console's first page).

Each function answers for one tenant with a fixed number of ``GROUP BY`` /
``COUNT`` queries, whatever the fleet's size: a posture view of 10,000 (or
1,000,000) devices never loads a device row into Python. The caller's
principal is checked for ``device.read`` exactly as the device routes do.

What counts as what:

- **State**: every device of the tenant, by lifecycle state.
- **Environment** and **key origin**: the *live* devices (active or
  quarantined, the ones that can act). A device's environments are those of
  its good, unexpired certificates (a re-provisioned device holding two
  counts in each); a live device with none is counted under ``none``. Key
  origin is the device's current identity key's (``unknown`` when never
  recorded).
- **Certificate outlook**: per live device, its newest good certificate
  (the one a renewed device uses). Expiring soon: that certificate expires
  within the window; expired: it has expired already, so the device holds
  no good certificate it can still connect with.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from sqlalchemy import Subquery, case, func, select
from sqlalchemy.orm import Session

from fleetward.identity.models import CertificateRecord, Device
from fleetward.tenancy import scope
from fleetward.tenancy.roles import Principal

__all__ = [
    "LIVE_STATES",
    "CertificateOutlook",
    "ExpiringCertificate",
    "FleetCounts",
    "certificate_outlook",
    "device_product_keys",
    "fleet_counts",
]

LIVE_STATES = ("active", "quarantined")  # devices that can act (connect, boot, update)
NO_ENVIRONMENT = "none"  # a live device without a good, unexpired certificate
MAX_SOONEST = 100  # expiring certificates one call names (the count is exact)


@dataclass(frozen=True)
class FleetCounts:
    """Device counts of one tenant (see the module docstring for each)."""

    total: int
    states: dict[str, int]
    environments: dict[str, int]
    key_origins: dict[str, int]


@dataclass(frozen=True)
class ExpiringCertificate:
    """A live device's newest good certificate, close to its end."""

    device_id: str
    serial: str
    environment: str
    not_after: dt.datetime


@dataclass(frozen=True)
class CertificateOutlook:
    """Live devices whose newest good certificate expires soon, or has expired."""

    expiring: int
    soonest: list[ExpiringCertificate]
    expired: int


def fleet_counts(session: Session, principal: Principal, *, now: dt.datetime) -> FleetCounts:
    """The tenant's devices by state, environment and key origin (three grouped queries).

    Raises:
        PermissionDeniedError / OutOfScopeError: the token may not read devices.
    """
    scope.authorize(principal, scope.DEVICE_READ)
    tenant = principal.tenant_id
    states = {
        str(state): int(n)
        for state, n in session.execute(
            select(Device.state, func.count())
            .where(Device.tenant_id == tenant)
            .group_by(Device.state)
        )
    }
    origins: dict[str, int] = {}
    # Grouped by the column itself (NULL is its own group on both databases).
    for origin, n in session.execute(
        select(Device.key_origin, func.count())
        .where(Device.tenant_id == tenant, Device.state.in_(LIVE_STATES))
        .group_by(Device.key_origin)
    ):
        key = str(origin) if origin is not None else "unknown"
        origins[key] = origins.get(key, 0) + int(n)
    valid = (
        CertificateRecord.tenant_id == tenant,
        CertificateRecord.status == "good",
        CertificateRecord.not_after > now,
        Device.state.in_(LIVE_STATES),
    )
    environments = {
        str(env): int(n)
        for env, n in session.execute(
            select(CertificateRecord.environment, func.count(func.distinct(Device.id)))
            .join(Device, Device.id == CertificateRecord.device_pk)
            .where(*valid)
            .group_by(CertificateRecord.environment)
        )
    }
    with_certificate = int(
        session.execute(
            select(func.count(func.distinct(Device.id)))
            .join(CertificateRecord, CertificateRecord.device_pk == Device.id)
            .where(*valid)
        ).scalar_one()
    )
    live = sum(n for s, n in states.items() if s in LIVE_STATES)
    if live > with_certificate:
        environments[NO_ENVIRONMENT] = live - with_certificate
    return FleetCounts(
        total=sum(states.values()), states=states, environments=environments, key_origins=origins
    )


def certificate_outlook(
    session: Session,
    principal: Principal,
    *,
    now: dt.datetime,
    within: dt.timedelta,
    limit: int,
) -> CertificateOutlook:
    """Live devices whose newest good certificate expires within ``within`` of
    ``now`` (counted, and the ``limit`` soonest named), and those whose newest
    good certificate has expired (counted).

    Raises:
        PermissionDeniedError / OutOfScopeError: the token may not read devices.
    """
    scope.authorize(principal, scope.DEVICE_READ)
    limit = max(0, min(limit, MAX_SOONEST))
    newest = (
        select(
            CertificateRecord.device_pk.label("pk"),
            func.max(CertificateRecord.not_after).label("expires"),
        )
        .join(Device, Device.id == CertificateRecord.device_pk)
        .where(
            CertificateRecord.tenant_id == principal.tenant_id,
            CertificateRecord.status == "good",
            Device.state.in_(LIVE_STATES),
        )
        .group_by(CertificateRecord.device_pk)
        .subquery()
    )
    horizon = now + within
    # Both counts in one pass over the per-device newest expiries.
    soon = (newest.c.expires > now) & (newest.c.expires <= horizon)
    counted = session.execute(
        select(
            func.sum(case((soon, 1), else_=0)),
            func.sum(case((newest.c.expires <= now, 1), else_=0)),
        )
    ).one()
    expiring, expired = int(counted[0] or 0), int(counted[1] or 0)
    soonest: list[ExpiringCertificate] = []
    if expiring and limit:
        rows = session.execute(
            select(
                Device.device_id,
                CertificateRecord.serial,
                CertificateRecord.environment,
                CertificateRecord.not_after,
            )
            .join(newest, newest.c.pk == Device.id)
            .join(
                CertificateRecord,
                (CertificateRecord.device_pk == Device.id)
                & (CertificateRecord.not_after == newest.c.expires)
                & (CertificateRecord.status == "good"),
            )
            .where(newest.c.expires > now, newest.c.expires <= horizon)
            .order_by(newest.c.expires, Device.device_id, CertificateRecord.serial)
            .limit(limit * 2)  # two good certificates may share the newest expiry
        )
        seen: set[str] = set()
        for device_id, serial, env, not_after in rows:
            if device_id in seen:
                continue
            seen.add(str(device_id))
            soonest.append(ExpiringCertificate(str(device_id), str(serial), str(env), not_after))
            if len(soonest) == limit:
                break
    return CertificateOutlook(expiring=expiring, soonest=soonest, expired=expired)


def device_product_keys(tenant_id: int) -> Subquery:
    """A subquery (columns ``pk``, ``product``): each of the tenant's devices'
    registry key and product, for another domain's grouped read by cohort."""
    return (
        select(Device.id.label("pk"), Device.product.label("product"))
        .where(Device.tenant_id == tenant_id)
        .subquery()
    )
