"""The campaign driver's round: steps running campaigns, sends offers, ingests reports.

The runtime runs it beside the broker (``fleetward up``), under a lease so
one host drives. Each round (:func:`drive_round`) it:

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

Reports arrive on an MQTT subscription (:meth:`ReportInbox.subscribe`) into
a bounded :class:`ReportInbox`; offers leave through a ``send`` function
(the runtime passes a :class:`~fleetward.comms.commands.CommandSender`'s).
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import queue
from collections.abc import Callable
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from sqlalchemy import select
from sqlalchemy.orm import Session

from fleetward import identity, telemetry, tenancy
from fleetward.comms import service_client
from fleetward.ota import campaigns, fleet
from fleetward.ota.models import Campaign
from fleetward.store import Database
from fleetward.store.db import utcnow

__all__ = ["FINAL_STEPS", "ReportInbox", "drive", "drive_round", "store_reports"]

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
MAX_QUEUED_REPORTS = 100_000  # reports waiting for a round; a flood is counted, not kept
MAX_REPORTS_PER_ROUND = 10_000

Report = tuple[str, str, dict[str, Any]]  # tenant, device id, body


class ReportInbox:
    """Devices' OTA reports between the MQTT callback and the next round.

    Bounded: past half full, progress steps are dropped (and counted) so the
    results that gates count always find room; past full, everything is.
    """

    def __init__(self, *, maxsize: int = MAX_QUEUED_REPORTS) -> None:
        self.queue: queue.Queue[Report] = queue.Queue(maxsize=maxsize)
        self.dropped = 0

    def on_message(self, _c: mqtt.Client | None, _u: object, msg: mqtt.MQTTMessage) -> None:
        """paho's message callback for ``fw/+/+/state/ota``."""
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
        if not final and self.queue.qsize() >= self.queue.maxsize // 2:
            self.dropped += 1
            return
        try:
            self.queue.put_nowait((parts[1], parts[2], body))
        except queue.Full:
            self.dropped += 1

    def subscribe(self, home: Path) -> mqtt.Client:
        """Connect to the broker of ``home`` as the ``ota`` identity and feed this inbox.

        Raises:
            BrokerUnavailableError: no broker here, or it cannot be reached.
        """
        return service_client(
            home,
            identity="ota",
            client_id="fleetward-ota",
            subscribe=("fw/+/+/state/ota", 1),
            on_message=self.on_message,
            keepalive=30,
        )

    def take(self, limit: int = MAX_REPORTS_PER_ROUND) -> list[Report]:
        """Up to ``limit`` reports, oldest first."""
        batch: list[Report] = []
        while len(batch) < limit:
            try:
                batch.append(self.queue.get_nowait())
            except queue.Empty:
                break
        return batch


def store_reports(db: Database, batch: list[Report]) -> int:
    """Store a batch of reports: every step as an ``ota.step`` event, final
    steps also as campaign results; returns how many results were stored."""
    if not batch:
        return 0
    stored = 0
    with db.session() as s:
        tenants = {name: tid for tid, name in tenancy.tenant_names(s).items()}
        _steps_as_events(s, tenants, batch)
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


def _steps_as_events(s: Session, tenants: dict[str, int], batch: list[Report]) -> None:
    """Every reported step is telemetry (``ota.step``), with the version the
    device says it runs: what the detectors and operators read. A step of a
    campaign also tells the driver the device is at work."""
    keys = {(tenants[t], d) for t, d, _ in batch if t in tenants}
    devices = identity.find_devices(s, keys)
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
    telemetry.record_events(s, rows)
    # The version a report names is what the device runs now (after a commit,
    # the new one; after a fall-back, the old one): exposure counts it.
    running = {
        devices[(tenants[t], d)]: str(body["version"])
        for t, d, body in batch
        if t in tenants and (tenants[t], d) in devices and isinstance(body.get("version"), str)
    }
    if running:
        registry = identity.devices_by_pk(s, running)
        for pk, version in running.items():
            device = registry.get(pk)
            if device is not None:
                fleet.note_running(
                    s, tenant_id=device.tenant_id, device_pk=pk, product=device.product,
                    version=version, now=now,
                )  # fmt: skip
    working: dict[int, set[int]] = {}
    for t, d, body in batch:
        campaign = body.get("campaign")
        if t in tenants and (tenants[t], d) in devices and isinstance(campaign, int):
            working.setdefault(campaign, set()).add(devices[(tenants[t], d)])
    for campaign_id, pks in working.items():
        campaigns.heard_from(s, campaign_id, pks, now=now)


def drive(
    db: Database,
    *,
    send: Callable[[str, bytes], None],
    quiet: dt.timedelta,
    stragglers: bool,
    now: dt.datetime | None = None,
) -> int:
    """Step running campaigns and send their offers.

    Args:
        db: The database.
        send: Publishes one offer (topic, payload).
        quiet: A device silent this long about an offer gets it again.
        stragglers: Also re-offer completed campaigns' releases (for
            :data:`STRAGGLER_WINDOW`) to devices that never answered.
        now: The current time.

    Returns:
        How many offers were sent.
    """
    now = now or utcnow()
    with db.read() as s:
        running = list(s.execute(select(Campaign.id).where(Campaign.state == "running")).scalars())
        completed = (
            list(
                s.execute(
                    select(Campaign.id).where(
                        Campaign.state == "completed",
                        Campaign.updated_at >= now - STRAGGLER_WINDOW,
                    )
                ).scalars()
            )
            if stragglers
            else []
        )
    sent = 0
    for campaign_id in running:
        with db.session() as s:
            offers = campaigns.step(s, campaign_id)
            if not offers:
                c = s.get_one(Campaign, campaign_id)
                offers = campaigns.pending_offers(s, c, quiet_for=quiet)
        sent += _send(send, offers)
    for campaign_id in completed:
        with db.session() as s:
            c = s.get_one(Campaign, campaign_id)
            offers = campaigns.pending_offers(s, c, quiet_for=quiet)
        sent += _send(send, offers)
    return sent


def _send(send: Callable[[str, bytes], None], offers: list[campaigns.Offer]) -> int:
    for offer in offers:
        send(offer.topic, json.dumps(offer.payload).encode())
    return len(offers)


def drive_round(
    db: Database,
    inbox: ReportInbox,
    *,
    send: Callable[[str, bytes], None],
    quiet: dt.timedelta,
    stragglers: bool,
) -> int:
    """One round: reports in (:func:`store_reports`), campaigns stepped and
    offers out (:func:`drive`); returns how many offers were sent."""
    store_reports(db, inbox.take())
    return drive(db, send=send, quiet=quiet, stragglers=stragglers)
