"""The campaign driver: steps running campaigns, sends offers, ingests reports.

Runs beside the broker (``fleetward up``). Each round it:

1. stores the devices' reports received on ``fw/<tenant>/<device>/state/ota``
   (every step as an ``ota.step`` event; final steps also in the campaign)
   (the broker only lets a device publish under its own id, so the topic
   names the reporter);
2. steps every running campaign (:func:`campaigns.step`) and publishes the
   new wave's offers on ``fw/<tenant>/<device>/ota/offer``;
3. re-publishes an offer to each device that has said nothing about it
   for ``resend`` seconds (a device that was offline, also for up to a
   week after its campaign completed, or a driver that restarted); a device
   that reports steps is at work and is left alone.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import queue
import threading
import time
from typing import Any

import paho.mqtt.client as mqtt
from sqlalchemy import insert, select

from fleetward.api.context import AppContext
from fleetward.comms.commands import CommandSender, service_client
from fleetward.identity.models import Device
from fleetward.ota import campaigns
from fleetward.ota.models import Campaign
from fleetward.store.db import utcnow
from fleetward.telemetry.models import Event
from fleetward.tenancy.models import Tenant

__all__ = ["FINAL_STEPS", "CampaignDriver"]

log = logging.getLogger("fleetward.ota.driver")

# What a device reports at the end of an update attempt, and how it counts.
FINAL_STEPS = {
    "committed": "succeeded",
    "fell-back": "failed",
    "refused": "failed",
    "error": "failed",
}
MAX_REPORT_BYTES = 4096
# How long a completed campaign keeps offering its release to devices that
# have not answered (offline while it ran).
STRAGGLER_WINDOW = dt.timedelta(days=7)


class CampaignDriver:
    """One per installation (it runs where the broker runs)."""

    def __init__(self, ctx: AppContext, *, interval: float = 1.0, resend: float = 30.0) -> None:
        self.ctx = ctx
        self.interval = interval
        self.resend = resend
        self.sender = CommandSender(ctx.settings.home)
        self.reports: queue.Queue[tuple[str, str, dict[str, Any]]] = queue.Queue(maxsize=100_000)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._subscriber: mqtt.Client | None = None
        self._last_resend = time.monotonic()
        self.dropped_reports = 0

    # -- reports in ---------------------------------------------------------

    def _on_message(self, _c: mqtt.Client, _u: object, msg: mqtt.MQTTMessage) -> None:
        parts = msg.topic.split("/")
        if len(parts) != 5 or len(msg.payload) > MAX_REPORT_BYTES:
            return
        try:
            body = json.loads(msg.payload)
        except ValueError:
            return
        if not isinstance(body, dict):
            return
        final = str(body.get("step")) in FINAL_STEPS
        if not final and self.reports.qsize() >= self.reports.maxsize // 2:
            # Under a backlog, progress steps are dropped (and counted) so the
            # results that gates count always find room.
            self.dropped_reports += 1
            return
        try:
            self.reports.put_nowait((parts[1], parts[2], body))
        except queue.Full:
            self.dropped_reports += 1  # bounded: a flood is counted, not kept

    def _subscribe(self) -> mqtt.Client:
        return service_client(
            self.ctx.settings.home,
            client_id="fleetward-ota",
            subscribe=("fw/+/+/state/ota", 1),
            on_message=self._on_message,
            keepalive=30,
        )

    def _store_reports(self) -> int:
        stored = 0
        batch: list[tuple[str, str, dict[str, Any]]] = []
        while len(batch) < 10_000:
            try:
                batch.append(self.reports.get_nowait())
            except queue.Empty:
                break
        if not batch:
            return 0
        with self.ctx.db.session() as s:
            tenants = {str(n): int(i) for n, i in s.execute(select(Tenant.name, Tenant.id))}
            self._record_steps(s, tenants, batch)
            for tenant, device_id, body in batch:
                status = FINAL_STEPS.get(str(body.get("step")))
                campaign_id = body.get("campaign")
                if status is None or not isinstance(campaign_id, int) or tenant not in tenants:
                    continue  # intermediate steps are telemetry, not gate input
                version = body.get("version")
                stored += campaigns.report(
                    s,
                    tenant_id=tenants[tenant],
                    device_id=device_id,
                    campaign_id=campaign_id,
                    status=status,
                    version=str(version) if version is not None else None,
                )
        return stored

    @staticmethod
    def _record_steps(
        s: Any, tenants: dict[str, int], batch: list[tuple[str, str, dict[str, Any]]]
    ) -> None:
        """Every reported step is telemetry (``ota.step``), with the version
        the device says it runs: what the detectors and operators read. A
        step of a campaign also tells the driver the device is at work."""
        CampaignDriver._steps_as_events(s, tenants, batch)

    @staticmethod
    def _steps_as_events(
        s: Any, tenants: dict[str, int], batch: list[tuple[str, str, dict[str, Any]]]
    ) -> None:
        keys = {(tenants[t], d) for t, d, _ in batch if t in tenants}
        devices: dict[tuple[int, str], int] = {}
        for tenant_id, device_id in keys:
            pk = s.execute(
                select(Device.id).where(
                    Device.tenant_id == tenant_id, Device.device_id == device_id
                )
            ).scalar_one_or_none()
            if pk is not None:
                devices[(tenant_id, device_id)] = int(pk)
        now = dt.datetime.now(dt.UTC)
        rows = [
            {
                "tenant_id": tenants[t],
                "device_pk": devices[(tenants[t], d)],
                "type": "ota.step",
                "at": now,
                "count": 1,
                "fields": json.dumps(body, separators=(",", ":"))[:MAX_REPORT_BYTES],
            }
            for t, d, body in batch
            if t in tenants and (tenants[t], d) in devices
        ]
        if rows:
            s.execute(insert(Event), rows)
        working: dict[int, set[int]] = {}
        for t, d, body in batch:
            campaign = body.get("campaign")
            if t in tenants and (tenants[t], d) in devices and isinstance(campaign, int):
                working.setdefault(campaign, set()).add(devices[(tenants[t], d)])
        for campaign_id, pks in working.items():
            campaigns.heard_from(s, campaign_id, pks, now=now)

    # -- offers out ---------------------------------------------------------

    def _send(self, offers: list[campaigns.Offer]) -> None:
        for offer in offers:
            self.sender.send(offer.topic, json.dumps(offer.payload).encode())

    def run_once(self) -> None:
        """One round: reports in, campaigns stepped, offers out (again to each
        device that has said nothing for ``resend`` seconds)."""
        self._store_reports()
        quiet = dt.timedelta(seconds=self.resend)
        # Completed campaigns are looked at once per resend period.
        resend = time.monotonic() - self._last_resend >= self.resend
        if resend:
            self._last_resend = time.monotonic()
        with self.ctx.db.read() as s:
            running = list(
                s.execute(select(Campaign.id).where(Campaign.state == "running")).scalars()
            )
            # A completed campaign keeps offering its release to devices that
            # were offline when it ran, for a while.
            stragglers = (
                list(
                    s.execute(
                        select(Campaign.id).where(
                            Campaign.state == "completed",
                            Campaign.updated_at >= utcnow() - STRAGGLER_WINDOW,
                        )
                    ).scalars()
                )
                if resend
                else []
            )
        for campaign_id in running:
            with self.ctx.db.session() as s:
                offers = campaigns.step(s, campaign_id)
                if not offers:
                    c = s.get_one(Campaign, campaign_id)
                    offers = campaigns.pending_offers(s, c, quiet_for=quiet)
            self._send(offers)
        for campaign_id in stragglers:
            with self.ctx.db.session() as s:
                c = s.get_one(Campaign, campaign_id)
                offers = campaigns.pending_offers(s, c, quiet_for=quiet)
            self._send(offers)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                if self._subscriber is None:
                    self._subscriber = self._subscribe()
                self.run_once()
            except Exception:  # keep driving; the next round retries
                log.exception("campaign driver round failed")

    def start(self) -> None:
        """Run in a daemon thread."""
        self._thread = threading.Thread(target=self._run, daemon=True, name="campaign-driver")
        self._thread.start()

    def stop(self) -> None:
        """Stop the thread and disconnect."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
        if self._subscriber is not None:
            self._subscriber.disconnect()
            self._subscriber.loop_stop()
        self.sender.close()
