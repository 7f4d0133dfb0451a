"""Events in and out for the other domains: one table, read and written here only.

The attestation verifier, the broker sync and the campaign driver write
their events with :func:`record_events`; the detectors read them with
:func:`events_after`, :func:`recent_events` and :func:`last_seen`; a
response run asks :func:`online_devices`. Each is a constant number of
queries per call (keys in chunks of :data:`_CHUNK`), whatever the fleet size.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Collection, Mapping, Sequence
from typing import Any

from sqlalchemy import ColumnElement, and_, func, insert, not_, or_, select
from sqlalchemy.orm import Session

from fleetward.telemetry.models import Event

__all__ = [
    "LIVENESS_SYSTEM_TYPES",
    "ONLINE_WINDOW",
    "SYSTEM_PREFIXES",
    "event_counts",
    "events_after",
    "last_seen",
    "last_seen_of",
    "online_devices",
    "recent_events",
    "record_events",
]

# A device counts as online when it sent anything in this window (telemetry
# every 10 s by default; three missed readings is offline).
ONLINE_WINDOW = dt.timedelta(seconds=30)
_CHUNK = 5000  # keys per IN (...) query

# Type prefixes only fleetward itself writes (the API refuses them).
SYSTEM_PREFIXES = ("attestation.", "authz.", "telemetry.", "ingest.")
# Of those, the types that prove the device itself was there: evidence the
# verifier accepted (signed by the device's key), and telemetry the broker
# let through on the device's own topic (only its certificate may publish
# there) even when the ingest then dropped it over the rate limit.
LIVENESS_SYSTEM_TYPES = ("attestation.verdict", "telemetry.dropped")


def _liveness() -> ColumnElement[bool]:
    """Events that count as a device being alive: authenticated, accepted
    activity only. Refusals and denials (``attestation.refused``, every
    ``authz.`` event, anything ``.refused`` or ``.denied``) never do: anyone
    can cause them in a device's name, with junk evidence or a stolen id. A
    type outside the system prefixes came from an authenticated caller (the
    device on the device plane, or an operator's token) and counts."""
    system = or_(*(Event.type.startswith(p) for p in SYSTEM_PREFIXES))
    refusal = or_(Event.type.endswith(".refused"), Event.type.endswith(".denied"))
    return and_(not_(refusal), or_(not_(system), Event.type.in_(LIVENESS_SYSTEM_TYPES)))


def record_events(session: Session, rows: Sequence[Mapping[str, Any]]) -> int:
    """Store events in the caller's transaction (one multi-row insert).

    Each row holds ``tenant_id`` and ``device_pk`` (either may be None for a
    peer nobody could attribute), ``type``, ``at``, ``count`` and ``fields``
    (JSON text). Returns how many were stored.
    """
    if rows:
        session.execute(insert(Event), list(rows))
    return len(rows)


def events_after(session: Session, after: int, *, limit: int) -> list[Event]:
    """Up to ``limit`` events with an id above ``after``, oldest first (a reader's cursor)."""
    return list(
        session.execute(
            select(Event).where(Event.id > after).order_by(Event.id).limit(limit)
        ).scalars()
    )


def head_event_id(session: Session) -> int:
    """The id of the newest event of any tenant (0 for none): one index read."""
    return int(session.execute(select(func.max(Event.id))).scalar_one_or_none() or 0)


def tenant_changed_since(session: Session, *, tenant_id: int, after: int) -> bool:
    """Whether the tenant has an event with an id above ``after`` (read from
    :func:`head_event_id` earlier), reading only the newer events."""
    return (
        session.execute(
            select(Event.id).where(Event.id > after, Event.tenant_id == tenant_id).limit(1)
        ).first()
        is not None
    )


def recent_events(
    session: Session, *, type: str, tenant_ids: Collection[int], since: dt.datetime
) -> list[Event]:
    """The events of ``type`` of these tenants since ``since``, oldest first."""
    return list(
        session.execute(
            select(Event)
            .where(Event.type == type, Event.tenant_id.in_(tuple(tenant_ids)), Event.at >= since)
            .order_by(Event.id)
        ).scalars()
    )


def last_seen(session: Session, *, tenant_id: int) -> dict[int, dt.datetime]:
    """When each of the tenant's devices was last seen alive (authenticated,
    accepted activity: see :func:`_liveness`)."""
    return {
        int(pk or 0): at
        for pk, at in session.execute(
            select(Event.device_pk, func.max(Event.at))
            .where(Event.tenant_id == tenant_id, Event.device_pk.is_not(None), _liveness())
            .group_by(Event.device_pk)
        )
    }


def last_seen_of(session: Session, pks: Collection[int]) -> dict[int, dt.datetime]:
    """When each of these devices was last seen alive (as :func:`last_seen`,
    for one page of devices instead of the whole tenant: the keys come from a
    read already scoped to the tenant)."""
    out: dict[int, dt.datetime] = {}
    keys = sorted(set(pks))
    for start in range(0, len(keys), _CHUNK):
        for pk, at in session.execute(
            select(Event.device_pk, func.max(Event.at))
            .where(Event.device_pk.in_(keys[start : start + _CHUNK]), _liveness())
            .group_by(Event.device_pk)
        ):
            if pk is not None:
                out[int(pk)] = at
    return out


def online_devices(
    session: Session, pks: Sequence[int], now: dt.datetime, *, window: dt.timedelta = ONLINE_WINDOW
) -> set[int]:
    """The devices among ``pks`` seen alive within ``window`` of ``now``
    (authenticated, accepted activity: see :func:`_liveness`)."""
    since = now - window
    seen: set[int] = set()
    for start in range(0, len(pks), _CHUNK):
        chunk = pks[start : start + _CHUNK]
        seen.update(
            int(pk)
            for pk in session.execute(
                select(Event.device_pk)
                .where(Event.device_pk.in_(chunk), Event.at >= since, _liveness())
                .group_by(Event.device_pk)
            ).scalars()
            if pk is not None
        )
    return seen


def event_counts(session: Session, *, device_pk: int, type_prefix: str) -> dict[str, int]:
    """How many events of each type starting with ``type_prefix`` the device has
    (the sum of their counts)."""
    rows = session.execute(
        select(Event.type, func.sum(Event.count))
        .where(Event.device_pk == device_pk, Event.type.startswith(type_prefix))
        .group_by(Event.type)
    )
    return {str(t): int(n) for t, n in rows}
