"""The posture page (``/``): the fleet's trust state at a glance.

One page for the viewer's tenant, each section read by its own domain with
grouped queries (``GROUP BY`` / ``COUNT``), never by loading devices into
Python, so the page costs the same handful of queries at 10 devices as at
10,000 (``benchmarks/console.py`` holds it to 1 s of server time there):

1. devices by state, environment and key origin (``identity.fleet_counts``);
2. certificates: live devices whose newest good certificate expires within
   :data:`EXPIRY_WINDOW` (counted, the :data:`SOONEST` soonest named) or has
   expired (``identity.certificate_outlook``);
3. boot verdicts per cohort (product and firmware version) over
   :data:`VERDICT_WINDOW`, each device by its latest verdict
   (``telemetry.verdict_cohorts``); cohorts with failures first;
4. firmware across the fleet (``ota.running_counts``) against each
   product's newest deployable release (``ota.newest_deployable``): any
   other version is drift;
5. open alerts by severity (``detection.alert_counts``);
6. open vulnerability findings by priority and overdue (``vulns.counts``),
   open CRA cases by their next deadline (``vulns.list_cases``);
7. trust-map drifts per product from the latest checks
   (``trustmap.maps_overview``), and campaigns waiting at the release review
   gate (``ota.campaigns_waiting_review``).

A section is read only when the viewer's role and scope allow the read the
matching API route performs (``scope.decide``), so a narrower token sees
fewer sections, never another tenant's numbers: every read takes the
principal's tenant. The page offers no actions: each section links to the
page where they are.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse
from sqlalchemy.orm import Session

from fleetward import detection, identity, ota, telemetry, trustmap, vulns
from fleetward.store import utcnow
from fleetward.tenancy import Principal, scope
from fleetward.web._page import show
from fleetward.web._viewer import ViewerDep

__all__ = ["EXPIRY_WINDOW", "SOONEST", "VERDICT_WINDOW", "read_posture", "router"]

router = APIRouter(include_in_schema=False)

EXPIRY_WINDOW = dt.timedelta(days=30)  # "expiring soon"
SOONEST = 10  # expiring certificates named on the page (the count is exact)
VERDICT_WINDOW = dt.timedelta(hours=24)  # boot verdicts counted per cohort
MAX_COHORTS = 30  # cohort rows shown (failing ones first); the rest are summed
MAX_FIRMWARE_ROWS = 60  # (product, version) rows shown (drift first); the rest are summed
MAX_CASES = 10  # open CRA cases named (soonest deadline first)
MAX_GATE = 10  # campaigns named as waiting at the review gate
MAX_DRIFT_PRODUCTS = 20  # products named with their trust-map drifts

STATE_ORDER = ("active", "quarantined", "pending", "revoked", "retired")
SEVERITY_ORDER = ("critical", "high", "medium", "low")
PRIORITY_ORDER = ("critical", "high", "medium", "low", "none")
# Chart colours are SVG presentation attributes (the CSP allows no inline CSS).
OK, WARN, BAD, INFO, MUTED = "#1a7f37", "#9a6700", "#cf222e", "#3b6ea5", "#8c959f"
STATE_COLOURS = {"active": OK, "quarantined": WARN, "revoked": BAD, "pending": INFO}
SEVERITY_COLOURS = {"critical": BAD, "high": BAD, "medium": WARN, "low": INFO}
ORIGIN_COLOURS = {"hardware-attested": OK, "software": WARN, "unknown": MUTED}

Rows = list[tuple[str, int, str]]


@dataclass(frozen=True)
class Cohort:
    """Boot verdicts of one product and firmware version (devices by their latest)."""

    product: str
    version: str
    passed: int
    failed: int
    unknown_firmware: int
    other: int

    @property
    def devices(self) -> int:
        """Devices appraised in the window."""
        return self.passed + self.failed + self.unknown_firmware + self.other


@dataclass(frozen=True)
class FirmwareRow:
    """Live devices running one version of a product, against its newest release."""

    product: str
    version: str
    devices: int
    newest: str | None  # the product's newest deployable release (None: none)

    @property
    def drift(self) -> bool:
        """Not the newest deployable release (or the product has none)."""
        return self.version != self.newest


def _ordered(counts: dict[str, int], order: tuple[str, ...], colours: dict[str, str]) -> Rows:
    """Chart rows: known keys in ``order``, the rest by name."""
    keys = [k for k in order if k in counts] + sorted(k for k in counts if k not in order)
    return [(k, counts[k], colours.get(k, INFO)) for k in keys]


def _cohorts(counts: dict[tuple[str, str, str], int]) -> list[Cohort]:
    per: dict[tuple[str, str], dict[str, int]] = {}
    for (product, version, verdict), n in counts.items():
        bucket = per.setdefault((product, version), {})
        bucket[verdict] = bucket.get(verdict, 0) + n
    cohorts = [
        Cohort(
            product=p,
            version=v,
            passed=b.get("pass", 0),
            failed=b.get("fail", 0),
            unknown_firmware=b.get("unknown-firmware", 0),
            other=sum(n for k, n in b.items() if k not in ("pass", "fail", "unknown-firmware")),
        )
        for (p, v), b in per.items()
    ]
    # Failing cohorts first (most failures first), then unknown firmware, then the largest.
    cohorts.sort(key=lambda c: (-c.failed, -c.unknown_firmware, -c.devices, c.product, c.version))
    return cohorts


def _cohort_colour(c: Cohort) -> str:
    if c.failed:
        return BAD
    return WARN if c.unknown_firmware or c.other else OK


def _firmware(
    running: dict[tuple[str, str], int], newest: dict[str, tuple[int, str]]
) -> list[FirmwareRow]:
    rows = [
        FirmwareRow(p, v, n, newest[p][1] if p in newest else None) for (p, v), n in running.items()
    ]
    rows.sort(key=lambda r: (r.product, not r.drift, -r.devices, r.version))
    return rows


def _sections(principal: Principal) -> dict[str, bool]:
    """Which sections the principal may read (the API's read action of each)."""

    def may(action: scope.Action) -> bool:
        return scope.decide(principal, action).allowed

    return {
        "devices": may(scope.DEVICE_READ),
        "firmware": may(scope.RELEASE_READ),
        "campaigns": may(scope.CAMPAIGN_READ),
        "alerts": may(scope.ALERT_READ),
        "vulns": may(scope.VULN_READ),
        "trustmap": may(scope.TRUSTMAP_READ),
    }


def read_posture(session: Session, principal: Principal, *, now: dt.datetime) -> dict[str, Any]:
    """Everything the posture page shows, for the principal's tenant.

    Every figure is an aggregate the database computes (see the module
    docstring); sections the principal may not read are left out.
    """
    can = _sections(principal)
    tenant = principal.tenant_id
    out: dict[str, Any] = {"now": now, "can": can, "expiry_days": EXPIRY_WINDOW.days}
    if can["devices"]:
        fleet = identity.fleet_counts(session, principal, now=now)
        out["fleet"] = fleet
        out["state_rows"] = _ordered(fleet.states, STATE_ORDER, STATE_COLOURS)
        out["env_rows"] = _ordered(fleet.environments, ("production", "test"), {"none": MUTED})
        out["origin_rows"] = _ordered(
            fleet.key_origins, ("hardware-attested", "software", "unknown"), ORIGIN_COLOURS
        )
        out["certs"] = identity.certificate_outlook(
            session, principal, now=now, within=EXPIRY_WINDOW, limit=SOONEST
        )
        cohorts = _cohorts(
            telemetry.verdict_cohorts(session, tenant_id=tenant, since=now - VERDICT_WINDOW)
        )
        shown = cohorts[:MAX_COHORTS]
        out["cohorts"] = shown
        out["cohorts_more"] = sum(c.devices for c in cohorts[MAX_COHORTS:])
        out["cohort_rows"] = [
            (f"{c.product} {c.version}", c.devices, _cohort_colour(c)) for c in shown
        ]
        out["verdicts"] = {
            "pass": sum(c.passed for c in cohorts),
            "fail": sum(c.failed for c in cohorts),
            "unknown-firmware": sum(c.unknown_firmware for c in cohorts),
        }
    if can["firmware"]:
        firmware = _firmware(
            ota.running_counts(session, tenant), ota.newest_deployable(session, tenant)
        )
        out["firmware"] = firmware[:MAX_FIRMWARE_ROWS]
        out["firmware_more"] = sum(r.devices for r in firmware[MAX_FIRMWARE_ROWS:])
        out["drifting"] = sum(r.devices for r in firmware if r.drift)
        out["running"] = sum(r.devices for r in firmware)
    if can["campaigns"]:
        waiting = ota.campaigns_waiting_review(session, tenant_id=tenant, limit=MAX_GATE)
        releases = ota.releases_by_id(session, tenant, {c.release_id for c in waiting})
        out["gate"] = [(c, releases.get(c.release_id)) for c in waiting]
    if can["alerts"]:
        alerts = detection.alert_counts(session, principal, state="open")
        out["alert_rows"] = _ordered(alerts, SEVERITY_ORDER, SEVERITY_COLOURS)
        out["alerts_open"] = sum(alerts.values())
    if can["vulns"]:
        summary = vulns.counts(session, tenant, now=now)
        out["vuln_rows"] = _ordered(summary["open"], PRIORITY_ORDER, SEVERITY_COLOURS)
        out["vulns_open"] = sum(summary["open"].values())
        out["vulns_overdue"] = summary["overdue"]
        cases = vulns.list_cases(session, principal, state="open")
        far = dt.datetime.max.replace(tzinfo=dt.UTC)
        cases.sort(key=lambda v: v.next[1] if v.next else far)
        out["cases"] = cases[:MAX_CASES]
        out["cases_open"] = len(cases)
    if can["trustmap"]:
        maps = trustmap.maps_overview(session, principal)
        checked = [m for m in maps if m.check is not None]
        drifting = [m for m in checked if m.check is not None and m.check.drifts]
        drifting.sort(key=lambda m: (-len(m.check.drifts) if m.check else 0, m.product))
        out["maps"] = len(maps)
        out["maps_unchecked"] = len(maps) - len(checked)
        out["map_drifts"] = drifting[:MAX_DRIFT_PRODUCTS]
        out["map_drift_total"] = sum(len(m.check.drifts) for m in drifting if m.check)
    return out


@router.get("/")
def posture(request: Request, who: ViewerDep) -> HTMLResponse:
    """The posture of the viewer's tenant."""
    now = utcnow()
    return show(
        request, who, "posture.html", lambda session: read_posture(session, who.principal, now=now)
    )
