"""Event times are bounded, and what the ingest loses is counted durably."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from fastapi.testclient import TestClient
from paho.mqtt.enums import CallbackAPIVersion
from sqlalchemy import func, select, text

from fleetward.runtime.context import AppContext
from fleetward.telemetry import record_events, service
from fleetward.telemetry.ingest import MAX_EVENT_AGE, MAX_EVENT_LEAD, Ingestor, MqttIngest
from fleetward.telemetry.models import Event
from tests.broker import make_device
from tests.conftest import DeviceTestClient

FAR = ["9999-12-31T00:00:00Z", "1970-01-01T00:00:00Z"]


def _outside(now: dt.datetime) -> list[str]:
    """Times just outside the window, and far outside it."""
    return [
        *FAR,
        (now + MAX_EVENT_LEAD + dt.timedelta(minutes=1)).isoformat(),
        (now - MAX_EVENT_AGE - dt.timedelta(minutes=1)).isoformat(),
    ]


def _losses(ctx: AppContext) -> dict[str, int]:
    with ctx.db.read() as s:
        rows = s.execute(
            select(Event.type, func.sum(Event.count))
            .where(Event.type.startswith("ingest."))
            .group_by(Event.type)
        ).all()
    return {str(t): int(n) for t, n in rows}


def test_operator_events_outside_the_window_are_refused(
    client: TestClient, ctx: AppContext, admin_token: str, tmp_path: Path
) -> None:
    make_device(ctx, tmp_path, "m1")
    h = {"Authorization": f"Bearer {admin_token}"}
    now = dt.datetime.now(dt.UTC)
    for at in _outside(now):
        body = {"events": [{"device": "m1", "type": "metric", "at": at}]}
        got = client.post("/api/v1/telemetry/events", headers=h, json=body)
        assert got.status_code == 400, (at, got.text)
        assert got.headers["content-type"].startswith("application/problem+json")
    ok = {"events": [{"device": "m1", "type": "metric", "at": now.isoformat()}]}
    assert client.post("/api/v1/telemetry/events", headers=h, json=ok).status_code == 201
    with ctx.db.read() as s:
        assert s.execute(select(func.max(Event.at))).scalar_one() < now + MAX_EVENT_LEAD


def test_device_events_outside_the_window_are_refused(
    device_client: DeviceTestClient, ctx: AppContext, tmp_path: Path
) -> None:
    creds = make_device(ctx, tmp_path, "d1")
    dev = device_client.as_device(creds.cert.read_bytes())
    now = dt.datetime.now(dt.UTC)
    for at in _outside(now):
        body = {"events": [{"type": "heartbeat", "at": at}]}
        assert dev.post("/api/v1/device/telemetry", json=body).status_code == 400, at
    body = {"events": [{"type": "heartbeat", "at": now.isoformat()}]}
    assert dev.post("/api/v1/device/telemetry", json=body).status_code == 201


def test_ingest_counts_messages_outside_the_window_durably(ctx: AppContext, tmp_path: Path) -> None:
    make_device(ctx, tmp_path, "t1")
    now = dt.datetime.now(dt.UTC)
    ing = Ingestor(ctx.db, wall=lambda: now)
    assert not ing.offer(
        "fw/default/t1/telemetry", b"{}", at=dt.datetime.max.replace(tzinfo=dt.UTC)
    )
    assert not ing.offer("fw/default/t1/telemetry", b"{}", at=now - 2 * MAX_EVENT_AGE)
    assert ing.offer("fw/default/t1/telemetry", b"{}", at=now)
    assert ing.flush() == 2  # the reading, and one event counting both losses
    assert _losses(ctx) == {"ingest.dropped": 2}
    with ctx.db.read() as s:
        row = s.execute(select(Event).where(Event.type == "ingest.dropped")).scalar_one()
    assert json.loads(row.fields) == {"reason": "timestamp out of window"}
    assert ing.flush() == 0  # counted once


def _refuse_connect(**_: object) -> mqtt.Client:
    raise AssertionError("these tests never connect")


def test_queue_overflow_is_one_durable_event_per_round(ctx: AppContext, tmp_path: Path) -> None:
    make_device(ctx, tmp_path, "t1")
    ingest = MqttIngest(ctx.db, _refuse_connect, max_queue=5)
    paho = mqtt.Client(CallbackAPIVersion.VERSION2)  # never connected: the callback's argument
    for i in range(50):
        msg = mqtt.MQTTMessage(topic=b"fw/default/t1/telemetry/temp")
        msg.payload = json.dumps({"i": i}).encode()
        ingest._on_message(paho, None, msg)
    assert ingest.overflow == 45
    ingest.ingest_round()
    assert _losses(ctx) == {"ingest.overflow": 45}
    ingest.ingest_round()  # nothing new: no new row
    with ctx.db.read() as s:
        assert s.execute(select(func.count()).where(Event.type == "ingest.overflow")).scalar() == 1


def test_a_failed_flush_is_counted_and_written_later(ctx: AppContext, tmp_path: Path) -> None:
    if not ctx.db.is_sqlite:
        pytest.skip("the failure is made with a SQLite trigger")
    make_device(ctx, tmp_path, "t1")
    now = dt.datetime.now(dt.UTC)
    ing = Ingestor(ctx.db, wall=lambda: now)
    for _ in range(7):
        ing.offer("fw/default/t1/telemetry", b"{}", at=now)
    # A real write failure: the database refuses every reading (as a full disk would).
    with ctx.db.engine.begin() as conn:
        conn.execute(
            text(
                "CREATE TRIGGER refuse_metrics BEFORE INSERT ON events WHEN NEW.type = 'metric' "
                "BEGIN SELECT RAISE(ABORT, 'disk full'); END"
            )
        )
    assert ing.flush() == 0  # failed twice (one retry): counted, not silently lost
    assert _losses(ctx) == {}
    with ctx.db.engine.begin() as conn:
        conn.execute(text("DROP TRIGGER refuse_metrics"))
    ing.offer("fw/default/t1/telemetry", b"{}", at=now)
    assert ing.flush() == 2  # the new reading, and the loss of the 7
    assert _losses(ctx) == {"ingest.dropped": 7}
    with ctx.db.read() as s:
        row = s.execute(select(Event).where(Event.type == "ingest.dropped")).scalar_one()
    assert json.loads(row.fields) == {"reason": "write failed"}


def test_prune_removes_events_stored_with_a_far_future_time(
    ctx: AppContext, tmp_path: Path
) -> None:
    make_device(ctx, tmp_path, "t1")
    now = dt.datetime.now(dt.UTC)
    with ctx.db.session() as s:  # as an older fleetward stored them
        record_events(
            s,
            [
                {"tenant_id": None, "device_pk": None, "type": "metric", "at": at, "count": 1}
                for at in (dt.datetime(9999, 12, 31, tzinfo=dt.UTC), now)
            ],
        )
    with ctx.db.session() as s:
        assert service.prune(s, now=now) == 1
