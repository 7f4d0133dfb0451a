"""The compliance tracker's rounds: run by the runtime in ``fleetward up``
beside the campaign driver, under a lease so one host tracks.

:func:`track_round` (every couple of seconds) marks devices that complied
with a run's step (:func:`~fleetward.response.compliance.track`) and
contains incidents with nothing left pending. :func:`renew_again` (every
minute or so) asks devices that still owe a renewal under a new CA to renew
again: a device that was offline when the run sent the command gets it when
it comes back. (Emergency releases are re-offered by the campaign driver.)
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from sqlalchemy import select

from fleetward import identity, tenancy
from fleetward.errors import FleetwardError
from fleetward.response import compliance
from fleetward.response.models import Incident, IncidentDevice
from fleetward.store import Database

__all__ = ["MAX_RESEND", "renew_again", "track_round"]

log = logging.getLogger("fleetward.response")

MAX_RESEND = 10_000  # renew commands per round


def track_round(db: Database) -> int:
    """Mark devices that complied; returns how many did. Takes the writer
    only when there is something to track."""
    with db.read() as s:
        busy = compliance.needs_tracking(s)
    if not busy:
        return 0
    with db.session() as s:
        return compliance.track(s)


def renew_again(db: Database, command: Callable[[str, str, str], None]) -> int:
    """Send ``renew`` again to devices that still owe a renewal under a new CA.

    Args:
        db: The database.
        command: Sends a command (tenant, device id, command name), e.g.
            :meth:`~fleetward.response.effects.LiveEffects.command`.

    Returns:
        How many commands were sent (the round stops at the first the broker
        refuses: it is away, and the next round retries).
    """
    with db.read() as s:
        owed = s.execute(
            select(Incident.tenant_id, IncidentDevice.device_pk)
            .join(Incident, Incident.id == IncidentDevice.incident_id)
            .where(IncidentDevice.state == "pending", IncidentDevice.requirement.like("ca:%"))
            .limit(MAX_RESEND)
        ).all()
        tenants = tenancy.tenant_names(s)
        names = identity.device_ids(s, [int(pk) for _, pk in owed])
    rows = [(tenants[t], names[pk]) for t, pk in owed if t in tenants and pk in names]
    sent = 0
    for tenant, device_id in rows:
        try:
            command(tenant, device_id, "renew")
        except FleetwardError as exc:
            log.warning("renew command to %s failed: %s", device_id, exc)
            break
        sent += 1
    return sent
