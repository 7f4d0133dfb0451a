"""Leases: one holder at a time for background work shared by many processes.

Several API processes (``--workers N``, or several hosts on PostgreSQL) each
run a publisher; only the holder of the ``publisher`` lease builds CRLs and
checkpoints, so the work is done once. A lease expires if its holder stops
renewing it, and another process takes over; a holder that stops cleanly
releases it. The runtime's workers (``fleetward.runtime.worker``) use one
lease per kind of work.
"""

from __future__ import annotations

import datetime as dt

from sqlalchemy import String, delete, insert, or_, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Mapped, mapped_column

from fleetward.store.db import Base, Database
from fleetward.store.types import UTCDateTime

__all__ = ["Lease", "acquire", "release"]


class Lease(Base):
    """Who holds a named lease, until when."""

    __tablename__ = "leases"

    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    holder: Mapped[str] = mapped_column(String(128))
    expires_at: Mapped[dt.datetime] = mapped_column(UTCDateTime())


def acquire(db: Database, *, name: str, holder: str, ttl: dt.timedelta, now: dt.datetime) -> bool:
    """Take or renew the lease ``name`` for ``holder``; whether it is held now."""
    with db.session() as s:
        result = s.execute(
            update(Lease)
            .where(Lease.name == name, or_(Lease.holder == holder, Lease.expires_at < now))
            .values(holder=holder, expires_at=now + ttl)
        )
        if result.rowcount:  # type: ignore[attr-defined]
            return True
    try:
        with db.session() as s:
            s.execute(insert(Lease).values(name=name, holder=holder, expires_at=now + ttl))
        return True
    except IntegrityError:
        return False


def release(db: Database, *, name: str, holder: str) -> None:
    """Give up the lease ``name`` if ``holder`` holds it (another may take it at once)."""
    with db.session() as s:
        s.execute(delete(Lease).where(Lease.name == name, Lease.holder == holder))
