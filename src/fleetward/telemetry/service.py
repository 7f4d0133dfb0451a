"""Telemetry service: events from the API, queries, retention.

Every event has one schema: tenant, device, type, time, count, fields.
Operators (or gateways holding a token) may post events for **their**
tenant's devices; a device id of another tenant is simply not found.
"""

from __future__ import annotations

import datetime as dt
import json
import re
from collections.abc import Sequence
from typing import Any

from sqlalchemy import delete, insert, or_, select
from sqlalchemy.orm import Session

from fleetward import identity, observe
from fleetward.errors import InvalidInputError, NotFoundError, PayloadTooLargeError
from fleetward.store.db import utcnow
from fleetward.telemetry._events import SYSTEM_PREFIXES
from fleetward.telemetry.ingest import MAX_EVENT_AGE, MAX_EVENT_LEAD, MAX_FIELDS_BYTES, in_window
from fleetward.telemetry.models import Event
from fleetward.tenancy import scope
from fleetward.tenancy.roles import Permission, Principal, require

__all__ = [
    "MAX_EVENTS_PER_REQUEST",
    "MAX_EVENT_AGE",
    "MAX_EVENT_LEAD",
    "RETENTION",
    "post_device_events",
    "post_events",
    "prune",
    "query",
]

MAX_EVENTS_PER_REQUEST = 1000
RETENTION = dt.timedelta(days=30)
_TYPE = re.compile(r"^[a-z][a-z0-9._-]{0,47}$")
# Types the system itself writes; posting them through the API would let a
# caller forge a verdict, a denial or an ingest loss count.
_RESERVED = SYSTEM_PREFIXES


def post_events(
    session: Session,
    principal: Principal,
    events: Sequence[dict[str, Any]],
    *,
    now: dt.datetime | None = None,
) -> int:
    """Store events for the tenant's devices (all or nothing).

    Raises:
        InvalidInputError: malformed, reserved type, or too many.
        PayloadTooLargeError: fields over the limit.
        NotFoundError: a device that is not this tenant's.
    """
    require(principal, Permission.DEVICE_MANAGE)
    now = now or utcnow()
    if len(events) > MAX_EVENTS_PER_REQUEST:
        raise InvalidInputError(f"at most {MAX_EVENTS_PER_REQUEST} events per request")
    ids = {str(e.get("device")) for e in events}
    found = identity.device_pks(session, tenant_id=principal.tenant_id, device_ids=ids)
    identity.authorize_on_devices(session, principal, scope.TELEMETRY_POST, list(found.values()))
    rows = []
    for i, e in enumerate(events):
        device = str(e.get("device"))
        _check_type(i, e)
        if device not in found:
            raise NotFoundError(f"event {i}: device {device!r} not found")
        rows.append(_row(i, e, tenant_id=principal.tenant_id, device_pk=found[device], now=now))
    if rows:
        session.execute(insert(Event), rows)
        observe.telemetry(ingested=len(rows), session=session)
    return len(rows)


def post_device_events(
    session: Session,
    *,
    tenant_id: int,
    device_pk: int,
    events: Sequence[dict[str, Any]],
    now: dt.datetime | None = None,
) -> int:
    """Store events a device posts about itself (the device plane: the
    caller is authenticated by its certificate, so every event is its own).

    Raises:
        InvalidInputError: malformed, reserved type, or too many.
        PayloadTooLargeError: fields over the limit.
    """
    now = now or utcnow()
    if len(events) > MAX_EVENTS_PER_REQUEST:
        raise InvalidInputError(f"at most {MAX_EVENTS_PER_REQUEST} events per request")
    rows = []
    for i, e in enumerate(events):
        _check_type(i, e)
        rows.append(_row(i, e, tenant_id=tenant_id, device_pk=device_pk, now=now))
    if rows:
        session.execute(insert(Event), rows)
        observe.telemetry(ingested=len(rows), session=session)
    return len(rows)


def _check_type(i: int, e: dict[str, Any]) -> None:
    kind = e.get("type")
    if not isinstance(kind, str) or not _TYPE.fullmatch(kind):
        raise InvalidInputError(f"event {i}: type must be 1-48 characters of [a-z0-9._-]")
    if kind.startswith(_RESERVED):
        raise InvalidInputError(f"event {i}: type {kind!r} is written by fleetward itself")


def _row(
    i: int, e: dict[str, Any], *, tenant_id: int, device_pk: int, now: dt.datetime
) -> dict[str, Any]:
    fields = e.get("fields", {})
    if not isinstance(fields, dict):
        raise InvalidInputError(f"event {i}: fields must be an object")
    text = json.dumps(fields, separators=(",", ":"))
    if len(text) > MAX_FIELDS_BYTES:
        raise PayloadTooLargeError(f"event {i}: fields over {MAX_FIELDS_BYTES} bytes")
    try:  # a lone surrogate is stored escaped but can never be read back as UTF-8
        json.dumps(fields, ensure_ascii=False).encode()
    except UnicodeEncodeError:
        raise InvalidInputError(f"event {i}: fields hold text that is not valid Unicode") from None
    at = e.get("at") or now
    if not isinstance(at, dt.datetime):
        raise InvalidInputError(f"event {i}: at must be a time")
    if at.tzinfo is None:
        raise InvalidInputError(f"event {i}: at needs a time zone (e.g. Z or +00:00)")
    try:
        at = at.astimezone(dt.UTC)
    except OverflowError:
        raise InvalidInputError(f"event {i}: at is out of range") from None
    if not in_window(at, now=now):
        # A far-future time would never be pruned and would sort first
        # forever; a far-past one rewrites history.
        raise InvalidInputError(
            f"event {i}: at must be at most {MAX_EVENT_AGE.total_seconds() / 3600:g} h before "
            f"and {MAX_EVENT_LEAD.total_seconds() / 60:g} min after the server's time"
        )
    return {
        "tenant_id": tenant_id,
        "device_pk": device_pk,
        "type": e["type"],
        "at": at,
        "count": 1,
        "fields": text,
    }


def query(
    session: Session,
    principal: Principal,
    *,
    device_id: str | None = None,
    type_prefix: str | None = None,
    since: dt.datetime | None = None,
    before: int | None = None,
    limit: int = 100,
) -> list[tuple[Event, str | None]]:
    """The tenant's events, newest first, with the device id each names
    (``before``: only events older than event ``before``, the next page)."""
    require(principal, Permission.DEVICE_READ)
    q = select(Event).where(Event.tenant_id == principal.tenant_id)
    if device_id is not None:
        pk = identity.find_device_pk(session, tenant_id=principal.tenant_id, device_id=device_id)
        if pk is None:
            raise NotFoundError(f"device {device_id!r} not found")
        q = q.where(Event.device_pk == pk)
    if type_prefix:
        q = q.where(Event.type.startswith(type_prefix))
    if since is not None:
        q = q.where(Event.at >= since)
    if before is not None:
        q = q.where(Event.id < before)
    found = list(session.execute(q.order_by(Event.id.desc()).limit(limit)).scalars())
    return _with_device_ids(session, found)


def _with_device_ids(session: Session, events: list[Event]) -> list[tuple[Event, str | None]]:
    """Each event with the id of the device it names (None for none)."""
    names = identity.device_ids(session, {e.device_pk for e in events if e.device_pk is not None})
    return [(e, names.get(e.device_pk) if e.device_pk is not None else None) for e in events]


def prune(
    session: Session, *, older_than: dt.timedelta = RETENTION, now: dt.datetime | None = None
) -> int:
    """Delete events past retention, and any dated implausibly far ahead
    (stored before times were bounded: they would never age out); returns
    how many."""
    now = now or utcnow()
    result = session.execute(
        delete(Event).where(or_(Event.at < now - older_than, Event.at > now + MAX_EVENT_LEAD))
    )
    return int(result.rowcount)  # type: ignore[attr-defined]
