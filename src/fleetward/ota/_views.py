"""Campaign reads for the operator console: the tenant's campaigns, and one
campaign's waves with their devices per state and its gates.

Reads only, for a reader of the tenant (``campaign.read``): a campaign of
another tenant is not found, as it is for the API. The list is paged by key
(``before``: the smallest id of the previous page), never by offset, and
bounded (:data:`MAX_LIST`).
"""

from __future__ import annotations

import datetime as dt
import json
from dataclasses import dataclass

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from fleetward.errors import InvalidInputError
from fleetward.ota import reviews
from fleetward.ota.campaigns import get_campaign, wave_verdict
from fleetward.ota.models import Campaign, CampaignDevice, Release
from fleetward.store.db import utcnow
from fleetward.tenancy import scope
from fleetward.tenancy.roles import Principal

__all__ = [
    "CAMPAIGN_STATES",
    "DEVICE_STATUSES",
    "MAX_LIST",
    "CampaignRow",
    "CampaignStatus",
    "WaveProgress",
    "campaign_status",
    "list_campaigns",
]

MAX_LIST = 200  # campaigns in one page of the list
CAMPAIGN_STATES = ("awaiting-approval", "running", "halted", "completed", "aborted")
# A device's status in a campaign, in the order it moves through them.
DEVICE_STATUSES = ("planned", "offered", "installed", "succeeded", "failed", "aborted")


@dataclass(frozen=True)
class CampaignRow:
    """A campaign as a list shows it: its release, state, wave and halt reason."""

    id: int
    release_id: int
    product: str
    version: str
    state: str
    current_wave: int  # -1: not started
    waves: int
    devices: int
    emergency: bool
    reason: str
    created_at: dt.datetime
    updated_at: dt.datetime


def list_campaigns(
    session: Session,
    principal: Principal,
    *,
    state: str | None = None,
    before: int | None = None,
    limit: int = 50,
) -> list[CampaignRow]:
    """The tenant's campaigns, newest first (ids below ``before``, at most ``limit``).

    Raises:
        PermissionDeniedError: the principal may not read campaigns.
        InvalidInputError: an unknown state or a limit out of 1-:data:`MAX_LIST`.
    """
    scope.authorize(principal, scope.CAMPAIGN_READ)
    if not 1 <= limit <= MAX_LIST:
        raise InvalidInputError(f"limit is 1-{MAX_LIST}")
    q = (
        select(Campaign, Release.product, Release.version)
        .join(Release, Release.id == Campaign.release_id)
        .where(Campaign.tenant_id == principal.tenant_id)
    )
    if state is not None:
        if state not in CAMPAIGN_STATES:
            raise InvalidInputError(f"state is one of {', '.join(CAMPAIGN_STATES)}")
        q = q.where(Campaign.state == state)
    if before is not None:
        q = q.where(Campaign.id < before)
    rows = session.execute(q.order_by(Campaign.id.desc()).limit(limit)).all()
    return [
        CampaignRow(
            id=c.id,
            release_id=c.release_id,
            product=product,
            version=version,
            state=c.state,
            current_wave=c.current_wave,
            waves=len(json.loads(c.waves)),
            devices=c.devices,
            emergency=c.emergency,
            reason=c.reason,
            created_at=c.created_at,
            updated_at=c.updated_at,
        )
        for c, product, version in rows
    ]


@dataclass(frozen=True)
class WaveProgress:
    """One wave: its cumulative percentage, size, and devices per status."""

    wave: int
    percent: float
    size: int
    statuses: dict[str, int]  # every DEVICE_STATUSES name, 0 when none


@dataclass(frozen=True)
class CampaignStatus:
    """One campaign as it stands: its release, waves and gates.

    ``gate`` is the current wave's health gate (verdict ``pass``, ``fail`` or
    ``wait``, and why) while the campaign runs or is halted, else None;
    ``review_open`` whether the release's controls review lets it past its
    first wave (passed or waived; always for an emergency campaign).
    """

    campaign: Campaign
    release: Release
    waves: list[WaveProgress]
    gate: tuple[str, str] | None
    review_open: bool


def campaign_status(
    session: Session, principal: Principal, campaign_id: int, *, now: dt.datetime | None = None
) -> CampaignStatus:
    """One campaign of the tenant with its live progress, per wave and status.

    Raises:
        PermissionDeniedError: the principal may not read campaigns.
        NotFoundError: no such campaign in the principal's tenant.
    """
    scope.authorize(principal, scope.CAMPAIGN_READ)
    now = now or utcnow()
    c = get_campaign(session, principal, campaign_id)
    r = session.get(Release, c.release_id)
    if r is None:
        raise RuntimeError("broken invariant, expected: r is not None")
    counts: dict[int, dict[str, int]] = {}
    for wave, status, n in session.execute(
        select(CampaignDevice.wave, CampaignDevice.status, func.count())
        .where(CampaignDevice.campaign_id == c.id)
        .group_by(CampaignDevice.wave, CampaignDevice.status)
    ).all():
        counts.setdefault(int(wave), {})[str(status)] = int(n)
    waves = []
    for i, pct in enumerate(json.loads(c.waves)):
        per = counts.get(i, {})
        statuses = {s: per.get(s, 0) for s in DEVICE_STATUSES}
        statuses.update({s: n for s, n in per.items() if s not in statuses})
        waves.append(WaveProgress(i, float(pct), sum(per.values()), statuses))
    gate = None
    if c.state in ("running", "halted") and c.current_wave >= 0:
        gate = wave_verdict(session, c, now=now)
    return CampaignStatus(c, r, waves, gate, reviews.gate_open(session, c))
