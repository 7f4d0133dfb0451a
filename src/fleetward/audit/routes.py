"""REST routes of the audit domain (auditors, security, admins)."""

from __future__ import annotations

import datetime as dt
import json
from typing import Any

from fastapi import APIRouter, Query
from pydantic import BaseModel

from fleetward.api.deps import Ctx, Operator
from fleetward.audit import service
from fleetward.audit.models import AuditEntry
from fleetward.errors import NotFoundError
from fleetward.tenancy.roles import Permission, require

router = APIRouter(prefix="/api/v1/audit", tags=["audit"])


class EntryOut(BaseModel):
    """One audit entry."""

    seq: int
    ts: dt.datetime
    actor: str
    action: str
    outcome: str
    subject: str
    details: dict[str, Any]
    hash: str

    @classmethod
    def of(cls, e: AuditEntry) -> EntryOut:
        """From the ORM row."""
        return cls(
            seq=e.seq,
            ts=e.ts,
            actor=e.actor,
            action=e.action,
            outcome=e.outcome,
            subject=e.subject,
            details=json.loads(e.details),
            hash=e.hash,
        )


class VerifyOut(BaseModel):
    """Result of a full verification."""

    ok: bool
    entries: int
    checkpoints: int
    head_hash: str


@router.get("", response_model=list[EntryOut])
def list_entries(
    ctx: Ctx, who: Operator, after: int = 0, limit: int = Query(default=100, ge=1, le=1000)
) -> list[EntryOut]:
    """The tenant's audit entries after ``after``."""
    require(who, Permission.AUDIT_READ)
    with ctx.db.read() as s:
        return [
            EntryOut.of(e)
            for e in service.list_entries(s, tenant_id=who.tenant_id, after=after, limit=limit)
        ]


@router.get("/verify", response_model=VerifyOut)
def verify(ctx: Ctx, who: Operator) -> VerifyOut:
    """Verify the whole chain and every checkpoint (problem 422 if broken)."""
    require(who, Permission.AUDIT_READ)
    with ctx.db.read() as s:
        report = service.verify(s, public_key=ctx.checkpoint_public_key())
    return VerifyOut(
        ok=True, entries=report.entries, checkpoints=report.checkpoints, head_hash=report.head_hash
    )


@router.get("/proof/{seq}")
def proof(seq: int, ctx: Ctx, who: Operator) -> dict[str, Any]:
    """Inclusion proof of one of the tenant's entries in the newest checkpoint."""
    require(who, Permission.AUDIT_READ)
    with ctx.db.read() as s:
        entry = s.get(AuditEntry, seq)
        if entry is None or entry.tenant_id != who.tenant_id:
            raise NotFoundError(f"audit entry {seq} not found")
        return service.inclusion_proof(s, seq=seq)
