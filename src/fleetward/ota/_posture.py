"""Aggregate reads of releases and campaigns for the fleet's posture.

What the console's posture page compares the fleet's running firmware
(:func:`fleetward.ota.fleet.running_counts`) with, and which campaigns wait
at the release review gate, for one tenant, in a fixed number of queries.
Versions of a product only ever go up (``checks.check_new_version``
refuses anything else), so a product's newest release is the one with the
highest id.
"""

from __future__ import annotations

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from fleetward.ota.models import Campaign, Release
from fleetward.ota.reviews import gate_open

__all__ = ["campaigns_waiting_review", "newest_deployable"]

_SCAN = 4  # campaigns read per one returned: some in wave 0 have their gate open already


def newest_deployable(session: Session, tenant_id: int) -> dict[str, tuple[int, str]]:
    """Per product of the tenant, its newest deployable release as ``(id, version)``
    (products with none are left out). One grouped query."""
    newest = (
        select(func.max(Release.id))
        .where(Release.tenant_id == tenant_id, Release.state == "deployable")
        .group_by(Release.product)
    )
    return {
        str(product): (int(rid), str(version))
        for rid, product, version in session.execute(
            select(Release.id, Release.product, Release.version).where(Release.id.in_(newest))
        )
    }


def campaigns_waiting_review(session: Session, *, tenant_id: int, limit: int) -> list[Campaign]:
    """The tenant's running campaigns in their first wave whose review gate is
    not open yet (what :func:`fleetward.ota.reviews.campaigns_at_review_gate`
    finds for every tenant), oldest first, at most ``limit``."""
    rows = session.scalars(
        select(Campaign)
        .where(
            Campaign.tenant_id == tenant_id,
            Campaign.state == "running",
            Campaign.current_wave == 0,
            Campaign.emergency.is_(False),
        )
        .order_by(Campaign.id)
        .limit(max(1, limit) * _SCAN)
    ).all()
    return [c for c in rows if not gate_open(session, c)][:limit]
