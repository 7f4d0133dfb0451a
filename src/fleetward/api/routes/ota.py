"""REST routes of the ota domain, and the TUF repository as a stock client reads it."""

from __future__ import annotations

import datetime as dt
import json
from typing import Annotated, Any, Literal

from fastapi import APIRouter, File, Form, Request, UploadFile
from fastapi.responses import FileResponse, Response
from pydantic import BaseModel, Field

from fleetward import vulns
from fleetward.api import problems
from fleetward.api.deps import Allow, Ctx
from fleetward.api.pagination import Cursor, Limit, Page, page_of
from fleetward.api.params import Counter, DbId
from fleetward.comms.commands import BrokerUnavailableError, CommandSender
from fleetward.errors import InvalidInputError
from fleetward.ota import Release, campaigns, repository, service
from fleetward.ota import release as checks
from fleetward.ota.blobs import LocalBlobStore
from fleetward.ota.rollout import GatePolicy
from fleetward.tenancy import scope
from fleetward.tenancy.roles import Principal

router = APIRouter(prefix="/api/v1", tags=["ota"], responses=problems.OPERATOR)
public = APIRouter(tags=["tuf"], responses=problems.PUBLIC)


def blobs(ctx: Any) -> LocalBlobStore:
    """The installation's artifact store."""
    return LocalBlobStore(ctx.settings.home / "blobs")


class ReleaseOut(BaseModel):
    """A release and its review gate."""

    id: int
    product: str
    version: str
    filename: str
    sha256: str
    length: int
    hardware: list[str]
    state: str
    approvals: list[str]
    gate: list[str] = Field(description="what still blocks deployment (empty: passed)")
    target: str
    created_by: str
    created_at: dt.datetime


def release_out(s: Any, r: Release) -> ReleaseOut:
    """Shape a release, in the caller's session (the gate reads the threshold)."""
    findings = list(service.gate(s, r).findings) if r.state == "pending" else []
    return ReleaseOut(
        id=r.id,
        product=r.product,
        version=r.version,
        filename=r.filename,
        sha256=r.sha256,
        length=r.length,
        hardware=json.loads(r.hardware),
        state=r.state,
        approvals=json.loads(r.approvals),
        gate=findings,
        target=f"{r.product}/{r.version}/{r.filename}",
        created_by=r.created_by,
        created_at=r.created_at,
    )


class ProductIn(BaseModel):
    """A product's release role."""

    threshold: int = Field(default=1, ge=1, le=5)


class ProductOut(BaseModel):
    """A product's release role."""

    product: str
    threshold: int
    created: bool = Field(description="false: the role existed already (left as it was)")


class RootRotationOut(BaseModel):
    """The root version a rotation published."""

    root_version: int


class TufSignature(BaseModel):
    """One signature of a TUF metadata file."""

    keyid: str
    sig: str


class TufMetadata(BaseModel):
    """A TUF metadata file (the TUF specification defines ``signed`` per role)."""

    signed: dict[str, Any]
    signatures: list[TufSignature]


class WithdrawIn(BaseModel):
    """Why a release is withdrawn."""

    reason: str = Field(default="", max_length=500)


@router.post("/ota/products/{product}", status_code=201, response_model=ProductOut)
def create_product(
    product: str, body: ProductIn, ctx: Ctx, who: Annotated[Principal, Allow(scope.OTA_PRODUCT)]
) -> ProductOut:
    """Delegate a product to its own TUF role with ``threshold`` release signers."""
    with ctx.operator_work(who, action="ota.product.create", subject=f"product:{product}") as s:
        created = repository.ensure_product(
            s, ctx.pki.keyring, who, product, threshold=body.threshold
        )
    return ProductOut(product=product, threshold=body.threshold, created=created)


class RotateIn(BaseModel):
    """A root rotation."""

    keys: int = Field(default=3, ge=1, le=9)
    threshold: int = Field(default=2, ge=1, le=9)


@router.post("/ota/root/rotations", response_model=RootRotationOut)
def rotate_root(
    body: RotateIn, ctx: Ctx, who: Annotated[Principal, Allow(scope.OTA_ROOT_ROTATE)]
) -> RootRotationOut:
    """New root keys (and online keys), signed by the old and the new root keys."""
    with ctx.operator_work(who, action="ota.root.rotate", subject="root") as s:
        version = repository.rotate_root(
            s, ctx.pki.keyring, who, keys=body.keys, threshold=body.threshold
        )
    return RootRotationOut(root_version=version)


@router.post("/releases", response_model=ReleaseOut, status_code=201)
def create_release(
    ctx: Ctx,
    who: Annotated[Principal, Allow(scope.RELEASE_MANAGE)],
    product: Annotated[str, Form(max_length=64)],
    version: Annotated[str, Form(max_length=32)],
    hardware: Annotated[str, Form(max_length=4096, description="comma-separated ids")],
    artifact: Annotated[UploadFile, File()],
    measurements: Annotated[str, Form(max_length=4096, description="JSON: stage -> sha256")] = "{}",
    sbom: Annotated[UploadFile | None, File()] = None,
) -> ReleaseOut:
    """Upload an artifact with its SBOM and reference measurements (state ``pending``)."""
    try:
        parsed = json.loads(measurements)
    except ValueError as exc:
        raise InvalidInputError(f"measurements are not JSON: {exc}") from exc
    sbom_bytes = sbom.file.read(checks.MAX_SBOM_BYTES + 1) if sbom is not None else None
    with ctx.operator_work(who, action="ota.release.create", subject=f"product:{product}") as s:
        r = service.create_release(
            s,
            ctx.pki.keyring,
            blobs(ctx),
            who,
            product=product,
            version=version,
            filename=artifact.filename or "firmware.bin",
            artifact=artifact.file,
            hardware=[h.strip() for h in hardware.split(",") if h.strip()],
            sbom=sbom_bytes,
            measurements=parsed,
        )
        # The SBOM's components are indexed and matched in the same transaction.
        vulns.index_release(s, r, now=r.created_at)
        return release_out(s, r)


@router.get("/releases", response_model=Page[ReleaseOut])
def list_releases(
    ctx: Ctx,
    who: Annotated[Principal, Allow(scope.RELEASE_READ)],
    product: str | None = None,
    cursor: Cursor = None,
    limit: Limit = 100,
) -> Page[ReleaseOut]:
    """The tenant's releases, newest first."""
    with ctx.db.read() as s:
        return page_of(
            service.list_releases(s, who, product=product),
            cursor=cursor,
            limit=limit,
            key=lambda r: (r.id,),
            kinds=(int,),
            shape=lambda r: release_out(s, r),
            descending=True,
        )


@router.get("/releases/{release_id}", response_model=ReleaseOut)
def get_release(
    release_id: DbId, ctx: Ctx, who: Annotated[Principal, Allow(scope.RELEASE_READ)]
) -> ReleaseOut:
    """One release with its review gate."""
    with ctx.db.read() as s:
        return release_out(s, service.get_release(s, who, release_id))


@router.post("/releases/{release_id}/approvals", response_model=ReleaseOut)
def approve(
    release_id: DbId, ctx: Ctx, who: Annotated[Principal, Allow(scope.RELEASE_APPROVE)]
) -> ReleaseOut:
    """One release signer's approval; at the threshold the release is signed."""
    with ctx.operator_work(who, action="ota.release.approve", subject=f"release:{release_id}") as s:
        return release_out(s, service.approve_release(s, ctx.pki.keyring, who, release_id))


@router.post("/releases/{release_id}/withdrawal", response_model=ReleaseOut)
def withdraw(
    release_id: DbId,
    body: WithdrawIn,
    ctx: Ctx,
    who: Annotated[Principal, Allow(scope.RELEASE_MANAGE)],
) -> ReleaseOut:
    """Remove a release from the product's targets."""
    with ctx.operator_work(
        who, action="ota.release.withdraw", subject=f"release:{release_id}"
    ) as s:
        r = service.withdraw_release(s, ctx.pki.keyring, who, release_id, reason=body.reason)
        return release_out(s, r)


@public.get(
    "/tuf/{tenant}/metadata/{filename}",
    response_class=Response,
    responses={200: {"model": TufMetadata, "description": "the metadata file, as signed"}},
)
def metadata(tenant: str, filename: str, ctx: Ctx) -> Response:
    """TUF metadata (``timestamp.json``, ``<version>.<role>.json``)."""
    with ctx.db.read() as s:
        body = repository.metadata_bytes(s, tenant, filename)
    return Response(content=body, media_type="application/json")


@public.get(
    "/tuf/{tenant}/targets/{path:path}",
    response_class=FileResponse,
    responses={
        200: {
            "description": "the target file",
            "content": {
                "application/octet-stream": {"schema": {"type": "string", "format": "binary"}}
            },
        }
    },
)
def target(tenant: str, path: str, ctx: Ctx) -> FileResponse:
    """A target file by its consistent-snapshot path (``<dir>/<sha256>.<name>``)."""
    with ctx.db.read() as s:
        r = repository.release_for_target(s, tenant, path)
    return FileResponse(blobs(ctx).path(r.sha256), media_type="application/octet-stream")


class GateIn(BaseModel):
    """A wave's health gate."""

    min_success_ratio: float = Field(default=0.95, ge=0, le=1)
    max_failure_ratio: float = Field(default=0.05, ge=0, le=1)
    min_sample: Counter = Field(default=1, ge=1)
    time_limit_seconds: float = Field(default=3600.0, gt=0)
    require_attestation: bool = False


class CampaignIn(BaseModel):
    """A campaign: a deployable release to a cohort, in waves."""

    release_id: DbId
    labels: dict[str, str] = Field(default_factory=dict)
    waves: list[float] | None = Field(default=None, max_length=20)
    exponential: int | None = Field(default=None, ge=1, le=20)
    gate: GateIn = Field(default_factory=GateIn)
    emergency: bool = False


class WaveOut(BaseModel):
    """One wave's progress."""

    wave: int
    percent: float
    size: int
    succeeded: int
    failed: int


class CampaignOut(BaseModel):
    """A campaign and its waves."""

    id: int
    release_id: int
    state: str
    current_wave: int
    emergency: bool
    approvals: list[str]
    reason: str
    devices: int
    waves: list[WaveOut]


def campaign_out(s: Any, c: Any) -> CampaignOut:
    """Shape a campaign with per-wave counts."""
    percents = json.loads(c.waves)
    waves = []
    for i, pct in enumerate(percents):
        counts = campaigns.wave_counts(s, c.id, i)
        waves.append(
            WaveOut(
                wave=i,
                percent=pct,
                size=counts.size,
                succeeded=counts.succeeded,
                failed=counts.failed,
            )
        )
    return CampaignOut(
        id=c.id,
        release_id=c.release_id,
        state=c.state,
        current_wave=c.current_wave,
        emergency=c.emergency,
        approvals=json.loads(c.approvals),
        reason=c.reason,
        devices=c.devices,
        waves=waves,
    )


@router.post("/campaigns", response_model=CampaignOut, status_code=201)
def create_campaign(
    body: CampaignIn, ctx: Ctx, who: Annotated[Principal, Allow(scope.CAMPAIGN_MANAGE)]
) -> CampaignOut:
    """Plan a campaign; it starts at once (emergency: after two security approvals)."""
    with ctx.operator_work(who, action="ota.campaign.create", subject="campaign") as s:
        c = campaigns.create_campaign(
            s,
            who,
            release_id=body.release_id,
            labels=body.labels,
            waves=body.waves,
            exponential=body.exponential,
            gate=GatePolicy(**body.gate.model_dump()),
            emergency=body.emergency,
        )
        return campaign_out(s, c)


@router.get("/campaigns/{campaign_id}", response_model=CampaignOut)
def get_campaign(
    campaign_id: DbId, ctx: Ctx, who: Annotated[Principal, Allow(scope.CAMPAIGN_READ)]
) -> CampaignOut:
    """A campaign with its waves."""
    with ctx.db.read() as s:
        return campaign_out(s, campaigns.get_campaign(s, who, campaign_id))


@router.post("/campaigns/{campaign_id}/approvals", response_model=CampaignOut)
def approve_campaign(
    campaign_id: DbId, ctx: Ctx, who: Annotated[Principal, Allow(scope.CAMPAIGN_APPROVE)]
) -> CampaignOut:
    """A security operator's approval of an emergency campaign."""
    with ctx.operator_work(
        who, action="ota.campaign.approve", subject=f"campaign:{campaign_id}"
    ) as s:
        return campaign_out(s, campaigns.approve(s, who, campaign_id))


class CampaignStateIn(BaseModel):
    """``running``: accept the halted wave and go on; ``aborted``: stop,
    withdraw the release and tell devices in flight to fall back."""

    state: Literal["running", "aborted"]


@router.post("/campaigns/{campaign_id}/state", response_model=CampaignOut)
def set_campaign_state(
    campaign_id: DbId,
    body: CampaignStateIn,
    request: Request,
    ctx: Ctx,
    who: Annotated[Principal, Allow(scope.CAMPAIGN_MANAGE)],
) -> CampaignOut:
    """Resume a halted campaign (``running``) or abort it (``aborted``)."""
    if body.state == "running":
        with ctx.operator_work(
            who, action="ota.campaign.resume", subject=f"campaign:{campaign_id}"
        ) as s:
            return campaign_out(s, campaigns.resume(s, who, campaign_id))
    with ctx.operator_work(
        who, action="ota.campaign.abort", subject=f"campaign:{campaign_id}"
    ) as s:
        fallbacks = campaigns.abort(s, ctx.pki.keyring, who, campaign_id)
        out = campaign_out(s, campaigns.get_campaign(s, who, campaign_id))
    send_offers(request, ctx, fallbacks)
    return out


def send_offers(request: Request, ctx: Any, offers: list[campaigns.Offer]) -> int:
    """Publish offers (or fallbacks) through the broker; 0 when none is configured."""
    if not offers:
        return 0
    try:
        # Offers go out as the broker identity "ota" (commands are another's).
        sender = getattr(request.app.state, "ota_sender", None)
        if sender is None:
            sender = request.app.state.ota_sender = CommandSender(ctx.settings.home, identity="ota")
        for offer in offers:
            sender.send(offer.topic, json.dumps(offer.payload).encode())
    except BrokerUnavailableError:
        return 0  # the driver re-sends pending offers; fallbacks are also in the audit log
    return len(offers)
