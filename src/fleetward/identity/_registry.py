"""Set-based reads of the device registry, for the other domains.

Other domains never read the identity tables: what they need of the
registry (which devices a cohort holds, their ids, their certificates'
environments and serials) is one function here, answered with a constant
number of queries per call, so a cohort of 100,000 devices costs a few
chunked ``IN (...)`` queries, never one query per device. Queries over many
keys go in chunks of :data:`_CHUNK`, under the bound-parameter limits of
SQLite and PostgreSQL.

:func:`holds_good_certificate` is the one exception to "values in, values
out": the compliance tracker marks devices in one ``UPDATE ... WHERE
EXISTS`` per requirement every round, and a correlated subquery keeps that
update set-based without the tracker reading the certificate table.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Collection, Iterable, Sequence
from typing import TypeVar

from sqlalchemy import ColumnElement, Exists, Select, func, or_, select
from sqlalchemy.orm import QueryableAttribute, Session

from fleetward import tenancy
from fleetward.identity.models import CertificateRecord, Device

__all__ = [
    "active_devices",
    "batches_of",
    "certificate_environments",
    "certificate_expiry",
    "connectable_certificates",
    "device_ids",
    "device_named",
    "device_pks",
    "devices_by_pk",
    "devices_named_by",
    "devices_outside",
    "find_devices",
    "good_certificates",
    "good_serials",
    "held_serials",
    "holds_good_certificate",
    "key_origins",
    "latest_environments",
    "live_device_pks",
    "population",
    "resolve_devices",
    "select_cohort",
]

_CHUNK = 5000  # keys per IN (...) query
# States of a device a response run acts on (not pending, revoked or retired).
_RUN_STATES = ("active", "quarantined")


_T = TypeVar("_T")


def _chunks(keys: Sequence[_T]) -> Iterable[Sequence[_T]]:
    for start in range(0, len(keys), _CHUNK):
        yield keys[start : start + _CHUNK]


def device_ids(session: Session, pks: Collection[int]) -> dict[int, str]:
    """The device id of each registry key in ``pks`` (unknown keys are left out)."""
    out: dict[int, str] = {}
    for chunk in _chunks(sorted(set(pks))):
        out.update(
            (int(pk), str(d))
            for pk, d in session.execute(
                select(Device.id, Device.device_id).where(Device.id.in_(chunk))
            )
        )
    return out


def devices_by_pk(session: Session, pks: Collection[int]) -> dict[int, Device]:
    """The registry rows of ``pks``, to read (unknown keys are left out)."""
    out: dict[int, Device] = {}
    for chunk in _chunks(sorted(set(pks))):
        out.update(
            (d.id, d) for d in session.execute(select(Device).where(Device.id.in_(chunk))).scalars()
        )
    return out


def device_pks(session: Session, *, tenant_id: int, device_ids: Collection[str]) -> dict[str, int]:
    """The registry key of each of the tenant's ``device_ids`` the registry knows."""
    out: dict[str, int] = {}
    for chunk in _chunks(sorted(set(device_ids))):
        out.update(
            (str(d), int(pk))
            for d, pk in session.execute(
                select(Device.device_id, Device.id).where(
                    Device.tenant_id == tenant_id, Device.device_id.in_(chunk)
                )
            )
        )
    return out


def find_devices(session: Session, keys: Collection[tuple[int, str]]) -> dict[tuple[int, str], int]:
    """The registry key of each ``(tenant id, device id)`` the registry knows."""
    by_tenant: dict[int, list[str]] = {}
    for tenant_id, device_id in keys:
        by_tenant.setdefault(tenant_id, []).append(device_id)
    out: dict[tuple[int, str], int] = {}
    for tenant_id, ids in by_tenant.items():
        found = device_pks(session, tenant_id=tenant_id, device_ids=ids)
        out.update(((tenant_id, d), pk) for d, pk in found.items())
    return out


def resolve_devices(
    session: Session, keys: Collection[tuple[str, str]]
) -> dict[tuple[str, str], tuple[int, int]]:
    """``(tenant id, registry key)`` of each ``(tenant name, device id)`` the
    registry knows (what a device's MQTT topic names)."""
    tenants = {name: tid for tid, name in tenancy.tenant_names(session).items()}
    named = [(tenants[t], d) for t, d in keys if t in tenants]
    names = {tid: name for name, tid in tenants.items()}
    return {(names[tid], d): (tid, pk) for (tid, d), pk in find_devices(session, named).items()}


def device_named(session: Session, *, tenant: str, device_id: str) -> Device | None:
    """The device a public URL names by tenant name and device id.

    One query for the tenant and the device together
    (:func:`fleetward.tenancy.tenant_id_named`), so an unknown tenant and a
    known tenant without the device cost the same.
    """
    return session.execute(
        select(Device).where(
            Device.tenant_id == tenancy.tenant_id_named(tenant), Device.device_id == device_id
        )
    ).scalar_one_or_none()


def good_certificates(session: Session, device_pk: int, *, now: dt.datetime) -> list[bytes]:
    """The DER of the device's good, unexpired certificates (two while it renews)."""
    return list(
        session.execute(
            select(CertificateRecord.der).where(
                CertificateRecord.device_pk == device_pk,
                CertificateRecord.status == "good",
                CertificateRecord.not_after > now,
            )
        ).scalars()
    )


def connectable_certificates(
    session: Session, *, states: Collection[str], now: dt.datetime
) -> Iterable[tuple[int, str, str, str, str, str, bytes]]:
    """Every good, unexpired certificate of a device in ``states``, as
    ``(tenant id, device id, product, labels JSON, state, environment, DER)``
    in device and environment order: what the broker table is compiled from
    (one query over the whole fleet)."""
    rows = session.execute(
        select(
            Device.tenant_id,
            Device.device_id,
            Device.product,
            Device.labels,
            Device.state,
            CertificateRecord.environment,
            CertificateRecord.der,
        )
        .join(CertificateRecord, CertificateRecord.device_pk == Device.id)
        .where(
            Device.state.in_(tuple(states)),
            CertificateRecord.status == "good",
            CertificateRecord.not_after > now,
        )
        .order_by(Device.id, CertificateRecord.environment)
    )
    return (tuple(row) for row in rows)  # type: ignore[misc]


def active_devices(
    session: Session, *, tenant_id: int, product: str | None = None
) -> list[tuple[int, str, str]]:
    """The tenant's active devices (of ``product``), as ``(key, device id,
    labels JSON)``: a campaign's candidates (one query, even at a million)."""
    stmt = select(Device.id, Device.device_id, Device.labels).where(
        Device.tenant_id == tenant_id, Device.state == "active"
    )
    if product is not None:
        stmt = stmt.where(Device.product == product)
    return [(int(pk), str(d), str(labels or "{}")) for pk, d, labels in session.execute(stmt)]


def certificate_expiry(session: Session, *, tenant_id: int) -> dict[int, dt.datetime]:
    """When each of the tenant's devices' newest good certificate expires."""
    return {
        int(pk): at
        for pk, at in session.execute(
            select(CertificateRecord.device_pk, func.max(CertificateRecord.not_after))
            .where(CertificateRecord.tenant_id == tenant_id, CertificateRecord.status == "good")
            .group_by(CertificateRecord.device_pk)
        )
    }


def next_certificate_expiry(session: Session, *, now: dt.datetime) -> dt.datetime | None:
    """When the first good certificate still valid at ``now`` expires (any
    tenant): the next moment the set of connectable certificates changes
    without a write."""
    at: dt.datetime | None = session.execute(
        select(func.min(CertificateRecord.not_after)).where(
            CertificateRecord.status == "good", CertificateRecord.not_after > now
        )
    ).scalar_one_or_none()
    return at


def select_cohort(
    session: Session,
    *,
    tenant_id: int,
    environment: str,
    batches: Collection[int] = (),
    product: str | None = None,
    device_id: str | None = None,
) -> list[tuple[int, str, str, str]]:
    """The tenant's active or quarantined devices with a good certificate of
    ``environment`` (in every batch of ``batches``, of ``product``, called
    ``device_id``, when given), as ``(key, device id, state, labels JSON)``
    in key order: the cohort a response run plans over, in one query."""
    in_env = select(CertificateRecord.device_pk).where(
        CertificateRecord.tenant_id == tenant_id,
        CertificateRecord.environment == environment,
        CertificateRecord.status == "good",
    )
    stmt = select(Device.id, Device.device_id, Device.state, Device.labels).where(
        Device.tenant_id == tenant_id,
        Device.state.in_(_RUN_STATES),
        Device.id.in_(in_env),
    )
    for batch in batches:
        stmt = stmt.where(Device.batch_id == batch)
    if product is not None:
        stmt = stmt.where(Device.product == product)
    if device_id is not None:
        stmt = stmt.where(Device.device_id == device_id)
    return [
        (int(pk), str(d), str(state), str(labels or "{}"))
        for pk, d, state, labels in session.execute(stmt.order_by(Device.id))
    ]


def devices_named_by(
    session: Session, *, tenant_id: int, device_id: str | None = None, batch: int | None = None
) -> list[int]:
    """The keys of the tenant's device called ``device_id``, or of the devices
    of ``batch`` (what an alert's key names)."""
    stmt = select(Device.id).where(Device.tenant_id == tenant_id)
    if device_id is not None:
        stmt = stmt.where(Device.device_id == device_id)
    if batch is not None:
        stmt = stmt.where(Device.batch_id == batch)
    return [int(pk) for pk in session.execute(stmt.order_by(Device.id)).scalars()]


def devices_outside(session: Session, pks: Sequence[int], *, environment: str) -> list[str]:
    """The device ids among ``pks`` that hold a good certificate of an
    environment other than ``environment`` (a re-provisioned device, say)."""
    outside: list[str] = []
    for chunk in _chunks(pks):
        outside.extend(
            session.execute(
                select(Device.device_id)
                .join(CertificateRecord, CertificateRecord.device_pk == Device.id)
                .where(
                    Device.id.in_(chunk),
                    CertificateRecord.status == "good",
                    CertificateRecord.environment != environment,
                )
                .distinct()
            ).scalars()
        )
    return outside


def population(session: Session, *, tenant_id: int, environment: str) -> int:
    """The tenant's active or quarantined devices with a good certificate of ``environment``."""
    return int(
        session.execute(
            select(func.count(func.distinct(CertificateRecord.device_pk)))
            .join(Device, Device.id == CertificateRecord.device_pk)
            .where(
                CertificateRecord.tenant_id == tenant_id,
                CertificateRecord.environment == environment,
                CertificateRecord.status == "good",
                Device.state.in_(_RUN_STATES),
            )
        ).scalar_one()
    )


def good_serials(session: Session, pks: Sequence[int]) -> list[str]:
    """The serials of the good certificates of ``pks``."""
    serials: list[str] = []
    for chunk in _chunks(pks):
        serials.extend(
            session.execute(
                select(CertificateRecord.serial).where(
                    CertificateRecord.device_pk.in_(chunk), CertificateRecord.status == "good"
                )
            ).scalars()
        )
    return serials


def held_serials(session: Session, pks: Sequence[int], *, ca_id: int) -> dict[int, str]:
    """The serial of the newest good certificate of CA ``ca_id`` each of ``pks`` holds."""
    held: dict[int, str] = {}
    for chunk in _chunks(pks):
        held.update(
            (int(pk), str(serial))
            for pk, serial in session.execute(
                select(CertificateRecord.device_pk, func.max(CertificateRecord.serial))
                .where(
                    CertificateRecord.device_pk.in_(chunk),
                    CertificateRecord.status == "good",
                    CertificateRecord.ca_id == ca_id,
                )
                .group_by(CertificateRecord.device_pk)
            )
        )
    return held


def holds_good_certificate(
    device_pk: ColumnElement[int] | QueryableAttribute[int],
    *,
    ca_id: int,
    other_than: ColumnElement[str | None] | QueryableAttribute[str | None],
) -> Exists:
    """SQL: the device ``device_pk`` holds a good certificate of CA ``ca_id``
    other than serial ``other_than`` (any, when that is NULL). Both are
    column expressions of the caller's statement (see the module docstring)."""
    return (
        select(CertificateRecord.serial)
        .where(
            CertificateRecord.device_pk == device_pk,
            CertificateRecord.ca_id == ca_id,
            CertificateRecord.status == "good",
            other_than.is_(None) | (CertificateRecord.serial != other_than),
        )
        .exists()
    )


def certificate_environments(
    session: Session, *, tenant_id: int, device_ids: Sequence[str]
) -> dict[str, set[str]]:
    """The environments of every certificate (any status) of each of the
    tenant's ``device_ids``; devices without one are left out."""
    envs: dict[str, set[str]] = {}
    for chunk in _chunks(device_ids):
        for d, env in session.execute(
            select(Device.device_id, CertificateRecord.environment)
            .join(CertificateRecord, CertificateRecord.device_pk == Device.id)
            .where(Device.tenant_id == tenant_id, Device.device_id.in_(chunk))
        ):
            envs.setdefault(str(d), set()).add(str(env))
    return envs


def batches_of(session: Session, *, tenant_id: int, device_ids: Sequence[str]) -> set[int]:
    """The enrollment batches the tenant's ``device_ids`` came from."""
    batches: set[int] = set()
    for chunk in _chunks(device_ids):
        batches.update(
            int(b)
            for b in session.execute(
                select(Device.batch_id).where(
                    Device.tenant_id == tenant_id, Device.device_id.in_(chunk)
                )
            ).scalars()
            if b is not None
        )
    return batches


def live_device_pks(tenant_id: int, states: Collection[str]) -> Select[int]:
    """A subquery: the registry keys of the tenant's devices in ``states``."""
    return select(Device.id).where(Device.tenant_id == tenant_id, Device.state.in_(list(states)))


def latest_environments(session: Session, pks: Collection[int]) -> dict[int, str]:
    """The environment of each device's newest certificate (any status);
    devices without one are left out."""
    out: dict[int, str] = {}
    for chunk in _chunks(sorted(set(pks))):
        for pk, env, _ in session.execute(
            select(CertificateRecord.device_pk, CertificateRecord.environment,
                   CertificateRecord.not_before)
            .where(CertificateRecord.device_pk.in_(chunk))
            .order_by(CertificateRecord.device_pk, CertificateRecord.not_before)
        ):  # fmt: skip
            out[int(pk)] = str(env)  # ordered by not_before: the newest wins
    return out


def key_origins(
    session: Session, *, tenant_id: int, product: str, now: dt.datetime, sample: int
) -> tuple[dict[tuple[str, str], int], dict[str, tuple[str, ...]]]:
    """How the keys of a product's active or quarantined devices were made.

    Returns ``(environment, key origin) -> device count`` over the devices'
    good, unexpired certificates (an origin never recorded counts as
    ``unknown``), and per environment the ids of up to ``sample`` devices
    whose origin is not hardware-attested (for the trust map's drift checks).
    """
    where = (
        CertificateRecord.tenant_id == tenant_id,
        Device.product == product,
        Device.state.in_(_RUN_STATES),
        CertificateRecord.status == "good",
        CertificateRecord.not_after > now,
    )
    # Grouped by the column itself (not a COALESCE with a bound parameter,
    # which PostgreSQL does not match between SELECT and GROUP BY).
    rows = session.execute(
        select(
            CertificateRecord.environment,
            CertificateRecord.key_origin,
            func.count(func.distinct(Device.id)),
        )
        .join(Device, Device.id == CertificateRecord.device_pk)
        .where(*where)
        .group_by(CertificateRecord.environment, CertificateRecord.key_origin)
    )
    counts: dict[tuple[str, str], int] = {}
    for env, o, n in rows:
        key = (str(env), str(o) if o is not None else "unknown")
        counts[key] = counts.get(key, 0) + int(n)
    soft: dict[str, tuple[str, ...]] = {}
    not_hardware = or_(
        CertificateRecord.key_origin.is_(None), CertificateRecord.key_origin != "hardware-attested"
    )
    for env in sorted({e for e, o in counts if o != "hardware-attested"}):
        ids = session.execute(
            select(Device.device_id)
            .join(CertificateRecord, CertificateRecord.device_pk == Device.id)
            .where(*where, CertificateRecord.environment == env, not_hardware)
            .group_by(Device.device_id)
            .order_by(Device.device_id)
            .limit(sample)
        ).scalars()
        soft[env] = tuple(str(i) for i in ids)
    return counts, soft
