"""Vulnerability operations: findings, triage and the priority policy.

Each function takes a session (the caller commits at the unit of work) and,
where an operator acts, a :class:`~fleetward.tenancy.roles.Principal`
checked against the scope catalogue. Every change is audited in the same
transaction. SBOM indexing and feed imports are in :mod:`.imports`; the
pure parts in :mod:`.sbom`, :mod:`.feeds`, :mod:`.match`,
:mod:`.priority`, :mod:`.cra`, :mod:`.review` and :mod:`.vex`; the
database join in :mod:`._matching`; exposure, remediation and alerts in
:mod:`._exposure`; CRA cases in :mod:`._cases`.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
from typing import Any

from sqlalchemy import Select, func, select
from sqlalchemy.orm import Session

from fleetward import audit, ota
from fleetward.errors import InvalidInputError, NotFoundError
from fleetward.store.db import utcnow
from fleetward.tenancy import scope
from fleetward.tenancy.roles import Principal
from fleetward.vulns import _cases
from fleetward.vulns import priority as prio
from fleetward.vulns._exposure import load_policy, refresh
from fleetward.vulns._rows import advisories_of, components_of
from fleetward.vulns.models import Advisory, Finding, SbomComponent, SbomIndex, VulnPolicy
from fleetward.vulns.records import ANALYSIS_STATES, JUSTIFICATIONS

__all__ = [
    "MAX_DETAIL_CHARS",
    "FindingView",
    "counts",
    "exposure",
    "get_finding",
    "get_policy",
    "is_overdue",
    "list_findings",
    "release_blockers",
    "set_policy",
    "triage",
]

MAX_DETAIL_CHARS = 4000  # an analyst's detail text


# --- findings -------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class FindingView:
    """A finding with what an operator reads beside it."""

    finding: Finding
    advisory: Advisory
    component: SbomComponent
    release: ota.Release
    overdue: bool


def _views(session: Session, rows: list[Finding], now: dt.datetime) -> list[FindingView]:
    if not rows:
        return []
    advs = advisories_of(session, rows)
    comps = components_of(session, rows)
    rels = ota.releases_by_id(session, rows[0].tenant_id, {f.release_id for f in rows})
    return [
        FindingView(
            f,
            advs[f.advisory_pk],
            comps[f.component_pk],
            rels[f.release_id],
            overdue=is_overdue(f, now),
        )
        for f in rows
    ]


def is_overdue(f: Finding, now: dt.datetime) -> bool:
    """Open, still relevant, and past its due date."""
    return (
        f.state == "open"
        and f.analysis not in ("not_affected", "false_positive", "resolved")
        and prio.overdue(f.due_at, now)
    )


def list_findings(
    session: Session,
    principal: Principal,
    *,
    state: str | None = "open",
    priority: str | None = None,
    release_id: int | None = None,
    product: str | None = None,
    advisory: str | None = None,
    overdue: bool = False,
    after: tuple[float, int] | None = None,
    limit: int = 100,
    now: dt.datetime | None = None,
) -> list[FindingView]:
    """The tenant's findings, most urgent first (rank, then id), paged by key."""
    scope.authorize(principal, scope.VULN_READ)
    now = now or utcnow()
    q: Select[Finding] = select(Finding).where(Finding.tenant_id == principal.tenant_id)
    if state is not None:
        if state not in ("open", "closed"):
            raise InvalidInputError("state is open or closed")
        q = q.where(Finding.state == state)
    if priority is not None:
        if priority not in ("P1", "P2", "P3", "P4"):
            raise InvalidInputError("priority is P1, P2, P3 or P4")
        q = q.where(Finding.priority == priority)
    if release_id is not None:
        q = q.where(Finding.release_id == release_id)
    if product is not None:
        q = q.where(
            Finding.release_id.in_(ota.release_ids_of_product(principal.tenant_id, product))
        )
    if advisory is not None:
        q = q.where(Finding.advisory_id == advisory)
    if overdue:
        q = q.where(
            Finding.state == "open",
            Finding.due_at < now,
            Finding.analysis.not_in(("not_affected", "false_positive", "resolved")),
        )
    if after is not None:
        q = q.where(
            (Finding.rank < after[0]) | ((Finding.rank == after[0]) & (Finding.id > after[1]))
        )
    rows = list(session.execute(q.order_by(Finding.rank.desc(), Finding.id).limit(limit)).scalars())
    return _views(session, rows, now)


def get_finding(
    session: Session, principal: Principal, finding_id: int, *, now: dt.datetime | None = None
) -> FindingView:
    """One finding of the tenant.

    Raises:
        NotFoundError: none, or another tenant's.
    """
    scope.authorize(principal, scope.VULN_READ)
    f = session.get(Finding, finding_id)
    if f is None or f.tenant_id != principal.tenant_id:
        raise NotFoundError(f"no finding {finding_id}")
    return _views(session, [f], now or utcnow())[0]


def exposure(session: Session, principal: Principal, finding_id: int) -> dict[str, Any]:
    """Who runs a finding's release now: per environment and per label value."""
    view = get_finding(session, principal, finding_id)
    devices = ota.devices_running(
        session, tenant_id=principal.tenant_id, product=view.release.product,
        version=view.release.version,
    )  # fmt: skip
    by_env: dict[str, int] = {}
    by_label: dict[str, dict[str, int]] = {}
    for d in devices:
        env = d.environment or "unknown"
        by_env[env] = by_env.get(env, 0) + 1
        for k, v in d.labels.items():
            per = by_label.setdefault(k, {})
            per[v] = per.get(v, 0) + 1
    return {
        "finding": finding_id,
        "product": view.release.product,
        "version": view.release.version,
        "devices": len(devices),
        "environments": by_env,
        "labels": by_label,
    }


def triage(
    session: Session,
    principal: Principal,
    finding_id: int,
    *,
    analysis: str | None = None,
    justification: str | None = None,
    detail: str | None = None,
    exploited: bool | None = None,
    fix_release_id: int | None = None,
    now: dt.datetime | None = None,
) -> FindingView:
    """Change a finding's analysis (CycloneDX states), mark it exploited, or
    name the release that fixes it; audited.

    Raises:
        InvalidInputError: an unknown state or justification, ``not_affected``
            without a justification, or a fix release of another product.
        NotFoundError: no such finding, or fix release, in the tenant.
    """
    scope.authorize(principal, scope.VULN_TRIAGE)
    now = now or utcnow()
    view = get_finding(session, principal, finding_id, now=now)
    f = view.finding
    before = {"analysis": f.analysis, "justification": f.justification, "exploited": f.exploited}
    if analysis is not None:
        if analysis not in ANALYSIS_STATES:
            raise InvalidInputError(f"analysis is one of {', '.join(ANALYSIS_STATES)}")
        if justification is not None and justification not in JUSTIFICATIONS:
            raise InvalidInputError(f"justification is one of {', '.join(JUSTIFICATIONS)}")
        if analysis == "not_affected" and justification is None:
            raise InvalidInputError("not_affected needs a justification (CycloneDX VEX)")
        f.analysis = analysis
        f.justification = justification if analysis == "not_affected" else None
    elif justification is not None:
        raise InvalidInputError("a justification goes with analysis not_affected")
    if detail is not None:
        if len(detail) > MAX_DETAIL_CHARS:
            raise InvalidInputError(f"detail is limited to {MAX_DETAIL_CHARS} characters")
        f.detail = detail
    if exploited is not None:
        f.exploited = exploited
    if fix_release_id is not None:
        fix = ota.releases_by_id(session, principal.tenant_id, [fix_release_id]).get(fix_release_id)
        if fix is None:
            raise NotFoundError(f"no release {fix_release_id}")
        if fix.product != view.release.product:
            raise InvalidInputError("the fix release must be of the finding's product")
        f.fix_release_id = fix.id
    f.updated_at = now
    audit.append(
        session,
        actor=principal.actor,
        action="vulns.triage",
        subject=f"vuln-finding:{f.id}",
        tenant_id=principal.tenant_id,
        details={
            "advisory": f.advisory_id, "release": f.release_id, "before": before,
            "analysis": f.analysis, "justification": f.justification, "exploited": f.exploited,
            "fix_release": f.fix_release_id,
        },
        now=now,
    )  # fmt: skip
    result = refresh(session, principal.tenant_id, now=now, finding_ids=[f.id])
    _cases.open_for_findings(
        session, principal.tenant_id, result.exploited, now=now, trigger="operator",
        actor=principal.actor,
    )  # fmt: skip
    return get_finding(session, principal, finding_id, now=now)


# --- policy ---------------------------------------------------------------------------------


def get_policy(session: Session, principal: Principal) -> prio.PriorityPolicy:
    """The tenant's prioritisation policy."""
    scope.authorize(principal, scope.VULN_READ)
    return load_policy(session, principal.tenant_id)


def set_policy(
    session: Session, principal: Principal, body: dict[str, Any], *, now: dt.datetime | None = None
) -> prio.PriorityPolicy:
    """Replace the tenant's prioritisation policy and reprioritise; audited.

    Raises:
        InvalidInputError: unknown keys or values out of range.
    """
    scope.authorize(principal, scope.VULN_POLICY)
    now = now or utcnow()
    try:
        policy = prio.PriorityPolicy.from_mapping(body)
    except (TypeError, ValueError) as exc:
        raise InvalidInputError(f"priority policy: {exc}") from exc
    row = session.get(VulnPolicy, principal.tenant_id)
    text = json.dumps(body, sort_keys=True)
    if row is None:
        session.add(
            VulnPolicy(tenant_id=principal.tenant_id, body=text, updated_by=principal.actor,
                       updated_at=now)
        )  # fmt: skip
    else:
        row.body, row.updated_by, row.updated_at = text, principal.actor, now
    session.flush()
    audit.append(
        session, actor=principal.actor, action="vulns.policy", subject="vuln-policy",
        tenant_id=principal.tenant_id, details=body, now=now,
    )  # fmt: skip
    refresh(session, principal.tenant_id, now=now)
    return policy


def counts(session: Session, tenant_id: int, *, now: dt.datetime) -> dict[str, Any]:
    """Open findings per priority, overdue ones, and devices exposed."""
    per = dict(
        session.execute(
            select(Finding.priority, func.count())
            .where(Finding.tenant_id == tenant_id, Finding.state == "open")
            .group_by(Finding.priority)
        ).all()
    )
    overdue = session.execute(
        select(func.count()).where(
            Finding.tenant_id == tenant_id,
            Finding.state == "open",
            Finding.due_at < now,
            Finding.analysis.not_in(("not_affected", "false_positive", "resolved")),
        )
    ).scalar_one()
    return {"open": {str(k): int(v) for k, v in per.items()}, "overdue": int(overdue)}


MAX_BLOCKERS = 50  # advisory ids a release review names (the count is exact)


def release_blockers(
    session: Session, *, tenant_id: int, release_id: int
) -> tuple[str | None, int, list[str]]:
    """What stops a release's controls review on the vulnerability side.

    Returns:
        The release's SBOM status (``indexed``, ``invalid``, ``missing``, or
        None when not indexed yet), the number of open findings still in
        triage that are known exploited (KEV) or of critical severity, and
        the first :data:`MAX_BLOCKERS` of their advisory ids.
    """
    status = session.scalar(
        select(SbomIndex.status).where(
            SbomIndex.tenant_id == tenant_id, SbomIndex.release_id == release_id
        )
    )
    blocking = (
        select(Finding.advisory_id)
        .join(Advisory, Advisory.id == Finding.advisory_pk)
        .where(
            Finding.tenant_id == tenant_id,
            Finding.release_id == release_id,
            Finding.state == "open",
            Finding.analysis == "in_triage",
            Finding.exploited.is_(True) | (Advisory.severity == "critical"),
        )
    )
    total = session.scalar(select(func.count()).select_from(blocking.subquery()))
    ids = session.scalars(blocking.order_by(Finding.advisory_id).limit(MAX_BLOCKERS)).all()
    return status, int(total or 0), list(ids)
