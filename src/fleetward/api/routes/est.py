"""EST (RFC 7030) for stock device clients: cacerts, simpleenroll, simplereenroll.

Paths: ``/.well-known/est/[<label>/]<operation>``. A label names the target
as ``<environment>`` or ``<tenant>.<environment>``; without one the token's
tenant and environment apply (``cacerts``, which takes no credential, then
means the ``default`` tenant's production CA).

- ``simpleenroll``: Bearer or Basic (password = API token with the
  ``device.enroll`` permission). Body: base64 DER PKCS#10. The CSR's CN is
  the device id.
- ``simplereenroll`` (RFC 7030 sections 3.3.2 and 4.2.2): authenticated by
  the device's TLS client certificate, which is the certificate renewed
  (``X-Fleetward-Client-Cert`` only from a trusted proxy, see
  :mod:`fleetward.api.device_auth`) and, when the key changes,
  ``X-Fleetward-Renewal-Proof`` and, from a secure element,
  ``X-Fleetward-Key-Attestation`` (base64 of the statement JSON; see
  :mod:`fleetward.identity.renewal` for its nonce).

Responses are ``application/pkcs7-mime; smime-type=certs-only``, base64.
"""

from __future__ import annotations

import base64

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding, pkcs7
from cryptography.x509.oid import NameOID
from fastapi import APIRouter, Request, Response
from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool

from fleetward.api import problems
from fleetward.api.deps import Ctx, DeviceCaller, authenticate_request
from fleetward.api.device_auth import DeviceIdentity
from fleetward.errors import InvalidInputError, NotFoundError, PayloadTooLargeError
from fleetward.identity import CertificateAuthority, ca_service, issuance, profile, renewal
from fleetward.tenancy import scope
from fleetward.tenancy.roles import ENVIRONMENTS

PKCS7 = "application/pkcs7-mime; smime-type=certs-only"

router = APIRouter(
    prefix="/.well-known/est",
    tags=["est"],
    responses={
        **problems.OPERATOR,  # simpleenroll takes an operator token
        200: {
            "description": "certificates (PKCS#7 certs-only, DER, base64)",
            "content": {PKCS7: {"schema": {"type": "string", "format": "base64"}}},
        },
    },
)
MAX_BODY = profile.MAX_CSR_BYTES * 2  # base64 of the largest accepted CSR, plus line breaks
# base64 of the largest key attestation statement a renewal accepts
MAX_ATTESTATION_HEADER = (renewal.MAX_ATTESTATION_BYTES + 2) // 3 * 4


def _certs_only(certs: list[x509.Certificate]) -> Response:
    der = pkcs7.serialize_certificates(certs, Encoding.DER)
    return Response(
        base64.encodebytes(der),
        media_type=PKCS7,
        headers={"Content-Transfer-Encoding": "base64"},
    )


def _unknown_label() -> NotFoundError:
    """The one answer for a label that names nothing here: a bad environment,
    an unknown tenant, or a tenant without that CA all read the same (no echo
    of the label), so EST does not tell which tenant names exist."""
    return NotFoundError("unknown EST label")


def _parse_label(label: str | None) -> tuple[str | None, str | None]:
    if not label:
        return None, None
    tenant, _, env = label.rpartition(".")
    if env not in ENVIRONMENTS:
        raise _unknown_label()
    return tenant or None, env


async def _body(request: Request) -> bytes:
    body = await request.body()
    if len(body) > MAX_BODY:
        raise PayloadTooLargeError(f"EST request over {MAX_BODY} bytes")
    try:
        return base64.b64decode(b"".join(body.split()), validate=True)
    except ValueError as exc:  # binascii.Error, or non-ASCII text
        raise InvalidInputError("EST body must be base64-encoded DER") from exc


def _chain(session: Session, ctx: Ctx, ca: CertificateAuthority) -> list[x509.Certificate]:
    root = ca_service.get_ca(session, tenant_id=ca.tenant_id, ca_id=ca.parent_id or ca.id)
    return [ctx.pki.certificate(ca), ctx.pki.certificate(root)]


def _cacerts(ctx: Ctx, label: str | None) -> Response:
    # Public: a tenant's CA certificates are published by design (devices
    # fetch them), but a label that names no CA answers like an unknown one.
    tenant_name, env = _parse_label(label)
    with ctx.db.read() as s:
        try:
            ca = ca_service.published_issuing_ca(
                s, tenant_name=tenant_name or "default", environment=env or "production"
            )
        except NotFoundError as exc:
            raise _unknown_label() from exc
        return _certs_only(_chain(s, ctx, ca))


@router.get("/cacerts", response_class=Response)
def cacerts(ctx: Ctx) -> Response:
    """The default tenant's production issuing CA and root."""
    return _cacerts(ctx, None)


@router.get("/{label}/cacerts", response_class=Response)
def cacerts_label(label: str, ctx: Ctx) -> Response:
    """The labelled tenant/environment's issuing CA and root."""
    return _cacerts(ctx, label)


async def _simpleenroll(request: Request, ctx: Ctx, label: str | None) -> Response:
    # Before the body is read; rate limited per source and token id (429).
    who = await run_in_threadpool(authenticate_request, request, ctx)
    scope.authorize(who, scope.DEVICE_ENROLL)
    tenant_name, env = _parse_label(label)
    if tenant_name is not None and tenant_name != who.tenant_name:
        raise _unknown_label()
    csr_der = b""
    device_id = "unknown"
    with ctx.refusals_recorded(
        actor=who.actor, action="certificate.issue", subject="est", tenant_id=who.tenant_id
    ):
        csr_der = await _body(request)
        csr = profile.load_csr(csr_der)
        cns = csr.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
        if len(cns) != 1:
            raise InvalidInputError("the CSR subject must carry exactly one CN: the device id")
        device_id = str(cns[0].value)

    def work() -> Response:
        issued = ctx.enroll_one(
            who,
            issuance.BatchItem(device_id=device_id, csr=csr_der),
            environment=env,
            route="est",
            source=request.client.host if request.client else None,
        )
        return _certs_only([issued.certificate])

    return await run_in_threadpool(work)


@router.post("/simpleenroll", response_class=Response)
async def simpleenroll(request: Request, ctx: Ctx) -> Response:
    """RFC 7030 section 4.2.1."""
    return await _simpleenroll(request, ctx, None)


@router.post("/{label}/simpleenroll", response_class=Response)
async def simpleenroll_label(label: str, request: Request, ctx: Ctx) -> Response:
    """RFC 7030 section 4.2.1, for a labelled tenant/environment."""
    return await _simpleenroll(request, ctx, label)


async def _simplereenroll(request: Request, ctx: Ctx, device: DeviceIdentity) -> Response:
    with ctx.refusals_recorded(
        actor=device.actor,
        action="certificate.renew",
        subject="est",
        tenant_id=device.tenant_id,
    ):
        attestation_header = request.headers.get("x-fleetward-key-attestation")
        if attestation_header is not None and len(attestation_header) > MAX_ATTESTATION_HEADER:
            raise PayloadTooLargeError(
                f"X-Fleetward-Key-Attestation over {MAX_ATTESTATION_HEADER} characters"
            )
        try:
            proof_header = request.headers.get("x-fleetward-renewal-proof")
            proof = base64.b64decode(proof_header, validate=True) if proof_header else None
            attestation = (
                base64.b64decode(attestation_header, validate=True) if attestation_header else None
            )
        except ValueError as exc:  # binascii.Error, or non-ASCII text
            raise InvalidInputError("EST headers must be base64") from exc
        csr_der = await _body(request)

    def work() -> Response:
        with ctx.unit_of_work(
            actor=device.actor,
            action="certificate.renew",
            subject="est",
            tenant_id=device.tenant_id,
        ) as s:
            issued = renewal.renew(
                s,
                ctx.pki,
                current=device.certificate,
                csr=csr_der,
                proof=proof,
                attestation=attestation,
                attest=ctx.key_attester,
            )
            return _certs_only([issued.certificate])

    return await run_in_threadpool(work)


@router.post("/simplereenroll", response_class=Response)
async def simplereenroll(request: Request, ctx: Ctx, device: DeviceCaller) -> Response:
    """RFC 7030 section 4.2.2: the TLS client certificate is the one renewed."""
    return await _simplereenroll(request, ctx, device)


@router.post("/{label}/simplereenroll", response_class=Response)
async def simplereenroll_label(
    label: str, request: Request, ctx: Ctx, device: DeviceCaller
) -> Response:
    """RFC 7030 section 4.2.2 (the label is implied by the certificate; one
    that names another tenant answers like an unknown one)."""
    tenant_name, _env = _parse_label(label)
    if tenant_name is not None and tenant_name != device.tenant:
        raise _unknown_label()
    return await _simplereenroll(request, ctx, device)
