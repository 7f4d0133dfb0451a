"""The detection service: run detectors over new events, keep alerts, respond.

:func:`run` reads the events added since its cursor (plus the window the
cohort and rate detectors need), runs every detector, and upserts alerts:
an open or acknowledged alert with the same (tenant, kind, key) absorbs a
new finding (count, last seen, evidence) instead of raising another. A new
alert triggers the tenant's configured automatic response for its kind
(quarantine the device, or the cohort), through the identity service, so
the broker narrows the devices' rights within a second; the response is
audited and written on the alert.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
from collections.abc import Iterable

from sqlalchemy import select
from sqlalchemy.orm import Session

from fleetward import audit, identity, provisioning, telemetry, tenancy
from fleetward.detection import detectors as det
from fleetward.detection.models import Alert, AlertResponse, DetectorCursor
from fleetward.errors import ConflictError, FleetwardError, InvalidInputError, NotFoundError
from fleetward.store.db import utcnow
from fleetward.tenancy import scope
from fleetward.tenancy.roles import Permission, Principal, require

__all__ = [
    "ACTIONS",
    "KINDS",
    "alerts_about",
    "list_alerts",
    "raise_alert",
    "responses",
    "run",
    "set_alert_state",
    "set_response",
    "sweep",
]

log = logging.getLogger("fleetward.detection")

KINDS = (
    "boot-integrity",
    "boot-integrity-cohort",
    "firmware-drift",
    "authz-failures",
    "message-flood",
    "enrollment-anomaly",
    "device-silent",
    "certificate-expiry",
    # Raised by vulnerability operations (fleetward.vulns), not by a detector
    # over events: a KEV entry or a critical finding on deployed devices, and
    # a CRA reporting deadline coming up or passed.
    "vulnerability-exploited",
    "vulnerability-critical",
    "cra-deadline",
    # Raised by the trust map worker (fleetward.trustmap): a drift between a
    # product's registered map and the live installation.
    "trust-drift",
)
ACTIONS = ("none", "quarantine-device", "quarantine-cohort")
WINDOW = dt.timedelta(hours=1)  # verdicts and denials the pattern detectors look at
MAX_BATCH = 50_000


def _views(rows: Iterable[telemetry.Event]) -> list[det.EventView]:
    return [
        det.EventView(
            id=e.id,
            tenant_id=e.tenant_id or 0,
            device_pk=e.device_pk,
            type=e.type,
            count=e.count,
            fields=json.loads(e.fields or "{}"),
        )
        for e in rows
    ]


def _devices(session: Session, pks: set[int]) -> dict[int, det.DeviceInfo]:
    return {
        pk: det.DeviceInfo(
            pk=d.id,
            device_id=d.device_id,
            product=d.product,
            factory=d.factory_id,
            batch=d.batch_id,
            labels={str(k): str(v) for k, v in json.loads(d.labels or "{}").items()},
        )
        for pk, d in identity.devices_by_pk(session, pks).items()
    }


def _upsert(session: Session, f: det.Finding, now: dt.datetime) -> Alert | None:
    """Record a finding; returns the alert when it is new."""
    existing = session.execute(
        select(Alert).where(
            Alert.tenant_id == f.tenant_id,
            Alert.kind == f.kind,
            Alert.key == f.key,
            Alert.state.in_(("open", "acknowledged")),
        )
    ).scalar_one_or_none()
    if existing is not None:
        existing.count += 1
        existing.last_seen = now
        existing.summary = f.summary
        existing.evidence = json.dumps(dict(f.evidence))
        return None
    alert = Alert(
        tenant_id=f.tenant_id,
        kind=f.kind,
        key=f.key,
        severity=f.severity,
        state="open",
        subject=f.subject,
        summary=f.summary,
        evidence=json.dumps(dict(f.evidence)),
        count=1,
        response="",
        first_seen=now,
        last_seen=now,
    )
    session.add(alert)
    session.flush()
    return alert


def _respond(session: Session, alert: Alert, f: det.Finding, now: dt.datetime) -> None:
    action = session.execute(
        select(AlertResponse.action).where(
            AlertResponse.tenant_id == alert.tenant_id, AlertResponse.kind == alert.kind
        )
    ).scalar_one_or_none()
    if action is None or action == "none":
        return
    tenant = tenancy.get_tenant(session, alert.tenant_id)
    who = Principal(alert.tenant_id, tenant.name, "security", f"detector:{alert.kind}")
    targets = f.devices if action == "quarantine-cohort" else f.devices[:1]
    done = []
    failed = 0
    devices = identity.devices_by_pk(session, targets)  # one read for the cohort
    for pk in targets:
        device = devices.get(pk)
        if device is None or device.tenant_id != alert.tenant_id or device.state != "active":
            continue
        try:
            with session.begin_nested():  # one device's refusal does not undo the round
                identity.set_device_state(
                    session, who, device.device_id, state="quarantined",
                    reason=f"alert {alert.id}: {alert.kind}", now=now,
                )  # fmt: skip
        except FleetwardError:
            log.exception("quarantine of %s for alert %s failed", device.device_id, alert.id)
            failed += 1
            continue
        done.append(device.device_id)
    alert.response = f"{action}: {len(done)} device(s) quarantined" + (
        f", {failed} failed" if failed else ""
    )
    audit.append(
        session,
        actor=who.actor,
        action="detection.response",
        subject=f"alert:{alert.id}",
        tenant_id=alert.tenant_id,
        details={"action": action, "devices": done[:100], "count": len(done)},
        now=now,
    )


def raise_alert(session: Session, finding: det.Finding, *, now: dt.datetime) -> Alert | None:
    """Raise (or refresh) an alert from another domain's finding, with the
    tenant's automatic response for its kind; returns the alert when new.

    Raises:
        InvalidInputError: a kind not in :data:`KINDS`.
    """
    if finding.kind not in KINDS:
        raise InvalidInputError(f"unknown alert kind {finding.kind!r}")
    alert = _upsert(session, finding, now)
    if alert is not None:
        _respond(session, alert, finding, now)
    return alert


def run(session: Session, *, now: dt.datetime | None = None) -> list[Alert]:
    """One detection round over the events added since the last; returns new alerts."""
    now = now or utcnow()
    cursor = session.get(DetectorCursor, "main")
    if cursor is None:
        cursor = DetectorCursor(name="main", last_event_id=0)
        session.add(cursor)
    fresh = telemetry.events_after(session, cursor.last_event_id, limit=MAX_BATCH)
    if not fresh:
        return []
    cursor.last_event_id = fresh[-1].id
    new_views = _views(fresh)
    tenants_with_verdicts = {v.tenant_id for v in new_views if v.type == "attestation.verdict"}
    # The latest verdict of every device of those tenants within the window.
    latest: dict[int, det.EventView] = {}
    if tenants_with_verdicts:
        window = telemetry.recent_events(
            session,
            type="attestation.verdict",
            tenant_ids=tenants_with_verdicts,
            since=now - WINDOW,
        )
        for v in _views(window):
            if v.device_pk is not None:
                latest[v.device_pk] = v
    pks = {v.device_pk for v in new_views if v.device_pk is not None} | set(latest)
    devices = _devices(session, pks)
    findings: list[det.Finding] = []
    # Cohorts are per tenant: one tenant's fleet is never the baseline (or
    # the blast radius) of another's.
    by_tenant: dict[int, dict[int, det.EventView]] = {}
    for pk, view in latest.items():
        by_tenant.setdefault(view.tenant_id, {})[pk] = view
    cohort = [f for part in by_tenant.values() for f in det.cohort_boot_failures(part, devices)]
    covered = {pk for f in cohort for pk in f.devices if latest.get(pk) is not None}
    covered = {pk for pk in covered if latest[pk].fields.get("verdict") == "fail"}
    findings += cohort
    findings += det.boot_integrity(new_views, devices, covered=covered)
    findings += det.firmware_drift(new_views, devices)
    findings += det.authz_failures(new_views, {}, devices)
    findings += det.message_floods(new_views, devices)
    created = []
    for f in findings:
        alert = _upsert(session, f, now)
        if alert is not None:
            _respond(session, alert, f, now)
            created.append(alert)
    return created


def set_response(session: Session, principal: Principal, kind: str, action: str) -> None:
    """Configure the automatic response to one kind of alert (audited; it
    applies in every environment)."""
    scope.authorize(principal, scope.ALERT_RESPONSE_SET)
    if kind not in KINDS:
        raise InvalidInputError(f"unknown alert kind {kind!r}; one of {', '.join(KINDS)}")
    if action not in ACTIONS:
        raise InvalidInputError(f"unknown action {action!r}; one of {', '.join(ACTIONS)}")
    row = session.execute(
        select(AlertResponse).where(
            AlertResponse.tenant_id == principal.tenant_id, AlertResponse.kind == kind
        )
    ).scalar_one_or_none()
    if row is None:
        session.add(AlertResponse(tenant_id=principal.tenant_id, kind=kind, action=action))
    else:
        row.action = action
    audit.append(
        session,
        actor=principal.actor,
        action="detection.response.set",
        subject=f"alert-kind:{kind}",
        tenant_id=principal.tenant_id,
        details={"action": action},
    )


def responses(session: Session, *, tenant_id: int) -> dict[str, str]:
    """The tenant's configured automatic responses: alert kind -> action
    (a kind left out answers with ``none``)."""
    rows = session.execute(
        select(AlertResponse.kind, AlertResponse.action).where(AlertResponse.tenant_id == tenant_id)
    )
    return {str(kind): str(action) for kind, action in rows}


def list_alerts(
    session: Session,
    principal: Principal,
    *,
    state: str | None = None,
    before: int | None = None,
    limit: int = 100,
) -> list[Alert]:
    """The tenant's alerts, newest first."""
    require(principal, Permission.DEVICE_READ)
    query = select(Alert).where(Alert.tenant_id == principal.tenant_id)
    if state is not None:
        query = query.where(Alert.state == state)
    if before is not None:  # the page after the one that ended at alert ``before``
        query = query.where(Alert.id < before)
    return list(session.execute(query.order_by(Alert.id.desc()).limit(limit)).scalars())


def alerts_about(
    session: Session, principal: Principal, subject: str, *, limit: int = 200
) -> list[Alert]:
    """The tenant's alerts whose subject is ``subject`` (e.g. ``device:d-1``),
    newest first, at most ``limit`` (1-1,000)."""
    require(principal, Permission.DEVICE_READ)
    query = select(Alert).where(Alert.tenant_id == principal.tenant_id, Alert.subject == subject)
    return list(
        session.execute(query.order_by(Alert.id.desc()).limit(max(1, min(limit, 1000)))).scalars()
    )


def set_alert_state(session: Session, principal: Principal, alert_id: int, state: str) -> Alert:
    """Acknowledge or resolve an alert (audited; alerts are the tenant's
    signals, triaged by tokens with no environment scope)."""
    scope.authorize(principal, scope.ALERT_TRIAGE)
    if state not in ("acknowledged", "resolved"):
        raise InvalidInputError("an alert is acknowledged or resolved")
    alert = session.get(Alert, alert_id)
    if alert is None or alert.tenant_id != principal.tenant_id:
        raise NotFoundError(f"alert {alert_id} not found")
    if alert.state == "resolved":
        raise ConflictError(f"alert {alert_id} is resolved")
    alert.state = state
    if state == "resolved" and alert.kind == "enrollment-anomaly":
        _snapshot_enrollment(session, alert, principal.tenant_name)
    audit.append(
        session,
        actor=principal.actor,
        action=f"alert.{state}",
        subject=f"alert:{alert.id}",
        tenant_id=principal.tenant_id,
        details={"kind": alert.kind, "key": alert.key},
    )
    return alert


def _snapshot_enrollment(session: Session, alert: Alert, tenant_name: str) -> None:
    """Write the batch's counters as they are now into a resolved
    enrollment alert: the baseline the next sweep judges new attempts
    against (:func:`~.detectors.enrollment_anomalies`), so attempts already
    seen never raise it again."""
    who = Principal(alert.tenant_id, tenant_name, "security", "detector:sweep")
    for row in provisioning.counters(session, who):
        if f"factory:{row['factory_id']}:batch:{row['batch_id']}" == alert.key:
            evidence = json.loads(alert.evidence or "{}")
            evidence.update(
                accepted=int(row["accepted"]),
                refused=int(row["refused"]),
                refused_by_category=dict(row["refused_by_category"]),
            )
            alert.evidence = json.dumps(evidence)
            return


def _resolved_enrollment(session: Session, tenant_id: int) -> dict[str, dict[str, object]]:
    """The counters each batch had when its newest enrollment alert was
    resolved (batches whose newest alert is still open are left out)."""
    newest: dict[str, Alert] = {}
    for alert in session.execute(
        select(Alert)
        .where(Alert.tenant_id == tenant_id, Alert.kind == "enrollment-anomaly")
        .order_by(Alert.id)
    ).scalars():
        newest[alert.key] = alert
    return {
        key: json.loads(alert.evidence or "{}")
        for key, alert in newest.items()
        if alert.state == "resolved"
    }


SILENCE = dt.timedelta(hours=24)
EXPIRY_WARNING = dt.timedelta(days=14)


def sweep(session: Session, *, now: dt.datetime | None = None) -> list[Alert]:
    """The time-based detectors (enrollment signals, silence, expiry), per tenant."""
    now = now or utcnow()
    created = []
    for tenant_id, tenant_name in tenancy.tenant_names(session).items():
        who = Principal(tenant_id, tenant_name, "security", "detector:sweep")
        findings = det.enrollment_anomalies(
            tenant_id,
            provisioning.counters(session, who, now=now),
            resolved=_resolved_enrollment(session, tenant_id),
        )
        active = {pk for pk, _, _ in identity.active_devices(session, tenant_id=tenant_id)}
        devices = _devices(session, active)
        seen = telemetry.last_seen(session, tenant_id=tenant_id)
        findings += det.silent_devices(
            tenant_id, {pk: seen[pk] for pk in active if pk in seen}, devices,
            now=now, max_silence=SILENCE,
        )  # fmt: skip
        expiry = identity.certificate_expiry(session, tenant_id=tenant_id)
        findings += det.expiring_certificates(
            tenant_id, {pk: expiry[pk] for pk in active if pk in expiry}, devices,
            now=now, within=EXPIRY_WARNING,
        )  # fmt: skip
        for f in findings:
            alert = _upsert(session, f, now)
            if alert is not None:
                _respond(session, alert, f, now)
                created.append(alert)
    return created
