"""What the fleet runs: each device's reported firmware, counted per release.

The attestation service tells :func:`note_running` the version every
verdict names (the device's signed ``swversion`` claim), so the table holds
what each device last proved it runs. Vulnerability exposure reads it:
how many devices run a release now, and which.
"""

from __future__ import annotations

import datetime as dt
import json
from collections import Counter
from collections.abc import Collection, Iterable
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Select, func, select
from sqlalchemy.orm import Session

from fleetward import identity
from fleetward.ota.models import Campaign, CampaignDevice, DeviceFirmware, Release

__all__ = [
    "CampaignProgress",
    "RunningDevice",
    "campaigns_of_releases",
    "devices_running",
    "firmware_of",
    "list_releases_of_tenant",
    "note_running",
    "recent_campaigns",
    "release_ids_of_product",
    "releases_by_id",
    "releases_without",
    "running_by_environment",
    "running_counts",
]

MAX_VERSION_CHARS = 64  # the column; a longer claim is not a release version anyway
# Devices that count as running something: the rest (retired, revoked) run
# nothing fleetward reaches.
LIVE_STATES = ("active", "quarantined")
_CHUNK = 5000  # keys per IN (...) query


def note_running(
    session: Session, *, tenant_id: int, device_pk: int, product: str, version: str,
    now: dt.datetime,
) -> None:  # fmt: skip
    """Record that a device runs ``version`` of ``product`` (its latest verdict)."""
    if len(version) > MAX_VERSION_CHARS:
        return
    row = session.get(DeviceFirmware, device_pk)
    if row is None:
        row = DeviceFirmware(device_pk=device_pk, tenant_id=tenant_id, reported_at=now)
        row.product, row.version = product, version
        session.add(row)
    elif row.version != version or row.product != product:
        row.product, row.version, row.reported_at = product, version, now
    else:
        row.reported_at = now


def firmware_of(session: Session, pks: Collection[int]) -> dict[int, tuple[str, dt.datetime]]:
    """The version each of these devices last proved it runs, and when
    (devices that never reported are left out). For one page of devices:
    the keys come from a read already scoped to the tenant."""
    out: dict[int, tuple[str, dt.datetime]] = {}
    keys = sorted(set(pks))
    for start in range(0, len(keys), _CHUNK):
        for pk, version, at in session.execute(
            select(
                DeviceFirmware.device_pk, DeviceFirmware.version, DeviceFirmware.reported_at
            ).where(DeviceFirmware.device_pk.in_(keys[start : start + _CHUNK]))
        ):
            out[int(pk)] = (str(version), at)
    return out


def running_by_environment(
    session: Session, tenant_id: int
) -> dict[tuple[str, str], dict[str, int]]:
    """Live devices per (product, version) and environment (``unknown``
    for a device with no certificate)."""
    rows = session.execute(
        select(DeviceFirmware.device_pk, DeviceFirmware.product, DeviceFirmware.version).where(
            DeviceFirmware.tenant_id == tenant_id,
            DeviceFirmware.device_pk.in_(identity.live_device_pks(tenant_id, LIVE_STATES)),
        )
    ).all()
    envs = identity.latest_environments(session, [int(r[0]) for r in rows])
    out: dict[tuple[str, str], dict[str, int]] = {}
    for pk, product, version in rows:
        env = envs.get(int(pk), "unknown")
        per = out.setdefault((product, version), {})
        per[env] = per.get(env, 0) + 1
    return out


def running_counts(session: Session, tenant_id: int) -> dict[tuple[str, str], int]:
    """Live devices per (product, version) of one tenant."""
    rows = session.execute(
        select(DeviceFirmware.product, DeviceFirmware.version, func.count())
        .where(
            DeviceFirmware.tenant_id == tenant_id,
            DeviceFirmware.device_pk.in_(identity.live_device_pks(tenant_id, LIVE_STATES)),
        )
        .group_by(DeviceFirmware.product, DeviceFirmware.version)
    ).all()
    return {(p, v): int(n) for p, v, n in rows}


@dataclass(frozen=True)
class RunningDevice:
    """A live device running a release, with what exposure groups it by."""

    pk: int
    device_id: str
    environment: str | None
    labels: dict[str, str]


def devices_running(
    session: Session, *, tenant_id: int, product: str, version: str
) -> list[RunningDevice]:
    """The live devices that last reported running ``product`` ``version``."""
    pks = list(
        session.execute(
            select(DeviceFirmware.device_pk).where(
                DeviceFirmware.tenant_id == tenant_id,
                DeviceFirmware.product == product,
                DeviceFirmware.version == version,
            )
        ).scalars()
    )
    devices = identity.devices_by_pk(session, pks)
    envs = identity.latest_environments(session, pks)
    out = []
    for pk in pks:
        d = devices.get(pk)
        if d is None or d.tenant_id != tenant_id or d.state not in LIVE_STATES:
            continue
        labels = {str(k): str(v) for k, v in json.loads(d.labels or "{}").items()}
        out.append(RunningDevice(pk, d.device_id, envs.get(pk), labels))
    return out


def list_releases_of_tenant(session: Session, tenant_id: int) -> list[Release]:
    """Every release of a tenant, any state (for the tenant's own workers)."""
    return list(
        session.execute(
            select(Release).where(Release.tenant_id == tenant_id).order_by(Release.id)
        ).scalars()
    )


def releases_without(session: Session, done: Select[Any], *, limit: int) -> list[Release]:
    """Releases (of any tenant) whose id is not in ``done`` (a subquery of
    release ids another domain has handled), oldest first."""
    return list(
        session.execute(
            select(Release).where(Release.id.not_in(done)).order_by(Release.id).limit(limit)
        ).scalars()
    )


def release_ids_of_product(tenant_id: int, product: str) -> Select[Any]:
    """A subquery: the ids of a tenant's releases of one product."""
    return select(Release.id).where(Release.tenant_id == tenant_id, Release.product == product)


def releases_by_id(session: Session, tenant_id: int, ids: Iterable[int]) -> dict[int, Release]:
    """The tenant's releases with these ids."""
    wanted = set(ids)
    if not wanted:
        return {}
    rows = session.execute(
        select(Release).where(Release.tenant_id == tenant_id, Release.id.in_(wanted))
    ).scalars()
    return {r.id: r for r in rows}


@dataclass(frozen=True)
class CampaignProgress:
    """A campaign shipping a release: its state and how many devices got it."""

    id: int
    release_id: int
    state: str
    devices: int
    succeeded: int
    failed: int


def campaigns_of_releases(
    session: Session, tenant_id: int, release_ids: Iterable[int]
) -> dict[int, list[CampaignProgress]]:
    """The campaigns of each release, newest first, with their progress."""
    ids = set(release_ids)
    if not ids:
        return {}
    camps = list(
        session.execute(
            select(Campaign)
            .where(Campaign.tenant_id == tenant_id, Campaign.release_id.in_(ids))
            .order_by(Campaign.id.desc())
        ).scalars()
    )
    counts: dict[int, Counter[str]] = {c.id: Counter() for c in camps}
    if camps:
        for cid, status, n in session.execute(
            select(CampaignDevice.campaign_id, CampaignDevice.status, func.count())
            .where(CampaignDevice.campaign_id.in_(list(counts)))
            .group_by(CampaignDevice.campaign_id, CampaignDevice.status)
        ).all():
            counts[cid][status] = int(n)
    out: dict[int, list[CampaignProgress]] = {}
    for c in camps:
        k = counts[c.id]
        out.setdefault(c.release_id, []).append(
            CampaignProgress(
                c.id, c.release_id, c.state, sum(k.values()), k["succeeded"], k["failed"]
            )
        )
    return out


def recent_campaigns(
    session: Session, *, tenant_id: int, product: str, limit: int
) -> list[Campaign]:
    """The tenant's newest ``limit`` campaigns of a product's releases, newest first."""
    return list(
        session.execute(
            select(Campaign)
            .where(
                Campaign.tenant_id == tenant_id,
                Campaign.release_id.in_(release_ids_of_product(tenant_id, product)),
            )
            .order_by(Campaign.id.desc())
            .limit(limit)
        ).scalars()
    )
