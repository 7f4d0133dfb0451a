"""A run's cohort, read from the fleet: which devices, which are online, how
many the environment holds.

These are the queries behind a blast radius and the steps that act on
devices. A cohort is the tenant's own active or quarantined devices with a
good certificate of **one** environment; a device that also holds a good
certificate of another environment (a reprovisioned device, say) refuses
the whole run, since acting on it would reach that environment too.
Queries over many devices go in chunks of :data:`_CHUNK` keys, under the
bound-parameter limits of SQLite and PostgreSQL.
"""

from __future__ import annotations

import datetime as dt
import json
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from fleetward.detection.models import Alert
from fleetward.errors import InvalidInputError, PermissionDeniedError
from fleetward.identity.models import CertificateRecord, Device
from fleetward.response import playbook as pb
from fleetward.response.models import Incident
from fleetward.response.service import alert_devices
from fleetward.telemetry.models import Event
from fleetward.tenancy.roles import Principal

__all__ = [
    "ONLINE_WINDOW",
    "certificate_serials",
    "device_ids",
    "online_devices",
    "population",
    "resolve",
]

# A device counts as online when it sent anything in this window (telemetry
# every 10 s by default; three missed readings is offline).
ONLINE_WINDOW = dt.timedelta(seconds=30)
_CHUNK = 5000  # keys per IN (...) query
_NAMED_CHECKED = 10_000  # named devices checked one by one against the tenant's


def resolve(
    session: Session,
    principal: Principal,
    cohort: pb.Cohort,
    *,
    environment: str,
    incident: Incident | None,
) -> list[tuple[int, str, str]]:
    """The devices ``cohort`` selects, as ``(pk, device id, state)`` in pk order.

    Raises:
        InvalidInputError: a named device that is not the tenant's, or an
            alert cohort without an alert.
        PermissionDeniedError: a device of the cohort also holds a good
            certificate of another environment.
    """
    in_env = select(CertificateRecord.device_pk).where(
        CertificateRecord.tenant_id == principal.tenant_id,
        CertificateRecord.environment == environment,
        CertificateRecord.status == "good",
    )
    stmt = select(Device.id, Device.device_id, Device.state, Device.labels).where(
        Device.tenant_id == principal.tenant_id,
        Device.state.in_(("active", "quarantined")),
        Device.id.in_(in_env),
    )
    if cohort.batch is not None:
        stmt = stmt.where(Device.batch_id == cohort.batch)
    if cohort.product is not None:
        stmt = stmt.where(Device.product == cohort.product)
    if cohort.alert:
        stmt = _alert_filter(session, stmt, incident)
    rows = session.execute(stmt.order_by(Device.id)).all()
    if cohort.devices is not None:
        named = set(cohort.devices)
        known = set(
            session.execute(
                select(Device.device_id).where(
                    Device.tenant_id == principal.tenant_id, Device.device_id.in_(named)
                )
            ).scalars()
        ) if len(named) <= _NAMED_CHECKED else {r[1] for r in rows}  # fmt: skip
        missing = named - known
        if missing and len(named) <= _NAMED_CHECKED:
            raise InvalidInputError(
                f"{len(missing)} named device(s) are not devices of tenant "
                f"{principal.tenant_name}, e.g. {sorted(missing)[0]!r}: nothing was done"
            )
        rows = [r for r in rows if r[1] in named]
    if cohort.labels:
        wanted = dict(cohort.labels)
        rows = [
            r for r in rows if all(json.loads(r[3] or "{}").get(k) == v for k, v in wanted.items())
        ]
    out = [(int(pk), str(d), str(state)) for pk, d, state, _ in rows]
    _refuse_mixed(session, out, environment)
    return out


def _refuse_mixed(session: Session, devices: list[tuple[int, str, str]], environment: str) -> None:
    """A device that also holds a good certificate of another environment
    (a reprovisioned device, say) is not the run's to act on: revoking or
    quarantining it would reach that environment too."""
    pks = [pk for pk, _, _ in devices]
    mixed: list[str] = []
    for start in range(0, len(pks), _CHUNK):
        mixed.extend(
            session.execute(
                select(Device.device_id)
                .join(CertificateRecord, CertificateRecord.device_pk == Device.id)
                .where(
                    Device.id.in_(pks[start : start + _CHUNK]),
                    CertificateRecord.status == "good",
                    CertificateRecord.environment != environment,
                )
                .distinct()
            ).scalars()
        )
    if mixed:
        raise PermissionDeniedError(
            f"{len(mixed)} device(s) of the cohort also hold certificates outside {environment}, "
            f"e.g. {sorted(mixed)[0]!r}: a run acts on one environment; nothing was done"
        )


def _alert_filter(session: Session, stmt: Any, incident: Incident | None) -> Any:
    if incident is None or incident.alert_id is None:
        raise InvalidInputError("cohort 'alert' needs an incident opened from an alert")
    alert = session.get_one(Alert, incident.alert_id)
    return stmt.where(Device.id.in_(alert_devices(alert)))


def online_devices(session: Session, pks: list[int], now: dt.datetime) -> set[int]:
    """The pks among ``pks`` that sent anything within :data:`ONLINE_WINDOW` of ``now``."""
    since = now - ONLINE_WINDOW
    seen: set[int] = set()
    for start in range(0, len(pks), _CHUNK):
        chunk = pks[start : start + _CHUNK]
        seen.update(
            int(pk)
            for pk in session.execute(
                select(Event.device_pk)
                .where(Event.device_pk.in_(chunk), Event.at >= since)
                .group_by(Event.device_pk)
            ).scalars()
            if pk is not None
        )
    return seen


def population(session: Session, tenant_id: int, environment: str) -> int:
    """The tenant's active or quarantined devices with a good certificate of ``environment``."""
    return int(
        session.execute(
            select(func.count(func.distinct(CertificateRecord.device_pk)))
            .join(Device, Device.id == CertificateRecord.device_pk)
            .where(
                CertificateRecord.tenant_id == tenant_id,
                CertificateRecord.environment == environment,
                CertificateRecord.status == "good",
                Device.state.in_(("active", "quarantined")),
            )
        ).scalar_one()
    )


def certificate_serials(session: Session, pks: list[int]) -> list[str]:
    """The serials of the good certificates of ``pks``."""
    serials: list[str] = []
    for start in range(0, len(pks), _CHUNK):
        serials.extend(
            session.execute(
                select(CertificateRecord.serial).where(
                    CertificateRecord.device_pk.in_(pks[start : start + _CHUNK]),
                    CertificateRecord.status == "good",
                )
            ).scalars()
        )
    return serials


def device_ids(session: Session, pks: list[int]) -> list[str]:
    """The device ids of ``pks``, in the same order."""
    by_pk: dict[int, str] = {}
    for start in range(0, len(pks), _CHUNK):
        rows = session.execute(
            select(Device.id, Device.device_id).where(Device.id.in_(pks[start : start + _CHUNK]))
        ).all()
        by_pk.update((int(pk), str(d)) for pk, d in rows)
    return [by_pk[pk] for pk in pks]
