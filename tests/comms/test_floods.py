"""Floods do not bury the broker: audit appends never rebuild its table, and a
device flooding denied topics writes a bounded number of event rows.

Against a real Mosquitto with the fleetward plugin (tests/broker.py).
"""

from __future__ import annotations

import datetime as dt
import time
from pathlib import Path

import pytest
from sqlalchemy import func, select

from fleetward import audit
from fleetward.identity import service as identity
from fleetward.runtime.broker import BrokerRuntime
from fleetward.runtime.context import AppContext
from fleetward.telemetry.models import Event
from tests.broker import admin_of, connect, make_device, synced, wait_for

pytestmark = [pytest.mark.broker, pytest.mark.slow]

REFUSALS = 10_000
DISTINCT_TOPICS = 3_000
# The plugin's DETAIL_PER_WINDOW distinct entries, plus at most one count
# line per (kind, action) when the window closes (fw_plugin.c).
MAX_FLOOD_ROWS = 8 + 12


def _table_id(broker: BrokerRuntime) -> tuple[int, int]:
    st = broker.files.table.stat()
    return st.st_ino, st.st_mtime_ns


def test_audit_appends_never_rebuild_the_table(
    ctx: AppContext, broker: BrokerRuntime, tmp_path: Path
) -> None:
    make_device(ctx, tmp_path, "d1")
    synced(broker)
    before, file_before = broker.sync.generation, _table_id(broker)
    refusals = [
        audit.Event(
            actor="anonymous",
            action="auth.refused",
            subject="request:/api/v1/renew",
            outcome="refused",
            details={"n": i},
        )
        for i in range(REFUSALS)
    ]
    with ctx.db.session() as s:
        audit.append_many(s, refusals)
    for _ in range(5):
        with ctx.db.session() as s:
            audit.append(s, actor="anonymous", action="auth.refused", subject="x")
        broker.sync.refresh()
    time.sleep(0.3)  # several sync rounds of the runtime's own worker
    assert broker.sync.generation == before
    assert _table_id(broker) == file_before
    # The one time-driven rebuild is armed: when the device's certificate expires.
    expiry = broker.sync._next_expiry
    assert expiry is not None and expiry > dt.datetime.now(dt.UTC)


def test_a_revocation_still_rebuilds_the_table_and_cuts_off(
    ctx: AppContext, broker: BrokerRuntime, tmp_path: Path
) -> None:
    d1 = make_device(ctx, tmp_path, "d1")
    synced(broker)
    client = connect(broker.port, broker.files.broker_ca, d1.cert, d1.key)
    before = broker.sync.generation
    admin = admin_of(ctx)
    started = time.monotonic()
    with ctx.db.session() as s:
        identity.revoke_device(s, admin, "d1", reason="keyCompromise")
    wait_for(client.disconnected.is_set, timeout=2, what="the revoked device to be cut off")
    assert time.monotonic() - started < 1.0
    assert broker.sync.generation > before
    client.close()


def test_a_flood_of_denied_topics_writes_bounded_rows(
    ctx: AppContext, broker: BrokerRuntime, tmp_path: Path
) -> None:
    d1 = make_device(ctx, tmp_path, "d1")
    synced(broker)
    client = connect(broker.port, broker.files.broker_ca, d1.cert, d1.key)
    for i in range(DISTINCT_TOPICS):
        client.client.publish(f"fw/default/other/telemetry/{i}", b"x", qos=0)
    # One denial the broker answers (QoS 1): every QoS 0 one before it was checked.
    assert client.publish("fw/default/other/telemetry/last") != 0
    client.close()
    # The cleanup flush (the broker stops) closes the window: the count line lands.
    broker.stop()
    broker.sync.ingest_events()
    broker.sync.ingest_events()  # the file is read one round after its rename

    with ctx.db.read() as s:
        rows = s.execute(
            select(func.count(), func.coalesce(func.sum(Event.count), 0)).where(
                Event.type == "authz.denied"
            )
        ).one()
    assert 0 < rows[0] <= MAX_FLOOD_ROWS, rows
    assert rows[1] == DISTINCT_TOPICS + 1  # every denial is counted
