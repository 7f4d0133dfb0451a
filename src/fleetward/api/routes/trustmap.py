"""REST routes of trust maps (register, check, threat model) and releases' controls reviews."""

from __future__ import annotations

import dataclasses
import datetime as dt
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Path, Query, Response
from pydantic import BaseModel, Field

from fleetward import ota
from fleetward.api import problems
from fleetward.api.deps import Allow, Ctx
from fleetward.api.pagination import Cursor, Limit, Page, page_of
from fleetward.api.params import DB_INT_MAX, DbId
from fleetward.store import utcnow
from fleetward.tenancy import scope
from fleetward.tenancy.roles import Principal
from fleetward.trustmap import conformance, evidence, maps, review
from fleetward.trustmap import service as live
from fleetward.trustmap.schema import MAX_MAP_BYTES
from fleetward.trustmap.threats import to_dot, to_json, to_markdown

router = APIRouter(prefix="/api/v1", tags=["trustmap"], responses=problems.OPERATOR)

Product = Annotated[str, Path(pattern=maps.PRODUCT.pattern, max_length=64)]


class MapIn(BaseModel):
    """A trust map document (YAML or JSON text; docs/trustmap.md)."""

    document: str = Field(min_length=1, max_length=MAX_MAP_BYTES)


class MapOut(BaseModel):
    """A registered map version."""

    product: str
    version: int
    digest: str
    created_by: str
    created_at: dt.datetime

    @classmethod
    def of(cls, r: Any) -> MapOut:
        """From a map row."""
        return cls(
            product=r.product, version=r.id, digest=r.digest, created_by=r.created_by,
            created_at=r.created_at,
        )  # fmt: skip


class MapDocumentOut(MapOut):
    """A registered map version with its document."""

    document: str


class DriftOut(BaseModel):
    """A difference between the map and the live system, naming its objects."""

    kind: str
    severity: str
    subject: str
    message: str
    objects: list[str]
    control: str | None = None


class CheckOut(BaseModel):
    """A check of a product's current map against the live system."""

    product: str
    map_digest: str
    drifts: list[DriftOut]
    confirmed: list[str]
    checked: list[str]
    checked_at: dt.datetime

    @classmethod
    def of(cls, c: maps.StoredCheck) -> CheckOut:
        """From a stored check."""
        return cls(**dataclasses.asdict(c))


class ThreatOut(BaseModel):
    """One threat: its STRIDE category, score, and the controls that mitigate it."""

    id: str
    element: str
    stride: str
    title: str
    plausibility: int
    impact: int
    score: int
    residual: int
    high: bool
    mitigations: list[str]
    unconfirmed: list[str]
    missing: list[str]
    platform: str  # what fleetward itself does against it, whatever the map says


class ControlOut(BaseModel):
    """A control: declared by the map, confirmed by the live checks."""

    description: str
    declared: bool
    confirmed: bool


class ThreatModelOut(BaseModel):
    """The STRIDE threat model generated from the map (residual high threats first)."""

    product: str
    checked: bool
    controls: dict[str, ControlOut]
    threats: list[ThreatOut]


class ConformanceOut(BaseModel):
    """ETSI EN 303 645 and CRA Annex I evidence as of an audit entry (docs/conformance.md)."""

    format: str
    tenant: str
    product: str | None
    as_of: dict[str, Any]
    audit_chain: dict[str, Any]
    reproducibility: str
    summary: dict[str, Any]
    requirements: list[dict[str, Any]]
    evidence: dict[str, Any]


class ReviewItemOut(BaseModel):
    """One checklist line of a controls review."""

    name: str
    ok: bool
    detail: str


class ReviewOut(BaseModel):
    """A controls review of a release (computed for one of its campaigns, or a waiver)."""

    id: int
    release_id: int
    campaign_id: int
    outcome: Literal["passed", "failed", "waived"]
    items: list[ReviewItemOut]
    map_digest: str | None
    actor: str
    reason: str
    created_at: dt.datetime

    @classmethod
    def of(cls, r: Any) -> ReviewOut:
        """From a review row."""
        return cls(**ota.review_dict(r))


class WaiverIn(BaseModel):
    """Why the failed items are accepted (kept with the release, audited)."""

    reason: str = Field(min_length=1, max_length=2000)


@router.put("/trustmap/maps/{product}", response_model=MapOut, status_code=201)
def register_map(
    product: Product,
    body: MapIn,
    ctx: Ctx,
    who: Annotated[Principal, Allow(scope.TRUSTMAP_MANAGE)],
) -> MapOut:
    """Register a new version of the product's trust map (validated; the newest is current)."""
    # A constant subject: refusals are counted per caller, not per product name.
    with ctx.operator_work(who, action="trustmap.register", subject="trustmap:*") as s:
        return MapOut.of(maps.register_map(s, who, product=product, document=body.document))


@router.get("/trustmap/maps", response_model=Page[MapOut])
def list_maps(
    ctx: Ctx,
    who: Annotated[Principal, Allow(scope.TRUSTMAP_READ)],
    cursor: Cursor = None,
    limit: Limit = 100,
) -> Page[MapOut]:
    """The tenant's current maps, one per product."""
    with ctx.db.read() as s:
        rows = maps.list_maps(s, who)
        return page_of(
            rows, cursor=cursor, limit=limit, key=lambda r: (r.product,), kinds=(str,),
            shape=MapOut.of,
        )  # fmt: skip


@router.get("/trustmap/maps/{product}", response_model=MapDocumentOut)
def get_map(
    product: Product, ctx: Ctx, who: Annotated[Principal, Allow(scope.TRUSTMAP_READ)]
) -> MapDocumentOut:
    """The product's current map with its document."""
    with ctx.db.read() as s:
        r = maps.get_map(s, who, product)
        return MapDocumentOut(**MapOut.of(r).model_dump(), document=r.document)


@router.post("/trustmap/maps/{product}/checks", response_model=CheckOut)
def check_map(
    product: Product, ctx: Ctx, who: Annotated[Principal, Allow(scope.TRUSTMAP_MANAGE)]
) -> CheckOut:
    """Check the product's current map against the live system now (drifts raise alerts)."""
    with ctx.operator_work(who, action="trustmap.check", subject="trustmap:*") as s:
        return CheckOut.of(maps.check_product(s, who, product))


@router.get("/trustmap/maps/{product}/checks/latest", response_model=CheckOut)
def latest_check(
    product: Product, ctx: Ctx, who: Annotated[Principal, Allow(scope.TRUSTMAP_READ)]
) -> CheckOut:
    """The latest check of the product's map (the worker's or an operator's)."""
    with ctx.db.read() as s:
        return CheckOut.of(maps.last_check(s, who, product))


@router.get(
    "/trustmap/maps/{product}/threats",
    response_model=ThreatModelOut,
    responses={
        200: {
            "content": {
                "text/markdown": {"schema": {"type": "string"}},
                "text/vnd.graphviz": {"schema": {"type": "string"}},
            }
        }
    },
)
def threat_model(
    product: Product,
    ctx: Ctx,
    who: Annotated[Principal, Allow(scope.TRUSTMAP_READ)],
    format: Annotated[Literal["json", "markdown", "dot"], Query()] = "json",
) -> Any:
    """The threat model of the product's current map, the live-confirmed controls as mitigations."""
    with ctx.db.read() as s:
        row = maps.get_map(s, who, product)
        m = maps.parsed(row)
        if format == "dot":
            return Response(to_dot(m), media_type="text/vnd.graphviz")
        tm = live.threat_model(s, tenant_id=who.tenant_id, map_text=row.document, now=utcnow())
    if format == "markdown":
        return Response(to_markdown(tm), media_type="text/markdown")
    return ThreatModelOut.model_validate(to_json(tm))


@router.get(
    "/trustmap/conformance",
    response_model=ConformanceOut,
    responses={200: {"content": {"text/markdown": {"schema": {"type": "string"}}}}},
)
def conformance_report(
    ctx: Ctx,
    who: Annotated[Principal, Allow(scope.AUDIT_READ)],
    product: Annotated[str | None, Query(pattern=maps.PRODUCT.pattern, max_length=64)] = None,
    as_of: Annotated[int | None, Query(ge=1, le=DB_INT_MAX)] = None,
    format: Annotated[Literal["json", "markdown"], Query()] = "json",
) -> Any:
    """Conformance evidence from the audit log (``as_of``: rebuild an earlier report)."""
    with ctx.db.read() as s:
        found = evidence.gather(
            s, tenant_id=who.tenant_id, product=product, as_of=as_of, settings=ctx.settings,
            checkpoint_key=ctx.checkpoint_public_key(),
        )  # fmt: skip
    report = conformance.evaluate(found)
    if format == "markdown":
        return Response(conformance.to_markdown(report), media_type="text/markdown")
    return ConformanceOut.model_validate(conformance.to_dict(report))


@router.get("/releases/{release_id}/reviews", response_model=Page[ReviewOut])
def list_reviews(
    release_id: DbId,
    ctx: Ctx,
    who: Annotated[Principal, Allow(scope.RELEASE_READ)],
    cursor: Cursor = None,
    limit: Limit = 100,
) -> Page[ReviewOut]:
    """The release's controls reviews, newest first (the last 100)."""
    with ctx.db.read() as s:
        rows = ota.reviews_of_release(s, who, release_id)
        return page_of(
            rows, cursor=cursor, limit=limit, key=lambda r: (r.id,), kinds=(int,),
            shape=ReviewOut.of, descending=True,
        )  # fmt: skip


@router.post("/campaigns/{campaign_id}/reviews", response_model=ReviewOut)
def run_review(
    campaign_id: DbId, ctx: Ctx, who: Annotated[Principal, Allow(scope.RELEASE_REVIEW)]
) -> ReviewOut:
    """Run the controls review of the campaign's release now (recorded when it changed)."""
    with ctx.operator_work(who, action="ota.review", subject=f"campaign:{campaign_id}") as s:
        return ReviewOut.of(review.run_review(s, who, campaign_id))


@router.post("/campaigns/{campaign_id}/reviews/waiver", response_model=ReviewOut, status_code=201)
def waive_review(
    campaign_id: DbId,
    body: WaiverIn,
    ctx: Ctx,
    who: Annotated[Principal, Allow(scope.RELEASE_REVIEW_WAIVE)],
) -> ReviewOut:
    """A security operator waives the campaign's failed review, with a reason (audited)."""
    with ctx.operator_work(who, action="ota.review.waive", subject=f"campaign:{campaign_id}") as s:
        return ReviewOut.of(review.waive(s, who, campaign_id, reason=body.reason))
