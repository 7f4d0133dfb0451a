"""REST routes of the verifier, on the device plane.

The caller is the device of its TLS client certificate
(:data:`fleetward.api.deps.DeviceCaller`); the device in the path must be
that device, of the same tenant, or the request is refused (403) before
anything is written: a nonce is issued to, and evidence accepted from, the
device itself only. The evidence is then verified against the device's
attestation key as before."""

from __future__ import annotations

import base64
from typing import Literal

from fastapi import APIRouter
from pydantic import BaseModel, Field

from fleetward.api import problems
from fleetward.api.deps import Ctx, DeviceCaller
from fleetward.api.device_auth import DeviceIdentity
from fleetward.attestation import evidence, service
from fleetward.errors import AttestationError, PermissionDeniedError
from fleetward.runtime.refusals import RefusalKey

MAX_REASON_KEY = 80  # characters of a refusal's reason that group it with others

router = APIRouter(
    prefix="/api/v1/attestation",
    tags=["attestation"],
    responses={**problems.PUBLIC, **problems.responses(401, 403)},
)


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


def _own(device: DeviceIdentity, tenant: str, device_id: str) -> None:
    if (tenant, device_id) != (device.tenant, device.device_id):
        raise PermissionDeniedError("a device attests for itself only (its TLS certificate)")


@router.post("/{tenant}/{device_id}/nonce", response_model=NonceOut)
def nonce(tenant: str, device_id: str, ctx: Ctx, device: DeviceCaller) -> NonceOut:
    """A fresh single-use nonce (valid 120 s) for the device's next evidence."""
    _own(device, tenant, device_id)
    with ctx.db.session() as s:
        value = service.issue_nonce(s, tenant, device_id)
    return NonceOut(
        nonce=base64.urlsafe_b64encode(value).rstrip(b"=").decode(),
        expires_in=int(service.NONCE_TTL.total_seconds()),
    )


@router.post("/{tenant}/{device_id}/evidence", response_model=VerdictOut)
def submit(
    tenant: str, device_id: str, body: EvidenceIn, ctx: Ctx, device: DeviceCaller
) -> VerdictOut:
    """Verify and appraise evidence: ``pass``, ``fail`` (with the failed claims)
    or ``unknown-firmware``. Refusals answer 422 and are recorded as counts."""
    _own(device, tenant, device_id)
    try:
        with ctx.db.session() as s:
            verdict = service.submit(s, tenant, device_id, body.evidence)
    except AttestationError as exc:
        # One attestation.refused event per device, reason and window, with
        # the count (fleetward.runtime.refusals), not a row per request.
        ctx.record_refusal(
            RefusalKey(
                kind="attestation",
                action="attestation.submit",
                actor=device.actor,
                subject=f"device:{device.device_id}",
                # The verifier's messages are a near-closed set; the device
                # is authenticated and the tally's keys are capped.
                reason=exc.detail[:MAX_REASON_KEY],
                tenant_id=device.tenant_id,
                device_pk=device.device_pk,
            ),
            reason=exc.detail,
        )
        raise
    return VerdictOut.model_validate(verdict.as_dict())
