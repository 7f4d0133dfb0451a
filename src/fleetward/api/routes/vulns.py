"""REST routes of vulnerability operations: imports, findings, triage, VEX, reviews, CRA cases."""

from __future__ import annotations

import datetime as dt
import json
import math
import shutil
import tempfile
from pathlib import Path
from typing import Annotated, Any, Literal, get_args

from fastapi import APIRouter, File, Form, Query, Response, UploadFile
from pydantic import BaseModel, Field

from fleetward import vulns
from fleetward.api import problems
from fleetward.api.deps import Allow, Ctx
from fleetward.api.pagination import Cursor, Limit, Page, decode, page, page_of
from fleetward.api.params import DbId
from fleetward.errors import InvalidInputError
from fleetward.response import service as incidents
from fleetward.tenancy import scope
from fleetward.tenancy.roles import Principal
from fleetward.vulns.cra import REPORT_KINDS
from fleetward.vulns.records import ANALYSIS_STATES, JUSTIFICATIONS
from fleetward.vulns.service import MAX_DETAIL_CHARS

router = APIRouter(prefix="/api/v1/vulns", tags=["vulns"], responses=problems.OPERATOR)

FeedKind = Literal["osv", "nvd", "kev", "epss"]
Analysis = Literal["in_triage", "exploitable", "not_affected", "false_positive", "resolved"]
Justification = Literal[
    "code_not_present",
    "code_not_reachable",
    "requires_configuration",
    "requires_dependency",
    "requires_environment",
    "protected_by_compiler",
    "protected_at_runtime",
    "protected_at_perimeter",
    "protected_by_mitigating_control",
]
ReportKind = Literal["early-warning", "notification", "final"]
_SUFFIXES = (".zip", ".json", ".csv", ".gz")
# The OpenAPI document spells the choices out; they are the domain's, checked at import.
for _literal, _values in (
    (FeedKind, vulns.FEED_KINDS),
    (Analysis, ANALYSIS_STATES),
    (Justification, JUSTIFICATIONS),
    (ReportKind, REPORT_KINDS),
):
    if get_args(_literal) != tuple(_values):
        raise RuntimeError(f"{_literal} must list {_values}")


class ImportOut(BaseModel):
    """What an import did: counts and the reason of every skipped record (capped)."""

    id: int
    kind: str
    name: str
    total: int
    added: int
    updated: int
    unchanged: int
    skipped: int
    problems: list[dict[str, str]]
    findings_new: int
    findings_closed: int

    @classmethod
    def of(cls, r: Any) -> ImportOut:
        """From an import row or report."""
        probs = r.problems if isinstance(r.problems, list) else json.loads(r.problems)
        return cls(
            id=r.id, kind=r.kind, name=r.name, total=r.total, added=r.added, updated=r.updated,
            unchanged=r.unchanged, skipped=r.skipped, problems=probs,
            findings_new=r.findings_new, findings_closed=r.findings_closed,
        )  # fmt: skip


class FindingOut(BaseModel):
    """A finding: the advisory, the component and release, priority and exposure."""

    id: int
    advisory: str
    aliases: list[str]
    summary: str
    severity: str
    cvss_score: float | None
    release_id: int
    product: str
    version: str
    component: str
    component_version: str | None
    purl: str | None
    cpe: str | None
    via: str
    reason: str
    fixed_versions: list[str]
    state: str
    close_reason: str | None
    analysis: str
    justification: str | None
    detail: str
    exploited: bool
    priority: str
    rank: float
    reasons: list[str]
    due_at: dt.datetime
    overdue: bool
    devices: int
    fix_release_id: int | None
    campaign_id: int | None
    first_seen: dt.datetime
    closed_at: dt.datetime | None

    @classmethod
    def of(cls, v: vulns.FindingView) -> FindingOut:
        """From the service's view."""
        f, a, c, r = v.finding, v.advisory, v.component, v.release
        return cls(
            id=f.id, advisory=f.advisory_id, aliases=json.loads(a.aliases), summary=a.summary,
            severity=a.severity, cvss_score=a.cvss_score, release_id=r.id, product=r.product,
            version=r.version, component=c.name, component_version=c.version, purl=c.purl,
            cpe=c.cpe, via=f.via, reason=f.reason, fixed_versions=json.loads(f.fixed_versions),
            state=f.state, close_reason=f.close_reason, analysis=f.analysis,
            justification=f.justification, detail=f.detail, exploited=f.exploited,
            priority=f.priority, rank=f.rank, reasons=json.loads(f.reasons), due_at=f.due_at,
            overdue=v.overdue, devices=f.devices, fix_release_id=f.fix_release_id,
            campaign_id=f.campaign_id, first_seen=f.first_seen, closed_at=f.closed_at,
        )  # fmt: skip


class TriageIn(BaseModel):
    """A triage decision (CycloneDX analysis), an exploitation mark, or the fix release."""

    analysis: Analysis | None = None
    justification: Justification | None = None
    detail: str | None = Field(default=None, max_length=MAX_DETAIL_CHARS)
    exploited: bool | None = None
    fix_release_id: DbId | None = None


class PolicyIn(BaseModel):
    """Days to remediate per severity, and what counts as likely exploitation (EPSS)."""

    critical_days: int = Field(default=15, ge=1, le=3650)
    high_days: int = Field(default=30, ge=1, le=3650)
    medium_days: int = Field(default=90, ge=1, le=3650)
    low_days: int = Field(default=180, ge=1, le=3650)
    epss_high: float = Field(default=0.1, ge=0.0, le=1.0)
    epss_percentile_high: float = Field(default=0.95, ge=0.0, le=1.0)


class ReviewOut(BaseModel):
    """A review, kept with its date: the JSON body and the Markdown."""

    id: int
    period_start: dt.datetime
    created_at: dt.datetime
    created_by: str
    exposed: int
    body: dict[str, Any]
    markdown: str


class CaseIn(BaseModel):
    """Open a CRA case: the vulnerability (CVE or advisory id) an incident found exploited."""

    vulnerability: str = Field(min_length=1, max_length=128)
    incident_id: DbId | None = None


class SubmitIn(BaseModel):
    """A report sent to the authority, with the reference it gave."""

    reference: str = Field(min_length=1, max_length=200)


class CaseOut(BaseModel):
    """A CRA Article 14 case with its deadlines."""

    id: int
    vulnerability: str
    trigger: str
    state: str
    aware_at: dt.datetime
    early_warning_due: dt.datetime
    notification_due: dt.datetime
    final_due: dt.datetime | None
    fix_available_at: dt.datetime | None
    next_report: str | None
    next_due: dt.datetime | None
    submitted: dict[str, dict[str, Any]]
    findings: list[int]

    @classmethod
    def of(cls, v: vulns.CaseView) -> CaseOut:
        """From the service's view."""
        c, d = v.case, v.deadlines
        return cls(
            id=c.id, vulnerability=c.vulnerability, trigger=c.trigger, state=c.state,
            aware_at=c.aware_at, early_warning_due=d.early_warning,
            notification_due=d.notification, final_due=d.final,
            fix_available_at=c.fix_available_at, next_report=v.next[0] if v.next else None,
            next_due=v.next[1] if v.next else None, submitted=v.submitted, findings=v.findings,
        )  # fmt: skip


class DraftOut(BaseModel):
    """A report as it would be submitted now."""

    kind: str
    json_: dict[str, Any] = Field(alias="json")
    markdown: str


@router.post("/imports", response_model=ImportOut, status_code=201)
def import_feed(
    ctx: Ctx,
    who: Annotated[Principal, Allow(scope.VULN_IMPORT)],
    file: Annotated[UploadFile, File(description="OSV .json/.zip, NVD JSON, KEV JSON, EPSS CSV")],
    kind: Annotated[FeedKind | None, Form()] = None,
) -> ImportOut:
    """Import a downloaded feed file, incrementally (one transaction)."""
    name = Path(file.filename or "feed").name[:200] or "feed"
    suffix = next((s for s in _SUFFIXES if name.lower().endswith(s)), ".json")
    with tempfile.TemporaryDirectory(dir=ctx.settings.home) as tmp:
        path = Path(tmp) / f"upload{suffix}"
        with path.open("wb") as out:
            shutil.copyfileobj(file.file, out, 1 << 20)
        # A constant subject: refusals are counted per caller, not per file name.
        with ctx.operator_work(who, action="vulns.import", subject="vuln-import") as s:
            report = vulns.import_feed(s, who, path, kind=kind, name=name)
    return ImportOut.of(report)


@router.get("/imports", response_model=Page[ImportOut])
def list_imports(
    ctx: Ctx,
    who: Annotated[Principal, Allow(scope.VULN_READ)],
    cursor: Cursor = None,
    limit: Limit = 100,
) -> Page[ImportOut]:
    """The tenant's last 200 imports, newest first."""
    with ctx.db.read() as s:
        rows = vulns.list_imports(s, who, limit=200)
        return page_of(
            rows, cursor=cursor, limit=limit, key=lambda r: (r.id,), kinds=(int,),
            shape=ImportOut.of, descending=True,
        )  # fmt: skip


@router.get("/imports/{import_id}", response_model=ImportOut)
def get_import(
    import_id: DbId, ctx: Ctx, who: Annotated[Principal, Allow(scope.VULN_READ)]
) -> ImportOut:
    """One import and its report."""
    with ctx.db.read() as s:
        return ImportOut.of(vulns.get_import(s, who, import_id))


def _rank_cursor(cursor: str | None) -> tuple[float, int] | None:
    key = decode(cursor, str, int)
    if key is None:
        return None
    try:
        rank = float(key[0])
    except ValueError as exc:
        raise InvalidInputError("cursor: not a cursor this list gave out") from exc
    if not math.isfinite(rank):
        raise InvalidInputError("cursor: not a cursor this list gave out")
    return rank, int(key[1])


@router.get("/findings", response_model=Page[FindingOut])
def list_findings(
    ctx: Ctx,
    who: Annotated[Principal, Allow(scope.VULN_READ)],
    state: Literal["open", "closed"] | None = "open",
    priority: Literal["P1", "P2", "P3", "P4"] | None = None,
    release_id: DbId | None = None,
    product: Annotated[str | None, Query(max_length=64)] = None,
    advisory: Annotated[str | None, Query(max_length=128)] = None,
    overdue: bool = False,
    cursor: Cursor = None,
    limit: Limit = 100,
) -> Page[FindingOut]:
    """Findings, most urgent first; ``overdue=true`` for those past their due date."""
    with ctx.db.read() as s:
        rows = vulns.list_findings(
            s, who, state=state, priority=priority, release_id=release_id, product=product,
            advisory=advisory, overdue=overdue, after=_rank_cursor(cursor), limit=limit + 1,
        )  # fmt: skip
        return page(
            rows, limit=limit, key=lambda v: (repr(v.finding.rank), v.finding.id),
            shape=FindingOut.of,
        )  # fmt: skip


@router.get("/findings/{finding_id}", response_model=FindingOut)
def get_finding(
    finding_id: DbId, ctx: Ctx, who: Annotated[Principal, Allow(scope.VULN_READ)]
) -> FindingOut:
    """One finding."""
    with ctx.db.read() as s:
        return FindingOut.of(vulns.get_finding(s, who, finding_id))


class ExposureOut(BaseModel):
    """Who runs a finding's release now."""

    finding: int
    product: str
    version: str
    devices: int
    environments: dict[str, int]
    labels: dict[str, dict[str, int]] = Field(description="label -> value -> devices")


class SummaryOut(BaseModel):
    """Open findings per priority, and how many are past their due date."""

    open: dict[str, int]
    overdue: int


@router.get("/findings/{finding_id}/exposure", response_model=ExposureOut)
def get_exposure(
    finding_id: DbId, ctx: Ctx, who: Annotated[Principal, Allow(scope.VULN_READ)]
) -> ExposureOut:
    """The live devices running the finding's release, per environment and label."""
    with ctx.db.read() as s:
        return ExposureOut(**vulns.exposure(s, who, finding_id))


@router.post("/findings/{finding_id}/triage", response_model=FindingOut)
def triage(
    finding_id: DbId,
    body: TriageIn,
    ctx: Ctx,
    who: Annotated[Principal, Allow(scope.VULN_TRIAGE)],
) -> FindingOut:
    """Set the analysis (and justification), mark exploited, or name the fix release."""
    with ctx.operator_work(who, action="vulns.triage", subject=f"vuln-finding:{finding_id}") as s:
        return FindingOut.of(
            vulns.triage(
                s,
                who,
                finding_id,
                analysis=body.analysis,
                justification=body.justification,
                detail=body.detail,
                exploited=body.exploited,
                fix_release_id=body.fix_release_id,
            )
        )


@router.get("/summary", response_model=SummaryOut)
def summary(ctx: Ctx, who: Annotated[Principal, Allow(scope.VULN_READ)]) -> SummaryOut:
    """Open findings per priority and how many are overdue."""
    with ctx.db.read() as s:
        return SummaryOut(**vulns.counts(s, who.tenant_id, now=dt.datetime.now(dt.UTC)))


@router.get("/policy", response_model=PolicyIn)
def get_policy(ctx: Ctx, who: Annotated[Principal, Allow(scope.VULN_READ)]) -> PolicyIn:
    """The tenant's prioritisation policy."""
    with ctx.db.read() as s:
        p = vulns.get_policy(s, who)
    return PolicyIn(**{k: getattr(p, k) for k in PolicyIn.model_fields})


@router.put("/policy", response_model=PolicyIn)
def set_policy(
    body: PolicyIn, ctx: Ctx, who: Annotated[Principal, Allow(scope.VULN_POLICY)]
) -> PolicyIn:
    """Replace the policy; every open finding is reprioritised."""
    with ctx.operator_work(who, action="vulns.policy", subject="vuln-policy") as s:
        vulns.set_policy(s, who, body.model_dump())
    return body


@router.get(
    "/releases/{release_id}/vex",
    response_class=Response,
    responses={
        200: {
            "description": "a CycloneDX 1.5 JSON document (BOM with vulnerabilities)",
            "content": {"application/vnd.cyclonedx+json": {"schema": {"type": "string"}}},
        }
    },
)
def release_vex(
    release_id: DbId, ctx: Ctx, who: Annotated[Principal, Allow(scope.VULN_READ)]
) -> Response:
    """The release's CycloneDX 1.5 VEX document."""
    with ctx.db.read() as s:
        body = vulns.release_vex(s, who, release_id)
    return Response(content=body, media_type="application/vnd.cyclonedx+json")


def review_out(r: Any) -> ReviewOut:
    return ReviewOut(
        id=r.id, period_start=r.period_start, created_at=r.created_at, created_by=r.created_by,
        exposed=r.exposed, body=json.loads(r.body), markdown=r.markdown,
    )  # fmt: skip


@router.post("/reviews", response_model=ReviewOut, status_code=201)
def create_review(ctx: Ctx, who: Annotated[Principal, Allow(scope.VULN_REVIEW)]) -> ReviewOut:
    """Write a review now (the worker writes one every review interval)."""
    with ctx.operator_work(who, action="vulns.review", subject="vuln-review") as s:
        return review_out(vulns.create_review(s, who.tenant_id, actor=who.actor))


@router.get("/reviews", response_model=Page[ReviewOut])
def list_reviews(
    ctx: Ctx,
    who: Annotated[Principal, Allow(scope.VULN_READ)],
    cursor: Cursor = None,
    limit: Limit = 20,
) -> Page[ReviewOut]:
    """The last 200 reviews, newest first."""
    with ctx.db.read() as s:
        return page_of(
            vulns.list_reviews(s, who, limit=200), cursor=cursor, limit=limit,
            key=lambda r: (r.id,), kinds=(int,), shape=review_out, descending=True,
        )  # fmt: skip


@router.get("/reviews/{review_id}", response_model=ReviewOut)
def get_review(
    review_id: DbId, ctx: Ctx, who: Annotated[Principal, Allow(scope.VULN_READ)]
) -> ReviewOut:
    """One review."""
    with ctx.db.read() as s:
        return review_out(vulns.get_review(s, who, review_id))


@router.get("/cases", response_model=Page[CaseOut])
def list_cases(
    ctx: Ctx,
    who: Annotated[Principal, Allow(scope.VULN_READ)],
    state: Literal["open", "closed"] | None = None,
    cursor: Cursor = None,
    limit: Limit = 100,
) -> Page[CaseOut]:
    """CRA Article 14 cases with their deadlines, newest first."""
    with ctx.db.read() as s:
        return page_of(
            vulns.list_cases(s, who, state=state), cursor=cursor, limit=limit,
            key=lambda v: (v.case.id,), kinds=(int,), shape=CaseOut.of, descending=True,
        )  # fmt: skip


@router.post("/cases", response_model=CaseOut, status_code=201)
def open_case(body: CaseIn, ctx: Ctx, who: Annotated[Principal, Allow(scope.VULN_CASE)]) -> CaseOut:
    """Open a case by hand (an incident found the vulnerability exploited)."""
    with ctx.operator_work(who, action="vulns.case.open", subject="vuln-cases") as s:
        if body.incident_id is not None:
            incidents.get_incident(s, who, body.incident_id)  # 404 for none or another tenant's
        return CaseOut.of(
            vulns.open_case(s, who, vulnerability=body.vulnerability, incident_id=body.incident_id)
        )


@router.get("/cases/{case_id}", response_model=CaseOut)
def get_case(case_id: DbId, ctx: Ctx, who: Annotated[Principal, Allow(scope.VULN_READ)]) -> CaseOut:
    """One case."""
    with ctx.db.read() as s:
        return CaseOut.of(vulns.get_case(s, who, case_id))


@router.get("/cases/{case_id}/reports/{kind}", response_model=DraftOut)
def report_draft(
    case_id: DbId, kind: ReportKind, ctx: Ctx, who: Annotated[Principal, Allow(scope.VULN_READ)]
) -> DraftOut:
    """The report drafted from live data (early warning, notification or final)."""
    with ctx.db.read() as s:
        d = vulns.report_draft(s, who, case_id, kind)
    return DraftOut.model_validate({"kind": d.kind, "json": d.json, "markdown": d.markdown})


@router.post("/cases/{case_id}/reports/{kind}", response_model=CaseOut)
def submit_report(
    case_id: DbId,
    kind: ReportKind,
    body: SubmitIn,
    ctx: Ctx,
    who: Annotated[Principal, Allow(scope.VULN_CASE)],
) -> CaseOut:
    """Mark a report submitted with the authority's reference."""
    with ctx.operator_work(who, action="vulns.case.submit", subject=f"vuln-case:{case_id}") as s:
        return CaseOut.of(vulns.submit_report(s, who, case_id, kind, reference=body.reference))
