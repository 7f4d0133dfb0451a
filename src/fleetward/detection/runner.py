"""The detection rounds that ``fleetward up`` runs beside the API.

Each is one plain function on the database; the runtime
(``fleetward.runtime.workers.DetectionRunner``) decides when, under a lease
so one host detects:

- :func:`detect`: the event detectors over what arrived since the last round
  (every half second by default);
- :func:`sweep`: the time-based detectors, i.e. enrollment signals, silent
  devices, expiring certificates (every :data:`SWEEP_SECONDS`);
- :func:`prune`: events past retention and spent attestation nonces (every
  :data:`PRUNE_SECONDS`).
"""

from __future__ import annotations

import datetime as dt

from fleetward import attestation, provisioning, telemetry
from fleetward.detection import service
from fleetward.store import Database

__all__ = ["PRUNE_SECONDS", "SWEEP_SECONDS", "detect", "prune", "sweep"]

SWEEP_SECONDS = 60.0
PRUNE_SECONDS = 3600.0


def detect(db: Database, *, now: dt.datetime | None = None) -> int:
    """One detection round over new events; returns how many alerts it raised."""
    with db.session() as s:
        return len(service.run(s, now=now))


def sweep(db: Database, *, now: dt.datetime | None = None) -> int:
    """The time-based detectors; returns how many alerts they raised."""
    with db.session() as s:
        return len(service.sweep(s, now=now))


def prune(db: Database, *, now: dt.datetime | None = None) -> int:
    """Delete events past retention and expired nonces (attestation and
    enrollment); returns how many rows went."""
    with db.session() as s:
        return (
            telemetry.prune(s, now=now)
            + attestation.prune_nonces(s, now=now)
            + provisioning.prune_nonces(s, now=now)
        )
