"""Reads for browsing the registry (the operator console's device list).

A search over the tenant's devices by id substring, state, product and
environment, paged by device id like :func:`fleetward.identity.list_devices`,
and the per-page facts a list shows (newest certificate expiry), each a
constant number of queries for one page. The principal's tenant and role are
applied exactly as the API's device reads apply them.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Collection

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from fleetward.identity.lifecycle import STATES
from fleetward.identity.models import CertificateRecord, Device
from fleetward.identity.revocation import REASONS
from fleetward.tenancy.roles import Permission, Principal, require

__all__ = [
    "DEVICE_STATES",
    "MAX_PRODUCTS",
    "MAX_SEARCH_PAGE",
    "REVOCATION_REASONS",
    "certificate_expiry_of",
    "device_products",
    "search_devices",
]

DEVICE_STATES: tuple[str, ...] = STATES
"""Every lifecycle state a device can be in (:mod:`.lifecycle`)."""
REVOCATION_REASONS: tuple[str, ...] = tuple(REASONS)
"""The RFC 5280 reasons a device may be revoked for (:mod:`.revocation`)."""
MAX_SEARCH_PAGE = 501  # rows one search returns: a page of 500 and one to tell a next page
MAX_PRODUCTS = 500  # distinct products listed for a filter (a tenant has a handful)


def search_devices(
    session: Session,
    principal: Principal,
    *,
    q: str = "",
    state: str | None = None,
    product: str | None = None,
    environment: str | None = None,
    after: str = "",
    limit: int = 50,
) -> list[Device]:
    """Devices of the tenant whose id contains ``q`` (case-insensitive),
    ordered by id, paged with ``after`` (the last id of the previous page).

    ``environment`` keeps the devices whose newest certificate is of that
    environment (what the list shows as the device's environment). The
    caller validates the values; ``q`` is matched literally (``%`` and
    ``_`` are escaped).

    Raises:
        PermissionDeniedError: the role may not read devices.
    """
    require(principal, Permission.DEVICE_READ)
    stmt = select(Device).where(Device.tenant_id == principal.tenant_id, Device.device_id > after)
    if q:
        stmt = stmt.where(func.lower(Device.device_id).contains(q.lower(), autoescape=True))
    if state:
        stmt = stmt.where(Device.state == state)
    if product:
        stmt = stmt.where(Device.product == product)
    if environment:
        newest = (
            select(CertificateRecord.environment)
            .where(CertificateRecord.device_pk == Device.id)
            .order_by(CertificateRecord.not_before.desc(), CertificateRecord.serial.desc())
            .limit(1)
            .correlate(Device)
            .scalar_subquery()
        )
        stmt = stmt.where(newest == environment)
    stmt = stmt.order_by(Device.device_id).limit(max(1, min(limit, MAX_SEARCH_PAGE)))
    return list(session.execute(stmt).scalars())


def device_products(session: Session, principal: Principal) -> list[str]:
    """The products the tenant's devices are of, sorted (at most :data:`MAX_PRODUCTS`).

    Raises:
        PermissionDeniedError: the role may not read devices.
    """
    require(principal, Permission.DEVICE_READ)
    rows = session.execute(
        select(Device.product)
        .where(Device.tenant_id == principal.tenant_id)
        .group_by(Device.product)
        .order_by(Device.product)
        .limit(MAX_PRODUCTS)
    ).scalars()
    return [str(p) for p in rows]


def certificate_expiry_of(session: Session, pks: Collection[int]) -> dict[int, dt.datetime]:
    """When each of these devices' newest good certificate expires (devices
    with no good certificate are left out). For one page of a list: the
    keys come from a search already scoped to the tenant."""
    if not pks:
        return {}
    return {
        int(pk): at
        for pk, at in session.execute(
            select(CertificateRecord.device_pk, func.max(CertificateRecord.not_after))
            .where(
                CertificateRecord.device_pk.in_(sorted(set(pks))),
                CertificateRecord.status == "good",
            )
            .group_by(CertificateRecord.device_pk)
        )
    }
