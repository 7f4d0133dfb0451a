"""The vulnerability round that ``fleetward up`` runs beside the API.

One plain function on the database; the runtime
(``fleetward.runtime.workers.VulnsRunner``) decides when, under a lease so
one host runs it. Each round:

1. indexes the SBOM of every release that has no index yet (releases from
   before vulnerability operations, a few per round);
2. recounts every tenant's findings against the fleet (exposure moves as
   devices update), closing remediated ones, raising alerts and opening
   CRA cases (:func:`fleetward.vulns._exposure.refresh`);
3. alerts before and at each CRA deadline;
4. writes a review for every tenant whose last one is older than the
   review interval.
"""

from __future__ import annotations

import dataclasses
import datetime as dt

from sqlalchemy import select

from fleetward.store import Database
from fleetward.store.db import utcnow
from fleetward.vulns import _cases, imports, reporting
from fleetward.vulns._exposure import refresh
from fleetward.vulns.models import Finding

__all__ = ["REVIEW_EVERY", "RoundOutcome", "vuln_round"]

REVIEW_EVERY = dt.timedelta(days=7)


@dataclasses.dataclass
class RoundOutcome:
    """What one round did."""

    indexed: int = 0
    remediated: int = 0
    alerts: int = 0
    cases: int = 0
    reviews: int = 0


def vuln_round(
    db: Database, *, now: dt.datetime | None = None, review_every: dt.timedelta = REVIEW_EVERY
) -> RoundOutcome:
    """One round (see the module); each step commits on its own."""
    now = now or utcnow()
    out = RoundOutcome()
    with db.session() as s:
        out.indexed = imports.index_pending(s, now=now)
    with db.session() as s:
        tenants = sorted(set(s.execute(select(Finding.tenant_id).distinct()).scalars()))
    for tenant_id in tenants:
        with db.session() as s:
            r = refresh(s, tenant_id, now=now)
            out.remediated += len(r.remediated)
            out.alerts += r.alerts
            out.cases += len(_cases.open_for_findings(s, tenant_id, r.exploited, now=now))
    with db.session() as s:
        out.alerts += _cases.deadline_round(s, now=now)
    with db.session() as s:
        due = reporting.due_reviews(s, every=review_every, now=now)
    for tenant_id in due:
        with db.session() as s:
            reporting.create_review(s, tenant_id, actor="fleetward:vulns", now=now)
            out.reviews += 1
    return out
