"""REST routes of the verifier (devices call them; the evidence is the authentication)."""

from __future__ import annotations

import base64
from typing import Literal

from fastapi import APIRouter
from pydantic import BaseModel, Field

from fleetward.api import problems
from fleetward.api.deps import Ctx
from fleetward.attestation import evidence, service
from fleetward.errors import AttestationError

router = APIRouter(prefix="/api/v1/attestation", tags=["attestation"], responses=problems.PUBLIC)


class EvidenceIn(BaseModel):
    """Signed boot evidence (a compact JWS over EAT claims)."""

    evidence: str = Field(max_length=evidence.MAX_EVIDENCE_BYTES)


class NonceOut(BaseModel):
    """A single-use nonce for the device's next evidence."""

    nonce: str = Field(description="base64url, unpadded")
    expires_in: int = Field(description="seconds")


class VerdictOut(BaseModel):
    """The appraisal of one piece of evidence."""

    verdict: Literal["pass", "fail", "unknown-firmware"]
    failed: list[str] = Field(description="the claims that failed (e.g. measurements.bl2)")
    swversion: str = Field(description="the firmware version the device claimed")


@router.post("/{tenant}/{device_id}/nonce", response_model=NonceOut)
def nonce(tenant: str, device_id: str, ctx: Ctx) -> NonceOut:
    """A fresh single-use nonce (valid 120 s) for the device's next evidence."""
    with ctx.db.session() as s:
        value = service.issue_nonce(s, tenant, device_id)
    return NonceOut(
        nonce=base64.urlsafe_b64encode(value).rstrip(b"=").decode(),
        expires_in=int(service.NONCE_TTL.total_seconds()),
    )


@router.post("/{tenant}/{device_id}/evidence", response_model=VerdictOut)
def submit(tenant: str, device_id: str, body: EvidenceIn, ctx: Ctx) -> VerdictOut:
    """Verify and appraise evidence: ``pass``, ``fail`` (with the failed claims)
    or ``unknown-firmware``. Refusals answer 422 and are recorded."""
    try:
        with ctx.db.session() as s:
            verdict = service.submit(s, tenant, device_id, body.evidence)
    except AttestationError as exc:
        with ctx.db.session() as s:
            service.record_refusal(s, tenant, device_id, exc.detail)
        raise
    return VerdictOut.model_validate(verdict.as_dict())
