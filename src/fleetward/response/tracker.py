"""The compliance tracker's rounds: run by the runtime in ``fleetward up``
beside the campaign driver, under a lease so one host tracks.

:func:`track_round` (every couple of seconds) marks devices that complied
with a run's step (:func:`~fleetward.response.compliance.track`) and
contains incidents with nothing left pending. :func:`renew_again` (every
minute or so) asks devices that still owe a renewal under a new CA to renew
again: a device that was offline when the run sent the command gets it when
it comes back. (Emergency releases are re-offered by the campaign driver.)
:func:`trust_round` (every round) applies the dual-trust windows of
retired issuing CAs (:func:`fleetward.identity.rotation_round`: superseded
certificates revoked, CAs distrusted) and puts each distrust on the
timeline of the incident whose run retired the CA.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from sqlalchemy import select

from fleetward import identity, tenancy
from fleetward.errors import FleetwardError
from fleetward.response import compliance
from fleetward.response.models import Incident, IncidentDevice, PlaybookRun
from fleetward.response.service import log_event
from fleetward.store import Database

__all__ = ["MAX_RESEND", "renew_again", "track_round", "trust_round"]

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


def trust_round(db: Database) -> list[identity.Transition]:
    """Apply the trust windows of retired CAs; returns what changed.

    A CA distrusted after a run retired it (``retired_by`` is
    ``playbook-run:N``) gets a line on that run's incident: how many
    certificates were revoked with it and a sample of the devices that must
    be re-provisioned (the audit log has each of them).
    """
    done = identity.rotation_round(db)
    runs: dict[int, identity.Transition] = {}
    for t in done:
        actor = t.retired_by or ""
        if t.kind == "distrusted" and actor.startswith("playbook-run:"):
            ref = actor.removeprefix("playbook-run:")
            if ref.isascii() and ref.isdigit():
                runs[int(ref)] = t
    if runs:
        with db.session() as s:
            for run_id, t in runs.items():
                run = s.get(PlaybookRun, run_id)
                incident = s.get(Incident, run.incident_id) if run is not None else None
                if incident is None or incident.tenant_id != t.tenant_id:
                    continue
                stranded = f"; {t.revoked} certificate(s) revoked with it" if t.revoked else ""
                log_event(
                    s, incident, actor="system", kind="ca.distrusted",
                    summary=f"{t.environment} issuing CA {t.ca_id} distrusted ({t.why}): "
                    f"trusted nowhere from now on{stranded}",
                    details={"ca": t.ca_id, "revoked": t.revoked, "sample": list(t.stranded)},
                    audit_action="incident.ca-distrusted",
                )  # fmt: skip
    return done
