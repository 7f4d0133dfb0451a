"""A run's cohort, read from the fleet: which devices, which are online, how
many the environment holds.

These are the reads behind a blast radius and the steps that act on
devices, all through the identity and telemetry faces (set-based: a
constant number of chunked queries per call). A cohort is the tenant's own
active or quarantined devices with a good certificate of **one**
environment; a device that also holds a good certificate of another
environment (a reprovisioned device, say) refuses the whole run, since
acting on it would reach that environment too.
"""

from __future__ import annotations

import datetime as dt
import json

from sqlalchemy.orm import Session

from fleetward import detection, identity, telemetry
from fleetward.errors import InvalidInputError, PermissionDeniedError
from fleetward.response import playbook as pb
from fleetward.response.models import Incident
from fleetward.response.service import alert_cohort
from fleetward.tenancy.roles import Principal

__all__ = [
    "certificate_serials",
    "device_ids",
    "online_devices",
    "population",
    "resolve",
]

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
    batches = [] if cohort.batch is None else [cohort.batch]
    device_id = None
    if cohort.alert:
        device_id, batch = _alert_cohort(session, incident)
        if batch is not None:
            batches.append(batch)
    rows = identity.select_cohort(
        session,
        tenant_id=principal.tenant_id,
        environment=environment,
        batches=batches,
        product=cohort.product,
        device_id=device_id,
    )
    if cohort.devices is not None:
        named = set(cohort.devices)
        known = set(
            identity.device_pks(session, tenant_id=principal.tenant_id, device_ids=named)
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
    out = [(pk, d, state) for pk, d, state, _ in rows]
    _refuse_mixed(session, out, environment)
    return out


def _refuse_mixed(session: Session, devices: list[tuple[int, str, str]], environment: str) -> None:
    """A device that also holds a good certificate of another environment
    (a reprovisioned device, say) is not the run's to act on: revoking or
    quarantining it would reach that environment too."""
    mixed = identity.devices_outside(session, [pk for pk, _, _ in devices], environment=environment)
    if mixed:
        raise PermissionDeniedError(
            f"{len(mixed)} device(s) of the cohort also hold certificates outside {environment}, "
            f"e.g. {sorted(mixed)[0]!r}: a run acts on one environment; nothing was done"
        )


def _alert_cohort(session: Session, incident: Incident | None) -> tuple[str | None, int | None]:
    if incident is None or incident.alert_id is None:
        raise InvalidInputError("cohort 'alert' needs an incident opened from an alert")
    alert = detection.get_alert(session, tenant_id=incident.tenant_id, alert_id=incident.alert_id)
    return alert_cohort(alert)


def online_devices(session: Session, pks: list[int], now: dt.datetime) -> set[int]:
    """The pks among ``pks`` that sent anything within
    :data:`fleetward.telemetry.ONLINE_WINDOW` of ``now``."""
    return telemetry.online_devices(session, pks, now)


def population(session: Session, tenant_id: int, environment: str) -> int:
    """The tenant's active or quarantined devices with a good certificate of ``environment``."""
    return identity.population(session, tenant_id=tenant_id, environment=environment)


def certificate_serials(session: Session, pks: list[int]) -> list[str]:
    """The serials of the good certificates of ``pks``."""
    return identity.good_serials(session, pks)


def device_ids(session: Session, pks: list[int]) -> list[str]:
    """The device ids of ``pks``, in the same order."""
    by_pk = identity.device_ids(session, pks)
    return [by_pk[pk] for pk in pks]
