"""The periodic sweep over the database (expiry, silence, enrollment signals)."""

from __future__ import annotations

from pathlib import Path

from sqlalchemy import select

from fleetward.detection import service as detection
from fleetward.detection.models import Alert
from fleetward.runtime.context import AppContext
from fleetward.tenancy import service as tenancy
from tests.broker import admin_of, make_device


def test_sweep_raises_expiry_alerts_once(ctx: AppContext, tmp_path: Path) -> None:
    admin = admin_of(ctx)
    with ctx.db.session() as s:
        tenancy.set_cert_lifetime(s, admin, days=7)
    make_device(ctx, tmp_path, "short-lived")
    with ctx.db.session() as s:
        assert [a.kind for a in detection.sweep(s)] == ["certificate-expiry"]
    with ctx.db.session() as s:
        assert detection.sweep(s) == []  # deduplicated while open
    with ctx.db.read() as s:
        [alert] = s.execute(select(Alert)).scalars()
        assert alert.key == "device:short-lived" and alert.count == 2
