"""REST routes of the identity domain (thin: parse, call the service, shape)."""

from __future__ import annotations

import base64
from typing import Annotated, Any, Literal, get_args

from fastapi import APIRouter, Path, Query, Request, Response
from pydantic import BaseModel

from fleetward import identity
from fleetward.api import problems
from fleetward.api.deps import Allow, Ctx
from fleetward.api.pagination import Cursor, Limit, Page, decode, page, page_of
from fleetward.api.params import DbId
from fleetward.errors import InvalidInputError
from fleetward.identity import ca_service, issuance, lifecycle, publication, service
from fleetward.identity.schemas import (
    BatchEnrollIn,
    BatchEnrollOut,
    BatchItemOut,
    CaOut,
    CertificateOut,
    CohortRevokeIn,
    DeviceIn,
    DeviceOut,
    DistrustIn,
    DistrustOut,
    EnrollIn,
    RevokeIn,
    StateIn,
    certificate_out,
)
from fleetward.tenancy import scope
from fleetward.tenancy.roles import Permission, Principal, require

router = APIRouter(prefix="/api/v1", tags=["identity"], responses=problems.OPERATOR)
public = APIRouter(tags=["revocation"], responses=problems.PUBLIC)

DeviceState = Literal["pending", "active", "quarantined", "revoked", "retired"]
if get_args(DeviceState) != lifecycle.STATES:  # one list of states, checked at import
    raise RuntimeError("DeviceState must list fleetward.identity.lifecycle.STATES")


class CohortRevokeOut(BaseModel):
    """What a cohort revocation did."""

    revoked: int
    skipped: int


def _binary(media_type: str, description: str) -> dict[int | str, dict[str, Any]]:
    """The OpenAPI description of a 200 answer that is not JSON."""
    return {
        200: {
            "description": description,
            "content": {media_type: {"schema": {"type": "string", "format": "binary"}}},
        }
    }


def _source(request: Request) -> str | None:
    """The peer address (a proxy's header only counts from a trusted proxy)."""
    return request.client.host if request.client else None


@router.get("/cas", response_model=Page[CaOut])
def list_cas(
    ctx: Ctx,
    who: Annotated[Principal, Allow(scope.CA_READ)],
    cursor: Cursor = None,
    limit: Limit = 100,
) -> Page[CaOut]:
    """The tenant's CAs; where their keys are kept only for who may manage CAs (admin)."""
    require(who, Permission.CA_READ)
    # Key locations (file paths, HSM token and object labels) help an attacker
    # more than a reader: only a role that manages CAs sees them.
    key_location = who.can(Permission.CA_MANAGE)
    with ctx.db.read() as s:
        return page_of(
            ca_service.list_cas(s, tenant_id=who.tenant_id),
            cursor=cursor,
            limit=limit,
            key=lambda c: (c.id,),
            kinds=(int,),
            shape=lambda c: CaOut.of(c, key_location=key_location),
        )


@router.post("/cas/{ca_id}/distrust", response_model=DistrustOut)
def distrust_ca(
    ca_id: Annotated[int, Path(ge=1, le=2**31 - 1)],
    body: DistrustIn,
    ctx: Ctx,
    who: Annotated[Principal, Allow(scope.CA_DISTRUST)],
) -> DistrustOut:
    """Close a retired issuing CA's dual-trust window now: it leaves every
    trust file and its certificates still good are revoked. Refused while
    devices depend on it, unless ``force``."""
    with ctx.operator_work(who, action="ca.distrust", subject=f"ca:{ca_id}") as s:
        done = identity.distrust_ca(s, who, ca_id, force=body.force)
        return DistrustOut(
            ca_id=done.ca_id, revoked=done.revoked, stranded_sample=list(done.stranded),
            why=done.why,
        )  # fmt: skip


@router.get("/devices", response_model=Page[DeviceOut])
def list_devices(
    ctx: Ctx,
    who: Annotated[Principal, Allow(scope.DEVICE_READ)],
    state: DeviceState | None = None,
    product: Annotated[str | None, Query(max_length=64)] = None,
    cursor: Cursor = None,
    limit: Limit = 100,
) -> Page[DeviceOut]:
    """Devices of the tenant by device id."""
    after = decode(cursor, str)
    with ctx.db.read() as s:
        rows = service.list_devices(
            s,
            who,
            state=state,
            product=product,
            after=str(after[0]) if after else "",
            limit=limit + 1,
        )
        return page(rows, limit=limit, key=lambda d: (d.device_id,), shape=DeviceOut.of)


@router.post("/devices", response_model=DeviceOut, status_code=201)
def register_device(
    body: DeviceIn, ctx: Ctx, who: Annotated[Principal, Allow(scope.DEVICE_REGISTER)]
) -> DeviceOut:
    """Register a device (state ``pending``)."""
    with ctx.operator_work(who, action="device.register", subject=f"device:{body.device_id}") as s:
        d = service.register_device(
            s, who, device_id=body.device_id, product=body.product, labels=body.labels
        )
        return DeviceOut.of(d)


@router.get("/devices/{device_id}", response_model=DeviceOut)
def get_device(
    device_id: str, ctx: Ctx, who: Annotated[Principal, Allow(scope.DEVICE_READ)]
) -> DeviceOut:
    """One device."""
    with ctx.db.read() as s:
        return DeviceOut.of(service.get_device(s, who, device_id))


@router.post("/devices/{device_id}/certificates", response_model=CertificateOut, status_code=201)
async def enroll(
    device_id: str,
    body: EnrollIn,
    request: Request,
    ctx: Ctx,
    who: Annotated[Principal, Allow(scope.DEVICE_ENROLL)],
) -> CertificateOut:
    """Enroll: issue a device's certificate from its CSR (registering the
    device if it is new).

    Runs on the event loop, one enrollment at a time per process: about a
    millisecond of CPU, and the write lock is then never held by a thread
    that waits for the GIL behind other enrollments (scale with ``--workers``).
    """
    item = issuance.BatchItem(
        device_id=device_id, csr=body.csr.encode(), product=body.product, labels=body.labels
    )
    issued = ctx.enroll_one(
        who, item, environment=body.environment, route="rest", source=_source(request)
    )
    return certificate_out(issued)


@router.post("/enrollments", response_model=BatchEnrollOut)
def enroll_batch(
    body: BatchEnrollIn,
    request: Request,
    ctx: Ctx,
    who: Annotated[Principal, Allow(scope.DEVICE_ENROLL)],
) -> BatchEnrollOut:
    """Enroll up to 1,000 devices in one request; each item succeeds or fails alone."""
    items = [
        issuance.BatchItem(
            device_id=i.device_id, csr=i.csr.encode(), product=i.product, labels=i.labels
        )
        for i in body.items
    ]
    with ctx.refusals_recorded(
        actor=who.actor, action="certificate.issue", subject="batch", tenant_id=who.tenant_id
    ):
        results = ctx.enroll_devices(
            who,
            items=items,
            environment=body.environment,
            route="rest-batch",
            source=_source(request),
        )
    out = []
    for r in results:
        if r.issued is not None:
            out.append(BatchItemOut(device_id=r.device_id, certificate=certificate_out(r.issued)))
        else:
            if r.error is None:
                raise RuntimeError("broken invariant, expected: r.error is not None")
            out.append(
                BatchItemOut(
                    device_id=r.device_id,
                    problem=problems.as_dict(r.error),
                )
            )
    issued = sum(1 for r in results if r.issued is not None)
    return BatchEnrollOut(issued=issued, refused=len(results) - issued, items=out)


@router.post("/devices/{device_id}/state", response_model=DeviceOut)
def set_state(
    device_id: str, body: StateIn, ctx: Ctx, who: Annotated[Principal, Allow(scope.DEVICE_STATE)]
) -> DeviceOut:
    """Move a device through its lifecycle."""
    with ctx.operator_work(who, action="device.state", subject=f"device:{device_id[:64]}") as s:
        return DeviceOut.of(
            service.set_device_state(s, who, device_id, state=body.state, reason=body.reason)
        )


@router.post("/revocations/devices", response_model=CohortRevokeOut)
def revoke_devices(
    body: CohortRevokeIn, ctx: Ctx, who: Annotated[Principal, Allow(scope.DEVICE_REVOKE)]
) -> CohortRevokeOut:
    """Revoke a cohort of devices (and their certificates) in one transaction;
    live broker connections are cut off within seconds."""
    with ctx.operator_work(
        who, action="device.revoke", subject=f"cohort:{len(body.device_ids)}"
    ) as s:
        revoked = service.revoke_devices(s, who, body.device_ids, reason=body.reason)
    return CohortRevokeOut(revoked=len(revoked), skipped=len(set(body.device_ids)) - len(revoked))


@router.post("/devices/{device_id}/revocation", response_model=DeviceOut)
def revoke_device(
    device_id: str, body: RevokeIn, ctx: Ctx, who: Annotated[Principal, Allow(scope.DEVICE_REVOKE)]
) -> DeviceOut:
    """Revoke a device and all its certificates."""
    with ctx.operator_work(who, action="device.revoke", subject=f"device:{device_id[:64]}") as s:
        return DeviceOut.of(service.revoke_device(s, who, device_id, reason=body.reason))


@router.get("/devices/{device_id}/certificates", response_model=Page[CertificateOut])
def device_certificates(
    device_id: str,
    ctx: Ctx,
    who: Annotated[Principal, Allow(scope.DEVICE_READ)],
    cursor: Cursor = None,
    limit: Limit = 100,
) -> Page[CertificateOut]:
    """A device's certificate history, oldest first."""
    with ctx.db.read() as s:
        return page_of(
            service.list_certificates(s, who, device_id),
            cursor=cursor,
            limit=limit,
            key=lambda r: (r.not_before.isoformat(), r.serial),
            kinds=(str, str),
            shape=lambda r: CertificateOut.of(r, device_id),
        )


@router.get("/certificates/{serial}", response_model=CertificateOut)
def get_certificate(
    serial: str, ctx: Ctx, who: Annotated[Principal, Allow(scope.DEVICE_READ)]
) -> CertificateOut:
    """One certificate by serial (hex)."""
    with ctx.db.read() as s:
        return CertificateOut.of(service.get_certificate(s, who, serial))


@router.post("/certificates/{serial}/revocation", response_model=CertificateOut)
def revoke_certificate(
    serial: str, body: RevokeIn, ctx: Ctx, who: Annotated[Principal, Allow(scope.CERT_REVOKE)]
) -> CertificateOut:
    """Revoke one certificate (RFC 5280 reason)."""
    with ctx.operator_work(
        who, action="certificate.revoke", subject=f"certificate:{serial[:42]}"
    ) as s:
        return CertificateOut.of(service.revoke_certificate(s, who, serial, reason=body.reason))


@public.get(
    "/crl/{ca_id}.crl",
    response_class=Response,
    responses=_binary("application/pkix-crl", "the CRL (DER)"),
)
def crl(ca_id: DbId, ctx: Ctx) -> Response:
    """The CA's latest published CRL (DER)."""
    with ctx.db.read() as s:
        published = publication.get_crl(s, ca_id=ca_id)
        return Response(
            publication.published_der(ctx.pki, published),
            media_type="application/pkix-crl",
            headers={"Cache-Control": "max-age=60"},
        )


@public.get(
    "/ca/{ca_id}.crt",
    response_class=Response,
    responses=_binary("application/x-pem-file", "the CA certificate (PEM)"),
)
def ca_certificate(ca_id: DbId, ctx: Ctx) -> Response:
    """A CA certificate (PEM)."""
    with ctx.db.read() as s:
        ca = ca_service.get_ca(s, tenant_id=None, ca_id=ca_id)
        if ca.certificate_pem is None:
            raise InvalidInputError(f"CA {ca_id} has no certificate yet")
        return Response(ca.certificate_pem, media_type="application/x-pem-file")


OCSP_RESPONSE = "application/ocsp-response"


@public.post(
    "/ocsp",
    response_class=Response,
    responses=_binary(OCSP_RESPONSE, "the OCSP response (DER)"),
)
async def ocsp_post(request: Request, ctx: Ctx) -> Response:
    """OCSP over POST (RFC 6960 appendix A)."""
    body = await request.body()
    return Response(await _answer(ctx, body), media_type=OCSP_RESPONSE)


@public.get(
    "/ocsp/{encoded:path}",
    response_class=Response,
    responses=_binary(OCSP_RESPONSE, "the OCSP response (DER)"),
)
async def ocsp_get(encoded: str, ctx: Ctx) -> Response:
    """OCSP over GET: the base64 (URL-encoded) DER request in the path."""
    try:
        data = base64.b64decode(encoded.replace("-", "+").replace("_", "/"), validate=False)
    except ValueError:  # binascii.Error, or non-ASCII text
        data = b""
    return Response(
        await _answer(ctx, data), media_type=OCSP_RESPONSE, headers={"Cache-Control": "no-cache"}
    )


async def _answer(ctx: Ctx, data: bytes) -> bytes:
    # Answered on the event loop: one indexed read and one signature take
    # less time than a hop to the thread pool would.
    with ctx.db.read_engine.connect() as conn:
        return publication.ocsp_answer(conn, ctx.pki, data)
