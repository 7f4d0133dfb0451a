"""Tables of the audit domain: the chained log and its signed checkpoints."""

from __future__ import annotations

import datetime as dt

from sqlalchemy import BigInteger, Index, Integer, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from fleetward.store.db import Base
from fleetward.store.types import UTCDateTime

__all__ = ["AuditCheckpoint", "AuditEntry", "AuditHead"]


class AuditEntry(Base):
    """One trust decision. ``hash`` covers every other column and ``prev_hash``."""

    __tablename__ = "audit_entries"
    # A device's (or any subject's) history, newest first: the console's timeline.
    __table_args__ = (Index("ix_audit_entries_subject", "tenant_id", "subject", "seq"),)

    seq: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
    ts: Mapped[dt.datetime] = mapped_column(UTCDateTime())
    tenant_id: Mapped[int | None] = mapped_column(Integer, nullable=True, index=True)
    actor: Mapped[str] = mapped_column(String(200))
    action: Mapped[str] = mapped_column(String(64))
    outcome: Mapped[str] = mapped_column(String(16))
    subject: Mapped[str] = mapped_column(String(200))
    details: Mapped[str] = mapped_column(Text)
    prev_hash: Mapped[str] = mapped_column(String(64))
    hash: Mapped[str] = mapped_column(String(64))


class AuditHead(Base):
    """The single row that holds the chain head.

    Appenders lock this row (``SELECT ... FOR UPDATE`` on PostgreSQL, the
    database write lock on SQLite), so appends are serialised and the chain
    never forks.
    """

    __tablename__ = "audit_head"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    seq: Mapped[int] = mapped_column(BigInteger)
    hash: Mapped[str] = mapped_column(String(64))


class AuditCheckpoint(Base):
    """A signed statement of the Merkle root over the first ``tree_size`` entries."""

    __tablename__ = "audit_checkpoints"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    tree_size: Mapped[int] = mapped_column(BigInteger)
    root_hash: Mapped[str] = mapped_column(String(64))
    head_hash: Mapped[str] = mapped_column(String(64))
    ts: Mapped[dt.datetime] = mapped_column(UTCDateTime())
    key_id: Mapped[str] = mapped_column(String(200))
    signature: Mapped[str] = mapped_column(Text)
