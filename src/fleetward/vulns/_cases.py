"""CRA Article 14 cases: opened from live data, drafted from live data, audited.

A case is one actively exploited vulnerability (a CVE id, else the
advisory id) in the tenant's deployed releases. It opens when a finding
that devices run becomes exploited (KEV listed: trigger ``kev``; an
operator marks it: ``operator``), or when an operator opens it from an
incident (``incident:<id>``). Awareness is the moment fleetward learned it
(the import or the mark), and the three deadlines count from there
(:mod:`fleetward.vulns.cra`). The final report's clock starts when a fix is
available: the first time a finding of the case has a deployable fix
release. Drafts are built from the findings, the fleet and the campaigns
at the moment they are asked for; submitting one keeps that draft with the
authority's reference.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Collection
from typing import Any

from sqlalchemy import or_, select
from sqlalchemy.orm import Session

from fleetward import audit, detection, ota, tenancy
from fleetward.errors import ConflictError, InvalidInputError, NotFoundError
from fleetward.vulns import cra
from fleetward.vulns._rows import advisories_of
from fleetward.vulns.models import Advisory, AdvisoryAlias, Case, CaseReport, Finding, Kev

__all__ = [
    "MARKET_LABEL",
    "case_facts",
    "case_findings",
    "deadline_round",
    "open_case",
    "open_for_findings",
    "submit_report",
    "update_fix",
]

MARKET_LABEL = "market"  # the device label that names where a device is made available
MAX_REFERENCE_CHARS = 200


def _vulnerability(session: Session, advisory_pk: int) -> str:
    cve = (
        session.execute(
            select(AdvisoryAlias.cve)
            .where(AdvisoryAlias.advisory_pk == advisory_pk)
            .order_by(AdvisoryAlias.cve)
        )
        .scalars()
        .first()
    )
    if cve is not None:
        return str(cve)
    return str(
        session.execute(select(Advisory.advisory_id).where(Advisory.id == advisory_pk)).scalar_one()
    )


def open_case(
    session: Session, tenant_id: int, vulnerability: str, *, trigger: str, actor: str,
    now: dt.datetime,
) -> tuple[Case, bool]:  # fmt: skip
    """The tenant's case for ``vulnerability``, opened now if there is none;
    returns it and whether it is new."""
    existing = session.execute(
        select(Case).where(Case.tenant_id == tenant_id, Case.vulnerability == vulnerability)
    ).scalar_one_or_none()
    if existing is not None:
        return existing, False
    case = Case(
        tenant_id=tenant_id, vulnerability=vulnerability[:128], trigger=trigger[:64],
        state="open", aware_at=now, alerted="[]", created_by=actor, created_at=now,
        updated_at=now,
    )  # fmt: skip
    session.add(case)
    session.flush()
    audit.append(
        session, actor=actor, action="vulns.case.open", subject=f"vuln-case:{case.id}",
        tenant_id=tenant_id, details={"vulnerability": vulnerability, "trigger": trigger},
        now=now,
    )  # fmt: skip
    update_fix(session, case, now=now)
    return case, True


def open_for_findings(
    session: Session, tenant_id: int, finding_ids: Collection[int], *, now: dt.datetime,
    trigger: str | None = None, actor: str = "fleetward:vulns",
) -> list[Case]:  # fmt: skip
    """Open a case for each exploited finding's vulnerability that has none."""
    opened = []
    for f in session.execute(select(Finding).where(Finding.id.in_(list(finding_ids)))).scalars():
        vuln = _vulnerability(session, f.advisory_pk)
        why = trigger or ("operator" if f.exploited and not _kev_listed(session, tenant_id, vuln)
                          else "kev")  # fmt: skip
        case, new = open_case(session, tenant_id, vuln, trigger=why, actor=actor, now=now)
        if new:
            opened.append(case)
    return opened


def _kev_listed(session: Session, tenant_id: int, cve: str) -> bool:
    return (
        session.execute(select(Kev.id).where(Kev.tenant_id == tenant_id, Kev.cve == cve)).first()
        is not None
    )


def case_findings(session: Session, case: Case) -> list[Finding]:
    """Every finding (open or closed) of the case's vulnerability."""
    pks = select(AdvisoryAlias.advisory_pk).where(
        AdvisoryAlias.tenant_id == case.tenant_id, AdvisoryAlias.cve == case.vulnerability
    )
    return list(
        session.execute(
            select(Finding).where(
                Finding.tenant_id == case.tenant_id,
                or_(Finding.advisory_pk.in_(pks), Finding.advisory_id == case.vulnerability),
            )
        ).scalars()
    )


def update_fix(session: Session, case: Case, *, now: dt.datetime) -> None:
    """Start the final report's clock once a fix release is deployable."""
    if case.fix_available_at is not None:
        return
    fixes = {f.fix_release_id for f in case_findings(session, case) if f.fix_release_id}
    releases = ota.releases_by_id(session, case.tenant_id, {i for i in fixes if i is not None})
    ready = [r for r in releases.values() if r.state == "deployable"]
    if not ready:
        return
    first = min(ready, key=lambda r: r.updated_at)
    case.fix_release_id = first.id
    case.fix_available_at = max(first.updated_at, case.aware_at)
    case.updated_at = now
    audit.append(
        session, actor="fleetward:vulns", action="vulns.case.fix", subject=f"vuln-case:{case.id}",
        tenant_id=case.tenant_id,
        details={"release": f"{first.product} {first.version}",
                 "fix_available_at": case.fix_available_at.isoformat()},
        now=now,
    )  # fmt: skip


def submitted(session: Session, case: Case) -> dict[str, CaseReport]:
    """The case's submitted reports by kind."""
    return {
        r.kind: r
        for r in session.execute(select(CaseReport).where(CaseReport.case_id == case.id)).scalars()
    }


def deadlines_of(case: Case) -> cra.Deadlines:
    """The case's deadlines."""
    return cra.deadlines(aware_at=case.aware_at, fix_available_at=case.fix_available_at)


def case_facts(session: Session, case: Case) -> cra.CaseFacts:
    """What the drafts say, from the live findings, fleet and campaigns."""
    findings = case_findings(session, case)
    advisories = advisories_of(session, findings)
    releases = ota.releases_by_id(session, case.tenant_id, {f.release_id for f in findings})
    products: dict[str, set[str]] = {}
    by_env: dict[str, int] = {}
    by_market: dict[str, int] = {}
    counted: set[int] = set()
    for f in findings:
        rel = releases.get(f.release_id)
        if rel is None:
            continue
        products.setdefault(rel.product, set()).add(rel.version)
        if rel.id in counted:
            continue
        counted.add(rel.id)
        for d in ota.devices_running(
            session, tenant_id=case.tenant_id, product=rel.product, version=rel.version
        ):
            env = d.environment or "unknown"
            by_env[env] = by_env.get(env, 0) + 1
            market = d.labels.get(MARKET_LABEL, "unlabelled")[:64]
            by_market[market] = by_market.get(market, 0) + 1
    best = max(advisories.values(), key=lambda a: a.cvss_score or -1.0, default=None)
    kev = session.execute(
        select(Kev).where(Kev.tenant_id == case.tenant_id, Kev.cve == case.vulnerability)
    ).scalar_one_or_none()
    mitigations = []
    quarantined = sum(1 for f in findings if f.state == "open" and f.analysis == "exploitable")
    if quarantined:
        mitigations.append(f"{quarantined} finding(s) triaged exploitable and under remediation")
    fix = None
    camp_state, camp_done, camp_total = None, 0, 0
    if case.fix_release_id is not None:
        fix_rel = ota.releases_by_id(session, case.tenant_id, [case.fix_release_id]).get(
            case.fix_release_id
        )
        if fix_rel is not None:
            fix = f"{fix_rel.product} {fix_rel.version}"
            camps = ota.campaigns_of_releases(session, case.tenant_id, [fix_rel.id]).get(
                fix_rel.id, []
            )
            if camps:
                c = camps[0]
                camp_state, camp_done, camp_total = c.state, c.succeeded, c.devices
    tenant = tenancy.get_tenant(session, case.tenant_id)
    reports = submitted(session, case)
    return cra.CaseFacts(
        manufacturer=tenant.name,
        products=tuple(
            cra.AffectedProduct(name=p, versions=tuple(sorted(v)))
            for p, v in sorted(products.items())
        )
        or (cra.AffectedProduct(name="(no deployed release matched)", versions=()),),
        advisory_ids=tuple(
            sorted({a.advisory_id for a in advisories.values()} | {case.vulnerability})
        )[: cra.MAX_ITEMS],
        summary=(best.summary if best else "")[: cra.MAX_TEXT],
        aware_at=case.aware_at,
        trigger=case.trigger,
        severity=best.severity if best else "unknown",
        cvss_score=best.cvss_score if best else None,
        cvss_vector=best.cvss_vector if best else None,
        kev_added=kev.date_added if kev else None,
        kev_ransomware=kev.ransomware if kev else None,
        devices_by_environment=by_env,
        devices_by_market=by_market,
        mitigations=tuple(mitigations),
        fix_release=fix,
        fix_available_at=case.fix_available_at,
        campaign_state=camp_state,
        campaign_updated=min(camp_done, camp_total),
        campaign_total=camp_total,
        submitted={k: r.submitted_at for k, r in reports.items()},
    )


def submit_report(
    session: Session, case: Case, kind: str, *, reference: str, actor: str, now: dt.datetime
) -> CaseReport:
    """Mark a report submitted, keeping the draft as it stands; audited.

    Raises:
        InvalidInputError: an unknown kind, or an empty or overlong reference.
        ConflictError: already submitted, or the final report before a fix exists.
    """
    if kind not in cra.REPORT_KINDS:
        raise InvalidInputError(f"report kind is one of {', '.join(cra.REPORT_KINDS)}")
    reference = reference.strip()
    if not reference or len(reference) > MAX_REFERENCE_CHARS:
        raise InvalidInputError(f"a reference is 1-{MAX_REFERENCE_CHARS} characters")
    if kind in submitted(session, case):
        raise ConflictError(f"the {kind} report of case {case.id} was already submitted")
    update_fix(session, case, now=now)
    if kind == "final" and case.fix_available_at is None:
        raise ConflictError("the final report follows a corrective measure: none is available yet")
    draft = cra.draft(kind, case_facts(session, case), now=now)
    row = CaseReport(
        case_id=case.id, kind=kind, reference=reference, draft=json.dumps(draft.json),
        submitted_by=actor, submitted_at=now,
    )  # fmt: skip
    session.add(row)
    if kind == "final":
        case.state = "closed"
    case.updated_at = now
    session.flush()
    audit.append(
        session, actor=actor, action="vulns.case.submit", subject=f"vuln-case:{case.id}",
        tenant_id=case.tenant_id, details={"kind": kind, "reference": reference}, now=now,
    )  # fmt: skip
    return row


def get_case(session: Session, tenant_id: int, case_id: int) -> Case:
    """One case of the tenant."""
    case = session.get(Case, case_id)
    if case is None or case.tenant_id != tenant_id:
        raise NotFoundError(f"no case {case_id}")
    return case


def deadline_round(session: Session, *, now: dt.datetime) -> int:
    """Alert before each open case's deadlines and when one passes; returns alerts raised."""
    raised = 0
    for case in session.execute(select(Case).where(Case.state == "open")).scalars().all():
        update_fix(session, case, now=now)
        done = frozenset(submitted(session, case))
        alerted = frozenset(json.loads(case.alerted))
        due = cra.alerts_due(deadlines_of(case), submitted=done, alerted=alerted, now=now)
        for kind, stage in due:
            deadline = deadlines_of(case).due(kind)
            details: dict[str, Any] = {"case": case.id, "report": kind, "due": str(deadline)}
            detection.raise_alert(
                session,
                detection.Finding(
                    tenant_id=case.tenant_id,
                    kind="cra-deadline",
                    key=f"case:{case.id}:{kind}:{stage}",
                    severity="critical" if stage == "overdue" else "high",
                    subject=f"vuln-case:{case.id}",
                    summary=(
                        f"CRA {kind} report for {case.vulnerability} is "
                        + ("overdue" if stage == "overdue" else "due soon")
                        + f" (deadline {deadline:%Y-%m-%d %H:%M} UTC)"
                    ),
                    evidence=details,
                ),
                now=now,
            )
            alerted = alerted | {f"{kind}:{stage}"}
            raised += 1
        case.alerted = json.dumps(sorted(alerted))
    return raised
