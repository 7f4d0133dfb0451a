"""The log as the console reads it: one tenant's entries, newest first, filtered.

:func:`~fleetward.audit.service.list_entries` (the API's list) walks a
tenant's entries oldest first; an operator looking at the log wants the
newest first, narrowed by what was done (``action``, a prefix: ``alert.``
finds every triage), by whom (``actor``, exact) and to what (``subject``, a
substring). Every filter is a bound parameter with ``LIKE`` wildcards
escaped, so a ``%`` in a filter matches a ``%``.
"""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.orm import Session

from fleetward.audit.models import AuditCheckpoint, AuditEntry
from fleetward.errors import NotFoundError

__all__ = ["get_entry", "newest_checkpoint", "search_entries"]

MAX_PAGE = 1001  # a caller's largest page (1,000) and the one row that says a next page exists


def search_entries(
    session: Session,
    *,
    tenant_id: int,
    action: str | None = None,
    actor: str | None = None,
    subject: str | None = None,
    before: int | None = None,
    limit: int = 100,
) -> list[AuditEntry]:
    """Entries of one tenant, newest first.

    Args:
        action: entries whose action starts with this (``incident.`` or
            ``alert.acknowledged``).
        actor: entries by exactly this actor (``token:<id>``, ``system``...).
        subject: entries whose subject contains this.
        before: only entries with ``seq < before`` (the previous page's last).
        limit: rows at most (capped at :data:`MAX_PAGE`).
    """
    stmt = select(AuditEntry).where(AuditEntry.tenant_id == tenant_id)
    if action:
        stmt = stmt.where(AuditEntry.action.startswith(action, autoescape=True))
    if actor:
        stmt = stmt.where(AuditEntry.actor == actor)
    if subject:
        stmt = stmt.where(AuditEntry.subject.contains(subject, autoescape=True))
    if before is not None:
        stmt = stmt.where(AuditEntry.seq < before)
    stmt = stmt.order_by(AuditEntry.seq.desc()).limit(max(1, min(limit, MAX_PAGE)))
    return list(session.execute(stmt).scalars())


def get_entry(session: Session, *, tenant_id: int, seq: int) -> AuditEntry:
    """One of the tenant's entries.

    Raises:
        NotFoundError: no such entry, another tenant's, or a system entry
            (answered alike, as :func:`~fleetward.audit.service.inclusion_proof` does).
    """
    entry = session.get(AuditEntry, seq)
    if entry is None or entry.tenant_id != tenant_id:
        raise NotFoundError(f"audit entry {seq} not found")
    return entry


def newest_checkpoint(session: Session) -> AuditCheckpoint | None:
    """The newest signed checkpoint (``None`` before the first)."""
    return session.execute(
        select(AuditCheckpoint).order_by(AuditCheckpoint.tree_size.desc()).limit(1)
    ).scalar()
