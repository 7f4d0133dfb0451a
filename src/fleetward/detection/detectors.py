"""Detectors: pure functions from telemetry events to findings.

Each detector takes event views (and, where it needs them, device
attributes) and returns :class:`Finding` values; the service turns findings
into deduplicated alerts. No I/O, no clock: tested alone.

- :func:`boot_integrity`: every ``fail`` verdict is a finding for its device;
- :func:`cohort_boot_failures`: a failure rate that stands out in a cohort
  (product, factory, batch, firmware version, label) against the rest of the
  fleet is **one** finding naming the most specific such cohort, and its
  devices are not reported one by one;
- :func:`firmware_drift`: a device running firmware no release has;
- :func:`authz_failures`: broker denials above a device's own baseline;
- :func:`message_floods`: telemetry over a device's rate limit;
- :func:`enrollment_anomalies`: refusals or bursts per factory batch;
- :func:`silent_devices`, :func:`expiring_certificates`: periodic sweeps.
"""

from __future__ import annotations

import datetime as dt
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "DeviceInfo",
    "EventView",
    "Finding",
    "authz_failures",
    "boot_integrity",
    "cohort_boot_failures",
    "enrollment_anomalies",
    "expiring_certificates",
    "firmware_drift",
    "message_floods",
    "silent_devices",
]


@dataclass(frozen=True)
class EventView:
    """One telemetry event as detectors see it."""

    id: int
    tenant_id: int
    device_pk: int | None
    type: str
    count: int
    fields: Mapping[str, Any]


@dataclass(frozen=True)
class DeviceInfo:
    """What cohorts are made of."""

    pk: int
    device_id: str
    product: str
    factory: int | None = None
    batch: int | None = None
    labels: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Finding:
    """What a detector saw; ``key`` deduplicates it per tenant and kind."""

    tenant_id: int
    kind: str
    key: str
    severity: str
    subject: str
    summary: str
    evidence: Mapping[str, Any]
    devices: tuple[int, ...] = ()  # the devices an automatic response acts on


def boot_integrity(
    events: Iterable[EventView],
    devices: Mapping[int, DeviceInfo],
    *,
    covered: frozenset[int] | set[int] = frozenset(),
) -> list[Finding]:
    """A finding per device with a ``fail`` verdict (unless a cohort covers it)."""
    found: dict[int, Finding] = {}
    for e in events:
        if e.type != "attestation.verdict" or e.fields.get("verdict") != "fail":
            continue
        if e.device_pk is None or e.device_pk in covered or e.device_pk not in devices:
            continue
        d = devices[e.device_pk]
        failed = list(e.fields.get("failed", []))
        found[d.pk] = Finding(
            tenant_id=e.tenant_id,
            kind="boot-integrity",
            key=f"device:{d.device_id}",
            severity="high",
            subject=f"device:{d.device_id}",
            summary=f"boot attestation of {d.device_id} failed: {', '.join(failed)}",
            evidence={"event": e.id, "failed": failed, "swversion": e.fields.get("swversion")},
            devices=(d.pk,),
        )
    return list(found.values())


def _cohorts(d: DeviceInfo, version: str | None) -> list[str]:
    keys = [f"product:{d.product}"]
    if d.factory is not None:
        keys.append(f"factory:{d.factory}")
    if d.batch is not None:
        keys.append(f"batch:{d.batch}")
    if version is not None:
        keys.append(f"firmware:{version}")
    keys.extend(f"label:{k}={v}" for k, v in sorted(d.labels.items()))
    return keys


def cohort_boot_failures(
    latest: Mapping[int, EventView],
    devices: Mapping[int, DeviceInfo],
    *,
    min_failures: int = 3,
    min_rate: float = 0.02,
    lift: float = 3.0,
) -> list[Finding]:
    """Cohorts whose failure rate stands out from the rest of the fleet.

    Args:
        latest: each device's latest verdict event (the appraised fleet).
        devices: attributes of those devices.
        min_failures: fewer failures than this are individual, not a pattern.
        min_rate: the cohort's failure rate must reach this.
        lift: ... and be this many times the rest of the fleet's rate.
    """
    members: dict[str, set[int]] = defaultdict(set)
    failing: set[int] = set()
    tenant: dict[int, int] = {}
    for pk, e in latest.items():
        d = devices.get(pk)
        if d is None:
            continue
        tenant[pk] = e.tenant_id
        if e.fields.get("verdict") == "fail":
            failing.add(pk)
        for key in _cohorts(d, e.fields.get("swversion")):
            members[key].add(pk)
    total = len(tenant)
    flagged = []
    for key, group in members.items():
        fails = group & failing
        rest = total - len(group)
        if len(fails) < min_failures or rest == 0:
            continue  # a cohort that is the whole fleet has nothing to stand out from
        rate = len(fails) / len(group)
        rest_rate = (len(failing) - len(fails)) / rest
        if rate >= min_rate and rate >= lift * rest_rate:
            flagged.append((key, group, fails, rate, rest_rate))
    # The most specific explanation first; a broader cohort whose failures
    # are all explained already is the same pattern, not a new one.
    flagged.sort(key=lambda f: (len(f[1]), f[0]))
    explained: set[int] = set()
    findings = []
    for key, group, fails, rate, rest_rate in flagged:
        if fails <= explained:
            continue
        explained |= fails
        some = next(iter(fails))
        findings.append(
            Finding(
                tenant_id=tenant[some],
                kind="boot-integrity-cohort",
                key=key,
                severity="critical",
                subject=key,
                summary=(
                    f"{len(fails)} of {len(group)} devices in {key} fail boot attestation "
                    f"({rate:.1%} against {rest_rate:.1%} in the rest of the fleet)"
                ),
                evidence={
                    "cohort": key,
                    "failing": sorted(devices[p].device_id for p in fails),
                    "size": len(group),
                    "rate": round(rate, 4),
                    "rest_rate": round(rest_rate, 4),
                },
                devices=tuple(sorted(group)),
            )
        )
    return findings


def firmware_drift(events: Iterable[EventView], devices: Mapping[int, DeviceInfo]) -> list[Finding]:
    """Devices that run firmware no release of their product has."""
    found: dict[int, Finding] = {}
    for e in events:
        if e.type != "attestation.verdict" or e.fields.get("verdict") != "unknown-firmware":
            continue
        if e.device_pk is None or e.device_pk not in devices:
            continue
        d = devices[e.device_pk]
        version = e.fields.get("swversion")
        found[d.pk] = Finding(
            tenant_id=e.tenant_id,
            kind="firmware-drift",
            key=f"device:{d.device_id}",
            severity="high",
            subject=f"device:{d.device_id}",
            summary=f"{d.device_id} runs firmware {version}, which no release of {d.product} has",
            evidence={"event": e.id, "swversion": version},
            devices=(d.pk,),
        )
    return list(found.values())


def authz_failures(
    window: Sequence[EventView],
    baseline: Mapping[int, float],
    devices: Mapping[int, DeviceInfo],
    *,
    floor: int = 20,
    factor: float = 5.0,
) -> list[Finding]:
    """Devices whose broker denials in the window exceed ``max(floor, factor x
    their own baseline)`` (denials per window in the past)."""
    counts: dict[int, int] = defaultdict(int)
    tenants: dict[int, int] = {}
    for e in window:
        if e.type.startswith("authz.") and e.device_pk is not None:
            counts[e.device_pk] += e.count
            tenants[e.device_pk] = e.tenant_id
    findings = []
    for pk, n in counts.items():
        limit = max(floor, factor * baseline.get(pk, 0.0))
        if n > limit and pk in devices:
            d = devices[pk]
            findings.append(
                Finding(
                    tenant_id=tenants[pk],
                    kind="authz-failures",
                    key=f"device:{d.device_id}",
                    severity="medium",
                    subject=f"device:{d.device_id}",
                    summary=f"{d.device_id}: {n} authorization denials (limit {limit:.0f})",
                    evidence={"denials": n, "baseline": baseline.get(pk, 0.0)},
                    devices=(pk,),
                )
            )
    return findings


def _since(row: Mapping[str, Any], baseline: Mapping[str, Any] | None) -> dict[str, Any]:
    """``row``'s counters less ``baseline``'s (the counts when the batch's
    last alert was resolved): what happened since."""
    if baseline is None:
        return dict(row)
    before = dict(baseline.get("refused_by_category", {}))
    categories = {
        k: int(n) - int(before.get(k, 0))
        for k, n in dict(row.get("refused_by_category", {})).items()
    }
    return {
        **row,
        "accepted": int(row["accepted"]) - int(baseline.get("accepted", 0)),
        "refused": int(row["refused"]) - int(baseline.get("refused", 0)),
        "refused_by_category": {k: n for k, n in categories.items() if n > 0},
    }


def enrollment_anomalies(
    tenant_id: int,
    signals: Iterable[Mapping[str, Any]],
    *,
    resolved: Mapping[str, Mapping[str, Any]] | None = None,
    max_refusals: int = 10,
    max_refusal_ratio: float = 0.2,
) -> list[Finding]:
    """Factory batches with many refused enrollment attempts (unknown ids,
    duplicates, replayed nonces, bad attestations) or a burst against the
    batch's own normal rate. ``signals`` are
    :func:`fleetward.provisioning.service.counters` rows (counts since the
    batch's first attempt).

    The counters are windowed by resolution: ``resolved`` maps a batch's key
    to the counts it had when its last alert was resolved, and only attempts
    since then are judged, so a resolved alert comes back only with new
    anomalous attempts (a burst, too, needs attempts since then). The
    evidence carries the running totals (the next baseline) and the counts
    since the resolution.
    """
    resolved = resolved or {}
    findings = []
    for row in signals:
        key = f"factory:{row['factory_id']}:batch:{row['batch_id']}"
        since = _since(row, resolved.get(key))
        refused, accepted = int(since["refused"]), int(since["accepted"])
        ratio = refused / max(1, refused + accepted)
        reasons = []
        if refused >= max_refusals and ratio >= max_refusal_ratio:
            reasons.append(f"{refused} refused attempts ({ratio:.0%})")
        if row.get("burst") and refused + accepted > 0:
            reasons.append(
                f"burst: {row['last_window']} attempts in the last window against "
                f"{row['average_per_window']} on average"
            )
        if not reasons:
            continue
        findings.append(
            Finding(
                tenant_id=tenant_id,
                kind="enrollment-anomaly",
                key=key,
                severity="high",
                subject=key,
                summary="; ".join(reasons),
                evidence={
                    "refused_by_category": dict(row.get("refused_by_category", {})),
                    "accepted": int(row["accepted"]),
                    "refused": int(row["refused"]),
                    "since_resolved": {"accepted": accepted, "refused": refused}
                    if key in resolved
                    else None,
                },
            )
        )
    return findings


def silent_devices(
    tenant_id: int,
    last_seen: Mapping[int, dt.datetime],
    devices: Mapping[int, DeviceInfo],
    *,
    now: dt.datetime,
    max_silence: dt.timedelta,
) -> list[Finding]:
    """Devices with no event for longer than ``max_silence``."""
    return [
        Finding(
            tenant_id=tenant_id,
            kind="device-silent",
            key=f"device:{devices[pk].device_id}",
            severity="low",
            subject=f"device:{devices[pk].device_id}",
            summary=f"{devices[pk].device_id} silent since {seen.isoformat()}",
            evidence={"last_seen": seen.isoformat()},
            devices=(pk,),
        )
        for pk, seen in last_seen.items()
        if pk in devices and now - seen > max_silence
    ]


def expiring_certificates(
    tenant_id: int,
    not_after: Mapping[int, dt.datetime],
    devices: Mapping[int, DeviceInfo],
    *,
    now: dt.datetime,
    within: dt.timedelta,
) -> list[Finding]:
    """Devices whose newest good certificate expires within ``within``."""
    return [
        Finding(
            tenant_id=tenant_id,
            kind="certificate-expiry",
            key=f"device:{devices[pk].device_id}",
            severity="medium" if expiry > now else "high",
            subject=f"device:{devices[pk].device_id}",
            summary=f"certificate of {devices[pk].device_id} expires {expiry.isoformat()}",
            evidence={"not_after": expiry.isoformat()},
            devices=(pk,),
        )
        for pk, expiry in not_after.items()
        if pk in devices and expiry - now <= within
    ]


def message_floods(
    events: Iterable[EventView], devices: Mapping[int, DeviceInfo], *, min_dropped: int = 100
) -> list[Finding]:
    """Devices whose telemetry ran over their rate limit by ``min_dropped``
    messages or more (the ingest counted what it dropped)."""
    dropped: dict[int, int] = defaultdict(int)
    tenants: dict[int, int] = {}
    for e in events:
        if e.type == "telemetry.dropped" and e.device_pk is not None:
            dropped[e.device_pk] += e.count
            tenants[e.device_pk] = e.tenant_id
    return [
        Finding(
            tenant_id=tenants[pk],
            kind="message-flood",
            key=f"device:{devices[pk].device_id}",
            severity="medium",
            subject=f"device:{devices[pk].device_id}",
            summary=f"{devices[pk].device_id} sent {n} messages over its rate limit",
            evidence={"dropped": n},
            devices=(pk,),
        )
        for pk, n in dropped.items()
        if n >= min_dropped and pk in devices
    ]
