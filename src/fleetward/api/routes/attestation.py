"""REST routes of the verifier (devices call them; the evidence is the authentication)."""

from __future__ import annotations

import base64
from typing import Any

from fastapi import APIRouter
from pydantic import BaseModel, Field

from fleetward.api.deps import Ctx
from fleetward.attestation import evidence, service
from fleetward.errors import AttestationError

router = APIRouter(prefix="/api/v1/attestation", tags=["attestation"])


class EvidenceIn(BaseModel):
    """Signed boot evidence (a compact JWS over EAT claims)."""

    evidence: str = Field(max_length=evidence.MAX_EVIDENCE_BYTES)


@router.post("/{tenant}/{device_id}/nonce")
def nonce(tenant: str, device_id: str, ctx: Ctx) -> dict[str, Any]:
    """A fresh single-use nonce (valid 120 s) for the device's next evidence."""
    with ctx.db.session() as s:
        value = service.issue_nonce(s, tenant, device_id)
    return {
        "nonce": base64.urlsafe_b64encode(value).rstrip(b"=").decode(),
        "expires_in": int(service.NONCE_TTL.total_seconds()),
    }


@router.post("/{tenant}/{device_id}/evidence")
def submit(tenant: str, device_id: str, body: EvidenceIn, ctx: Ctx) -> dict[str, Any]:
    """Verify and appraise evidence: ``pass``, ``fail`` (with the failed claims)
    or ``unknown-firmware``. Refusals answer 422 and are recorded."""
    try:
        with ctx.db.session() as s:
            verdict = service.submit(s, tenant, device_id, body.evidence)
    except AttestationError as exc:
        with ctx.db.session() as s:
            service.record_refusal(s, tenant, device_id, exc.detail)
        raise
    return verdict.as_dict()
