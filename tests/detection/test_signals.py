"""Signals that cannot be faked: refusals are never liveness, and a resolved
enrollment alert stays resolved until new anomalous attempts arrive."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

from sqlalchemy import insert, select

from fleetward import telemetry
from fleetward.detection import service as detection
from fleetward.detection.models import Alert
from fleetward.identity import service as identity
from fleetward.provisioning.models import EnrollmentAttempt
from fleetward.runtime.context import AppContext
from tests.broker import admin_of, make_device

# What anyone can cause in a device's name: junk evidence, a refused
# enrollment, a denial of its identity at the broker.
REFUSALS = (
    "attestation.refused",
    "authz.denied",
    "authz.unknown-identity",
    "authz.stale-certificate",
    "enrollment.refused",
)


def _event(tenant_id: int, pk: int, type_: str, at: dt.datetime) -> dict[str, object]:
    return {
        "tenant_id": tenant_id,
        "device_pk": pk,
        "type": type_,
        "at": at,
        "count": 1,
        "fields": json.dumps({"reason": "junk"}),
    }


def test_refused_and_denied_events_are_not_liveness(ctx: AppContext, tmp_path: Path) -> None:
    make_device(ctx, tmp_path, "quiet")
    make_device(ctx, tmp_path, "alive")
    admin = admin_of(ctx)
    now = dt.datetime.now(dt.UTC)
    long_ago = now - detection.SILENCE - dt.timedelta(hours=1)
    with ctx.db.session() as s:
        quiet = identity.get_device(s, admin, "quiet").id
        alive = identity.get_device(s, admin, "alive").id
        rows = [_event(admin.tenant_id, pk, "metric", long_ago) for pk in (quiet, alive)]
        rows += [_event(admin.tenant_id, quiet, t, now) for t in REFUSALS]
        rows.append(_event(admin.tenant_id, alive, "attestation.verdict", now))
        telemetry.record_events(s, rows)
    with ctx.db.read() as s:
        seen = telemetry.last_seen(s, tenant_id=admin.tenant_id)
        assert seen[quiet] == long_ago  # the refusals moved nothing
        assert seen[alive] == now  # accepted evidence is liveness
        assert telemetry.online_devices(s, [quiet, alive], now) == {alive}
    with ctx.db.session() as s:
        silent = [a.key for a in detection.sweep(s, now=now) if a.kind == "device-silent"]
    assert silent == ["device:quiet"]


def _attempts(ctx: AppContext, tenant_id: int, *, refused: int, at: dt.datetime) -> None:
    rows = [
        {
            "tenant_id": tenant_id,
            "factory_id": 3,
            "batch_id": 4,
            "token_id": "station",
            "device_id": f"x{i}",
            "result": "refused",
            "category": "outside-batch",
            "ts": at,
        }
        for i in range(refused)
    ]
    with ctx.db.session() as s:
        s.execute(insert(EnrollmentAttempt), rows)


def _enrollment_alerts(ctx: AppContext) -> list[tuple[int, str]]:
    with ctx.db.read() as s:
        rows = s.execute(
            select(Alert.id, Alert.state)
            .where(Alert.kind == "enrollment-anomaly")
            .order_by(Alert.id)
        ).all()
    return [(int(i), str(state)) for i, state in rows]


def test_a_resolved_enrollment_alert_settles_until_new_attempts(ctx: AppContext) -> None:
    admin = admin_of(ctx)
    now = dt.datetime.now(dt.UTC)
    _attempts(ctx, admin.tenant_id, refused=30, at=now - dt.timedelta(hours=2))
    with ctx.db.session() as s:
        [raised] = [a for a in detection.sweep(s, now=now) if a.kind == "enrollment-anomaly"]
        alert_id = raised.id
    with ctx.db.session() as s:
        detection.set_alert_state(s, admin, alert_id, "resolved")
    # No new attempt: the next sweeps leave it resolved and raise nothing.
    for minutes in (1, 10, 60):
        with ctx.db.session() as s:
            later = now + dt.timedelta(minutes=minutes)
            assert [
                a for a in detection.sweep(s, now=later) if a.kind == "enrollment-anomaly"
            ] == []
    assert _enrollment_alerts(ctx) == [(alert_id, "resolved")]
    # A few new refusals are not an anomaly either ...
    _attempts(ctx, admin.tenant_id, refused=3, at=now)
    with ctx.db.session() as s:
        assert [a for a in detection.sweep(s, now=now) if a.kind == "enrollment-anomaly"] == []
    # ... a new run of them is: the alert comes back, counting only what is new.
    _attempts(ctx, admin.tenant_id, refused=12, at=now)
    with ctx.db.session() as s:
        [again] = [a for a in detection.sweep(s, now=now) if a.kind == "enrollment-anomaly"]
        assert json.loads(again.evidence)["since_resolved"] == {"accepted": 0, "refused": 15}
    assert [state for _, state in _enrollment_alerts(ctx)] == ["resolved", "open"]
