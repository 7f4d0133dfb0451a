"""What vulnerability operations tell people: CRA cases, reviews, VEX.

Use cases over the findings :mod:`.service` keeps: the CRA Article 14
cases (open from an incident, read with their deadlines and drafts, mark a
report submitted), the periodic review (kept with its date), and the
CycloneDX VEX document of a release.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import uuid
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from fleetward import ota, tenancy
from fleetward.errors import InvalidInputError, NotFoundError
from fleetward.store.db import utcnow
from fleetward.tenancy import scope
from fleetward.tenancy.roles import Principal
from fleetward.vulns import _cases, cra, review, vex
from fleetward.vulns._rows import advisories_of, components_of
from fleetward.vulns.models import Advisory, Case, Finding, Review, SbomComponent

__all__ = [
    "CaseView",
    "create_review",
    "due_reviews",
    "get_case",
    "get_review",
    "list_cases",
    "list_reviews",
    "open_case",
    "recent_cases",
    "release_vex",
    "report_draft",
    "submit_report",
]

MAX_VULNERABILITY_CHARS = 128
REVIEW_FIRST_PERIOD = dt.timedelta(days=7)  # the first review looks back this far


@dataclasses.dataclass(frozen=True)
class CaseView:
    """A case with its deadlines, submitted reports and findings."""

    case: Case
    deadlines: cra.Deadlines
    submitted: dict[str, dict[str, Any]]
    next: tuple[str, dt.datetime] | None
    findings: list[int]


def _view(session: Session, case: Case) -> CaseView:
    reports = _cases.submitted(session, case)
    d = _cases.deadlines_of(case)
    return CaseView(
        case=case,
        deadlines=d,
        submitted={
            k: {"reference": r.reference, "submitted_at": r.submitted_at, "by": r.submitted_by}
            for k, r in reports.items()
        },
        next=cra.next_deadline(d, submitted=frozenset(reports)),
        findings=sorted(f.id for f in _cases.case_findings(session, case)),
    )


def list_cases(
    session: Session, principal: Principal, *, state: str | None = None
) -> list[CaseView]:
    """The tenant's CRA cases, newest first."""
    scope.authorize(principal, scope.VULN_READ)
    q = select(Case).where(Case.tenant_id == principal.tenant_id)
    if state is not None:
        if state not in ("open", "closed"):
            raise InvalidInputError("state is open or closed")
        q = q.where(Case.state == state)
    return [_view(session, c) for c in session.execute(q.order_by(Case.id.desc())).scalars()]


MAX_CASES = 200  # cases in one page of recent_cases


def recent_cases(
    session: Session,
    principal: Principal,
    *,
    state: str | None = None,
    before: int | None = None,
    limit: int = 50,
) -> list[CaseView]:
    """The tenant's newest CRA cases (ids below ``before``), at most ``limit``
    (a bounded page of :func:`list_cases`, for the console).

    Raises:
        InvalidInputError: an unknown state, or a limit out of 1-:data:`MAX_CASES`.
    """
    scope.authorize(principal, scope.VULN_READ)
    if not 1 <= limit <= MAX_CASES:
        raise InvalidInputError(f"limit is 1-{MAX_CASES}")
    q = select(Case).where(Case.tenant_id == principal.tenant_id)
    if state is not None:
        if state not in ("open", "closed"):
            raise InvalidInputError("state is open or closed")
        q = q.where(Case.state == state)
    if before is not None:
        q = q.where(Case.id < before)
    rows = session.execute(q.order_by(Case.id.desc()).limit(limit)).scalars()
    return [_view(session, c) for c in rows]


def get_case(session: Session, principal: Principal, case_id: int) -> CaseView:
    """One case of the tenant."""
    scope.authorize(principal, scope.VULN_READ)
    return _view(session, _cases.get_case(session, principal.tenant_id, case_id))


def open_case(
    session: Session,
    principal: Principal,
    *,
    vulnerability: str,
    incident_id: int | None = None,
    now: dt.datetime | None = None,
) -> CaseView:
    """Open a case by hand: an incident (or the operator) says the
    vulnerability is actively exploited. Its findings are marked exploited.

    Raises:
        InvalidInputError: an empty or overlong vulnerability id.
        NotFoundError: no finding of that vulnerability in the tenant.
    """
    scope.authorize(principal, scope.VULN_CASE)
    now = now or utcnow()
    vuln = vulnerability.strip()
    if not vuln or len(vuln) > MAX_VULNERABILITY_CHARS:
        raise InvalidInputError(f"a vulnerability id is 1-{MAX_VULNERABILITY_CHARS} characters")
    vuln = vuln.upper() if vuln.upper().startswith("CVE-") else vuln
    probe = Case(tenant_id=principal.tenant_id, vulnerability=vuln)
    findings = _cases.case_findings(session, probe)
    if not findings:
        raise NotFoundError(f"no finding of {vuln} in this tenant")
    trigger = f"incident:{incident_id}" if incident_id is not None else "operator"
    case, _ = _cases.open_case(
        session, principal.tenant_id, vuln, trigger=trigger, actor=principal.actor, now=now
    )
    for f in findings:
        f.exploited = True
    session.flush()
    return _view(session, case)


def report_draft(
    session: Session,
    principal: Principal,
    case_id: int,
    kind: str,
    *,
    now: dt.datetime | None = None,
) -> cra.Draft:
    """The report of ``kind`` as it would be submitted now.

    Raises:
        InvalidInputError: an unknown kind.
    """
    scope.authorize(principal, scope.VULN_READ)
    if kind not in cra.REPORT_KINDS:
        raise InvalidInputError(f"report kind is one of {', '.join(cra.REPORT_KINDS)}")
    case = _cases.get_case(session, principal.tenant_id, case_id)
    return cra.draft(kind, _cases.case_facts(session, case), now=now or utcnow())


def submit_report(
    session: Session,
    principal: Principal,
    case_id: int,
    kind: str,
    *,
    reference: str,
    now: dt.datetime | None = None,
) -> CaseView:
    """Mark a report submitted with the authority's reference (audited)."""
    scope.authorize(principal, scope.VULN_CASE)
    case = _cases.get_case(session, principal.tenant_id, case_id)
    _cases.submit_report(
        session, case, kind, reference=reference, actor=principal.actor, now=now or utcnow()
    )
    return _view(session, case)


# --- reviews --------------------------------------------------------------------------------


def _line(f: Finding, advs: dict[int, Advisory], comps: dict[int, SbomComponent],
          rels: dict[int, ota.Release]) -> review.ReviewFinding:  # fmt: skip
    c, r = comps.get(f.component_pk), rels.get(f.release_id)
    note = ""
    if f.fix_release_id is not None and f.fix_release_id in rels:
        note = f"fixed by {rels[f.fix_release_id].version}"
    return review.ReviewFinding(
        id=str(f.id),
        advisory=advs[f.advisory_pk].advisory_id if f.advisory_pk in advs else f.advisory_id,
        component=f"{c.name} {c.version or ''}".strip() if c else "?",
        release=f"{r.product} {r.version}" if r else "?",
        level=f.priority,
        rank=f.rank,
        due=f.due_at,
        devices=f.devices,
        fixed_at=f.closed_at if f.close_reason == "remediated" else None,
        note=note,
    )


def create_review(
    session: Session, tenant_id: int, *, actor: str, now: dt.datetime | None = None
) -> Review:
    """Write the tenant's review of the period since its last one, and keep it."""
    now = now or utcnow()
    last = session.execute(
        select(Review).where(Review.tenant_id == tenant_id).order_by(Review.id.desc()).limit(1)
    ).scalar_one_or_none()
    start = last.created_at if last is not None else now - REVIEW_FIRST_PERIOD
    findings = list(
        session.execute(select(Finding).where(Finding.tenant_id == tenant_id)).scalars()
    )
    advs = advisories_of(session, findings)
    comps = components_of(session, findings)
    rels = {r.id: r for r in ota.list_releases_of_tenant(session, tenant_id)}
    new = [f for f in findings if f.first_seen >= start and f.state == "open"]
    irrelevant = ("not_affected", "false_positive", "resolved")
    overdue = [
        f for f in findings
        if f.state == "open" and f.analysis not in irrelevant and f.due_at < now
    ]  # fmt: skip
    fixed = [
        f for f in findings
        if f.state == "closed" and f.closed_at is not None and f.closed_at >= start
    ]  # fmt: skip
    per: dict[str, int] = {}
    exposed_releases = set()
    for f in findings:
        if f.state == "open" and f.analysis not in irrelevant:
            per[f.priority] = per.get(f.priority, 0) + 1
            exposed_releases.add(f.release_id)
    running = ota.running_by_environment(session, tenant_id)
    exposure: dict[str, int] = {}
    for rid in exposed_releases:
        r = rels.get(rid)
        if r is None:
            continue
        for env, n in running.get((r.product, r.version), {}).items():
            exposure[env] = exposure.get(env, 0) + n
    last_exposure: dict[str, int] = {}
    if last is not None:
        last_exposure = dict(json.loads(last.body).get("exposure", {}).get("now", {}))
    cases = []
    for c in session.execute(
        select(Case).where(Case.tenant_id == tenant_id, Case.state == "open")
    ).scalars():
        d = _cases.deadlines_of(c)
        done = frozenset(_cases.submitted(session, c))
        nxt = cra.next_deadline(d, submitted=done)
        cases.append(
            review.CraCaseLine(
                id=str(c.id),
                advisories=(c.vulnerability,),
                aware_at=c.aware_at,
                next_kind=nxt[0] if nxt else None,
                next_due=nxt[1] if nxt else None,
                submitted=tuple(sorted(done)),
            )
        )
    data = review.ReviewData(
        tenant=tenancy.get_tenant(session, tenant_id).name,
        period_start=start,
        period_end=now,
        new=[_line(f, advs, comps, rels) for f in new],
        overdue=[_line(f, advs, comps, rels) for f in overdue],
        fixed=[_line(f, advs, comps, rels) for f in fixed],
        open_by_priority=per,
        exposure_now=exposure,
        exposure_last=last_exposure,
        cra_cases=cases,
    )
    markdown, body = review.render(data)
    row = Review(
        tenant_id=tenant_id, period_start=start, created_at=now, created_by=actor,
        exposed=sum(exposure.values()), markdown=markdown, body=json.dumps(body),
    )  # fmt: skip
    session.add(row)
    session.flush()
    return row


def list_reviews(session: Session, principal: Principal, *, limit: int = 50) -> list[Review]:
    """The tenant's reviews, newest first."""
    scope.authorize(principal, scope.VULN_READ)
    return list(
        session.execute(
            select(Review)
            .where(Review.tenant_id == principal.tenant_id)
            .order_by(Review.id.desc())
            .limit(limit)
        ).scalars()
    )


def get_review(session: Session, principal: Principal, review_id: int) -> Review:
    """One review of the tenant."""
    scope.authorize(principal, scope.VULN_READ)
    row = session.get(Review, review_id)
    if row is None or row.tenant_id != principal.tenant_id:
        raise NotFoundError(f"no review {review_id}")
    return row


def due_reviews(session: Session, *, every: dt.timedelta, now: dt.datetime) -> list[int]:
    """Tenants with findings whose last review is older than ``every``."""
    tenants = set(session.execute(select(Finding.tenant_id).distinct()).scalars())
    due = []
    for t in sorted(tenants):
        last = session.execute(
            select(Review.created_at)
            .where(Review.tenant_id == t)
            .order_by(Review.id.desc())
            .limit(1)
        ).scalar_one_or_none()
        if last is None or now - last >= every:
            due.append(int(t))
    return due


# --- VEX ------------------------------------------------------------------------------------


def release_vex(
    session: Session, principal: Principal, release_id: int, *, now: dt.datetime | None = None
) -> bytes:
    """The CycloneDX 1.5 VEX document of one release's findings.

    Raises:
        NotFoundError: no such release in the tenant.
    """
    scope.authorize(principal, scope.VULN_READ)
    now = now or utcnow()
    rel = ota.releases_by_id(session, principal.tenant_id, [release_id]).get(release_id)
    if rel is None:
        raise NotFoundError(f"no release {release_id}")
    findings = list(
        session.execute(
            select(Finding)
            .where(
                Finding.tenant_id == principal.tenant_id,
                Finding.release_id == release_id,
                ~((Finding.state == "closed") & (Finding.close_reason != "remediated")),
            )
            .order_by(Finding.id)
        ).scalars()
    )
    advs = advisories_of(session, findings)
    comps = components_of(session, findings)
    entries = []
    for f in findings:
        a, c = advs[f.advisory_pk], comps[f.component_pk]
        state = "resolved" if f.state == "closed" else f.analysis
        refs = json.loads(a.references or "[]")
        entries.append(
            vex.VexEntry(
                advisory_id=a.advisory_id,
                source_name="NVD" if a.source == "nvd" else "OSV",
                source_url=refs[0] if refs else None,
                component_name=c.name,
                component_ref=c.bom_ref,
                component_purl=c.purl,
                component_version=c.version,
                state=state,
                justification=f.justification if state == "not_affected" else None,
                detail=f.detail,
                cvss_score=a.cvss_score,
                cvss_vector=a.cvss_vector,
                severity=a.severity,
                first_issued=f.first_seen,
                last_updated=f.updated_at,
            )
        )
    serial = uuid.uuid5(
        uuid.NAMESPACE_URL, f"fleetward:vex:{rel.tenant_id}:{rel.id}:{now.isoformat()}"
    )
    return vex.vex_document(
        product=rel.product, version=rel.version, entries=entries, now=now, serial=serial
    )
