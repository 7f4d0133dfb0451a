"""Device-plane routes that act as the calling device: certificate renewal
and telemetry about itself. The caller is the device of its TLS client
certificate (:data:`fleetward.api.deps.DeviceCaller`); nothing in the body
names another device."""

from __future__ import annotations

import base64
import datetime as dt
from typing import Any

from cryptography.hazmat.primitives.serialization import Encoding
from fastapi import APIRouter
from pydantic import BaseModel, Field

from fleetward import telemetry
from fleetward.api import problems
from fleetward.api.deps import Ctx, DeviceCaller
from fleetward.api.routes.telemetry import StoredOut
from fleetward.errors import AuthenticationError, InvalidInputError
from fleetward.identity import MAX_CSR_BYTES, renewal
from fleetward.identity.schemas import CertificateOut, certificate_out

__all__ = ["router"]

router = APIRouter(
    prefix="/api/v1", tags=["device"], responses={**problems.PUBLIC, **problems.responses(401)}
)


class RenewIn(BaseModel):
    """Renewal, authenticated by the TLS client certificate."""

    certificate: str | None = Field(
        default=None,
        max_length=32768,
        description="current certificate, PEM (optional: it must be the TLS client certificate)",
    )
    csr: str = Field(max_length=MAX_CSR_BYTES * 2, description="PKCS#10, PEM")
    proof: str | None = Field(
        default=None,
        max_length=2048,
        description="base64 signature by the current key over the renewal message (new key only)",
    )
    attestation: dict[str, Any] | None = Field(
        default=None,
        description=(
            "key attestation statement for the new key, the shape factory enrollment takes, "
            "with nonce SHA-256(b'fleetward-renewal-attestation/v1\\n' + CSR DER) "
            f"(JSON, <= {renewal.MAX_ATTESTATION_BYTES} B)"
        ),
    )


@router.post("/renew", response_model=CertificateOut, status_code=201)
def renew_certificate(body: RenewIn, ctx: Ctx, device: DeviceCaller) -> CertificateOut:
    """Renew the caller's certificate (the TLS client certificate is the one renewed)."""
    if body.certificate is not None:
        named = renewal.load_presented_certificate(body.certificate.encode())
        if named.public_bytes(Encoding.DER) != device.certificate:
            raise AuthenticationError("the certificate in the body is not the TLS client's")
    try:
        proof = base64.b64decode(body.proof, validate=True) if body.proof else None
    except ValueError as exc:  # binascii.Error, or non-ASCII text
        raise InvalidInputError("proof is not base64") from exc
    with ctx.unit_of_work(
        actor=device.actor,
        action="certificate.renew",
        subject=f"device:{device.device_id}",
        tenant_id=device.tenant_id,
    ) as s:
        issued = renewal.renew(
            s,
            ctx.pki,
            current=device.certificate,
            csr=body.csr.encode(),
            proof=proof,
            attestation=body.attestation,
            attest=ctx.key_attester,
        )
        return certificate_out(issued)


class DeviceEventIn(BaseModel):
    """One event the device reports about itself."""

    type: str = Field(max_length=48)
    at: dt.datetime | None = None
    fields: dict[str, Any] = Field(default_factory=dict)


class DeviceEventsIn(BaseModel):
    """A batch of the device's events (all stored, or none)."""

    events: list[DeviceEventIn] = Field(max_length=telemetry.MAX_EVENTS_PER_REQUEST)


@router.post("/device/telemetry", status_code=201, response_model=StoredOut)
def post_telemetry(body: DeviceEventsIn, ctx: Ctx, device: DeviceCaller) -> StoredOut:
    """Store events about the calling device (types under ``attestation.``,
    ``authz.`` and ``telemetry.`` are fleetward's own and refused)."""
    with ctx.db.session() as s:
        n = telemetry.post_device_events(
            s,
            tenant_id=device.tenant_id,
            device_pk=device.device_pk,
            events=[e.model_dump() for e in body.events],
        )
    return StoredOut(stored=n)
