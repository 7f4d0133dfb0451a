"""REST routes of the provisioning domain (thin)."""

from __future__ import annotations

import datetime as dt
import json
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Query, Request, Response
from pydantic import BaseModel, Field

from fleetward.api import problems
from fleetward.api.deps import Allow, Ctx
from fleetward.api.pagination import Cursor, Limit, Page, decode, page, page_of
from fleetward.api.params import Counter, DbId
from fleetward.identity import ca_service
from fleetward.identity.issuance import MAX_BATCH
from fleetward.identity.profile import MAX_CSR_BYTES
from fleetward.identity.schemas import CertificateOut, certificate_out
from fleetward.provisioning import EnrollmentBatch, Factory, enroll, service
from fleetward.provisioning.attestation import MAX_STATEMENT_BYTES
from fleetward.store import utcnow
from fleetward.tenancy import scope
from fleetward.tenancy.roles import Principal

router = APIRouter(
    prefix="/api/v1/provisioning", tags=["provisioning"], responses=problems.OPERATOR
)


class FactoryIn(BaseModel):
    """A new factory."""

    name: str = Field(max_length=64)
    environment: str


class FactoryOut(BaseModel):
    """A factory."""

    id: int
    name: str
    environment: str

    @classmethod
    def of(cls, f: Factory) -> FactoryOut:
        """From the ORM row."""
        return cls(id=f.id, name=f.name, environment=f.environment)


class FactoryTokenIn(BaseModel):
    """A factory-operator token."""

    name: str = Field(min_length=1, max_length=100)
    expires_in_days: int | None = Field(default=None, ge=1, le=3650)


class FactoryTokenOut(BaseModel):
    """A factory-operator token (the secret, ``token``, is shown only now)."""

    id: str
    factory_id: int
    environment: str | None
    token: str


class BatchIn(BaseModel):
    """A new enrollment batch: explicit ids or a serial range."""

    factory_id: DbId
    product: str = Field(max_length=64)
    expires_in_hours: float = Field(gt=0, le=24 * 365)
    device_ids: list[str] | None = Field(default=None, max_length=100_000)
    range_prefix: str | None = Field(default=None, max_length=48)
    range_start: Counter | None = None
    range_end: Counter | None = None
    range_width: Counter | None = None
    max_count: Counter | None = Field(default=None, ge=1)


class BatchOut(BaseModel):
    """A batch."""

    id: int
    factory_id: int
    product: str
    environment: str
    status: str
    max_count: int
    used_count: int
    expires_at: dt.datetime
    range_prefix: str | None
    range_start: int | None
    range_end: int | None
    range_width: int | None
    listed_devices: int | None

    @classmethod
    def of(cls, b: EnrollmentBatch) -> BatchOut:
        """From the ORM row."""
        return cls(
            id=b.id,
            factory_id=b.factory_id,
            product=b.product,
            environment=b.environment,
            status=b.status,
            max_count=b.max_count,
            used_count=b.used_count,
            expires_at=b.expires_at,
            range_prefix=b.range_prefix,
            range_start=b.range_start,
            range_end=b.range_end,
            range_width=b.range_width,
            listed_devices=len(json.loads(b.device_ids)) if b.device_ids else None,
        )


class BatchStatusIn(BaseModel):
    """Close a batch: it enrolls no more devices."""

    status: Literal["closed"]


class RootIn(BaseModel):
    """A chip vendor's attestation root."""

    name: str = Field(max_length=100)
    certificate: str = Field(max_length=16384, description="PEM")


class RootOut(BaseModel):
    """A trusted vendor attestation root."""

    id: int
    name: str
    sha256: str


class GrantIn(BaseModel):
    """Permission to provision a device again."""

    device_id: str = Field(max_length=64)
    reason: str = Field(min_length=1, max_length=200)


class GrantOut(BaseModel):
    """A re-provisioning grant."""

    id: int
    device_id: str
    expires_at: dt.datetime


class NoncesOut(BaseModel):
    """Single-use challenges for key attestation statements."""

    nonces: list[str]
    expires_at: dt.datetime


class ItemProblem(BaseModel):
    """Why one item was refused (problem details members, and the refusal's category)."""

    type: str
    title: str
    status: int
    detail: str
    category: str | None = Field(description="outside-batch, duplicate, attestation, ...")


class ProvisionItemOut(BaseModel):
    """One device's outcome: a certificate, or a problem."""

    device_id: str
    key_origin: str | None
    certificate: CertificateOut | None = None
    problem: ItemProblem | None = None


class ProvisionOut(BaseModel):
    """The outcome of a factory enrollment request."""

    issued: int
    refused: int
    items: list[ProvisionItemOut]
    issuers: dict[str, str] = Field(
        default_factory=dict,
        description="the issuing CA certificate (PEM) of each ca_id above: a station on the "
        "operator plane stores it beside the device certificate (/ca/ is on the device plane)",
    )


class AttemptOut(BaseModel):
    """One enrollment record: who provisioned what, when, how, and the outcome."""

    id: int
    ts: str
    factory_id: int | None
    batch_id: int | None
    token: str | None
    device_id: str
    csr_fingerprint: str | None
    key_origin: str | None
    result: str
    category: str | None
    reason: str | None
    source: str | None
    serial: str | None
    route: str | None
    environment: str | None


class CounterOut(BaseModel):
    """Abnormal-enrollment signals of one factory and batch."""

    factory_id: int | None
    batch_id: int | None
    accepted: int
    refused: int
    refused_by_category: dict[str, int]
    first_attempt: str
    last_window: int
    average_per_window: float
    burst: bool


class ProvisionItemIn(BaseModel):
    """One device at the station."""

    device_id: str = Field(max_length=200)
    csr: str = Field(max_length=MAX_CSR_BYTES * 2, description="PKCS#10, PEM")
    attestation: dict[str, Any] | None = Field(
        default=None, description=f"key attestation statement (JSON, < {MAX_STATEMENT_BYTES} B)"
    )


class ProvisionIn(BaseModel):
    """Devices to enroll in one batch."""

    items: list[ProvisionItemIn] = Field(max_length=MAX_BATCH)


@router.post("/factories", response_model=FactoryOut, status_code=201)
def create_factory(
    body: FactoryIn, ctx: Ctx, who: Annotated[Principal, Allow(scope.FACTORY_CREATE)]
) -> FactoryOut:
    """Register a factory (admin)."""
    with ctx.operator_work(who, action="factory.create", subject=f"factory:{body.name}") as s:
        return FactoryOut.of(
            service.create_factory(s, who, name=body.name, environment=body.environment)
        )


@router.get("/factories", response_model=Page[FactoryOut])
def list_factories(
    ctx: Ctx,
    who: Annotated[Principal, Allow(scope.FACTORY_READ)],
    cursor: Cursor = None,
    limit: Limit = 100,
) -> Page[FactoryOut]:
    """The tenant's factories."""
    with ctx.db.read() as s:
        return page_of(
            service.list_factories(s, who),
            cursor=cursor,
            limit=limit,
            key=lambda f: (f.id,),
            kinds=(int,),
            shape=FactoryOut.of,
        )


@router.post("/factories/{factory_id}/tokens", status_code=201, response_model=FactoryTokenOut)
def factory_token(
    factory_id: DbId,
    body: FactoryTokenIn,
    ctx: Ctx,
    who: Annotated[Principal, Allow(scope.TOKEN_CREATE)],
) -> FactoryTokenOut:
    """A factory-operator token bound to this factory (shown once)."""
    expires = utcnow() + dt.timedelta(days=body.expires_in_days) if body.expires_in_days else None
    with ctx.operator_work(who, action="token.create", subject=f"factory:{factory_id}") as s:
        row, token = service.create_factory_token(
            s,
            who,
            factory_id=factory_id,
            name=body.name,
            expires_at=expires,
        )
        return FactoryTokenOut(
            id=row.id, factory_id=factory_id, environment=row.environment, token=token
        )


@router.post("/batches", response_model=BatchOut, status_code=201)
def create_batch(
    body: BatchIn, ctx: Ctx, who: Annotated[Principal, Allow(scope.BATCH_MANAGE)]
) -> BatchOut:
    """Authorise a set of devices at a factory (admin)."""
    with ctx.operator_work(who, action="batch.create", subject=f"factory:{body.factory_id}") as s:
        batch = service.create_batch(
            s,
            who,
            factory_id=body.factory_id,
            product=body.product,
            expires_at=utcnow() + dt.timedelta(hours=body.expires_in_hours),
            device_ids=body.device_ids,
            range_prefix=body.range_prefix,
            range_start=body.range_start,
            range_end=body.range_end,
            range_width=body.range_width,
            max_count=body.max_count,
        )
        return BatchOut.of(batch)


@router.get("/batches", response_model=Page[BatchOut])
def list_batches(
    ctx: Ctx,
    who: Annotated[Principal, Allow(scope.BATCH_READ)],
    cursor: Cursor = None,
    limit: Limit = 100,
) -> Page[BatchOut]:
    """Batches, newest first (a factory token sees its own factory's)."""
    with ctx.db.read() as s:
        return page_of(
            service.list_batches(s, who),
            cursor=cursor,
            limit=limit,
            key=lambda b: (b.id,),
            kinds=(int,),
            shape=BatchOut.of,
            descending=True,
        )


@router.post("/batches/{batch_id}/status", response_model=BatchOut)
def close_batch(
    batch_id: DbId,
    body: BatchStatusIn,
    ctx: Ctx,
    who: Annotated[Principal, Allow(scope.BATCH_MANAGE)],
) -> BatchOut:
    """Close a batch (admin)."""
    with ctx.operator_work(who, action="batch.close", subject=f"batch:{batch_id}") as s:
        return BatchOut.of(service.close_batch(s, who, batch_id))


@router.post("/batches/{batch_id}/enroll", response_model=ProvisionOut)
def provision(
    batch_id: DbId,
    body: ProvisionIn,
    request: Request,
    ctx: Ctx,
    who: Annotated[Principal, Allow(scope.DEVICE_ENROLL)],
) -> ProvisionOut:
    """Enroll devices of this batch (one or up to 1,000); each is issued or refused alone."""
    items = [
        enroll.ProvisionItem(device_id=i.device_id, csr=i.csr.encode(), attestation=i.attestation)
        for i in body.items
    ]
    source = request.client.host if request.client else None
    with ctx.refusals_recorded(
        actor=who.actor,
        action="certificate.issue",
        subject=f"batch:{batch_id}",
        tenant_id=who.tenant_id,
    ):
        results = enroll.provision(
            ctx.db, ctx.pki, who, batch_id=batch_id, items=items, source=source
        )
    out = []
    for r in results:
        entry = ProvisionItemOut(device_id=r.device_id, key_origin=r.key_origin)
        if r.issued is not None:
            entry.certificate = certificate_out(r.issued)
        else:
            if r.error is None:
                raise RuntimeError("broken invariant, expected: r.error is not None")
            entry.problem = ItemProblem.model_validate(
                problems.as_dict(r.error, category=r.category)
            )
        out.append(entry)
    issued = sum(1 for r in results if r.issued is not None)
    return ProvisionOut(
        issued=issued,
        refused=len(results) - issued,
        items=out,
        issuers=_issuers(ctx, who, {r.issued.ca_id for r in results if r.issued is not None}),
    )


def _issuers(ctx: Ctx, who: Principal, ca_ids: set[int]) -> dict[str, str]:
    """The certificates (PEM) of the CAs that issued an enrollment's certificates."""
    out: dict[str, str] = {}
    if not ca_ids:
        return out
    with ctx.db.read() as s:
        for ca_id in sorted(ca_ids):
            ca = ca_service.get_ca(s, tenant_id=who.tenant_id, ca_id=ca_id)
            if ca.certificate_pem is not None:
                out[str(ca_id)] = ca.certificate_pem
    return out


@router.post("/attestation-roots", status_code=201, response_model=RootOut)
def register_root(
    body: RootIn, ctx: Ctx, who: Annotated[Principal, Allow(scope.ATTESTATION_ROOT_MANAGE)]
) -> RootOut:
    """Trust a chip vendor's attestation root (admin)."""
    with ctx.operator_work(
        who, action="attestation-root.register", subject=f"root:{body.name[:50]}"
    ) as s:
        root = service.register_root(
            s, who, name=body.name, certificate_pem=body.certificate.encode()
        )
        return RootOut(id=root.id, name=root.name, sha256=root.fingerprint)


@router.get("/attestation-roots", response_model=Page[RootOut])
def list_roots(
    ctx: Ctx,
    who: Annotated[Principal, Allow(scope.ATTESTATION_ROOT_READ)],
    cursor: Cursor = None,
    limit: Limit = 100,
) -> Page[RootOut]:
    """Trusted vendor roots."""
    with ctx.db.read() as s:
        return page_of(
            service.list_roots(s, who),
            cursor=cursor,
            limit=limit,
            key=lambda r: (r.id,),
            kinds=(int,),
            shape=lambda r: RootOut(id=r.id, name=r.name, sha256=r.fingerprint),
        )


@router.post("/nonces", status_code=201, response_model=NoncesOut)
def nonces(
    ctx: Ctx,
    who: Annotated[Principal, Allow(scope.NONCE_ISSUE)],
    count: int = Query(default=1, ge=1, le=1000),
) -> NoncesOut:
    """Single-use challenges for key attestation statements (valid 5 minutes)."""
    with ctx.operator_work(who, action="nonce.issue", subject="nonces") as s:
        rows = service.issue_nonce(s, who, count=count)
        return NoncesOut(nonces=[r.nonce for r in rows], expires_at=rows[0].expires_at)


@router.post("/reprovision-grants", status_code=201, response_model=GrantOut)
def grant(
    body: GrantIn, ctx: Ctx, who: Annotated[Principal, Allow(scope.DEVICE_REPROVISION)]
) -> GrantOut:
    """Allow one more provisioning of a device (security, admin)."""
    with ctx.operator_work(
        who, action="device.reprovision-grant", subject=f"device:{body.device_id}"
    ) as s:
        g = service.grant_reprovision(s, who, device_id=body.device_id, reason=body.reason)
        return GrantOut(id=g.id, device_id=g.device_id, expires_at=g.expires_at)


@router.get(
    "/attempts",
    response_model=Page[AttemptOut],
    responses={
        200: {
            "description": "a page of records; with format=csv the page as CSV, and the "
            "next page in the Link header (rel=next)",
            "content": {"text/csv": {"schema": {"type": "string"}}},
        }
    },
)
def attempts(
    request: Request,
    ctx: Ctx,
    who: Annotated[Principal, Allow(scope.ENROLLMENT_RECORDS_READ)],
    format: Literal["json", "csv"] = "json",
    factory_id: DbId | None = None,
    batch_id: DbId | None = None,
    cursor: Cursor = None,
    limit: Annotated[
        int, Query(ge=1, le=service.MAX_ATTEMPTS_PAGE, description="items per page at most")
    ] = 1000,
) -> Any:
    """Every enrollment attempt, oldest first (JSON, or CSV with ``format=csv``)."""
    after = decode(cursor, int)
    with ctx.db.read() as s:
        rows = [
            service.attempt_record(a)
            for a in service.list_attempts(
                s,
                who,
                factory_id=factory_id,
                batch_id=batch_id,
                after_id=int(after[0]) if after else 0,
                limit=limit + 1,
            )
        ]
    found = page(rows, limit=limit, key=lambda r: (int(r["id"]),), shape=AttemptOut.model_validate)
    if format == "csv":
        headers = {}
        if found.next is not None:
            url = request.url.include_query_params(cursor=found.next)
            headers["Link"] = f'<{url.path}?{url.query}>; rel="next"'
        return Response(service.attempts_csv(rows[:limit]), media_type="text/csv", headers=headers)
    return found


@router.get("/counters", response_model=Page[CounterOut])
def counters(
    ctx: Ctx,
    who: Annotated[Principal, Allow(scope.ENROLLMENT_RECORDS_READ)],
    cursor: Cursor = None,
    limit: Limit = 100,
) -> Page[CounterOut]:
    """Abnormal-enrollment signals per factory and batch."""
    with ctx.db.read() as s:
        return page_of(
            service.counters(s, who),
            cursor=cursor,
            limit=limit,
            # Ids start at 1: 0 stands for "none" (attempts outside any batch).
            key=lambda c: (c["factory_id"] or 0, c["batch_id"] or 0),
            kinds=(int, int),
            shape=CounterOut.model_validate,
        )
