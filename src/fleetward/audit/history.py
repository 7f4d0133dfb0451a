"""Reading the log back as of a sequence number, for reports rebuilt from it.

Entries are never changed once appended and checkpoints are never removed,
so what these reads return for a given ``upto`` stays the same however far
the log grows afterwards (``fleetward trustmap conformance --as-of``).
"""

from __future__ import annotations

from collections.abc import Collection, Iterator

from sqlalchemy import select
from sqlalchemy.orm import Session

from fleetward.audit.models import AuditCheckpoint, AuditEntry

__all__ = ["MAX_ABOUT", "checkpoints_upto", "entries_about", "entries_upto"]

_BATCH = 1000  # rows fetched per round trip while streaming
MAX_ABOUT = 1000  # entries one subject's history returns at most


def entries_upto(
    session: Session,
    *,
    tenant_id: int | None,
    upto: int,
    actions: Collection[str] | None = None,
) -> Iterator[AuditEntry]:
    """Stream the entries of one tenant (or the system's) with ``seq <= upto``, oldest first.

    The rows come in batches from one cursor, so a long log is read without
    holding it in memory. Close the iterator (or exhaust it) to release the
    cursor.

    Args:
        session: a read session.
        tenant_id: whose entries; ``None`` reads the system entries (no
            tenant: refused anonymous requests, checkpoints). Another
            tenant's entries are never read.
        upto: the last sequence number included.
        actions: only these actions (``None``: every action).

    Yields:
        The entries, oldest first.
    """
    owner = (
        AuditEntry.tenant_id.is_(None) if tenant_id is None else AuditEntry.tenant_id == tenant_id
    )
    stmt = select(AuditEntry).where(owner, AuditEntry.seq <= upto)
    if actions is not None:
        stmt = stmt.where(AuditEntry.action.in_(sorted(actions)))
    result = session.execute(stmt.order_by(AuditEntry.seq).execution_options(yield_per=_BATCH))
    try:
        yield from result.scalars()
    finally:
        result.close()


def checkpoints_upto(session: Session, *, upto: int) -> list[AuditCheckpoint]:
    """The signed checkpoints whose tree holds no entry past ``upto``, oldest first.

    A checkpoint covers the whole log when it is signed, so this list never
    changes once the log has grown past ``upto``.
    """
    stmt = (
        select(AuditCheckpoint)
        .where(AuditCheckpoint.tree_size <= upto)
        .order_by(AuditCheckpoint.tree_size)
    )
    return list(session.execute(stmt).scalars())


def entries_about(
    session: Session, *, tenant_id: int, subject: str, limit: int = 200
) -> list[AuditEntry]:
    """The newest entries of one tenant about ``subject`` (e.g.
    ``device:d-1``), newest first, at most ``limit`` (bounded by
    :data:`MAX_ABOUT`). The caller checks that its principal may read the
    log (``scope.AUDIT_READ``), as the API's audit routes do."""
    stmt = (
        select(AuditEntry)
        .where(AuditEntry.tenant_id == tenant_id, AuditEntry.subject == subject)
        .order_by(AuditEntry.seq.desc())
        .limit(max(1, min(limit, MAX_ABOUT)))
    )
    return list(session.execute(stmt).scalars())
