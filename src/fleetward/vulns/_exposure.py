"""Exposure, priority, remediation and alerts of open findings, from live state.

:func:`refresh` is the one place findings meet the fleet. For each finding
of a tenant (or the given ones) it:

1. counts the live devices that run the finding's release now (from the
   versions devices attest, :func:`fleetward.ota.running_by_environment`),
   keeping the peak;
2. prioritises it (:func:`fleetward.vulns.priority.prioritise`) from its
   severity, KEV entry, EPSS score, exposure and the operator's marks;
3. links the release that fixes it (the lowest later deployable release of
   the product whose SBOM was indexed and which has no finding of the same
   advisory) and that release's newest campaign;
4. closes it as ``remediated`` once it had devices and none runs the
   release any more, and reopens it if one does again (a rollback);
5. raises one alert, the first time a finding that devices run is KEV
   listed or operator-marked exploited (``vulnerability-exploited``) or
   critical (``vulnerability-critical``), through the detection alerts and
   their automatic responses;
6. opens a CRA case (:mod:`._cases`) for an exploited finding devices run.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
from collections.abc import Collection, Iterable, Iterator
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from fleetward import detection, ota
from fleetward.ota import release as release_checks
from fleetward.vulns import priority as prio
from fleetward.vulns._rows import advisories_of
from fleetward.vulns.models import (
    Advisory,
    AdvisoryAlias,
    Epss,
    Finding,
    Kev,
    SbomIndex,
    VulnPolicy,
)

__all__ = ["RefreshOutcome", "load_policy", "refresh"]

NOT_RELEVANT = ("not_affected", "false_positive")  # triaged away: no alert, no case
MAX_ALERT_DEVICES = 100_000  # devices an automatic response may act on per alert
_CHUNK = 5000  # keys per IN (...) query


@dataclasses.dataclass
class RefreshOutcome:
    """What a refresh changed."""

    findings: int = 0
    remediated: list[int] = dataclasses.field(default_factory=list)
    reopened: list[int] = dataclasses.field(default_factory=list)
    alerts: int = 0
    exploited: list[int] = dataclasses.field(default_factory=list)  # findings for CRA cases


def load_policy(session: Session, tenant_id: int) -> prio.PriorityPolicy:
    """The tenant's priority policy (the defaults until one is set)."""
    body = session.execute(
        select(VulnPolicy.body).where(VulnPolicy.tenant_id == tenant_id)
    ).scalar_one_or_none()
    return prio.PriorityPolicy.from_mapping(json.loads(body)) if body else prio.PriorityPolicy()


def _version_key(v: str) -> tuple[int, int, int] | None:
    try:
        return release_checks.parse_version(v)
    except Exception:
        return None


def _chunks(keys: Iterable[Any]) -> Iterator[list[Any]]:
    """Sorted keys in chunks of :data:`_CHUNK` (bound-parameter limits)."""
    ordered = sorted(set(keys))
    for start in range(0, len(ordered), _CHUNK):
        yield ordered[start : start + _CHUNK]


def refresh(
    session: Session,
    tenant_id: int,
    *,
    now: dt.datetime,
    finding_ids: Collection[int] | None = None,
) -> RefreshOutcome:
    """Recount, reprioritise, link fixes, close or reopen, and alert (see the module)."""
    out = RefreshOutcome()
    base = select(Finding).where(Finding.tenant_id == tenant_id)
    if finding_ids is not None:
        findings = [
            f for chunk in _chunks(finding_ids)
            for f in session.execute(base.where(Finding.id.in_(chunk))).scalars()
        ]  # fmt: skip
    else:
        findings = list(
            session.execute(
                base.where(
                    (Finding.state == "open")
                    | ((Finding.state == "closed") & (Finding.close_reason == "remediated"))
                )
            ).scalars()
        )
    if not findings:
        return out
    out.findings = len(findings)
    policy = load_policy(session, tenant_id)
    running = ota.running_by_environment(session, tenant_id)
    all_releases = {r.id: r for r in ota.list_releases_of_tenant(session, tenant_id)}
    advisories = advisories_of(session, findings)
    cves: dict[int, list[str]] = {}
    for chunk in _chunks(advisories):
        for apk, cve in session.execute(
            select(AdvisoryAlias.advisory_pk, AdvisoryAlias.cve).where(
                AdvisoryAlias.advisory_pk.in_(chunk)
            )
        ):
            cves.setdefault(int(apk), []).append(str(cve))
    wanted = {c for cs in cves.values() for c in cs}
    kev: dict[str, Kev] = {}
    epss: dict[str, Epss] = {}
    for chunk in _chunks(wanted):
        kev.update(
            (k.cve, k)
            for k in session.execute(
                select(Kev).where(Kev.tenant_id == tenant_id, Kev.cve.in_(chunk))
            ).scalars()
        )
        epss.update(
            (e.cve, e)
            for e in session.execute(
                select(Epss).where(Epss.tenant_id == tenant_id, Epss.cve.in_(chunk))
            ).scalars()
        )
    indexed = set(
        session.execute(
            select(SbomIndex.release_id).where(
                SbomIndex.tenant_id == tenant_id, SbomIndex.status == "indexed"
            )
        ).scalars()
    )
    affected_by: dict[int, set[int]] = {}  # advisory pk -> releases with a finding of it
    for chunk in _chunks(advisories):
        for apk, rid in session.execute(
            select(Finding.advisory_pk, Finding.release_id).where(
                Finding.tenant_id == tenant_id,
                Finding.advisory_pk.in_(chunk),
                ~((Finding.state == "closed") & (Finding.close_reason != "remediated")),
            )
        ):
            affected_by.setdefault(int(apk), set()).add(int(rid))
    fixes: dict[int, ota.Release | None] = {}
    for f in findings:
        rel = all_releases.get(f.release_id)
        if rel is None:
            continue
        adv = advisories[f.advisory_pk]
        envs = running.get((rel.product, rel.version), {})
        devices = sum(envs.values())
        f.devices = devices
        f.peak_devices = max(f.peak_devices, devices)
        fix = _fix_release(rel, all_releases, indexed, affected_by.get(f.advisory_pk, set()))
        fixes[f.id] = fix
        f.fix_release_id = fix.id if fix is not None else None
        # 4. Remediated when devices ran it and none does; reopened on a rollback.
        if f.state == "open" and devices == 0 and f.peak_devices > 0:
            f.state, f.close_reason, f.closed_at = "closed", "remediated", now
            out.remediated.append(f.id)
        elif f.state == "closed" and f.close_reason == "remediated" and devices > 0:
            f.state, f.close_reason, f.closed_at = "open", None, None
            out.reopened.append(f.id)
        k = next((kev[c] for c in cves.get(f.advisory_pk, []) if c in kev), None)
        e = max(
            (epss[c] for c in cves.get(f.advisory_pk, []) if c in epss),
            key=lambda s: s.epss,
            default=None,
        )
        signals = prio.Signals(
            severity=adv.severity,
            cvss_score=adv.cvss_score,
            kev_due=k.due_date if k else None,
            kev_added=k.date_added if k else None,
            epss=e.epss if e else None,
            percentile=e.percentile if e else None,
            devices=devices,
            production_devices=envs.get("production", 0),
            exploited_by_operator=f.exploited,
        )
        p = prio.prioritise(signals, policy=policy, first_seen=f.first_seen)
        f.priority, f.rank, f.due_at = p.level, p.rank, p.due
        f.reasons = json.dumps(list(p.reasons))
        f.updated_at = now
        if f.state != "open" or devices == 0 or f.analysis in NOT_RELEVANT:
            continue
        exploited = k is not None or f.exploited
        if exploited:
            out.exploited.append(f.id)
        kind = (
            "vulnerability-exploited"
            if exploited
            else "vulnerability-critical"
            if adv.severity == "critical"
            else None
        )
        if kind is None or f.alerted == kind or f.alerted == "vulnerability-exploited":
            continue
        _alert(session, f, adv, rel, kind, k, envs, now)
        f.alerted = kind
        out.alerts += 1
    campaigns = ota.campaigns_of_releases(
        session, tenant_id, {x.id for x in fixes.values() if x is not None}
    )
    for f in findings:
        fix = fixes.get(f.id)
        camps = campaigns.get(fix.id, []) if fix is not None else []
        f.campaign_id = camps[0].id if camps else None
    session.flush()
    return out


def _fix_release(
    rel: ota.Release,
    releases: dict[int, ota.Release],
    indexed: set[int],
    affected: set[int],
) -> ota.Release | None:
    """The lowest later deployable release of the product that the advisory
    does not affect (its SBOM indexed, and no finding of it there)."""
    base = _version_key(rel.version)
    best: tuple[tuple[int, int, int], ota.Release] | None = None
    for r in releases.values():
        if r.product != rel.product or r.state != "deployable" or r.id in affected:
            continue
        if r.id not in indexed:
            continue
        v = _version_key(r.version)
        if v is None or base is None or v <= base:
            continue
        if best is None or v < best[0]:
            best = (v, r)
    return best[1] if best else None


def _alert(
    session: Session,
    f: Finding,
    adv: Advisory,
    rel: ota.Release,
    kind: str,
    kev: Kev | None,
    envs: dict[str, int],
    now: dt.datetime,
) -> None:
    devices = ota.devices_running(
        session, tenant_id=f.tenant_id, product=rel.product, version=rel.version
    )
    why = (
        f"KEV listed since {kev.date_added}"
        if kev
        else (
            "marked exploited by an operator" if f.exploited else f"CVSS {adv.cvss_score} critical"
        )
    )
    evidence: dict[str, Any] = {
        "finding": f.id,
        "advisory": adv.advisory_id,
        "release": f"{rel.product} {rel.version}",
        "devices": f.devices,
        "environments": envs,
        "why": why,
    }
    detection.raise_alert(
        session,
        detection.Finding(
            tenant_id=f.tenant_id,
            kind=kind,
            key=f"finding:{f.id}",
            severity="critical" if kind == "vulnerability-exploited" else "high",
            subject=f"release:{rel.id}",
            summary=(
                f"{adv.advisory_id} affects {rel.product} {rel.version}, which {f.devices} "
                f"device(s) run: {why}"
            ),
            evidence=evidence,
            devices=tuple(d.pk for d in devices[:MAX_ALERT_DEVICES]),
        ),
        now=now,
    )
