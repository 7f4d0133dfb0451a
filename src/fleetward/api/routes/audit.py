"""REST routes of the audit domain (auditors, security, admins): the
tenant's entries, the verification of the whole log, and inclusion proofs."""

from __future__ import annotations

import datetime as dt
import json
from typing import Annotated, Any

from fastapi import APIRouter, Path
from pydantic import BaseModel, Field

from fleetward.api import problems
from fleetward.api.deps import Allow, Ctx
from fleetward.api.pagination import Cursor, Limit, Page, decode, page
from fleetward.audit import AuditEntry, service
from fleetward.tenancy import scope
from fleetward.tenancy.roles import Permission, Principal, require

router = APIRouter(prefix="/api/v1/audit", tags=["audit"], responses=problems.OPERATOR)

MAX_SEQ = 2**63 - 1  # sequence numbers are BIGINT: a larger one is refused, not a 500


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
    """The caller's tenant's view of a full verification (see
    :func:`fleetward.audit.service.verify_tenant` for what it proves)."""

    ok: bool
    entries: int = Field(description="the tenant's entries in the verified log")
    checkpointed: int = Field(description="of them, those a verified signed checkpoint covers")
    head_seq: int | None = Field(description="the tenant's newest entry")
    head_hash: str | None = Field(description="its hash")


class CheckpointOut(BaseModel):
    """The signed checkpoint a proof leads to."""

    id: int
    head_hash: str
    ts: str = Field(description="as signed (ISO 8601, UTC)")
    key_id: str = Field(description="'(redacted)' for roles that do not manage CAs")
    signature: str


class ProofOut(BaseModel):
    """An inclusion proof (RFC 6962) of one entry in a signed checkpoint;
    ``fleetward audit verify-proof`` checks it offline."""

    seq: int
    entry_hash: str
    leaf_index: int
    tree_size: int
    root_hash: str
    audit_path: list[str]
    checkpoint: CheckpointOut


@router.get("/entries", response_model=Page[EntryOut])
def list_entries(
    ctx: Ctx,
    who: Annotated[Principal, Allow(scope.AUDIT_READ)],
    cursor: Cursor = None,
    limit: Limit = 100,
) -> Page[EntryOut]:
    """The tenant's audit entries, oldest first."""
    require(who, Permission.AUDIT_READ)
    after = decode(cursor, int)
    with ctx.db.read() as s:
        rows = service.list_entries(
            s, tenant_id=who.tenant_id, after=int(after[0]) if after else 0, limit=limit + 1
        )
        entries = page(rows, limit=limit, key=lambda e: (e.seq,), shape=EntryOut.of)
    if not who.can(Permission.CA_MANAGE):
        for e in entries.items:
            _redact_key_locations(e.details)
    return entries


def _redact_key_locations(details: dict[str, Any]) -> None:
    """Key locations (file paths, PKCS#11 URIs) are for admins, as in
    ``GET /api/v1/cas``; the hash chain covers the stored entry, not this view."""
    for name in ("key", "key_uri", "key_id"):
        if isinstance(details.get(name), str):
            details[name] = "(redacted)"


@router.get("/verification", response_model=VerifyOut)
def verify(ctx: Ctx, who: Annotated[Principal, Allow(scope.AUDIT_READ)]) -> VerifyOut:
    """Verify the whole chain and every checkpoint; report the tenant's entries.

    Problem 422 (with ``seq``, the tenant's first unproven entry) if the log
    is broken where it can hide a change to them.
    """
    require(who, Permission.AUDIT_READ)
    with ctx.db.read() as s:
        report = service.verify_tenant(
            s, tenant_id=who.tenant_id, public_key=ctx.checkpoint_public_key()
        )
    return VerifyOut(
        ok=True,
        entries=report.entries,
        checkpointed=report.checkpointed,
        head_seq=report.head_seq,
        head_hash=report.head_hash,
    )


@router.get("/entries/{seq}/proof", response_model=ProofOut)
def proof(
    seq: Annotated[int, Path(ge=1, le=MAX_SEQ)],
    ctx: Ctx,
    who: Annotated[Principal, Allow(scope.AUDIT_READ)],
) -> ProofOut:
    """Inclusion proof of one of the tenant's entries in the newest checkpoint."""
    require(who, Permission.AUDIT_READ)
    with ctx.db.read() as s:
        answer = service.inclusion_proof(s, seq=seq, tenant_id=who.tenant_id)
    if not who.can(Permission.CA_MANAGE):
        _redact_key_locations(answer["checkpoint"])
    return ProofOut.model_validate(answer)
