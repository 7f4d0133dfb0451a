"""The controls review of a release, computed from its product's trust map and the live system.

A campaign waits after its first (canary) wave until its release's review
passed or a ``security`` operator waived it (the gate itself is
``fleetward.ota.reviews``). The checklist, each item with the reason it
holds or not:

1. ``trust-map``: a trust map is registered for the release's product.
2. ``sbom-scanned``: the release's SBOM is indexed, and no open finding of
   it still in triage is known exploited (KEV) or critical.
3. ``signing-threshold``: the release is signed to its product role's
   threshold, which is at least the map's ``targets_threshold``.
4. ``reference-measurements``: the release carries reference measurements
   for every boot stage the map says is measured.
5. ``canary-healthy``: the first wave passed its health gate.
6. ``detectors-on``: every detector the map declares runs.
7. ``no-open-drift``: the map's check against the live system finds no drift.

Without a map, the items that need one fail with a reason saying so: a
review can then only be waived, never pass silently.
:func:`review_round` (the trust map worker) reviews every campaign waiting
at the gate and records a review whenever its result changes, so a campaign
goes on by itself once every item holds.
"""

from __future__ import annotations

import datetime as dt
import json

from sqlalchemy.orm import Session

from fleetward import ota, vulns
from fleetward.errors import InvalidInputError
from fleetward.ota import ReviewItem
from fleetward.store.db import utcnow
from fleetward.tenancy import scope
from fleetward.tenancy.roles import Principal
from fleetward.trustmap import maps
from fleetward.trustmap import service as live
from fleetward.trustmap.checks import check

__all__ = ["ITEMS", "checklist", "review_campaign", "review_round", "run_review", "waive"]

ITEMS = (
    "trust-map",
    "sbom-scanned",
    "signing-threshold",
    "reference-measurements",
    "canary-healthy",
    "detectors-on",
    "no-open-drift",
)
ROUND_LIMIT = 100  # campaigns reviewed per worker round
_NO_MAP = "no trust map registered for product {product!r}"


def _join(names: list[str], limit: int = 10) -> str:
    more = f" and {len(names) - limit} more" if len(names) > limit else ""
    return ", ".join(names[:limit]) + more


def checklist(
    session: Session, c: ota.Campaign, *, now: dt.datetime
) -> tuple[list[ReviewItem], str | None]:
    """The review's items for a campaign's release, and the map version it used."""
    release = ota.releases_by_id(session, c.tenant_id, [c.release_id]).get(c.release_id)
    if release is None:
        raise RuntimeError("broken invariant, expected: the campaign's release exists")
    product = release.product
    row = maps.current_map(session, c.tenant_id, product)
    items: list[ReviewItem] = []

    def add(name: str, ok: bool, detail: str) -> None:
        items.append(ReviewItem(name, ok, detail))

    m = None
    if row is None:
        add("trust-map", False, _NO_MAP.format(product=product))
    else:
        try:
            m = maps.parsed(row)
            add("trust-map", True, f"map {row.digest[:12]} of {product}")
        except InvalidInputError as exc:  # the schema moved since it was registered
            add("trust-map", False, f"the registered map no longer loads: {exc}")
    status, blocking, ids = vulns.release_blockers(
        session, tenant_id=c.tenant_id, release_id=release.id
    )
    if status != "indexed":
        add("sbom-scanned", False, f"the SBOM is {status or 'not indexed yet'}")
    elif blocking:
        why = f"{blocking} critical or known-exploited finding(s) untriaged: {_join(ids)}"
        add("sbom-scanned", False, why)
    else:
        add("sbom-scanned", True, "indexed; no untriaged critical or KEV finding")
    role = ota.role_keys(session, tenant_id=c.tenant_id, role=f"product-{product}")
    live_threshold = None if role is None else role[0]
    approvals = len(json.loads(release.approvals or "[]"))
    wanted = m.code.targets_threshold if m is not None else 1
    if release.state != "deployable":
        add("signing-threshold", False, f"the release is {release.state}")
    elif live_threshold is None or live_threshold < wanted:
        why = f"the product role needs {live_threshold} signature(s); the map requires {wanted}"
        add("signing-threshold", False, why)
    else:
        why = f"signed ({approvals} approval(s)); role threshold {live_threshold} >= {wanted}"
        add("signing-threshold", True, why)
    measured = json.loads(release.measurements or "{}")
    stages: list[str] = list(m.code.boot_stages_measured) if m is not None else []
    missing: list[str] = [s for s in stages if not (isinstance(measured, dict) and measured.get(s))]
    if m is None and not measured:
        missing = ["any stage"]
    if missing:
        add("reference-measurements", False, f"no reference value for {_join(missing)}")
    else:
        add("reference-measurements", True, f"stages {_join(sorted(measured))}")
    verdict, why = ota.canary_verdict(session, c, now=now)
    if verdict == "wait":  # its counts move with every report: not part of the record
        why = "its health gate has not decided yet"
    add("canary-healthy", verdict == "pass", f"first wave: {verdict} ({why})")
    if m is None:
        add("detectors-on", False, _NO_MAP.format(product=product))
        add("no-open-drift", False, _NO_MAP.format(product=product))
        return items, None if row is None else row.digest
    facts = live.live_facts(session, tenant_id=c.tenant_id, product=product, now=now)
    enabled = facts.detectors_enabled
    off = [d for d in m.detection.detectors if enabled is not None and d not in enabled]
    if enabled is None:
        add("detectors-on", False, "the live detectors are unknown")
    elif off:
        add("detectors-on", False, f"declared but off: {_join(off)}")
    else:
        add("detectors-on", True, f"{len(m.detection.detectors)} declared, on")
    drifts = check(m, facts).drifts
    if drifts:
        names = [f"{d.kind} ({d.subject})" for d in drifts]
        add("no-open-drift", False, f"{len(drifts)} drift(s): {_join(names)}")
    else:
        add("no-open-drift", True, "the map holds against the live system")
    return items, row.digest if row is not None else None


def review_campaign(
    session: Session, c: ota.Campaign, *, now: dt.datetime | None = None
) -> ota.ReleaseReview:
    """Compute and record the review of a campaign's release (unchanged: not recorded again)."""
    now = now or utcnow()
    items, digest = checklist(session, c, now=now)
    return ota.record_review(session, c, items=items, map_digest=digest, now=now)


def run_review(
    session: Session, principal: Principal, campaign_id: int, *, now: dt.datetime | None = None
) -> ota.ReleaseReview:
    """An operator runs the campaign's review now (instead of waiting for the worker).

    Raises:
        NotFoundError: no such campaign in the tenant.
        PermissionDeniedError: the role may not review releases.
        ConflictError: the campaign has no gate (one wave) or is not running.
    """
    scope.authorize(principal, scope.RELEASE_REVIEW)
    c = ota.get_campaign(session, principal, campaign_id)
    ota.reviewable(c)
    return review_campaign(session, c, now=now)


def waive(
    session: Session,
    principal: Principal,
    campaign_id: int,
    *,
    reason: str,
    now: dt.datetime | None = None,
) -> ota.ReleaseReview:
    """A security operator waives the campaign's failed review (see ``ota.waive_review``)."""
    scope.authorize(principal, scope.RELEASE_REVIEW_WAIVE)
    c = ota.get_campaign(session, principal, campaign_id)
    return ota.waive_review(session, principal, c, reason=reason, now=now)


def review_round(session: Session, *, now: dt.datetime | None = None) -> int:
    """Review every campaign whose canary wave passed and that waits at the gate;
    returns how many were reviewed."""
    now = now or utcnow()
    reviewed = 0
    for c in ota.campaigns_at_review_gate(session, limit=ROUND_LIMIT):
        # Reviewed once its canary wave has a verdict (an operator may run
        # it earlier); a halted canary never reaches the gate.
        if ota.canary_verdict(session, c, now=now)[0] == "pass":
            review_campaign(session, c, now=now)
            reviewed += 1
    return reviewed
