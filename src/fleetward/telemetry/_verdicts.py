"""Boot verdicts counted per cohort, for the fleet's posture.

The verifier stores each verdict as an ``attestation.verdict`` event whose
JSON fields hold ``verdict`` (``pass``, ``fail`` or ``unknown-firmware``)
and ``swversion`` (the version the device's signed evidence claimed). A
cohort here is a product and a firmware version: the most common reason a
group of devices fails together (a bad build, a withdrawn release).

:func:`verdict_cohorts` counts devices, not events: each device's latest
verdict in the window, so a device that rebooted fifty times weighs as much
as one that booted once. It is a fixed number of queries whatever the fleet
size: the newest verdict per device, the JSON fields read by the database
(``json_extract`` on SQLite, ``->>`` on PostgreSQL) and grouped there.
"""

from __future__ import annotations

import datetime as dt

from sqlalchemy import ColumnElement, cast, func, select
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import Session

from fleetward import identity
from fleetward.telemetry.models import Event

__all__ = ["VERDICT_TYPE", "verdict_cohorts"]

VERDICT_TYPE = "attestation.verdict"


def _field(session: Session, name: str) -> ColumnElement[str]:
    """The text of the JSON field ``name`` of an event, read by the database."""
    if session.get_bind().dialect.name == "postgresql":
        text: ColumnElement[str] = cast(Event.fields, JSONB)[name].astext
        return text
    return func.json_extract(Event.fields, f"$.{name}", type_=Event.fields.type)


def verdict_cohorts(
    session: Session, *, tenant_id: int, since: dt.datetime
) -> dict[tuple[str, str, str], int]:
    """Devices per ``(product, firmware version, verdict)`` by their latest
    boot verdict since ``since`` (a verdict without a version counts under
    ``unknown``)."""
    latest = (
        select(func.max(Event.id))
        .where(Event.tenant_id == tenant_id, Event.type == VERDICT_TYPE, Event.at >= since)
        .group_by(Event.device_pk)
    )
    products = identity.device_product_keys(tenant_id)
    # The JSON fields are labelled in an inner query and grouped outside it,
    # so PostgreSQL does not have to match a bound key between the two.
    inner = (
        select(
            products.c.product.label("product"),
            _field(session, "swversion").label("version"),
            _field(session, "verdict").label("verdict"),
        )
        .select_from(Event)
        .join(products, products.c.pk == Event.device_pk)
        .where(Event.id.in_(latest))
        .subquery()
    )
    rows = session.execute(
        select(inner.c.product, inner.c.version, inner.c.verdict, func.count()).group_by(
            inner.c.product, inner.c.version, inner.c.verdict
        )
    )
    out: dict[tuple[str, str, str], int] = {}
    for product, version, verdict, n in rows:
        key = (str(product), str(version or "unknown"), str(verdict or "unknown"))
        out[key] = out.get(key, 0) + int(n)
    return out
