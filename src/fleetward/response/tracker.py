"""The compliance tracker: runs in ``fleetward up`` beside the campaign driver.

Every ``interval`` seconds it marks devices that complied with a run's step
(:func:`runs.track`) and contains incidents with nothing left pending. Every
``resend`` seconds it asks devices that still owe a renewal under a new CA
to renew again: a device that was offline when the run sent the command
gets it when it comes back. (Emergency releases are re-offered by the
campaign driver.)
"""

from __future__ import annotations

import logging
import threading
import time

from sqlalchemy import select

from fleetward.api.context import AppContext
from fleetward.errors import FleetwardError
from fleetward.identity.models import Device
from fleetward.response import runs
from fleetward.response.effects import LiveEffects
from fleetward.response.models import IncidentDevice
from fleetward.tenancy.models import Tenant

__all__ = ["ComplianceTracker"]

log = logging.getLogger("fleetward.response")

MAX_RESEND = 10_000  # renew commands per round


class ComplianceTracker:
    """One per installation."""

    def __init__(self, ctx: AppContext, *, interval: float = 2.0, resend: float = 60.0) -> None:
        self.ctx = ctx
        self.interval = interval
        self.resend = resend
        self.effects = LiveEffects(ctx.settings.home)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._last_resend = time.monotonic()

    def run_once(self) -> int:
        """One round; returns how many devices complied."""
        complied = 0
        with self.ctx.db.read() as s:
            busy = runs.needs_tracking(s)
        if busy:
            with self.ctx.db.session() as s:
                complied = runs.track(s)
        if time.monotonic() - self._last_resend >= self.resend:
            self._last_resend = time.monotonic()
            self._renew_again()
        return complied

    def _renew_again(self) -> None:
        with self.ctx.db.read() as s:
            rows = s.execute(
                select(Tenant.name, Device.device_id)
                .select_from(IncidentDevice)
                .join(Device, Device.id == IncidentDevice.device_pk)
                .join(Tenant, Tenant.id == Device.tenant_id)
                .where(IncidentDevice.state == "pending", IncidentDevice.requirement.like("ca:%"))
                .limit(MAX_RESEND)
            ).all()
        for tenant, device_id in rows:
            try:
                self.effects.command(tenant, device_id, "renew")
            except FleetwardError as exc:
                log.warning("renew command to %s failed: %s", device_id, exc)
                return  # the broker is away; the next round retries

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.run_once()
            except Exception:  # keep tracking; the next round retries
                log.exception("compliance tracking round failed")

    def start(self) -> None:
        """Run in a daemon thread."""
        self._thread = threading.Thread(target=self._run, daemon=True, name="compliance")
        self._thread.start()

    def stop(self) -> None:
        """Stop the thread and disconnect."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
        self.effects.close()
